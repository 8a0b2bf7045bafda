// Who is here: the roster and the one-line presence notices.
import test from 'node:test';
import assert from 'node:assert/strict';
import { Roster, WHO_SHOWN, joinLine, moreLine, presenceLine } from '../../static/presence.js';

test('a gathered presence event reads as one line', () => {
  assert.equal(presenceLine({ online: 1501, joined: 1500, left: 3, names_joined: ['ann', 'bo'], names_left: [] }),
    '>> ann, bo and 1,498 more joined, 3 left (1,501 online)');
  assert.equal(presenceLine({ online: 4, joined: 2, left: 1, names_joined: ['ann', 'bo'], names_left: ['cy'] }),
    '>> ann and bo joined, cy left (4 online)');
  assert.equal(presenceLine({ online: 0, joined: 0, left: 3, names_joined: [], names_left: ['a', 'b', 'c'] }),
    '>> a, b and c left (0 online)');
  assert.equal(joinLine('join', { name: 'alice', online: 2 }), '>> alice joined (2 online)');
  assert.equal(joinLine('leave', { name: 'alice', online: 1 }), '>> alice left (1 online)');
});

test('the roster follows joins, leaves and presence after its snapshot', () => {
  const r = new Roster();
  r.loadStarted();
  r.apply('join', { name: 'zed', online: 3 }); // while the snapshot is on its way
  r.loaded({ room: 'lobby', online: 2, names: ['bob', 'alice'] });
  assert.deepEqual(r.view(), { shown: ['alice', 'bob', 'zed'], more: 0, online: 3 });
  r.apply('leave', { name: 'bob', online: 2 });
  r.apply('presence', { online: 4, joined: 2, left: 0, names_joined: ['Carl', 'dee'], names_left: [] });
  assert.deepEqual(r.view().shown, ['alice', 'Carl', 'dee', 'zed']);
  assert.equal(r.needsReload(), false);
});

test('a crowd shows the first 100 names and "and N more"; unnamed arrivals ask for a reload', () => {
  const r = new Roster();
  const names = Array.from({ length: WHO_SHOWN }, (_, i) => 'p' + String(i).padStart(3, '0'));
  r.loaded({ online: 1500, names });
  const v = r.view();
  assert.equal(v.shown.length, 100);
  assert.equal(v.more, 1400);
  assert.equal(moreLine(v.more), 'and 1,400 more');
  assert.equal(moreLine(0), '');
  assert.equal(r.needsReload(), false, '100 names of 1,500 is what the server sends');
  r.apply('presence', { online: 1700, joined: 200, left: 0, names_joined: ['a'], names_left: [] });
  assert.equal(r.needsReload(), true);
  r.loaded({ online: 1700, names });
  assert.equal(r.needsReload(), false);
});

test('a list that cannot match the count asks for a reload', () => {
  const r = new Roster();
  r.loaded({ online: 3, names: ['a', 'b', 'c'] });
  r.apply('leave', { name: 'nobody-we-knew', online: 2 });
  assert.equal(r.needsReload(), true);
  const broken = new Roster();
  broken.loaded(null); // the request failed: nothing changes
  assert.deepEqual(broken.view(), { shown: [], more: 0, online: 0 });
});
