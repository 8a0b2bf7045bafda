/* Finds http and https URLs in message text. Pure: returns pieces of text
 * and links; the view builds nodes from them (text nodes, never HTML).
 * Nothing but http: and https: ever becomes a link. */

// A URL runs until whitespace or a character that cannot be in one.
const CANDIDATE = /\bhttps?:\/\/[^\s<>"`]+/gi;
// Sentence punctuation after a URL is not part of it.
const TRAILING = /[.,;:!?'"*_~]+$/;
const PAIRS = { ')': '(', ']': '[', '}': '{' };

function count(s, ch) {
  let n = 0;
  for (const c of s) if (c === ch) n++;
  return n;
}

/** Drops punctuation and unbalanced closing brackets from the end. */
function trimEnd(url) {
  for (;;) {
    const before = url;
    url = url.replace(TRAILING, '');
    const last = url[url.length - 1];
    if (PAIRS[last] && count(url, last) > count(url, PAIRS[last])) url = url.slice(0, -1);
    if (url === before) return url;
  }
}

/** The http(s) URL `s` names, normalised, or null. */
export function safeHref(s) {
  let u;
  try {
    u = new URL(s);
  } catch (e) {
    return null; // not a URL after all: stays text
  }
  return (u.protocol === 'http:' || u.protocol === 'https:') && u.hostname ? u.href : null;
}

/** `text` as pieces: `{text}` or `{text, href}`; joined, the texts are `text`. */
export function linkify(text) {
  const out = [];
  let at = 0;
  for (const m of String(text).matchAll(CANDIDATE)) {
    const url = trimEnd(m[0]);
    const href = safeHref(url);
    if (!href) continue;
    if (m.index > at) out.push({ text: text.slice(at, m.index) });
    out.push({ text: url, href });
    at = m.index + url.length;
  }
  if (at < text.length || !out.length) out.push({ text: text.slice(at) });
  return out;
}
