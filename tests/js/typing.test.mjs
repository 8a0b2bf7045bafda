// Typing: the throttle on what we send, who shows as typing, the words.
import test from 'node:test';
import assert from 'node:assert/strict';
import { TYPING_SEND_EVERY_MS, TYPING_SHOWN_MS, Typists, throttle, typingLine } from '../../static/typing.js';

test('typing notices go out at most once per 2 s (the server limit)', () => {
  assert.equal(TYPING_SEND_EVERY_MS, 2000);
  const t = throttle();
  const sent = [0, 100, 1999, 2000, 2500, 4001, 4100].filter((now) => t.ready(now));
  assert.deepEqual(sent, [0, 2000, 4001]);
  t.reset(); // after sending a message, the next keystroke tells the others again
  assert.equal(t.ready(4200), true);
});

test('a typist shows for 5 s after the last notice, and goes when the message arrives', () => {
  assert.equal(TYPING_SHOWN_MS, 5000);
  const ty = new Typists();
  ty.saw('alice', 0);
  assert.deepEqual(ty.names(4999), ['alice']);
  assert.deepEqual(ty.names(5000), []);
  ty.saw('alice', 6000);
  ty.saw('bob', 7000);
  assert.equal(ty.nextExpiry(7000), 4000);
  ty.saw('alice', 8000); // renewed: alice now expires after bob
  assert.deepEqual(ty.names(8000), ['bob', 'alice']);
  assert.equal(ty.stop('bob'), true);
  assert.equal(ty.stop('bob'), false);
  assert.deepEqual(ty.names(8000), ['alice']);
  assert.equal(new Typists().nextExpiry(0), null);
});

test('one, two or several typists in plain words', () => {
  assert.equal(typingLine([]), '');
  assert.equal(typingLine(['alice']), 'alice is typing…');
  assert.equal(typingLine(['alice', 'bob']), 'alice and bob are typing…');
  assert.equal(typingLine(['alice', 'bob', 'carol']), 'several people are typing…');
});
