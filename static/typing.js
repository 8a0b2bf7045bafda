/* Who is typing: when to tell the others that we type (throttled like the
 * server's limit), whom to show as typing and in what words. Pure: times
 * are passed in. */

/** The server takes one typing notice per client every 2 s. */
export const TYPING_SEND_EVERY_MS = 2000;
/** A typing notice shows this long unless renewed or ended by a message. */
export const TYPING_SHOWN_MS = 5000;

/** `ready(now)` is true at most once per `every` ms. */
export function throttle(every = TYPING_SEND_EVERY_MS) {
  let last = -Infinity;
  return {
    ready(now) {
      if (now - last < every) return false;
      last = now;
      return true;
    },
    reset() {
      last = -Infinity;
    },
  };
}

/** The people typing now, each until TYPING_SHOWN_MS after their last notice. */
export class Typists {
  constructor(shownMs = TYPING_SHOWN_MS) {
    this.shownMs = shownMs;
    this.until = new Map();
  }
  saw(name, now) {
    this.until.delete(name); // the latest typist goes last
    this.until.set(name, now + this.shownMs);
  }
  /** Their message arrived: they are done typing it. */
  stop(name) {
    return this.until.delete(name);
  }
  names(now) {
    for (const [n, t] of this.until) if (t <= now) this.until.delete(n);
    return Array.from(this.until.keys());
  }
  /** Milliseconds until the next notice expires, or null. */
  nextExpiry(now) {
    let min = null;
    for (const t of this.until.values()) if (min === null || t - now < min) min = Math.max(0, t - now);
    return min;
  }
}

/** `alice is typing…`, `alice and bob are typing…`, `several people are typing…`. */
export function typingLine(names) {
  if (!names.length) return '';
  if (names.length === 1) return names[0] + ' is typing…';
  if (names.length === 2) return names[0] + ' and ' + names[1] + ' are typing…';
  return 'several people are typing…';
}
