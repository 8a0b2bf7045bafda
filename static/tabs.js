/* Many tabs, one stream: over HTTP/1.1 a browser opens at most six
 * connections per host, so the tabs of a room elect one leader that holds
 * the stream and relays what it receives on a BroadcastChannel. Over
 * HTTP/2 or HTTP/3 streams share one connection and each tab receives for
 * itself. Election: Web Locks where available, else a heartbeat in
 * localStorage. */

import { parseJson, report, storage, uuid } from './util.js';

/** A heartbeat older than this means its tab is gone. */
export const LEADER_STALE_MS = 6000;
const HEARTBEAT_MS = 2000;
/** Time for a rival tab's heartbeat to land before we trust ours. */
const SETTLE_MS = 150;
const RETRY_SPREAD_MS = 300;

/** Tabs share a stream only over HTTP/1.x (where connections are scarce). */
export function shouldShare(protocol, hasChannel) {
  if (!hasChannel) return false;
  return !/^(h2|h3|h2c)/i.test(protocol || '');
}

/** The protocol this page was loaded over ('' when the browser won't say). */
export function pageProtocol() {
  try {
    const nav = performance.getEntriesByType('navigation')[0];
    return (nav && nav.nextHopProtocol) || '';
  } catch (e) {
    report('navigation timing', e);
    return '';
  }
}

/** The channel between tabs of one room, or null. */
export function createBus(room) {
  let bc = null;
  try {
    bc = new BroadcastChannel('ssechat:' + room);
  } catch (e) {
    report('BroadcastChannel', e);
    return null;
  }
  return {
    post(msg) {
      try {
        bc.postMessage(msg);
      } catch (e) {
        report('relay to other tabs', e); // the channel closed with the page
      }
    },
    listen(fn) {
      bc.onmessage = (e) => {
        if (e.data && typeof e.data === 'object') fn(e.data);
      };
    },
  };
}

/** Calls `lead()` when this tab should hold the stream, `follow()` when
 * another does (`follow` may be called again after `lead`: resign). */
export function elect(room, { lead, follow }) {
  const locks = navigator.locks;
  if (locks && typeof locks.request === 'function') return byLock('ssechat-leader-' + room, lead, follow);
  const ls = storage('localStorage');
  if (ls.available) return byHeartbeat(ls, 'ssechat:leader:' + room, lead, follow);
  lead(); // no way to share: this tab receives by itself
}

function byLock(name, lead, follow) {
  const hold = () => new Promise(() => {}); // held until the tab goes away
  const take = () => {
    lead();
    return hold();
  };
  const failed = (e) => {
    report('Web Locks', e);
    lead();
  };
  navigator.locks.request(name, { ifAvailable: true }, (lock) => {
    if (lock) return take();
    follow();
    navigator.locks.request(name, take).catch(failed);
    return null;
  }).catch(failed);
}

function byHeartbeat(ls, key, lead, follow) {
  const me = uuid();
  const read = () => parseJson(ls.get(key));
  const tick = () => {
    const cur = read();
    const now = Date.now();
    if (!cur || cur.id === me || now - Number(cur.t) > LEADER_STALE_MS) {
      ls.set(key, JSON.stringify({ id: me, t: now }));
      setTimeout(() => {
        const c = read();
        if (c && c.id === me) lead();
        else follow();
      }, SETTLE_MS);
    } else {
      follow();
    }
  };
  tick();
  setInterval(tick, HEARTBEAT_MS);
  window.addEventListener('storage', (e) => {
    if (e.key === key && !e.newValue) setTimeout(tick, Math.random() * RETRY_SPREAD_MS);
  });
  window.addEventListener('pagehide', () => {
    const c = read();
    if (c && c.id === me) ls.set(key, null);
  });
}
