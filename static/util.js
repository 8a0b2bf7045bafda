/* Small helpers every module shares: the one back-off, sleeps that a
 * returning network can cut short, storage that never throws, ids, and the
 * one place where errors we cannot act on are reported. No DOM here. */

/** First retry delay, and the cap, of every retry loop on the page. */
export const BACKOFF_FIRST_MS = 1000;
export const BACKOFF_MAX_MS = 30000;
/** ±20 %: tabs and people that failed together do not retry together. */
const JITTER = 0.2;

/** Delay before retry number `attempt` (0-based): doubling, capped, jittered. */
export function backoff(attempt, { first = BACKOFF_FIRST_MS, max = BACKOFF_MAX_MS, random = Math.random } = {}) {
  const base = Math.min(max, first * 2 ** Math.min(Math.max(0, attempt), 30));
  return Math.round(Math.min(max, base * (1 - JITTER + random() * 2 * JITTER)));
}

const reported = new Set();
/** Logs an error we can do nothing about, once per kind, instead of dropping it. */
export function report(where, err) {
  const key = where + ': ' + (err && err.name);
  if (reported.has(key)) return;
  reported.add(key);
  console.warn('ssechat: ' + where, err);
}

/** JSON.parse that answers null for anything that is not JSON. */
export function parseJson(s) {
  if (typeof s !== 'string') return null;
  try {
    return JSON.parse(s);
  } catch (e) {
    return null; // not JSON: the caller treats it as no data
  }
}

/** Milliseconds a `Retry-After` value asks for (seconds or an HTTP date), or null. */
export function retryAfterMs(value, now = Date.now()) {
  if (!value) return null;
  const s = Number(value);
  if (Number.isFinite(s)) return Math.max(0, s * 1000);
  const d = Date.parse(value);
  return Number.isFinite(d) ? Math.max(0, d - now) : null;
}

/* Sleeps that wake early when the network comes back. */
const sleepers = new Set();
export function sleep(ms) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(t);
      sleepers.delete(done);
      resolve();
    };
    const t = setTimeout(done, ms);
    sleepers.add(done);
  });
}
export function wakeAll() {
  Array.from(sleepers).forEach((f) => f());
}

/** localStorage / sessionStorage that may be missing or full: never throws. */
export function storage(kind) {
  let s = null;
  try {
    s = globalThis[kind] || null;
  } catch (e) {
    report('no ' + kind, e); // blocked by privacy settings: keep going in memory
  }
  return {
    get available() {
      return !!s;
    },
    get(k) {
      try {
        return s ? s.getItem(k) : null;
      } catch (e) {
        report(kind + ' read', e);
        return null;
      }
    },
    set(k, v) {
      try {
        if (!s) return;
        if (v == null || v === '') s.removeItem(k);
        else s.setItem(k, v);
      } catch (e) {
        report(kind + ' write', e); // quota: the value lives in memory only
      }
    },
  };
}

/** A random id (client_msg_id, tab id). */
export function uuid() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function' && globalThis.isSecureContext !== false) return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && c.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = (Math.random() * 256) | 0;
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}
