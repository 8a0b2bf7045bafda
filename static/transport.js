/* Receiving: one state machine for SSE, the long-poll fallback and the
 * switch back. `step()` is the whole decision logic, pure (unit-tested);
 * `createTransport()` runs its effects with EventSource, fetch and timers.
 *
 * Modes: 'off' (another tab receives for us), 'sse', 'poll' (long-poll,
 * with an SSE probe now and then). What the user sees is `status`:
 * connecting, connected, reconnecting or fallback. */

import { backoff, report, sleep } from './util.js';

/** A stream that sends no `hello` this soon after opening is held up by
 * something in between (a buffering proxy). */
export const HELLO_TIMEOUT_MS = 4000;
/** How long a reconnect the browser makes by itself may hang. */
export const HUNG_RECONNECT_MS = 30000;
/** Failed streams, while the server answers plain requests, before long-poll. */
export const SSE_STRIKES = 3;
/** On long-poll, try SSE again this often. */
export const PROBE_EVERY_MS = 60000;
/** The server holds a long-poll this long (its maximum is 30). */
export const POLL_WAIT_S = 25;
/** A long-poll gives up this long after its wait should have ended. */
const POLL_SLACK_MS = 15000;
const POLL_BACKOFF_MAX_MS = 10000;
const REACHABLE_TIMEOUT_MS = 5000;
/** EventSource.readyState: closed for good (HTTP error, wrong type). */
const CLOSED = 2;

export function initial() {
  return { mode: 'off', status: 'connecting', strikes: 0, attempt: 0, failures: 0, probing: false };
}

function toFallback(next, fx) {
  Object.assign(next, { mode: 'poll', status: 'fallback', probing: false });
  fx.push(['closeSse'], ['disarm'], ['status', 'fallback'], ['startPoll'], ['probeEvery', PROBE_EVERY_MS]);
}

/** The next state and the effects to run, for event `ev` in state `s`. */
export function step(s, ev) {
  const next = { ...s };
  const fx = [];
  switch (ev.type) {
    case 'start': // this tab receives (again): start over on SSE
      Object.assign(next, { mode: 'sse', status: 'connecting', strikes: 0, attempt: 0, probing: false });
      fx.push(['stopAll'], ['status', 'connecting'], ['openSse'], ['arm', HELLO_TIMEOUT_MS]);
      break;
    case 'stop':
      Object.assign(next, { mode: 'off', probing: false });
      fx.push(['stopAll']);
      break;
    case 'opened': // every (re)connection must bring a hello soon
      if (s.mode === 'sse') fx.push(['arm', HELLO_TIMEOUT_MS]);
      break;
    case 'hello':
      if (ev.probe) {
        if (s.mode !== 'poll' || !s.probing) break;
        fx.push(['stopPoll'], ['promoteProbe']); // SSE works again: leave long-poll
      } else if (s.mode !== 'sse') break;
      Object.assign(next, { mode: 'sse', status: 'connected', strikes: 0, attempt: 0, failures: 0, probing: false });
      fx.push(['disarm'], ['status', 'connected'], ['serverBack']);
      break;
    case 'helloTimeout':
      if (s.mode !== 'sse') break;
      if (ev.offline) fx.push(['arm', HELLO_TIMEOUT_MS]); // nothing can arrive: wait for the network
      else toFallback(next, fx);
      break;
    case 'sseError':
      if (ev.probe) {
        if (s.probing) fx.push(['closeProbe']);
        next.probing = false;
        break;
      }
      if (s.mode !== 'sse') break;
      next.failures = s.failures + 1;
      next.status = 'reconnecting';
      fx.push(['status', 'reconnecting'], ['disarm']);
      if (ev.closed) {
        // No retry by itself after an HTTP error: reopen after a back-off.
        fx.push(['closeSse'], ['reopenLater', s.attempt]);
        next.attempt = s.attempt + 1;
      } else {
        fx.push(['arm', HUNG_RECONNECT_MS]); // the browser retries; don't wait for ever
      }
      if (!ev.offline) fx.push(['checkServer']);
      break;
    case 'server':
      // A failed stream counts against SSE only while the server answers
      // plain requests: during a restart long-poll would do no better.
      if (s.mode !== 'sse' || !ev.up || s.status === 'connected') break;
      next.strikes = s.strikes + 1;
      if (next.strikes >= SSE_STRIKES) toFallback(next, fx);
      break;
    case 'reopen':
      if (s.mode === 'sse') fx.push(['openSse'], ['arm', HELLO_TIMEOUT_MS]);
      break;
    case 'pollOk':
      if (s.mode !== 'poll') break;
      if (s.failures) fx.push(['serverBack']);
      Object.assign(next, { status: 'fallback', failures: 0 });
      fx.push(['status', 'fallback']);
      break;
    case 'pollFail':
      if (s.mode !== 'poll') break;
      Object.assign(next, { status: 'reconnecting', failures: s.failures + 1 });
      fx.push(['status', 'reconnecting']);
      break;
    case 'probeTick':
      if (s.mode !== 'poll' || s.probing) break;
      next.probing = true;
      fx.push(['openProbe'], ['armProbe', HELLO_TIMEOUT_MS]);
      break;
    case 'online': // the network is back: don't wait for the next back-off
      if (s.mode === 'sse' && !ev.open) fx.push(['closeSse'], ['openSse'], ['arm', HELLO_TIMEOUT_MS]);
      else if (s.mode === 'poll' && !s.probing) return step(s, { type: 'probeTick' });
      break;
    default:
      break;
  }
  return { state: next, fx };
}

