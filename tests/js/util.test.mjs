// The one back-off and Retry-After.
import test from 'node:test';
import assert from 'node:assert/strict';
import { BACKOFF_MAX_MS, backoff, retryAfterMs } from '../../static/util.js';

test('back-off doubles from 1 s up to its cap, jittered by at most 20 %', () => {
  const mid = () => 0.5;
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 40].map((a) => backoff(a, { random: mid })),
    [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  assert.equal(backoff(0, { random: () => 0 }), 800);
  assert.equal(backoff(0, { random: () => 0.999999 }), 1200);
  assert.equal(backoff(10, { random: () => 0.999999 }), BACKOFF_MAX_MS, 'jitter never passes the cap');
  assert.equal(backoff(3, { max: 5000, random: mid }), 5000);
  assert.equal(backoff(-2, { random: mid }), 1000);
});

test('Retry-After in seconds or as a date', () => {
  assert.equal(retryAfterMs('3'), 3000);
  assert.equal(retryAfterMs(null), null);
  assert.equal(retryAfterMs('soon'), null);
  const now = Date.parse('Tue, 01 Dec 2026 10:00:00 GMT');
  assert.equal(retryAfterMs('Tue, 01 Dec 2026 10:00:05 GMT', now), 5000);
  assert.equal(retryAfterMs('Tue, 01 Dec 2026 09:00:00 GMT', now), 0);
});
