// Tab sharing: only where connections are scarce (HTTP/1.x).
import test from 'node:test';
import assert from 'node:assert/strict';
import { shouldShare } from '../../static/tabs.js';

test('over HTTP/2 and HTTP/3 every tab receives for itself', () => {
  assert.equal(shouldShare('h2', true), false);
  assert.equal(shouldShare('h3', true), false);
  assert.equal(shouldShare('http/1.1', true), true);
  assert.equal(shouldShare('', true), true, 'unknown protocol: share, as HTTP/1.1');
  assert.equal(shouldShare('http/1.1', false), false, 'no BroadcastChannel: nothing to share with');
});
