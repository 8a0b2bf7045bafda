/* ssechat browser client: live chat over SSE (long-poll fallback), sending with fetch.
 * Plain ES2018, no dependencies. The page works without this file (plain form POST). */
(function () {
  'use strict';

  const root = document.getElementById('chat');
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const list = $('messages');
  const form = $('send-form');
  const textEl = $('text');
  const nameEl = $('name');
  const sendBtn = $('send');
  const statusEl = $('status');
  const onlineEl = $('online');
  const errorEl = $('error');
  const jumpBtn = $('jump');
  const hintEl = $('hint');
  if (!list || !form || !textEl || !nameEl || !window.fetch || !window.AbortController) return;

  const room = root.dataset.room || 'lobby';
  const serverName = root.dataset.name || '';
  const maxChars = parseInt(root.dataset.maxChars, 10) || 2000;
  let lastSeenId = root.dataset.lastId || '';

  const HELLO_TIMEOUT = 4000;
  const PROBE_EVERY = 60000;
  const POLL_WAIT = 25;
  const STICK_PX = 40;
  const MAX_RENDERED = 1000;
  const NAME_KEY = 'ssechat:name';
  const QUEUE_KEY = 'ssechat:queue:' + room;
  const DRAFT_KEY = 'ssechat:draft:' + room;
  const LEADER_KEY = 'ssechat:leader:' + room;
  const LOCK_NAME = 'ssechat-leader-' + room;
  const STATE_TEXT = {
    connecting: 'connecting…',
    connected: 'connected',
    reconnecting: 'reconnecting…',
    offline: 'offline',
    fallback: 'live via long-poll',
  };

  /* ---------- small helpers ---------- */

  const enc = encodeURIComponent;
  const pad = (n) => String(n).padStart(2, '0');
  const jitter = (ms) => Math.round(ms * (0.8 + Math.random() * 0.4));
  function parse(s) { try { return JSON.parse(s); } catch (e) { return null; } }
  function store(kind) { try { return window[kind]; } catch (e) { return null; } }
  function sGet(kind, k) { try { const s = store(kind); return s ? s.getItem(k) : null; } catch (e) { return null; } }
  function sSet(kind, k, v) {
    try {
      const s = store(kind);
      if (!s) return;
      if (v == null || v === '') s.removeItem(k); else s.setItem(k, v);
    } catch (e) { /* quota / disabled storage: keep going in memory */ }
  }
  const lsGet = (k) => sGet('localStorage', k);
  const lsSet = (k, v) => sSet('localStorage', k, v);

  function uuid() {
    try { if (window.crypto && crypto.randomUUID) return crypto.randomUUID(); } catch (e) { /* insecure context */ }
    const b = new Uint8Array(16);
    try { crypto.getRandomValues(b); } catch (e) { for (let i = 0; i < 16; i++) b[i] = (Math.random() * 256) | 0; }
    return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }
  const tabId = uuid();

  // Sleeps that the 'online' event can cut short.
  const sleepers = new Set();
  function sleep(ms) {
    return new Promise((resolve) => {
      const done = () => { clearTimeout(t); sleepers.delete(done); resolve(); };
      const t = setTimeout(done, ms);
      sleepers.add(done);
    });
  }
  function wakeAll() { Array.from(sleepers).forEach((f) => f()); }

  function node(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text; // user text only ever goes through textContent
    return e;
  }

  function fillTime(t, ts) {
    const d = new Date(Number(ts));
    if (!isFinite(d.getTime())) return;
    t.textContent = pad(d.getHours()) + ':' + pad(d.getMinutes());
    t.dateTime = d.toISOString();
    let full;
    try { full = d.toLocaleString(undefined, { dateStyle: 'full', timeStyle: 'medium' }); } catch (e) { full = d.toString(); }
    t.title = full;
  }

  // <li class="msg"><time class="msg-time">12:03</time> <span class="msg-name">me</span>: <span class="msg-text">hi</span></li>
  function buildMsg(li, ts, who, text) {
    const t = node('time', 'msg-time');
    if (ts != null) fillTime(t, ts);
    li.append(t, ' ', node('span', 'msg-name', who), ': ', node('span', 'msg-text', text));
    return li;
  }
  function renderMessage(m) {
    const li = node('li', m.me ? 'msg me' : 'msg');
    li.dataset.id = String(m.id);
    if (m.ts != null) li.dataset.ts = String(m.ts);
    return buildMsg(li, m.ts, m.me ? 'me' : String(m.name == null ? '' : m.name), String(m.text == null ? '' : m.text));
  }
  function renderPending(item) {
    const li = node('li', 'msg me pending');
    li.dataset.status = 'queued';
    return buildMsg(li, item.t, 'me', item.text);
  }

  /* ---------- scrolling ---------- */

  function nearBottom() { return list.scrollHeight - list.scrollTop - list.clientHeight <= STICK_PX; }
  function toBottom() { list.scrollTop = list.scrollHeight; if (jumpBtn) jumpBtn.hidden = true; }
  function afterInsert(stick, isMessage) {
    if (stick) toBottom();
    else if (isMessage && jumpBtn) jumpBtn.hidden = false;
  }
  list.addEventListener('scroll', () => { if (jumpBtn && !jumpBtn.hidden && nearBottom()) jumpBtn.hidden = true; }, { passive: true });
  if (jumpBtn) {
    jumpBtn.addEventListener('click', () => {
      toBottom();
      try { list.focus({ preventScroll: true }); } catch (e) { list.focus(); }
    });
  }

  function removeEmpty() { const e = list.querySelector('.log-empty'); if (e) e.remove(); }
  // Live items go above the not-yet-echoed own messages, which always stay at the bottom.
  function insertLive(el) { removeEmpty(); list.insertBefore(el, list.querySelector('.msg.pending, .msg.sent')); }
  function trim() {
    let extra = list.children.length - MAX_RENDERED;
    while (extra-- > 0) {
      const f = list.firstElementChild;
      if (!f || f.matches('.pending, .sent, .failed')) break;
      f.remove();
    }
  }

  /* ---------- rendering incoming events ---------- */

  const known = new Set(); // ids of messages received from the server (page, stream, poll, peers)
  const awaiting = new Map(); // id -> own element confirmed by POST, not yet seen on the stream
  list.querySelectorAll('.msg[data-id]').forEach((li) => {
    known.add(li.dataset.id);
    const t = li.querySelector('.msg-time');
    if (t && li.dataset.ts) fillTime(t, li.dataset.ts);
  });
  if (!lastSeenId) {
    const all = list.querySelectorAll('.msg[data-id]');
    if (all.length) lastSeenId = all[all.length - 1].dataset.id;
  }

  let online = null;
  function setOnline(n) {
    const v = Number(n);
    if (n == null || n === '' || !isFinite(v)) return;
    online = v;
    if (onlineEl) onlineEl.textContent = String(v);
  }

  function addMessage(m) {
    if (!m || typeof m !== 'object' || m.id == null) return;
    if (holding && !draining) { holding.push(m); return; } // keep id order while catching up
    if (m.room != null && String(m.room) !== room) return;
    const id = String(m.id);
    if (known.has(id)) return;
    known.add(id);
    lastSeenId = id;
    const stick = nearBottom();
    const mine = awaiting.get(id);
    if (mine) { awaiting.delete(id); mine.remove(); } else if (m.me) shadowPending(m, id);
    insertLive(renderMessage(m));
    if (stick) trim();
    afterInsert(stick, !m.me);
  }

  function addNotice(text) {
    const stick = nearBottom();
    insertLive(node('li', 'notice', text));
    afterInsert(stick, false);
  }

  function dispatch(type, d, relay) {
    if (!d || typeof d !== 'object') return;
    if (relay) bcPost({ t: 'ev', type, d });
    if (type === 'hello') {
      setOnline(d.online);
      if (!nameEl.value.trim() && typeof d.name === 'string') nameEl.value = d.name;
    } else if (type === 'message') {
      addMessage(d);
    } else if (type === 'join' || type === 'leave') {
      setOnline(d.online);
      const n = d.online == null ? '' : ' (' + d.online + ' online)';
      addNotice('>> ' + String(d.name == null ? 'someone' : d.name) + (type === 'join' ? ' joined' : ' left') + n);
    }
  }

  /* ---------- connection state ---------- */

  let state = 'connecting';
  function showState() {
    if (!statusEl) return;
    const s = navigator.onLine === false ? 'offline' : state;
    statusEl.hidden = false;
    if (statusEl.dataset.state !== s) {
      statusEl.dataset.state = s;
      statusEl.textContent = STATE_TEXT[s];
    }
  }
  function setState(s) {
    if (!STATE_TEXT[s]) return;
    const changed = state !== s;
    state = s;
    showState();
    if (changed && isLeader) bcPost({ t: 'state', s });
  }

  /* ---------- the outgoing queue (persisted per room) ---------- */

  const queue = []; // {cid, text, name, t, el, shadow?, done?}
  function loadStored() {
    const a = parse(lsGet(QUEUE_KEY) || '[]');
    return Array.isArray(a) ? a.filter((x) => x && typeof x.cid === 'string' && typeof x.text === 'string') : [];
  }
  function storeAdd(item) {
    const a = loadStored();
    if (!a.some((x) => x.cid === item.cid)) a.push({ cid: item.cid, text: item.text, name: item.name, t: item.t });
    lsSet(QUEUE_KEY, JSON.stringify(a));
  }
  function storeRemove(cid) {
    const a = loadStored().filter((x) => x.cid !== cid);
    lsSet(QUEUE_KEY, a.length ? JSON.stringify(a) : null);
  }
  function finish(item) {
    item.done = true;
    const i = queue.indexOf(item);
    if (i >= 0) queue.splice(i, 1);
    storeRemove(item.cid);
  }

  // Our own message came back on the stream before the POST answered: hide the pending copy
  // (tentatively; if the POST then returns another id, the copy comes back).
  function shadowPending(m, id) {
    const item = queue.find((q) => !q.done && !q.shadow && q.text === String(m.text));
    if (!item) return;
    item.shadow = id;
    item.el.remove();
  }

  function reattach(el) {
    removeEmpty();
    list.insertBefore(el, list.querySelector('.msg.pending'));
  }

  function confirmItem(item, id) {
    if (item.done) return;
    finish(item);
    const el = item.el;
    if (id && (known.has(id) || item.shadow === id)) { el.remove(); return; }
    el.classList.remove('pending');
    el.classList.add('sent');
    delete el.dataset.status;
    if (id) { el.dataset.id = id; awaiting.set(id, el); }
    if (!el.isConnected) { const stick = nearBottom(); reattach(el); afterInsert(stick, true); }
  }

  let restoredFrom = null; // failed element whose text was put back in the field
  function rejectItem(item, msg) {
    if (item.done) return;
    finish(item);
    const li = item.el;
    const stick = nearBottom();
    li.classList.remove('pending');
    li.classList.add('failed');
    delete li.dataset.status;
    const edit = node('button', 'msg-action', 'Edit');
    const drop = node('button', 'msg-action', 'Dismiss');
    edit.type = drop.type = 'button';
    edit.addEventListener('click', () => {
      textEl.value = item.text;
      textChanged();
      li.remove();
      if (restoredFrom === li) restoredFrom = null;
      textEl.focus();
    });
    drop.addEventListener('click', () => {
      li.remove();
      if (restoredFrom === li) restoredFrom = null;
      textEl.focus();
    });
    const actions = node('span', 'msg-actions');
    actions.append(edit, drop);
    li.append(node('span', 'msg-error', 'Not sent: ' + msg), actions);
    if (!li.isConnected) list.appendChild(li);
    afterInsert(stick, false);
    if (!textEl.value) { textEl.value = item.text; textChanged(); restoredFrom = li; }
    showError(msg);
  }

  function resolveByCid(cid, id) {
    const item = queue.find((q) => q.cid === cid);
    if (item) confirmItem(item, id == null ? null : String(id));
  }

  function showError(msg) { if (errorEl) { errorEl.textContent = msg; errorEl.hidden = false; } }
  function clearError() { if (errorEl && !errorEl.hidden) { errorEl.hidden = true; errorEl.textContent = ''; } }

  function retryAfterMs(res) {
    const h = res.headers.get('Retry-After');
    if (!h) return null;
    const s = Number(h);
    if (isFinite(s)) return Math.max(0, s * 1000);
    const d = Date.parse(h);
    return isFinite(d) ? Math.max(0, d - Date.now()) : null;
  }

  function postItem(item) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), 20000);
    const body = { room, text: item.text, client_msg_id: item.cid };
    if (item.name) body.name = item.name;
    return fetch('/chat/messages', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
      signal: ctrl.signal,
    }).then(async (res) => {
      let data = null;
      try { data = await res.json(); } catch (e) { data = null; }
      return { res, data };
    }).finally(() => clearTimeout(timer));
  }

  // Send strictly in order, one at a time, retrying with the same client_msg_id.
  let pumping = false;
  async function pump() {
    if (pumping) return;
    pumping = true;
    let delay = 1000;
    try {
      while (queue.length) {
        const item = queue[0];
        if (item.el) item.el.dataset.status = 'sending…';
        let out;
        try {
          out = await postItem(item);
        } catch (e) {
          if (item.done) continue;
          if (item.el) item.el.dataset.status = 'not sent yet, will retry…';
          showError(navigator.onLine === false
            ? 'You are offline. Your messages will be sent when the connection is back.'
            : 'Cannot reach the server. Your messages will be sent when it answers again.');
          await sleep(jitter(delay));
          delay = Math.min(delay * 2, 30000);
          continue;
        }
        if (item.done) continue; // resolved meanwhile (another tab sent it)
        const { res, data } = out;
        const msg = (data && typeof data.error === 'string' && data.error) || ('HTTP ' + res.status + (res.statusText ? ' ' + res.statusText : ''));
        if (res.ok) {
          delay = 1000;
          clearError();
          const id = data && data.id != null ? String(data.id) : null;
          confirmItem(item, id);
          if (id) bcPost({ t: 'sent', cid: item.cid, id });
        } else if (res.status === 429 || res.status === 408 || res.status >= 500) {
          let wait = retryAfterMs(res);
          if (wait == null) { wait = jitter(delay); delay = Math.min(delay * 2, 30000); }
          wait = Math.max(wait, 250);
          if (item.el) item.el.dataset.status = 'waiting to retry…';
          showError(msg + ' — retrying in ' + Math.ceil(wait / 1000) + ' s');
          await sleep(wait);
        } else {
          rejectItem(item, msg); // 400, 413, 415, …: the server will never take it as is
        }
      }
    } finally {
      pumping = false;
    }
  }

  /* ---------- the form ---------- */

  function currentName() { return nameEl.value.trim(); }
  function saveDraft() { sSet('sessionStorage', DRAFT_KEY, textEl.value); }
  function autoGrow() {
    textEl.style.height = 'auto';
    textEl.style.height = Math.min(textEl.scrollHeight + 2, 192) + 'px';
  }
  function textChanged() { saveDraft(); autoGrow(); if (!textEl.value) restoredFrom = null; }

  const storedName = lsGet(NAME_KEY);
  if (storedName) nameEl.value = storedName;
  else if (!nameEl.value && serverName) nameEl.value = serverName;
  nameEl.addEventListener('change', () => {
    const v = currentName();
    if (v && v.length <= 32) lsSet(NAME_KEY, v);
  });

  if (!textEl.value) textEl.value = sGet('sessionStorage', DRAFT_KEY) || '';
  textEl.addEventListener('input', textChanged);
  textEl.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' || e.shiftKey || e.altKey || e.isComposing || e.keyCode === 229) return;
    e.preventDefault();
    if (!textEl.value) return;
    if (typeof form.requestSubmit === 'function') form.requestSubmit(sendBtn || undefined);
    else if (sendBtn) sendBtn.click();
  });
  if (hintEl) hintEl.hidden = false;

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = textEl.value;
    if (!text) { textEl.focus(); return; }
    const len = Array.from(text).length;
    if (len > maxChars) {
      showError('Message too long: ' + len + ' characters (max ' + maxChars + ').');
      textEl.focus();
      return;
    }
    const name = currentName();
    if (name) lsSet(NAME_KEY, name);
    const item = { cid: uuid(), text, name, t: Date.now() };
    storeAdd(item); // persisted before anything else: a reload cannot lose it
    item.el = renderPending(item);
    removeEmpty();
    list.appendChild(item.el);
    queue.push(item);
    if (restoredFrom) { restoredFrom.remove(); restoredFrom = null; }
    textEl.value = '';
    textChanged();
    textEl.focus();
    toBottom();
    pump();
  });

  // Messages left over from a previous visit (reload, crash, closed tab).
  for (const s of loadStored()) {
    if (queue.some((q) => q.cid === s.cid)) continue;
    const item = { cid: s.cid, text: s.text, name: typeof s.name === 'string' ? s.name : currentName(), t: Number(s.t) || Date.now() };
    item.el = renderPending(item);
    removeEmpty();
    list.appendChild(item.el);
    queue.push(item);
  }
  autoGrow();
  toBottom();
  if (queue.length) pump();

  /* ---------- receiving: SSE, long-poll fallback ---------- */

  let isLeader = false;
  let mode = null; // 'sse' | 'poll' | null
  let es = null;
  let probe = null;
  let sseErrors = 0;
  let failures = 0; // failed connection attempts since the last success (shown to tests)
  let reopenDelay = 1000;
  let reopenTimer = 0;
  let probeTimer = 0;
  let pollGen = 0;
  let pollCtrl = null;

  function eventsUrl() {
    let u = '/chat/events?room=' + enc(room);
    if (lastSeenId) u += '&since=' + enc(lastSeenId);
    const n = currentName();
    if (n) u += '&name=' + enc(n);
    return u;
  }
  function messagesUrl(extra) {
    return '/chat/messages?room=' + enc(room) + (lastSeenId ? '&since=' + enc(lastSeenId) : '') + extra;
  }

  function stopPoll() {
    pollGen++;
    if (pollCtrl) { try { pollCtrl.abort(); } catch (e) { /* ignore */ } pollCtrl = null; }
  }
  function stopStreams() {
    mode = null;
    if (es) { es.close(); es = null; }
    if (probe) { probe.close(); probe = null; }
    clearTimeout(reopenTimer);
    clearInterval(probeTimer);
    probeTimer = 0;
    stopPoll();
  }

  function connect() {
    stopStreams();
    mode = 'sse';
    sseErrors = 0;
    setState('connecting');
    openSource(false);
  }

  function openSource(isProbe) {
    if (typeof EventSource !== 'function') { if (!isProbe) startFallback(); return; }
    let src;
    try { src = new EventSource(eventsUrl()); } catch (e) { if (!isProbe) startFallback(); return; }
    if (isProbe) probe = src; else es = src;
    let timer = 0;
    let helloSeen = false; // on the current connection
    const live = () => src === es || src === probe;
    const giveUp = () => {
      clearTimeout(timer);
      src.close();
      if (src === probe) { probe = null; return; }
      if (src === es) { es = null; startFallback(); }
    };
    const check = () => {
      if (!live() || helloSeen) return;
      if (navigator.onLine === false) { timer = setTimeout(check, HELLO_TIMEOUT); return; }
      giveUp(); // no hello in time: SSE is being buffered or blocked somewhere
    };
    timer = setTimeout(check, HELLO_TIMEOUT);
    // Every (re)connection must bring a hello soon after it opens.
    src.addEventListener('open', () => {
      if (!live() || helloSeen) return;
      clearTimeout(timer);
      timer = setTimeout(check, HELLO_TIMEOUT);
    });

    src.addEventListener('hello', (e) => {
      if (!live()) return;
      helloSeen = true;
      clearTimeout(timer);
      sseErrors = 0;
      reopenDelay = 1000;
      if (src === probe) { // SSE works again: leave long-poll
        probe = null;
        stopPoll();
        clearInterval(probeTimer);
        probeTimer = 0;
        if (es) es.close();
        es = src;
        mode = 'sse';
      }
      dispatch('hello', parse(e.data), true);
      setState('connected');
      serverBack();
      if (!lastSeenId) catchUp(true);
    });
    ['message', 'join', 'leave'].forEach((type) => {
      src.addEventListener(type, (e) => { if (live()) dispatch(type, parse(e.data), true); });
    });
    src.onerror = () => {
      if (!live()) return;
      if (src === probe) { giveUp(); return; }
      helloSeen = false;
      failures++;
      setState('reconnecting');
      clearTimeout(timer);
      if (src.readyState === 2 /* CLOSED: an HTTP error or a wrong content type; no retry by itself */) {
        src.close();
        es = null;
        clearTimeout(reopenTimer);
        reopenTimer = setTimeout(() => { if (isLeader && mode === 'sse' && !es) openSource(false); }, jitter(reopenDelay));
        reopenDelay = Math.min(reopenDelay * 2, 30000);
      } else {
        // The browser retries by itself; if that attempt hangs, stop waiting for it eventually.
        timer = setTimeout(check, 30000);
      }
      blameSse();
    };
  }

  // A failed stream counts against SSE only if the server answers plain requests meanwhile:
  // while it is down (a restart) long-poll would do no better, and the stream resumes by
  // itself once it is back. Repeated failures with the server up mean something in between
  // (a proxy) breaks SSE: switch to long-poll.
  let blaming = false;
  function blameSse() {
    if (blaming || navigator.onLine === false) return;
    blaming = true;
    reachable().then((up) => {
      blaming = false;
      if (up && isLeader && mode === 'sse' && ++sseErrors >= 3) startFallback();
    });
  }
  function reachable() {
    const ctrl = new AbortController();
    const t = setTimeout(() => ctrl.abort(), 5000);
    return fetch('/healthz', { cache: 'no-store', credentials: 'same-origin', signal: ctrl.signal })
      .then((r) => r.ok, () => false)
      .finally(() => clearTimeout(t));
  }

  // The server answers again: whatever waits to be sent goes now, not after its backoff.
  function serverBack() {
    failures = 0;
    if (queue.length) { wakeAll(); pump(); }
  }

  function startFallback() {
    if (!isLeader) return;
    if (es) { es.close(); es = null; }
    clearTimeout(reopenTimer);
    if (mode === 'poll') return;
    mode = 'poll';
    setState('fallback');
    stopPoll();
    pollLoop(pollGen);
    clearInterval(probeTimer);
    probeTimer = setInterval(() => { if (isLeader && mode === 'poll' && !probe) openSource(true); }, PROBE_EVERY);
  }

  async function pollLoop(gen) {
    let delay = 1000;
    while (gen === pollGen && isLeader) {
      const ctrl = new AbortController();
      pollCtrl = ctrl;
      const killer = setTimeout(() => ctrl.abort(), (POLL_WAIT + 15) * 1000);
      // A long-poll that has not failed after a moment is being held by the server: we are live.
      const okSoon = setTimeout(() => { if (gen === pollGen) setState('fallback'); }, 1500);
      const started = Date.now();
      let got = 0;
      let failed = false;
      try {
        const r = await fetch(messagesUrl('&wait=' + POLL_WAIT), {
          credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' },
          signal: ctrl.signal,
        });
        if (r.status === 400 && lastSeenId) lastSeenId = ''; // unknown/malformed id: restart from latest
        if (!r.ok) throw new Error('HTTP ' + r.status);
        const j = await r.json();
        if (gen !== pollGen) return;
        setState('fallback');
        if (failures) serverBack();
        const msgs = j && Array.isArray(j.messages) ? j.messages : [];
        got = msgs.length;
        msgs.forEach((m) => dispatch('message', m, true));
        if (j && j.last_id != null && j.last_id !== '') lastSeenId = String(j.last_id);
        delay = 1000;
      } catch (e) {
        failed = true;
      } finally {
        clearTimeout(killer);
        clearTimeout(okSoon);
        if (pollCtrl === ctrl) pollCtrl = null;
      }
      if (gen !== pollGen) return;
      if (failed) {
        failures++;
        setState('reconnecting');
        await sleep(jitter(delay));
        delay = Math.min(delay * 2, 10000);
      } else if (!got && Date.now() - started < 1000) {
        await sleep(1000); // the server answered at once with nothing: don't spin
      }
    }
  }

  // One-off fetch of what we may have missed: a follower right after load, or a stream that
  // opened without any id to resume from (nothing is replayed then). Live messages that
  // arrive meanwhile are held back and rendered after, so the order stays right.
  let holding = null;
  let draining = false;
  async function catchUp(relay) {
    if (holding) return;
    holding = [];
    try {
      const r = await fetch(messagesUrl('&limit=500'), {
        credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' },
      });
      const j = r.ok ? await r.json() : null;
      if (j && Array.isArray(j.messages)) {
        draining = true;
        try { j.messages.forEach((m) => dispatch('message', m, !!relay)); } finally { draining = false; }
      }
    } catch (e) {
      /* the stream carries on */
    } finally {
      const h = holding;
      holding = null;
      h.forEach((m) => addMessage(m));
    }
  }

  /* ---------- many tabs: one leader holds the stream, the others listen ---------- */

  let bc = null;
  try { if (typeof BroadcastChannel === 'function') bc = new BroadcastChannel('ssechat:' + room); } catch (e) { bc = null; }
  function bcPost(msg) { if (bc) { try { bc.postMessage(msg); } catch (e) { /* closed */ } } }

  let busBuffer = []; // peer events held until the follower has caught up
  function onBus(d) {
    switch (d.t) {
      case 'ev': if (!isLeader) dispatch(d.type, d.d, false); break;
      case 'state': if (!isLeader) setState(d.s); break;
      case 'sync?': if (isLeader) bcPost({ t: 'sync', s: state, online }); break;
      case 'sync': if (!isLeader) { setState(d.s); setOnline(d.online); } break;
      case 'sent': if (typeof d.cid === 'string') resolveByCid(d.cid, d.id); break;
      default: break;
    }
  }
  function flushBus() {
    const b = busBuffer;
    busBuffer = null;
    if (b) b.forEach(onBus);
  }
  if (bc) {
    bc.onmessage = (e) => {
      const d = e.data;
      if (!d || typeof d !== 'object') return;
      if (busBuffer && d.t === 'ev') busBuffer.push(d); else onBus(d);
    };
  }

  function becomeLeader() {
    if (isLeader) return;
    isLeader = true;
    flushBus();
    connect();
  }
  function resign() {
    if (!isLeader) return;
    isLeader = false;
    stopStreams();
  }
  let followed = false;
  function becomeFollower() {
    if (followed) return;
    followed = true;
    bcPost({ t: 'sync?' });
    catchUp().then(flushBus, flushBus);
  }

  function lockElection() {
    const hold = () => new Promise(() => {}); // held until the tab goes away
    const lead = () => { becomeLeader(); return hold(); };
    navigator.locks.request(LOCK_NAME, { ifAvailable: true }, (lock) => {
      if (lock) return lead();
      becomeFollower();
      navigator.locks.request(LOCK_NAME, lead).catch(() => becomeLeader());
      return null;
    }).catch(() => becomeLeader());
  }

  function heartbeatElection() {
    const read = () => parse(lsGet(LEADER_KEY));
    const tick = () => {
      const cur = read();
      const now = Date.now();
      if (!cur || cur.id === tabId || now - Number(cur.t) > 6000) {
        lsSet(LEADER_KEY, JSON.stringify({ id: tabId, t: now }));
        setTimeout(() => {
          const c = read();
          if (c && c.id === tabId) becomeLeader();
          else { resign(); becomeFollower(); }
        }, 150);
      } else {
        resign();
        becomeFollower();
      }
    };
    tick();
    setInterval(tick, 2000);
    window.addEventListener('storage', (e) => {
      if (e.key === LEADER_KEY && !e.newValue) setTimeout(tick, Math.random() * 300);
    });
    window.addEventListener('pagehide', () => {
      const c = read();
      if (c && c.id === tabId) lsSet(LEADER_KEY, null);
    });
  }

  /* ---------- lifecycle ---------- */

  window.addEventListener('offline', showState);
  window.addEventListener('online', () => {
    showState();
    wakeAll();
    if (queue.length) pump();
    if (!isLeader) return;
    if (mode === 'sse' && (!es || es.readyState !== 1)) {
      if (es) { es.close(); es = null; }
      clearTimeout(reopenTimer);
      setState('reconnecting');
      openSource(false);
    } else if (mode === 'poll' && !probe) {
      openSource(true);
    }
  });
  window.addEventListener('pagehide', (e) => {
    if (!e.persisted) return;
    if (es) { es.close(); es = null; }
    if (probe) { probe.close(); probe = null; }
    stopPoll();
  });
  window.addEventListener('pageshow', (e) => {
    if (e.persisted && isLeader) connect();
  });

  showState();
  if (bc && navigator.locks && typeof navigator.locks.request === 'function') lockElection();
  else if (bc && store('localStorage')) heartbeatElection();
  else becomeLeader(); // no way to share: this tab connects by itself

  // Debugging aid only.
  window.ssechat = {
    get leader() { return isLeader; },
    get mode() { return mode; },
    get lastSeenId() { return lastSeenId; },
    get queue() { return queue.map((q) => ({ cid: q.cid, text: q.text })); },
    get failures() { return failures; },
  };
})();
