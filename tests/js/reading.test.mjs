// Unread counting, titles, day separators.
import test from 'node:test';
import assert from 'node:assert/strict';
import { Unread, clock, dayKey, dayLabel, jumpLabel, titleFor } from '../../static/reading.js';

test('the title counts unread messages and drops the count at zero', () => {
  assert.equal(titleFor('lobby', 0), '#lobby — ssechat');
  assert.equal(titleFor('lobby', 3), '(3) #lobby — ssechat');
});

test('only other people’s messages that arrive while away are unread', () => {
  const u = new Unread();
  assert.equal(u.add(false, false), false, 'read at once');
  assert.equal(u.add(true, true), false, 'my own message');
  assert.equal(u.add(false, true), true, 'the first one missed');
  assert.equal(u.add(false, true), false);
  assert.equal(u.count, 2);
  assert.equal(u.seen(), true);
  assert.equal(u.count, 0);
  assert.equal(u.seen(), false, 'nothing new since');
});

test('the jump button says what it does and how many are new', () => {
  assert.equal(jumpLabel(0), 'Jump to the latest message');
  assert.equal(jumpLabel(1), 'Jump to the latest: 1 new message');
  assert.equal(jumpLabel(4), 'Jump to the latest: 4 new messages');
});

test('days are local calendar days, labelled today / yesterday / a date', () => {
  const now = new Date(2026, 11, 1, 10, 30).getTime();
  const earlier = new Date(2026, 11, 1, 0, 5).getTime();
  const yesterday = new Date(2026, 10, 30, 23, 59).getTime();
  const old = new Date(2026, 10, 2, 12, 0).getTime();
  assert.equal(dayKey(now), '2026-12-01');
  assert.equal(dayKey(earlier), dayKey(now));
  assert.notEqual(dayKey(yesterday), dayKey(now));
  assert.equal(dayLabel(earlier, now), 'Today');
  assert.equal(dayLabel(yesterday, now), 'Yesterday');
  assert.match(dayLabel(old, now, 'en-US'), /November 2, 2026/);
  assert.equal(dayKey('not a time'), '');
  assert.equal(clock(new Date(2026, 0, 1, 7, 5).getTime()), '07:05');
});
