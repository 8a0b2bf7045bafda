// The transport's decisions: SSE, long-poll fallback, switch back.
import test from 'node:test';
import assert from 'node:assert/strict';
import { HELLO_TIMEOUT_MS, SSE_STRIKES, initial, step } from '../../static/transport.js';

/** Runs events from the initial state; returns the last state and every effect name. */
function run(...events) {
  let s = initial();
  const fx = [];
  for (const ev of events) {
    const r = step(s, typeof ev === 'string' ? { type: ev } : ev);
    s = r.state;
    fx.push(...r.fx.map((f) => f[0]));
  }
  return { s, fx };
}
const has = (fx, ...names) => names.every((n) => fx.includes(n));

test('starting opens SSE and waits for hello; hello means connected', () => {
  const r = step(initial(), { type: 'start' });
  assert.equal(r.state.mode, 'sse');
  assert.deepEqual(r.fx.find((f) => f[0] === 'arm'), ['arm', HELLO_TIMEOUT_MS]);
  const { s, fx } = run('start', 'hello');
  assert.equal(s.status, 'connected');
  assert.ok(has(fx, 'openSse', 'disarm', 'serverBack'));
});

test('no hello in time (a buffering proxy) falls back to long-poll', () => {
  const { s, fx } = run('start', { type: 'helloTimeout', offline: false });
  assert.equal(s.mode, 'poll');
  assert.equal(s.status, 'fallback');
  assert.ok(has(fx, 'closeSse', 'startPoll', 'probeEvery'));
});

test('offline, a missing hello proves nothing: keep waiting on SSE', () => {
  const { s, fx } = run('start', { type: 'helloTimeout', offline: true });
  assert.equal(s.mode, 'sse');
  assert.ok(!fx.includes('startPoll'));
});

test('a server that is down (restart) never pushes the page to long-poll', () => {
  const down = { type: 'server', up: false };
  const err = { type: 'sseError', closed: false };
  const { s } = run('start', 'hello', err, down, err, down, err, down, err, down, err, down);
  assert.equal(s.mode, 'sse');
  assert.equal(s.status, 'reconnecting');
  assert.equal(s.failures, 5);
});

test(`${SSE_STRIKES} failed streams while the server answers switch to long-poll`, () => {
  const err = { type: 'sseError', closed: false };
  const up = { type: 'server', up: true };
  assert.equal(run('start', err, up, err, up).s.mode, 'sse');
  assert.equal(run('start', err, up, err, up, err, up).s.mode, 'poll');
});

test('a stream closed by an HTTP error reopens after a growing back-off', () => {
  const closed = { type: 'sseError', closed: true };
  let s = step(initial(), { type: 'start' }).state;
  const delays = [];
  for (let i = 0; i < 3; i++) {
    const r = step(s, closed);
    s = r.state;
    delays.push(r.fx.find((f) => f[0] === 'reopenLater')[1]);
    s = step(s, { type: 'reopen' }).state;
  }
  assert.deepEqual(delays, [0, 1, 2], 'back-off attempts 0, 1, 2');
  const r = step(s, { type: 'hello' });
  assert.equal(r.state.attempt, 0, 'a hello resets the back-off');
});

test('on long-poll a probe that says hello switches back to SSE; a failed probe does not', () => {
  const fallback = ['start', { type: 'helloTimeout', offline: false }];
  const failed = run(...fallback, 'probeTick', { type: 'sseError', probe: true });
  assert.equal(failed.s.mode, 'poll');
  assert.equal(failed.s.probing, false);
  const { s, fx } = run(...fallback, 'probeTick', { type: 'hello', probe: true });
  assert.equal(s.mode, 'sse');
  assert.equal(s.status, 'connected');
  assert.ok(has(fx, 'openProbe', 'stopPoll', 'promoteProbe'));
  assert.equal(run(...fallback, 'probeTick', 'probeTick').fx.filter((f) => f === 'openProbe').length, 1, 'one probe at a time');
});

test('long-poll failures show reconnecting; the next answer sends the outbox at once', () => {
  const fallback = ['start', { type: 'helloTimeout', offline: false }];
  const r1 = run(...fallback, 'pollFail', 'pollFail');
  assert.equal(r1.s.status, 'reconnecting');
  const r2 = run(...fallback, 'pollFail', 'pollOk');
  assert.equal(r2.s.status, 'fallback');
  assert.ok(r2.fx.includes('serverBack'));
});

test('a stopped transport (another tab leads) ignores stray events', () => {
  const { s, fx } = run('start', 'stop', 'hello', { type: 'sseError' }, 'pollOk', 'probeTick');
  assert.equal(s.mode, 'off');
  assert.deepEqual(fx.filter((f) => f === 'openSse' || f === 'openProbe' || f === 'startPoll'), ['openSse']);
});

test('the network coming back reopens a broken stream at once', () => {
  const { fx } = run('start', { type: 'sseError', closed: true }, { type: 'online', open: false });
  assert.equal(fx.filter((f) => f === 'openSse').length, 2);
  assert.equal(run('start', 'hello', { type: 'online', open: true }).fx.filter((f) => f === 'openSse').length, 1);
});
