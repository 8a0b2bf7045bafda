/* ssechat's page script, the entry module: wires the view, the outbox, the
 * transport and the tabs together and keeps what the page knows about the
 * room (messages seen, who is here, who is typing, what is unread).
 * The page works without it: the form posts and the server answers 303. */

import { createView } from './view.js';
import { createOutbox, POST_TIMEOUT_MS } from './outbox.js';
import { createTransport } from './transport.js';
import { createBus, elect, pageProtocol, shouldShare } from './tabs.js';
import { Roster, joinLine, presenceLine } from './presence.js';
import { Typists, throttle, typingLine } from './typing.js';
import { Unread, titleFor } from './reading.js';
import { parseJson, report, sleep, storage, uuid, wakeAll } from './util.js';

const CATCH_UP_LIMIT = 500;
/** `GET /chat/online` at most this often when events leave the list unsure. */
const ROSTER_RELOAD_MS = 5000;
const NAME_MAX = 32;

const view = createView();
if (view && typeof fetch === 'function' && typeof AbortController === 'function') start(view);

function start(view) {
  const { room, maxChars } = view.config;
  const enc = encodeURIComponent;
  const local = storage('localStorage');
  const session = storage('sessionStorage');
  const NAME_KEY = 'ssechat:name';
  const DRAFT_KEY = 'ssechat:draft:' + room;
  const NOTIFY_KEY = 'ssechat:notify';

  /* ---------- what has been seen ---------- */
  const known = new Set(view.config.rendered);
  let lastSeenId = view.config.lastId || view.config.rendered[view.config.rendered.length - 1] || '';
  let holding = null; // live messages held while a catch-up fetch is on its way
  let draining = false; // the catch-up's own messages go through
  const titleUnread = new Unread(); // while the tab is hidden
  const scrollUnread = new Unread(); // while the reader is scrolled up
  const roster = new Roster();
  const typists = new Typists();
  const typingGate = throttle();
  let typingTimer = 0;
  let leader = false;

  /* ---------- the name ---------- */
  // A bookmarked `?name=` that the server accepted wins over the remembered one.
  const asked = new URLSearchParams(location.search).get('name');
  const stored = local.get(NAME_KEY);
  if (asked && asked === view.config.name) local.set(NAME_KEY, asked);
  else if (stored) view.name = stored;
  else if (view.config.name) view.name = view.config.name;
  const rememberName = (n) => { if (n && n.length <= NAME_MAX) local.set(NAME_KEY, n); };

  /* ---------- receiving ---------- */
  function receive(m) {
    if (!m || typeof m !== 'object' || m.id == null) return;
    if (m.room != null && String(m.room) !== room) return;
    if (holding && !draining) return void holding.push(m); // keep id order while catching up
    const id = String(m.id);
    if (known.has(id)) return;
    known.add(id);
    lastSeenId = id;
    if (m.me) outbox.echoed(m);
    if (m.name != null && typists.stop(String(m.name))) showTyping();
    const hidden = view.hidden();
    titleUnread.add(!!m.me, hidden);
    if (titleUnread.count) view.title(titleFor(room, titleUnread.count));
    const first = scrollUnread.add(!!m.me, hidden || !view.nearBottom());
    view.message(m, { marker: first });
    if (scrollUnread.count && !view.nearBottom()) view.jump(scrollUnread.count);
    else if (!hidden) back();
    if (hidden && !m.me && notifyOn()) view.notify(String(m.name) + ' in #' + room, String(m.text), room + ':' + id);
  }

  function handle(type, raw, relay) {
    const d = typeof raw === 'string' ? parseJson(raw) : raw;
    if (!d || typeof d !== 'object') return;
    if (relay && bus) bus.post({ t: 'ev', type, d });
    switch (type) {
      case 'hello':
        view.online(d.online);
        if (!view.name && typeof d.name === 'string') view.name = d.name;
        roster.apply('hello', d);
        loadRoster(true);
        if (!lastSeenId && relay) catchUp(true);
        break;
      case 'message':
        receive(d);
        break;
      case 'join':
      case 'leave':
      case 'presence':
        view.online(d.online);
        view.notice(type === 'presence' ? presenceLine(d) : joinLine(type, d));
        roster.apply(type, d);
        showRoster();
        if (type === 'leave' && d.name != null && typists.stop(String(d.name))) showTyping();
        break;
      case 'typing':
        if (typeof d.name === 'string' && d.name !== view.name) {
          typists.saw(d.name, Date.now());
          showTyping();
        }
        break;
      default:
        break;
    }
  }

  /** Fetches what we may have missed: a follower right after load, or a
   * stream opened with no id to resume from (nothing is replayed then). */
  async function catchUp(relay) {
    if (holding) return;
    holding = [];
    try {
      const r = await fetch(messagesUrl('&limit=' + CATCH_UP_LIMIT), { credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } });
      const j = r.ok ? await r.json() : null;
      draining = true;
      if (j && Array.isArray(j.messages)) j.messages.forEach((m) => handle('message', m, relay));
    } catch (e) {
      report('catching up', e); // the stream carries on; what it replays fills the gap
    } finally {
      draining = false;
      const h = holding;
      holding = null;
      h.forEach(receive);
    }
  }

  /* ---------- who is here, who is typing ---------- */
  let rosterAt = -Infinity;
  let rosterTimer = 0;
  function loadRoster(now) {
    clearTimeout(rosterTimer);
    const wait = now ? 0 : Math.max(0, rosterAt + ROSTER_RELOAD_MS - Date.now());
    rosterTimer = setTimeout(async () => {
      rosterAt = Date.now();
      roster.loadStarted();
      let snap = null;
      try {
        const r = await fetch('/chat/online?room=' + enc(room), { credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } });
        if (r.ok) snap = await r.json();
      } catch (e) {
        report('loading who is here', e); // the events still keep the list
      }
      roster.loaded(snap);
      showRoster(true);
    }, wait);
  }
  function showRoster(justLoaded) {
    view.who(roster.view(), view.name);
    if (!justLoaded && roster.needsReload()) loadRoster(false);
  }
  function showTyping() {
    const now = Date.now();
    view.typing(typingLine(typists.names(now)));
    clearTimeout(typingTimer);
    const next = typists.nextExpiry(now);
    if (next != null) typingTimer = setTimeout(showTyping, next + 50);
  }
  function sendTyping() {
    if (!view.text || !typingGate.ready(Date.now())) return;
    const body = { room };
    if (view.name) body.name = view.name;
    fetch('/chat/typing', {
      method: 'POST', credentials: 'same-origin', cache: 'no-store',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' }, body: JSON.stringify(body),
    }).catch((e) => report('typing notice', e)); // a lost typing notice costs nothing
  }

  /* ---------- unread, notifications ---------- */
  function back() {
    if (view.hidden()) return;
    if (titleUnread.seen()) view.title(titleFor(room, 0));
    if (view.nearBottom() && scrollUnread.seen()) view.jump(0);
  }
  const canNotify = () => typeof Notification === 'function' && window.isSecureContext;
  const notifyOn = () => canNotify() && Notification.permission === 'granted' && local.get(NOTIFY_KEY) === '1';
  function showNotifyButton() {
    if (!canNotify() || Notification.permission === 'denied') return view.notifyButton(null);
    view.notifyButton(notifyOn() ? 'on' : 'off');
  }
  async function toggleNotify() {
    if (notifyOn()) local.set(NOTIFY_KEY, null);
    else {
      let p = Notification.permission;
      if (p === 'default') p = await Notification.requestPermission();
      if (p === 'granted') local.set(NOTIFY_KEY, '1');
    }
    showNotifyButton();
  }

  /* ---------- sending ---------- */
  async function post(item) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), POST_TIMEOUT_MS);
    const body = { room, text: item.text, client_msg_id: item.cid };
    if (item.name) body.name = item.name;
    try {
      const res = await fetch('/chat/messages', {
        method: 'POST', credentials: 'same-origin', cache: 'no-store', signal: ctrl.signal,
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' }, body: JSON.stringify(body),
      });
      const data = parseJson(await res.text());
      return { status: res.status, data, retryAfter: res.headers.get('Retry-After') };
    } finally {
      clearTimeout(timer);
    }
  }
  const outbox = createOutbox({
    key: 'ssechat:queue:' + room, store: local, post, sleep,
    now: Date.now, uuid, offline: () => navigator.onLine === false, isKnown: (id) => known.has(id),
    onSent: (item, id) => bus && bus.post({ t: 'sent', cid: item.cid, id }),
    ui: {
      queued: view.queued, status: view.itemStatus, hide: view.hide, sent: view.sent,
      failed: (item, reason) => view.failed(item, reason, saveDraft), error: view.error, clearError: view.clearError,
    },
  });
  function saveDraft() { session.set(DRAFT_KEY, view.text); }

  view.listen({
    submit(text) {
      if (!text) return view.focusText();
      const len = Array.from(text).length;
      if (maxChars && len > maxChars) {
        view.error('Message too long: ' + len + ' characters (max ' + maxChars + ').');
        return view.focusText();
      }
      rememberName(view.name);
      view.sentFromBox();
      saveDraft();
      typingGate.reset();
      outbox.add(text, view.name);
    },
    input() { saveDraft(); sendTyping(); },
    nameChange: rememberName,
    back,
    visible: back,
    notify: () => { toggleNotify().catch((e) => report('notification permission', e)); },
  });
  if (!view.text) view.setText(session.get(DRAFT_KEY) || '');
  view.grow();
  view.toBottom();
  view.title(titleFor(room, 0));
  showNotifyButton();
  outbox.restore(view.name);

  /* ---------- the connection, shared between tabs over HTTP/1.1 ---------- */
  function messagesUrl(extra) {
    return '/chat/messages?room=' + enc(room) + (lastSeenId ? '&since=' + enc(lastSeenId) : '') + extra;
  }
  const transport = createTransport({
    eventsUrl: () => '/chat/events?room=' + enc(room) + (lastSeenId ? '&since=' + enc(lastSeenId) : '') + (view.name ? '&name=' + enc(view.name) : ''),
    pollUrl: (s) => messagesUrl('&wait=' + s),
    event: (type, data) => handle(type, data, true),
    polled(msgs, last) {
      msgs.forEach((m) => handle('message', m, true));
      if (last) lastSeenId = last;
    },
    badSince() { lastSeenId = ''; },
    status(s) {
      view.status(s);
      if (leader && bus) bus.post({ t: 'state', s });
    },
    serverBack() {
      if (outbox.size) {
        wakeAll();
        outbox.pump();
      }
    },
    offline: () => navigator.onLine === false,
  });

  const bus = shouldShare(pageProtocol(), typeof BroadcastChannel === 'function') ? createBus(room) : null;
  let busBuffer = []; // a follower holds relayed events until it has caught up
  function onBus(d) {
    if (d.t === 'ev' && !leader) handle(d.type, d.d, false);
    else if (d.t === 'state' && !leader) view.status(d.s);
    else if (d.t === 'sync?' && leader) bus.post({ t: 'sync', s: transport.status });
    else if (d.t === 'sync' && !leader) view.status(d.s);
    else if (d.t === 'sent' && typeof d.cid === 'string') outbox.resolved(d.cid, d.id);
  }
  let followed = false;
  function lead() {
    if (leader) return;
    leader = true;
    flushBus();
    transport.start();
  }
  function follow() {
    if (leader) {
      leader = false;
      transport.stop();
    }
    if (followed) return;
    followed = true;
    bus.post({ t: 'sync?' });
    loadRoster(true);
    catchUp(false).then(flushBus);
  }
  function flushBus() {
    const b = busBuffer;
    busBuffer = null;
    if (b) b.forEach(onBus);
  }
  if (bus) {
    bus.listen((d) => (busBuffer && d.t === 'ev' ? busBuffer.push(d) : onBus(d)));
    elect(room, { lead, follow });
  } else {
    lead();
  }

  window.addEventListener('offline', () => view.status());
  window.addEventListener('online', () => {
    view.status();
    wakeAll();
    if (outbox.size) outbox.pump();
    if (leader) transport.online();
  });
  window.addEventListener('pagehide', (e) => { if (e.persisted) transport.freeze(); });
  window.addEventListener('pageshow', (e) => { if (e.persisted && leader) transport.start(); });

  /** The test hook: what the browser tests read. Not an API. */
  window.ssechat = Object.freeze({
    get leader() { return leader; },
    get shared() { return !!bus; },
    get mode() { return leader ? transport.mode : null; },
    get lastSeenId() { return lastSeenId; },
    get queue() { return outbox.items; },
    get failures() { return transport.failures; },
    get unread() { return titleUnread.count; },
  });
}