/**
 * hooks: {
 *   eventsUrl(), pollUrl(waitS), event(type, data) (every SSE event and polled message),
 *   status(words), serverBack(), badSince() (the server did not know our last id),
 *   offline() -> bool, random?
 * }
 */
export function createTransport(hooks) {
  let s = initial();
  let es = null;
  let probe = null;
  let helloTimer = 0;
  let probeTimer = 0;
  let probeEvery = 0;
  let reopenTimer = 0;
  let pollGen = 0;
  let pollCtrl = null;

  function dispatch(ev) {
    const r = step(s, ev);
    s = r.state;
    r.fx.forEach(run);
  }

  function closeSse() {
    if (es) es.close();
    es = null;
  }
  function closeProbe() {
    clearTimeout(probeTimer);
    if (probe) probe.close();
    probe = null;
  }
  function stopPoll() {
    pollGen++;
    if (pollCtrl) pollCtrl.abort();
    pollCtrl = null;
    clearInterval(probeEvery);
  }

  function run([what, arg]) {
    switch (what) {
      case 'stopAll':
        closeSse();
        closeProbe();
        stopPoll();
        clearTimeout(helloTimer);
        clearTimeout(reopenTimer);
        break;
      case 'status': hooks.status(arg); break;
      case 'openSse': closeSse(); es = open(false); break;
      case 'closeSse': closeSse(); break;
      case 'arm':
        clearTimeout(helloTimer);
        helloTimer = setTimeout(() => dispatch({ type: 'helloTimeout', offline: hooks.offline() }), arg);
        break;
      case 'disarm': clearTimeout(helloTimer); break;
      case 'reopenLater':
        clearTimeout(reopenTimer);
        reopenTimer = setTimeout(() => dispatch({ type: 'reopen' }), backoff(arg));
        break;
      case 'checkServer': reachable().then((up) => dispatch({ type: 'server', up })); break;
      case 'serverBack': hooks.serverBack(); break;
      case 'startPoll': stopPoll(); poll(pollGen); break;
      case 'stopPoll': stopPoll(); break;
      case 'probeEvery':
        clearInterval(probeEvery);
        probeEvery = setInterval(() => dispatch({ type: 'probeTick' }), arg);
        break;
      case 'openProbe': closeProbe(); probe = open(true); break;
      case 'armProbe':
        clearTimeout(probeTimer);
        probeTimer = setTimeout(() => dispatch({ type: 'sseError', probe: true }), arg);
        break;
      case 'closeProbe': closeProbe(); break;
      case 'promoteProbe':
        clearTimeout(probeTimer);
        closeSse();
        es = probe;
        probe = null;
        break;
      default: report('unknown transport effect ' + what, null);
    }
  }

  /** An EventSource whose events feed the state machine while it is ours. */
  function open(isProbe) {
    if (typeof EventSource !== 'function') {
      if (isProbe) return null; // stays on long-poll
      setTimeout(() => dispatch({ type: 'helloTimeout', offline: false }), 0); // no SSE at all
      return null;
    }
    const src = new EventSource(hooks.eventsUrl());
    // A probe becomes the stream when it says hello; anything else is stale.
    const mine = () => src === es || src === probe;
    src.addEventListener('open', () => { if (src === es) dispatch({ type: 'opened' }); });
    src.addEventListener('hello', (e) => {
      if (!mine()) return;
      dispatch({ type: 'hello', probe: src === probe });
      hooks.event('hello', e.data);
    });
    for (const type of ['message', 'join', 'leave', 'presence', 'typing']) {
      src.addEventListener(type, (e) => { if (src === es) hooks.event(type, e.data); });
    }
    src.onerror = () => {
      if (!mine()) return;
      dispatch({ type: 'sseError', probe: src === probe, closed: src.readyState === CLOSED, offline: hooks.offline() });
    };
    return src;
  }

  function reachable() {
    const ctrl = new AbortController();
    const t = setTimeout(() => ctrl.abort(), REACHABLE_TIMEOUT_MS);
    return fetch('/healthz', { cache: 'no-store', credentials: 'same-origin', signal: ctrl.signal })
      .then((r) => r.ok, () => false) // unreachable is the answer, not an error
      .finally(() => clearTimeout(t));
  }

  async function poll(gen) {
    let attempt = 0;
    while (gen === pollGen) {
      const ctrl = new AbortController();
      pollCtrl = ctrl;
      const killer = setTimeout(() => ctrl.abort(), POLL_WAIT_S * 1000 + POLL_SLACK_MS);
      const started = Date.now();
      let got = -1;
      try {
        const r = await fetch(hooks.pollUrl(POLL_WAIT_S), {
          credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' }, signal: ctrl.signal,
        });
        if (r.status === 400) hooks.badSince(); // an id the server does not know: restart from the latest
        if (!r.ok) throw new Error('HTTP ' + r.status);
        const j = await r.json();
        if (gen !== pollGen) return;
        dispatch({ type: 'pollOk' });
        const msgs = j && Array.isArray(j.messages) ? j.messages : [];
        got = msgs.length;
        hooks.polled(msgs, j && j.last_id != null && j.last_id !== '' ? String(j.last_id) : null);
        attempt = 0;
      } catch (e) {
        if (gen !== pollGen) return; // aborted on purpose
        dispatch({ type: 'pollFail' });
      } finally {
        clearTimeout(killer);
        if (pollCtrl === ctrl) pollCtrl = null;
      }
      if (gen !== pollGen) return;
      if (got < 0) await sleep(backoff(attempt++, { max: POLL_BACKOFF_MAX_MS }));
      else if (!got && Date.now() - started < 1000) await sleep(1000); // answered at once with nothing: don't spin
    }
  }

  return {
    start: () => dispatch({ type: 'start' }),
    stop: () => dispatch({ type: 'stop' }),
    online: () => dispatch({ type: 'online', open: !!es && es.readyState === 1 }),
    /** The page goes into the back/forward cache: hold nothing open. */
    freeze() {
      run(['stopAll']);
    },
    get mode() {
      return s.mode === 'off' ? null : s.mode;
    },
    get status() {
      return s.status;
    },
    get failures() {
      return s.failures;
    },
  };
}
