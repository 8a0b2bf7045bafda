// The outbox: in order, one at a time, retried with the same id, never lost.
import test from 'node:test';
import assert from 'node:assert/strict';
import { createOutbox, verdict } from '../../static/outbox.js';

function memoryStore() {
  const m = new Map();
  return { get: (k) => (m.has(k) ? m.get(k) : null), set: (k, v) => (v == null ? m.delete(k) : m.set(k, v)), m };
}

/** An outbox whose POSTs answer from `answers` (a function of the item and the attempt). */
function harness(answer, store = memoryStore()) {
  const log = [];
  const posts = [];
  const sleeps = [];
  let n = 0;
  const known = new Set();
  const ui = {};
  for (const k of ['queued', 'status', 'hide', 'sent', 'failed', 'error', 'clearError']) ui[k] = (...a) => log.push([k, ...a]);
  const box = createOutbox({
    key: 'q', store, ui, now: () => 1000, uuid: () => 'cid-' + ++n, offline: () => false,
    isKnown: (id) => known.has(id), onSent: (item, id) => log.push(['onSent', item.cid, id]),
    sleep: async (ms) => { sleeps.push(ms); },
    post: async (item) => { posts.push(item.cid); return answer(item, posts.filter((c) => c === item.cid).length); },
  });
  const idle = async () => { for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r)); };
  return { box, log, posts, sleeps, store, known, idle };
}

test('answers sort into sent, retry later, or refused for good', () => {
  assert.deepEqual([201, 200, 429, 408, 500, 503, 400, 413, 415].map(verdict),
    ['sent', 'sent', 'retry', 'retry', 'retry', 'retry', 'reject', 'reject', 'reject']);
});

test('messages go in order, one at a time, and leave storage once stored', async () => {
  const h = harness((item) => ({ status: 201, data: { id: 'id-' + item.cid } }));
  h.box.add('one', 'ann');
  h.box.add('two', 'ann');
  assert.ok(h.store.m.get('q').includes('two'), 'persisted before sending');
  await h.idle();
  assert.deepEqual(h.posts, ['cid-1', 'cid-2']);
  assert.equal(h.box.size, 0);
  assert.equal(h.store.get('q'), null, 'storage emptied');
  const sent = h.log.filter((e) => e[0] === 'sent').map((e) => [e[1].text, e[2], e[3]]);
  assert.deepEqual(sent, [['one', 'id-cid-1', false], ['two', 'id-cid-2', false]]);
  assert.deepEqual(h.log.filter((e) => e[0] === 'onSent').map((e) => e[2]), ['id-cid-1', 'id-cid-2']);
});

test('network errors and 503 are retried with the same client_msg_id and a growing back-off', async () => {
  const h = harness((item, attempt) => {
    if (attempt === 1) throw new TypeError('Failed to fetch');
    if (attempt === 2) return { status: 503, data: { error: 'shutting down' } };
    if (attempt === 3) return { status: 429, data: { error: 'slow down' }, retryAfter: '2' };
    return { status: 201, data: { id: '7' } };
  });
  h.box.add('hello', '');
  await h.idle();
  assert.deepEqual(h.posts, ['cid-1', 'cid-1', 'cid-1', 'cid-1'], 'one id for every attempt');
  assert.equal(h.sleeps.length, 3);
  assert.ok(h.sleeps[0] >= 800 && h.sleeps[0] <= 1200, 'first back-off about 1 s: ' + h.sleeps[0]);
  assert.ok(h.sleeps[1] >= 1600 && h.sleeps[1] <= 2400, 'then about 2 s: ' + h.sleeps[1]);
  assert.equal(h.sleeps[2], 2000, 'Retry-After wins');
  assert.ok(h.log.some((e) => e[0] === 'error' && /slow down — retrying in 2 s/.test(e[1])));
  assert.equal(h.box.size, 0);
});

test('a refused message is taken out, shown as failed, and the next one goes', async () => {
  const h = harness((item) => (item.text === 'bad' ? { status: 400, data: { error: 'text is too long' } } : { status: 201, data: { id: '9' } }));
  h.box.add('bad', '');
  h.box.add('good', '');
  await h.idle();
  const failed = h.log.find((e) => e[0] === 'failed');
  assert.equal(failed[1].text, 'bad');
  assert.equal(failed[2], 'text is too long');
  assert.deepEqual(h.posts, ['cid-1', 'cid-2']);
  assert.equal(h.store.get('q'), null);
});

test('what a reload left in storage is sent again with its own id', async () => {
  const store = memoryStore();
  store.set('q', JSON.stringify([{ cid: 'old-1', text: 'from before', name: 'ann', t: 5 }, { junk: true }]));
  const h = harness(() => ({ status: 200, data: { id: '3' } }), store);
  h.box.restore('ann');
  await h.idle();
  assert.deepEqual(h.posts, ['old-1']);
  assert.equal(store.get('q'), null);
  const corrupt = memoryStore();
  corrupt.set('q', '{not json');
  const h2 = harness(() => ({ status: 201, data: { id: '1' } }), corrupt);
  h2.box.restore('');
  assert.equal(h2.box.size, 0, 'unreadable storage is ignored');
});

test('an echo on the stream before the POST answers hides the copy; the answer settles it once', async () => {
  let release;
  const h = harness(() => new Promise((r) => { release = () => r({ status: 201, data: { id: '42' } }); }));
  h.box.add('mine', '');
  await h.idle();
  h.box.echoed({ id: '42', text: 'mine', me: true });
  assert.ok(h.log.some((e) => e[0] === 'hide'));
  release();
  await h.idle();
  const sent = h.log.find((e) => e[0] === 'sent');
  assert.equal(sent[3], true, 'already shown by the stream: not shown twice');
});

test('another tab that sent the message settles it here too', async () => {
  const h = harness(() => new Promise(() => {})); // this tab's POST never answers
  const item = h.box.add('shared', '');
  h.box.resolved(item.cid, '77');
  assert.equal(h.box.size, 0);
  assert.deepEqual(h.log.find((e) => e[0] === 'sent').slice(2), ['77', false]);
});
