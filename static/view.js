/* The view: the only module that touches the page. It renders what the
 * other modules decide and reports what the user does. User text only ever
 * reaches the page through textContent and text nodes. */

import { linkify } from './links.js';
import { clock, dayKey, dayLabel, jumpLabel } from './reading.js';
import { moreLine } from './presence.js';
import { report } from './util.js';

/** Within this many pixels of the bottom, the log follows new messages. */
export const STICK_PX = 40;
/** Older rows are dropped beyond this many, to keep a long session light. */
export const MAX_ROWS = 1000;
const TEXTAREA_MAX_PX = 192;
const EXCERPT_CHARS = 40;

const STATE_WORDS = {
  connecting: 'connecting…',
  connected: 'connected',
  reconnecting: 'reconnecting…',
  offline: 'offline',
  fallback: 'live via long-poll',
};

function node(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

/** `text` with its http(s) URLs as links, from text nodes only. */
function richText(text) {
  const span = node('span', 'msg-text');
  for (const piece of linkify(text)) {
    if (!piece.href) {
      span.append(piece.text);
      continue;
    }
    const a = node('a', 'msg-link', piece.text);
    a.href = piece.href;
    a.target = '_blank';
    a.rel = 'noopener noreferrer nofollow';
    span.append(a);
  }
  return span;
}

function fillTime(t, ts) {
  const words = clock(ts);
  if (!words) return;
  const d = new Date(Number(ts));
  t.textContent = words;
  t.dateTime = d.toISOString();
  t.title = d.toLocaleString();
}

const excerpt = (s) => (s.length > EXCERPT_CHARS ? s.slice(0, EXCERPT_CHARS) + '…' : s);

/** The page's parts, or null when this is not the chat page. */
export function createView() {
  const $ = (id) => document.getElementById(id);
  const root = $('chat');
  const list = $('messages');
  const form = $('send-form');
  const textEl = $('text');
  const nameEl = $('name');
  if (!root || !list || !form || !textEl || !nameEl) return null;
  const [statusEl, onlineEl, errorEl, jumpBtn, hintEl] = ['status', 'online', 'error', 'jump', 'hint'].map($);
  const [whoEl, whoList, whoMore, typingEl, notifyBtn] = ['who', 'who-list', 'who-more', 'typing', 'notify'].map($);
  const rows = new Map(); // outbox cid -> its row
  const awaiting = new Map(); // id -> own row confirmed by POST, not yet back on the stream
  let restoredFrom = null; // failed row whose text went back into the box
  let state = 'connecting';

  const nearBottom = () => list.scrollHeight - list.scrollTop - list.clientHeight <= STICK_PX;
  function toBottom() {
    list.scrollTop = list.scrollHeight;
  }
  // A reader at the bottom stays there when the log changes size (the
  // who-is-here panel appears, the phone turns, the keyboard opens).
  let stuck = true;
  list.addEventListener('scroll', () => { stuck = nearBottom(); }, { passive: true });
  if (typeof ResizeObserver === 'function') new ResizeObserver(() => { if (stuck) toBottom(); }).observe(list);
  function removeEmpty() {
    const e = list.querySelector('.log-empty');
    if (e) e.remove();
  }
  /** Live rows go above our own not-yet-echoed messages, which stay last. */
  const ownTail = () => list.querySelector('.msg.pending, .msg.sent');
  function settledBefore(ref) {
    let e = ref ? ref.previousElementSibling : list.lastElementChild;
    while (e && !(e.matches('.msg[data-ts]') && !e.matches('.pending, .sent, .failed'))) e = e.previousElementSibling;
    return e;
  }
  function daySeparator(ts) {
    const li = node('li', 'day', dayLabel(ts));
    li.dataset.day = dayKey(ts);
    return li;
  }
  function trim() {
    let extra = list.children.length - MAX_ROWS;
    while (extra-- > 0) {
      const f = list.firstElementChild;
      if (!f || f.matches('.pending, .sent, .failed')) break;
      f.remove();
    }
  }

  function msgRow(cls, ts, who, text) {
    const li = node('li', cls);
    const t = node('time', 'msg-time');
    if (ts != null) fillTime(t, ts);
    li.append(t, ' ', node('span', 'msg-name', who), ': ', richText(text));
    return li;
  }

  // The rows the server rendered: local times, links, day separators.
  const rendered = [];
  let lastDay = '';
  for (const li of list.querySelectorAll('.msg[data-id]')) {
    rendered.push(li.dataset.id);
    const t = li.querySelector('.msg-time');
    if (t && li.dataset.ts) fillTime(t, li.dataset.ts);
    const text = li.querySelector('.msg-text');
    if (text) text.replaceWith(richText(text.textContent));
    const day = dayKey(li.dataset.ts);
    if (day && day !== lastDay) li.before(daySeparator(li.dataset.ts));
    lastDay = day || lastDay;
  }

  const view = {
    config: {
      room: root.dataset.room || 'lobby',
      name: root.dataset.name || '',
      maxChars: parseInt(root.dataset.maxChars, 10) || 0, // 0: no limit
      lastId: root.dataset.lastId || '',
      rendered,
    },
    nearBottom,
    hidden: () => document.visibilityState === 'hidden',

    /** A message from the server. `marker`: the first one the reader missed. */
    message(m, { marker = false } = {}) {
      const id = String(m.id);
      const stick = nearBottom();
      const mine = awaiting.get(id);
      if (mine) {
        awaiting.delete(id);
        mine.remove();
      }
      const li = msgRow(m.me ? 'msg me' : 'msg', m.ts, m.me ? 'me' : String(m.name ?? ''), String(m.text ?? ''));
      li.dataset.id = id;
      if (m.ts != null) li.dataset.ts = String(m.ts);
      if (m.name != null) li.dataset.name = String(m.name);
      removeEmpty();
      const ref = ownTail();
      const prev = settledBefore(ref);
      if (m.ts != null && (!prev || dayKey(prev.dataset.ts) !== dayKey(m.ts))) list.insertBefore(daySeparator(m.ts), ref);
      if (marker) {
        const old = list.querySelector('.unread-marker');
        if (old) old.remove();
        const mk = node('li', 'unread-marker', 'New messages');
        mk.setAttribute('aria-hidden', 'true'); // the jump button says it to everyone
        list.insertBefore(mk, ref);
      }
      list.insertBefore(li, ref);
      if (stick) {
        trim();
        toBottom();
      }
    },
    /** Join, leave and presence lines: seen, not announced (aria-hidden). */
    notice(text) {
      const stick = nearBottom();
      const li = node('li', 'notice', text);
      li.setAttribute('aria-hidden', 'true');
      removeEmpty();
      list.insertBefore(li, ownTail());
      if (stick) toBottom();
    },
    jump(unread) {
      if (!jumpBtn) return;
      jumpBtn.hidden = unread <= 0;
      jumpBtn.textContent = jumpLabel(unread);
    },
    toBottom,

    status(s) {
      if (s) state = s;
      if (!statusEl) return;
      const shown = navigator.onLine === false ? 'offline' : state;
      statusEl.hidden = false;
      if (statusEl.dataset.state !== shown) {
        statusEl.dataset.state = shown;
        statusEl.textContent = STATE_WORDS[shown] || shown;
      }
    },
    online(n) {
      if (onlineEl && n != null && Number.isFinite(Number(n))) onlineEl.textContent = String(Number(n));
    },
    who({ shown, more }, me) {
      if (!whoEl) return;
      const stick = nearBottom();
      whoList.replaceChildren(...shown.map((n) => {
        const li = node('li', 'who-name', n);
        if (n === me) li.append(' ', node('span', 'who-you', '(you)'));
        return li;
      }));
      whoMore.textContent = moreLine(more);
      whoMore.hidden = more <= 0;
      whoEl.hidden = false;
      if (stick) toBottom(); // the panel may have narrowed the log
    },
    typing(line) {
      if (typingEl && typingEl.textContent !== line) typingEl.textContent = line;
    },
    title(text) {
      if (document.title !== text) document.title = text;
    },
    error(words) {
      if (!errorEl) return;
      errorEl.textContent = words;
      errorEl.hidden = false;
    },
    clearError() {
      if (errorEl && !errorEl.hidden) {
        errorEl.hidden = true;
        errorEl.textContent = '';
      }
    },

    /* Our own messages, as the outbox moves them along. */
    queued(item) {
      const li = msgRow('msg me pending', item.t, 'me', item.text);
      li.dataset.status = 'queued';
      rows.set(item.cid, li);
      removeEmpty();
      list.appendChild(li);
      toBottom();
    },
    itemStatus(item, words) {
      const li = rows.get(item.cid);
      if (li) li.dataset.status = words;
    },
    hide(item) {
      const li = rows.get(item.cid);
      if (li) li.remove();
    },
    sent(item, id, shown) {
      const li = rows.get(item.cid);
      rows.delete(item.cid);
      if (!li) return;
      if (shown) return li.remove(); // the stream already showed it
      li.classList.replace('pending', 'sent');
      delete li.dataset.status;
      if (id) {
        li.dataset.id = id;
        awaiting.set(id, li);
      }
      if (!li.isConnected) {
        const stick = nearBottom();
        list.insertBefore(li, list.querySelector('.msg.pending'));
        if (stick) toBottom();
      }
    },
    failed(item, reason, onEdit) {
      const li = rows.get(item.cid);
      rows.delete(item.cid);
      if (!li) return;
      li.classList.replace('pending', 'failed');
      delete li.dataset.status;
      const what = ' unsent message “' + excerpt(item.text) + '”';
      const edit = node('button', 'msg-action', 'Edit');
      const drop = node('button', 'msg-action', 'Dismiss');
      edit.type = drop.type = 'button';
      edit.setAttribute('aria-label', 'Edit' + what);
      drop.setAttribute('aria-label', 'Dismiss' + what);
      const done = () => {
        li.remove();
        if (restoredFrom === li) restoredFrom = null;
        textEl.focus();
      };
      edit.addEventListener('click', () => {
        view.setText(item.text);
        onEdit();
        done();
      });
      drop.addEventListener('click', done);
      const actions = node('span', 'msg-actions');
      actions.append(edit, drop);
      li.append(node('span', 'msg-error', 'Not sent: ' + reason), actions);
      if (!li.isConnected) list.appendChild(li);
      if (!textEl.value) {
        view.setText(item.text);
        onEdit();
        restoredFrom = li;
      }
      view.error(reason);
    },

    /* The form. */
    get text() {
      return textEl.value;
    },
    setText(v) {
      textEl.value = v;
      view.grow();
      if (!v) restoredFrom = null;
    },
    grow() {
      // CSSOM, not a style attribute: allowed under our CSP.
      textEl.style.height = 'auto';
      textEl.style.height = Math.min(textEl.scrollHeight + 2, TEXTAREA_MAX_PX) + 'px';
    },
    get name() {
      return nameEl.value.trim();
    },
    set name(v) {
      nameEl.value = v;
    },
    focusText() {
      textEl.focus();
    },
    sentFromBox() {
      if (restoredFrom) restoredFrom.remove();
      restoredFrom = null;
      view.setText('');
      textEl.focus();
      toBottom();
    },

    /** Wires what the user does to `on`: {submit(text), input(), nameChange(name), back(), visible(), notify()}. */
    listen(on) {
      textEl.addEventListener('input', () => {
        view.grow();
        if (!textEl.value) restoredFrom = null;
        on.input();
      });
      textEl.addEventListener('keydown', (e) => {
        if (e.key !== 'Enter' || e.shiftKey || e.altKey || e.isComposing || e.keyCode === 229) return;
        e.preventDefault();
        if (textEl.value) form.requestSubmit($('send') || undefined);
      });
      form.addEventListener('submit', (e) => {
        e.preventDefault();
        on.submit(textEl.value);
      });
      nameEl.addEventListener('change', () => on.nameChange(view.name));
      list.addEventListener('scroll', () => { if (nearBottom()) on.back(); }, { passive: true });
      if (jumpBtn) {
        jumpBtn.addEventListener('click', () => {
          toBottom();
          list.focus({ preventScroll: true });
          on.back();
        });
      }
      document.addEventListener('visibilitychange', () => { if (!view.hidden()) on.visible(); });
      if (notifyBtn) notifyBtn.addEventListener('click', on.notify);
      if (hintEl) hintEl.hidden = false;
    },

    /** The notifications button: 'off' (offer), 'on' (offer to stop), or null (hidden). */
    notifyButton(mode) {
      if (!notifyBtn) return;
      notifyBtn.hidden = !mode;
      notifyBtn.textContent = mode === 'on' ? 'Stop notifications of new messages' : 'Notify me of new messages';
    },
    notify(title, body, tag) {
      try {
        new Notification(title, { body, tag });
      } catch (e) {
        report('notification', e); // e.g. Android Chrome wants a service worker
      }
    },
  };
  return view;
}
