/* The outbox: messages the user wrote, kept in storage until the server
 * has them, sent strictly in order, one at a time, and retried with the
 * same client_msg_id so a flaky network never loses or doubles one.
 * No DOM: what the user should see goes through the `ui` callbacks. */

import { backoff, parseJson, retryAfterMs } from './util.js';

/** A POST that has not answered by then is abandoned and retried. */
export const POST_TIMEOUT_MS = 20000;
/** Never retry sooner than this, whatever Retry-After says. */
const MIN_RETRY_MS = 250;

/** How to treat an answer to a POST: 'sent', 'retry' (later) or 'reject'. */
export function verdict(status) {
  if (status >= 200 && status < 300) return 'sent';
  if (status === 429 || status === 408 || status >= 500) return 'retry';
  return 'reject'; // 400, 413, 415…: the server will never take it as it is
}

/**
 * deps: {
 *   key: storage key, store: {get,set} (util.storage), post(item, signal) -> Promise<{status, data, retryAfter}>,
 *   sleep(ms), now(), uuid(), offline() -> bool, isKnown(id) -> bool (the stream already showed it),
 *   ui: {queued(item), status(item, words), hide(item), sent(item, id, shown), failed(item, reason), error(words), clearError()},
 *   onSent(item, id) (tell the other tabs)
 * }
 */
export function createOutbox(deps) {
  const { key, store, ui } = deps;
  const queue = []; // {cid, text, name, t, shadow?, done?}
  let pumping = false;

  function stored() {
    const a = parseJson(store.get(key) || '[]'); // unreadable leftovers: start over
    return Array.isArray(a) ? a.filter((x) => x && typeof x.cid === 'string' && typeof x.text === 'string') : [];
  }
  function persist(list) {
    store.set(key, list.length ? JSON.stringify(list) : null);
  }
  function finish(item) {
    item.done = true;
    const i = queue.indexOf(item);
    if (i >= 0) queue.splice(i, 1);
    persist(stored().filter((x) => x.cid !== item.cid));
  }

  function enqueue(item, save) {
    if (save) {
      const list = stored();
      if (!list.some((x) => x.cid === item.cid)) list.push({ cid: item.cid, text: item.text, name: item.name, t: item.t });
      persist(list); // before anything else: a reload cannot lose it
    }
    queue.push(item);
    ui.queued(item);
  }

  function confirm(item, id) {
    if (item.done) return;
    finish(item);
    ui.sent(item, id, !!id && (deps.isKnown(id) || item.shadow === id));
  }

  async function pump() {
    if (pumping) return;
    pumping = true;
    let attempt = 0;
    try {
      while (queue.length) {
        const item = queue[0];
        ui.status(item, 'sending…');
        let out;
        try {
          out = await deps.post(item);
        } catch (e) {
          if (item.done) continue;
          ui.status(item, 'not sent yet, will retry…');
          ui.error(deps.offline()
            ? 'You are offline. Your messages will be sent when the connection is back.'
            : 'Cannot reach the server. Your messages will be sent when it answers again.');
          await deps.sleep(backoff(attempt++));
          continue;
        }
        if (item.done) continue; // another tab sent it meanwhile
        const { status, data, retryAfter } = out;
        const reason = (data && typeof data.error === 'string' && data.error) || 'HTTP ' + status;
        const v = verdict(status);
        if (v === 'sent') {
          attempt = 0;
          ui.clearError();
          const id = data && data.id != null ? String(data.id) : null;
          confirm(item, id);
          if (id) deps.onSent(item, id);
        } else if (v === 'retry') {
          let wait = retryAfterMs(retryAfter, deps.now());
          if (wait == null) wait = backoff(attempt++);
          wait = Math.max(wait, MIN_RETRY_MS);
          ui.status(item, 'waiting to retry…');
          ui.error(reason + ' — retrying in ' + Math.ceil(wait / 1000) + ' s');
          await deps.sleep(wait);
        } else {
          finish(item);
          ui.failed(item, reason);
        }
      }
    } finally {
      pumping = false;
    }
  }

  return {
    /** The user sends `text` as `name`. */
    add(text, name) {
      const item = { cid: deps.uuid(), text, name, t: deps.now() };
      enqueue(item, true);
      pump();
      return item;
    },
    /** Messages left from an earlier visit (reload, crash, closed tab). */
    restore(name) {
      for (const s of stored()) {
        if (queue.some((q) => q.cid === s.cid)) continue;
        enqueue({ cid: s.cid, text: s.text, name: typeof s.name === 'string' ? s.name : name, t: Number(s.t) || deps.now() }, false);
      }
      if (queue.length) pump();
    },
    /** Our own message came back on the stream before its POST answered:
     * hide the copy we show (if the POST then returns another id, it comes back). */
    echoed(m) {
      const item = queue.find((q) => !q.done && !q.shadow && q.text === String(m.text));
      if (!item) return;
      item.shadow = String(m.id);
      ui.hide(item);
    },
    /** Another tab got an id for this message. */
    resolved(cid, id) {
      const item = queue.find((q) => q.cid === cid);
      if (item) confirm(item, id == null ? null : String(id));
    },
    pump,
    get size() {
      return queue.length;
    },
    get items() {
      return queue.map((q) => ({ cid: q.cid, text: q.text }));
    },
  };
}
