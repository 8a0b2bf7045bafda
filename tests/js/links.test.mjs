// linkify: only http(s) URLs become links, the text is kept exactly.
import test from 'node:test';
import assert from 'node:assert/strict';
import { linkify, safeHref } from '../../static/links.js';

const joined = (pieces) => pieces.map((p) => p.text).join('');
const links = (text) => linkify(text).filter((p) => p.href).map((p) => p.href);

test('http and https URLs become links, the text around stays text', () => {
  const text = 'see https://example.com/a?b=1#c and http://x.org too';
  const out = linkify(text);
  assert.equal(joined(out), text);
  assert.deepEqual(links(text), ['https://example.com/a?b=1#c', 'http://x.org/']);
  assert.deepEqual(out[0], { text: 'see ' });
});

test('javascript:, data: and other schemes never become links', () => {
  for (const text of [
    'javascript:alert(1)', 'JaVaScRiPt:alert(1)', 'data:text/html,<script>alert(1)</script>',
    'vbscript:x', 'file:///etc/passwd', 'ftp://example.com', '//example.com', 'xhttp://example.com',
    'http://', 'https:// example.com',
  ]) {
    assert.deepEqual(links(text), [], text);
    assert.equal(joined(linkify(text)), text);
  }
});

test('a URL whose text hides another scheme stays http(s)', () => {
  assert.deepEqual(links('http://javascript:alert(1)@evil.com/'), ['http://javascript:alert(1)@evil.com/']);
  assert.equal(safeHref('javascript:alert(1)'), null);
  assert.equal(safeHref('http://ok.example/'), 'http://ok.example/');
});

test('sentence punctuation and unbalanced brackets after a URL are not part of it', () => {
  assert.deepEqual(links('go to https://example.com.'), ['https://example.com/']);
  assert.deepEqual(links('(https://example.com/x)'), ['https://example.com/x']);
  assert.deepEqual(links('https://en.wikipedia.org/wiki/Rust_(language)!'), ['https://en.wikipedia.org/wiki/Rust_(language)']);
  assert.deepEqual(links('"https://example.com/q"'), ['https://example.com/q']);
  const text = 'a https://example.com/x, b';
  assert.equal(joined(linkify(text)), text);
});

test('HTML in the text is text: quotes and angle brackets end a URL', () => {
  const text = '<a href="http://evil.example/">x</a> http://ok.example/<b>';
  const out = linkify(text);
  assert.equal(joined(out), text);
  assert.deepEqual(links(text), ['http://evil.example/', 'http://ok.example/']);
});

test('text without links is one piece, also when empty', () => {
  assert.deepEqual(linkify('hello'), [{ text: 'hello' }]);
  assert.deepEqual(linkify(''), [{ text: '' }]);
});
