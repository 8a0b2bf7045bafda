/* Who is here: the roster of names online (from `GET /chat/online`, kept
 * current by join, leave and presence events) and the one-line notices
 * for those events. Pure. */

/** Names shown in the panel; the rest are counted ("and N more"). */
export const WHO_SHOWN = 100;

const number = (n) => Number(n).toLocaleString('en-US');

/** `a`, `a and b`, `a, b and c`. */
function list(names) {
  if (names.length < 2) return names.join('');
  return names.slice(0, -1).join(', ') + ' and ' + names[names.length - 1];
}

function part(count, names, verb) {
  const n = Number(count) || 0;
  if (n <= 0) return '';
  const known = (Array.isArray(names) ? names : []).slice(0, n).map(String);
  if (!known.length) return number(n) + ' ' + verb;
  if (known.length === n) return list(known) + ' ' + verb;
  return known.join(', ') + ' and ' + number(n - known.length) + ' more ' + verb;
}

/** `>> alice and 1,499 more joined, 3 left (1,501 online)`. */
export function presenceLine(d) {
  const parts = [part(d.joined, d.names_joined, 'joined'), part(d.left, d.names_left, 'left')].filter(Boolean);
  const online = d.online == null ? '' : ' (' + number(d.online) + ' online)';
  return '>> ' + (parts.join(', ') || 'no change') + online;
}

/** `>> alice joined (2 online)`. */
export function joinLine(type, d) {
  const who = d.name == null ? 'someone' : String(d.name);
  const online = d.online == null ? '' : ' (' + d.online + ' online)';
  return '>> ' + who + (type === 'join' ? ' joined' : ' left') + online;
}

const collator = typeof Intl !== 'undefined' ? new Intl.Collator(undefined, { sensitivity: 'base' }) : null;
const byName = (a, b) => (collator ? collator.compare(a, b) : a < b ? -1 : a > b ? 1 : 0);

/** The names online. A name stands for everyone who uses it (two people
 * may share one); `online` counts clients, so "and N more" stays right. */
export class Roster {
  constructor() {
    this.names = new Set();
    this.online = null;
    this.loading = null; // events seen while a snapshot is on its way
    this.stale = false;
  }
  /** A `GET /chat/online` is on its way: what happens meanwhile is replayed on it. */
  loadStarted() {
    this.loading = [];
  }
  loaded(snapshot) {
    const later = this.loading || [];
    this.loading = null;
    if (!snapshot || !Array.isArray(snapshot.names)) return;
    this.names = new Set(snapshot.names.map(String));
    if (snapshot.online != null) this.online = Number(snapshot.online);
    this.stale = false;
    later.forEach(([type, d]) => this.apply(type, d));
  }
  /** Applies a `hello`, `join`, `leave` or `presence` event. */
  apply(type, d) {
    if (!d || typeof d !== 'object') return;
    if (this.loading) this.loading.push([type, d]);
    if (d.online != null && Number.isFinite(Number(d.online))) this.online = Number(d.online);
    if (type === 'join' && d.name != null) this.names.add(String(d.name));
    else if (type === 'leave' && d.name != null) this.names.delete(String(d.name));
    else if (type === 'presence') {
      const joined = Array.isArray(d.names_joined) ? d.names_joined : [];
      const left = Array.isArray(d.names_left) ? d.names_left : [];
      joined.forEach((n) => this.names.add(String(n)));
      left.forEach((n) => this.names.delete(String(n)));
      // More people came or went than were named: the list needs a reload.
      if (joined.length < Number(d.joined) || left.length < Number(d.left)) this.stale = true;
    }
  }
  /** True when the names cannot be the right ones for the count. */
  needsReload() {
    if (this.online == null) return false;
    const n = this.names.size;
    return this.stale || n > this.online || (n < this.online && n < WHO_SHOWN);
  }
  /** What the panel shows: up to WHO_SHOWN names, sorted, and how many more. */
  view() {
    const shown = Array.from(this.names).sort(byName).slice(0, WHO_SHOWN);
    const total = this.online == null ? this.names.size : Math.max(this.online, shown.length);
    return { shown, more: total - shown.length, online: total };
  }
}

/** `and 3 more`, or ''. */
export function moreLine(more) {
  return more > 0 ? 'and ' + number(more) + ' more' : '';
}
