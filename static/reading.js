/* What the reader has missed and when things were said: unread counting
 * for the title and the jump button, titles, day separators. Pure. */

/** `(3) #lobby — ssechat`, or without the count when nothing is unread. */
export function titleFor(room, unread) {
  return (unread > 0 ? '(' + unread + ') ' : '') + '#' + room + ' — ssechat';
}

/** Counts other people's messages that arrive while the reader is away
 * (tab hidden, or scrolled up); `seen()` when the reader is back. */
export class Unread {
  constructor() {
    this.count = 0;
  }
  /** A message arrived; returns true when it is the first one missed. */
  add(mine, away) {
    if (mine || !away) return false;
    this.count++;
    return this.count === 1;
  }
  seen() {
    const had = this.count;
    this.count = 0;
    return had > 0;
  }
}

/** The jump button's words, which say what it does and how much is new. */
export function jumpLabel(n) {
  if (n <= 0) return 'Jump to the latest message';
  return 'Jump to the latest: ' + n + ' new message' + (n === 1 ? '' : 's');
}

function date(ts) {
  const d = new Date(Number(ts));
  return Number.isFinite(d.getTime()) ? d : null;
}

/** The local calendar day of a millisecond timestamp, `2026-12-01`, or ''. */
export function dayKey(ts) {
  const d = date(ts);
  if (!d) return '';
  const p = (n) => String(n).padStart(2, '0');
  return d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate());
}

/** `Today`, `Yesterday`, or the full local date. */
export function dayLabel(ts, now = Date.now(), locale = undefined) {
  const d = date(ts);
  if (!d) return '';
  const today = dayKey(now);
  if (dayKey(ts) === today) return 'Today';
  const y = new Date(now);
  y.setDate(y.getDate() - 1);
  if (dayKey(ts) === dayKey(y.getTime())) return 'Yesterday';
  return d.toLocaleDateString(locale, { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
}

/** `HH:MM` in local time. */
export function clock(ts) {
  const d = date(ts);
  if (!d) return '';
  return String(d.getHours()).padStart(2, '0') + ':' + String(d.getMinutes()).padStart(2, '0');
}
