//! The live side of the chat: rooms, their broadcast channels, presence
//! and typing.
//!
//! `Hub` is a cheap `Clone` handle around `Arc<Shared>` (as in mini-redis).
//! All live state sits behind one std `Mutex`: every critical section is a
//! few map operations and non-blocking pushes, never an `.await`, so a
//! blocking mutex is both correct and faster than an async one.
//!
//! A room exists here only while something watches it (an SSE stream or a
//! long-poll); the last guard to drop removes it, so rooms that come and go
//! cost nothing. History is not here: it is in the store.
//!
//! Messages travel through each room's [`fanout`] ring. Presence and
//! typing do not: they are gathered per room and published on the room's
//! [`Board`] (see [`super::presence`]), so a crowd arriving costs each
//! stream one write per window and never fills its buffer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::oneshot;

use super::fanout;
use super::message::{Change, Event, Message, MessageFrames, PresenceKind, Tally};
use super::presence::{Board, RoomPresence, TypingLimiter};
use super::types::{ClientId, DisplayName, RoomName};
use crate::metrics::Metrics;

mod gather;

/// Names remembered for clients that set one; beyond this, arbitrary old
/// entries are forgotten (the page sends its name with every request, so a
/// forgotten name comes back on the client's next request).
const MAX_REMEMBERED_NAMES: usize = 100_000;

#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Messages a subscriber may fall behind before it is cut off. Bounds
    /// the memory a slow reader can pin: the channel keeps at most this many.
    capacity: usize,
    shutting_down: AtomicBool,
    keepalive: Arc<Event>,
    metrics: Arc<Metrics>,
    /// In cluster mode presence is counted in Redis and changes come back
    /// from it in batches ([`Hub::cluster_batch`]); the hub then tells the
    /// cluster when a client's first stream here opens and its last one
    /// closes. Both calls are made under the hub lock, so the cluster sees
    /// them in the order they happened.
    cluster: OnceLock<Arc<dyn ClusterPresence>>,
}

/// What the cluster answers a join: the cluster-wide online count and the
/// room's tally, both counting the join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    pub online: usize,
    pub tally: Tally,
}

/// Cluster-wide presence, as the hub needs it. Calls must not block: they
/// queue work and return.
pub trait ClusterPresence: Send + Sync {
    /// The client's first stream on this node opened.
    fn join(
        &self,
        room: &RoomName,
        client: ClientId,
        name: &DisplayName,
    ) -> oneshot::Receiver<Joined>;
    /// The client's last stream on this node closed.
    fn leave(&self, room: &RoomName, client: ClientId);
    /// The client is typing in the room (already rate-limited here).
    fn typing(&self, room: &RoomName, client: ClientId, name: &DisplayName);
}

/// A room's presence changes as the cluster ordered them.
#[derive(Debug, Clone)]
pub struct PresenceBatch {
    pub room: RoomName,
    /// The room's tally before and after the batch.
    pub from: Tally,
    pub to: Tally,
    pub online: usize,
    pub changes: Vec<Change>,
    pub typing: Vec<(ClientId, DisplayName)>,
}

#[derive(Default)]
struct State {
    rooms: HashMap<RoomName, Room>,
    names: HashMap<ClientId, DisplayName>,
    typing: TypingLimiter,
}

struct Room {
    tx: fanout::Sender<Arc<Event>>,
    /// Clients with at least one open stream on this node, and how many
    /// each has.
    presence: HashMap<ClientId, Presence>,
    /// Receivers handed out (streams and long-polls).
    watchers: usize,
    live: RoomPresence,
    /// Cluster mode: the room's cluster-wide count, as Redis last said.
    cluster_online: usize,
}

impl Room {
    fn online(&self, clustered: bool) -> usize {
        if clustered {
            self.cluster_online
        } else {
            self.presence.len()
        }
    }
}

struct Presence {
    name: DisplayName,
    streams: usize,
}

/// Refused because the server is shutting down.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the server is shutting down")]
pub struct ShuttingDown;

/// A receiver of a room's live events, and the guard that gives its place
/// back when dropped.
pub struct Subscription {
    pub rx: fanout::Receiver<Arc<Event>>,
    pub guard: SubscriptionGuard,
    /// Distinct clients online in the room (on this node), this one included.
    pub online: usize,
    /// This is the client's first stream in the room on this node.
    pub first: bool,
    /// Cluster mode: the cluster-wide count and tally, once Redis answers.
    pub cluster_online: Option<oneshot::Receiver<Joined>>,
    /// The room's presence and typing, and what this stream's hello
    /// counted of them (its own join included).
    pub board: Arc<Board>,
    pub seen: Tally,
    pub typing_seen: u64,
}

pub struct SubscriptionGuard {
    hub: Hub,
    room: RoomName,
    client: ClientId,
    /// Set for SSE streams (they count as presence), unset for long-polls.
    /// (Not an `Option<ClientId>`: that takes 32 bytes for 16 of id, in
    /// every idle stream.)
    present: bool,
}

/// Messages put in their rooms' channels by [`Hub::stage`], waiting for
/// [`Staged::wake`]. Dropping it unwoken leaves them for receivers to find
/// at their next look (keep-alive at the latest), so always wake.
#[must_use = "staged messages wake nobody until `wake` is called"]
pub struct Staged {
    metrics: Arc<Metrics>,
    rooms: Vec<StagedRoom>,
}

struct StagedRoom {
    waker: fanout::Waker<Arc<Event>>,
    /// Events and bytes each receiver gets.
    counts: (usize, usize),
}

impl Staged {
    /// Wakes the receivers of every room the messages went to.
    pub fn wake(self) {
        for StagedRoom { waker, counts } in self.rooms {
            count_delivered(&self.metrics, waker.wake_all(), counts.0, counts.1);
        }
    }
}

fn count_delivered(m: &Metrics, receivers: usize, events: usize, len: usize) {
    m.events_delivered_total.inc_by((receivers * events) as u64);
    m.bytes_sent_total.inc_by((receivers * len) as u64);
}

impl SubscriptionGuard {
    /// The client whose stream this is (for a long-poll's watch, unset:
    /// never an [`crate::chat::subscriber::EventStream`]'s viewer).
    pub(super) fn client(&self) -> ClientId {
        self.client
    }
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        let client = self.present.then_some(self.client);
        self.hub.release(&self.room, client);
    }
}

/// Too many typing notices: retry after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypingTooOften(pub u64);

impl Hub {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Hub {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                capacity: capacity.max(1),
                shutting_down: AtomicBool::new(false),
                keepalive: Arc::new(Event::Keepalive),
                metrics,
                cluster: OnceLock::new(),
            }),
        }
    }

    /// Switches presence to cluster mode: changes are no longer made here
    /// but arrive through [`Hub::cluster_batch`].
    pub fn set_cluster(&self, cluster: Arc<dyn ClusterPresence>) {
        let _ = self.shared.cluster.set(cluster);
    }

    fn clustered(&self) -> bool {
        self.shared.cluster.get().is_some()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters more than refusing service forever would.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Opens an SSE stream's subscription. The stream's tally counts its
    /// own join, so it never hears of it.
    pub fn open_stream(
        &self,
        room: &RoomName,
        client: ClientId,
        name: &DisplayName,
    ) -> Result<Subscription, ShuttingDown> {
        let mut state = self.lock();
        if self.is_shutting_down() {
            return Err(ShuttingDown);
        }
        let r = self.room_entry(&mut state, room);
        let first = !r.presence.contains_key(&client);
        let p = r.presence.entry(client).or_insert_with(|| Presence {
            name: name.clone(),
            streams: 0,
        });
        p.streams += 1;
        p.name = name.clone();
        let online = r.presence.len();
        let mut cluster_online = None;
        if first {
            match self.shared.cluster.get() {
                Some(cluster) => cluster_online = Some(cluster.join(room, client, name)),
                None => {
                    r.live.window.change(Change {
                        kind: PresenceKind::Join,
                        name: name.clone(),
                        about: client,
                    });
                    self.schedule_flush(room, r);
                }
            }
        }
        r.watchers += 1;
        let rx = r.tx.subscribe();
        let board = r.live.board.clone();
        let (seen, typing_seen) = (r.live.window.tally, board.typing_seq());
        drop(state);
        self.shared.metrics.sse_streams.inc();
        Ok(Subscription {
            rx,
            guard: SubscriptionGuard {
                hub: self.clone(),
                room: room.clone(),
                client,
                present: true,
            },
            online,
            first,
            cluster_online,
            board,
            seen,
            typing_seen,
        })
    }

    /// Watches a room's live events without counting as presence (long-poll).
    pub fn watch(&self, room: &RoomName) -> Result<Subscription, ShuttingDown> {
        let mut state = self.lock();
        if self.is_shutting_down() {
            return Err(ShuttingDown);
        }
        let r = self.room_entry(&mut state, room);
        r.watchers += 1;
        let online = r.presence.len();
        let rx = r.tx.subscribe();
        Ok(Subscription {
            rx,
            guard: SubscriptionGuard {
                hub: self.clone(),
                room: room.clone(),
                client: ClientId::from_bytes([0; 16]), // not looked at
                present: false,
            },
            online,
            first: false,
            cluster_online: None,
            board: r.live.board.clone(),
            seen: r.live.window.tally,
            typing_seen: r.live.board.typing_seq(),
        })
    }

    fn room_entry<'a>(&self, state: &'a mut State, room: &RoomName) -> &'a mut Room {
        let capacity = self.shared.capacity;
        state.rooms.entry(room.clone()).or_insert_with(|| Room {
            tx: fanout::channel(capacity),
            presence: HashMap::new(),
            watchers: 0,
            live: RoomPresence::new(),
            cluster_online: 0,
        })
    }

    fn release(&self, room: &RoomName, client: Option<ClientId>) {
        let mut state = self.lock();
        let Some(r) = state.rooms.get_mut(room) else {
            return;
        };
        r.watchers = r.watchers.saturating_sub(1);
        if let Some(client) = client {
            self.shared.metrics.sse_streams.dec();
            if let Some(p) = r.presence.get_mut(&client) {
                p.streams -= 1;
                if p.streams == 0 {
                    let name = r.presence.remove(&client).map(|p| p.name);
                    if let Some(name) = name {
                        if let Some(cluster) = self.shared.cluster.get() {
                            cluster.leave(room, client);
                        } else if r.watchers > 0 {
                            r.live.window.change(Change {
                                kind: PresenceKind::Leave,
                                name,
                                about: client,
                            });
                            self.schedule_flush(room, r);
                        }
                    }
                }
            }
        }
        if r.watchers == 0 {
            state.rooms.remove(room);
        }
    }

    /// Delivers stored messages, in the order given (which must be id order
    /// per room: the single writer guarantees it). The messages of one room
    /// in one call travel as one event: each subscriber then wakes once and
    /// writes them with one `writev`, instead of once per message.
    pub fn publish(&self, messages: Vec<Message>) {
        self.stage(messages).wake();
    }

    /// The first half of [`Hub::publish`]: puts the messages in their rooms'
    /// channels, in order, without waking anyone. From then on a stream or
    /// long-poll that opens does not get them live (they are history), and
    /// one already open finds them when it looks. [`Staged::wake`] wakes
    /// the waiting ones; the writer thread stages before it answers the
    /// POSTs and leaves the waking (a thousand wakes) to a runtime task.
    ///
    /// A room's pending presence is published first: streams write it
    /// before the messages, and the message does not wait for the window.
    pub fn stage(&self, messages: Vec<Message>) -> Staged {
        // Encode outside the lock: the lock only covers the pushes.
        let mut by_room: Vec<(RoomName, Vec<MessageFrames>)> = Vec::new();
        for m in messages {
            let frames = MessageFrames::new(m);
            let room = &frames.message.room;
            match by_room.iter_mut().find(|(r, _)| r == room) {
                Some((_, list)) => list.push(frames),
                None => by_room.push((room.clone(), vec![frames])),
            }
        }
        let clustered = self.clustered();
        let mut state = self.lock();
        let rooms = by_room
            .into_iter()
            .filter_map(|(room, list)| {
                let r = state.rooms.get_mut(&room)?;
                if !r.live.window.is_empty() {
                    // Woken below with the messages.
                    let _ = self.flush_window(r, clustered);
                }
                let event = Arc::new(Event::Messages(list));
                let counts = Self::counts(&event);
                r.tx.push(event);
                Some(StagedRoom {
                    waker: r.tx.waker(),
                    counts,
                })
            })
            .collect();
        Staged {
            metrics: self.shared.metrics.clone(),
            rooms,
        }
    }

    /// (events, bytes) one receiver gets from `event`, for the metrics.
    /// Bytes are counted as the common (JSON, not-me) rendering.
    fn counts(event: &Event) -> (usize, usize) {
        match event {
            Event::Messages(list) => (list.len(), list.iter().map(MessageFrames::common_len).sum()),
            _ => (0, 0),
        }
    }

    /// Rooms with live machinery on this node.
    pub fn live_room_names(&self) -> Vec<RoomName> {
        self.lock().rooms.keys().cloned().collect()
    }

    /// One keep-alive tick to every live room.
    pub fn keepalive(&self) {
        let state = self.lock();
        for r in state.rooms.values() {
            let _ = r.tx.send(self.shared.keepalive.clone());
        }
    }

    /// Refuses new subscriptions and tells every open one to end.
    pub fn shutdown(&self) {
        let state = self.lock();
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let event = Arc::new(Event::Shutdown);
        for r in state.rooms.values() {
            let _ = r.tx.send(event.clone());
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst)
    }

    pub fn online(&self, room: &RoomName) -> usize {
        self.lock().rooms.get(room).map_or(0, |r| r.presence.len())
    }

    /// Rooms with someone online, with their counts.
    pub fn rooms_online(&self) -> Vec<(RoomName, usize)> {
        self.lock()
            .rooms
            .iter()
            .filter(|(_, r)| !r.presence.is_empty())
            .map(|(name, r)| (name.clone(), r.presence.len()))
            .collect()
    }

    /// Number of rooms with live machinery (for tests and metrics).
    pub fn live_rooms(&self) -> usize {
        self.lock().rooms.len()
    }

    /// Records the latest name a client used.
    pub fn set_name(&self, client: ClientId, name: &DisplayName) {
        let mut state = self.lock();
        if state.names.len() >= MAX_REMEMBERED_NAMES && !state.names.contains_key(&client) {
            if let Some(k) = state.names.keys().next().copied() {
                state.names.remove(&k);
            }
        }
        state.names.insert(client, name.clone());
    }

    /// The client's current name: the latest it set, else its guest name.
    pub fn name_of(&self, client: ClientId) -> DisplayName {
        self.lock()
            .names
            .get(&client)
            .cloned()
            .unwrap_or_else(|| DisplayName::guest(client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::message::Format;
    use crate::chat::types::EventId;

    fn hub() -> Hub {
        Hub::new(16, Arc::new(Metrics::default()))
    }

    fn name(s: &str) -> DisplayName {
        DisplayName::parse(s).unwrap()
    }

    #[test]
    fn presence_counts_distinct_clients_and_frees_rooms() {
        let hub = hub();
        let room = RoomName::lobby();
        let a1 = hub
            .open_stream(&room, ClientId::test(1), &name("a"))
            .unwrap();
        assert_eq!(a1.online, 1);
        let a2 = hub
            .open_stream(&room, ClientId::test(1), &name("a"))
            .unwrap();
        assert_eq!(
            a2.online, 1,
            "a second stream of one client is not a second person"
        );
        let mut b = hub
            .open_stream(&room, ClientId::test(2), &name("b"))
            .unwrap();
        assert_eq!(b.online, 2);
        drop(a1);
        assert_eq!(hub.online(&room), 2);
        drop(a2);
        assert_eq!(hub.online(&room), 1);
        // No runtime here: each change is published at once.
        let latest = b.board.latest();
        let text = latest.frame_for(b.seen, Format::Text).unwrap();
        assert!(std::str::from_utf8(&text)
            .unwrap()
            .contains("a left (1 online)"));
        assert!(
            b.rx.try_recv().is_err(),
            "presence is not in the message ring"
        );
        drop(b);
        assert_eq!(
            hub.live_rooms(),
            0,
            "room machinery freed with its last stream"
        );
    }

    #[test]
    fn a_stream_does_not_see_its_own_join() {
        let hub = hub();
        let room = RoomName::lobby();
        let a = hub
            .open_stream(&room, ClientId::test(1), &name("a"))
            .unwrap();
        let b = hub
            .open_stream(&room, ClientId::test(2), &name("b"))
            .unwrap();
        assert!(a.board.presence_after(a.seen), "a hears of b");
        assert!(
            !b.board.presence_after(b.seen),
            "b counted itself in its hello"
        );
    }

    #[test]
    fn online_names_are_the_first_alphabetically() {
        let hub = hub();
        let room = RoomName::lobby();
        let _subs: Vec<_> = (0..50)
            .map(|i| {
                let n = name(&format!("n{:02}", 49 - i));
                hub.open_stream(&room, ClientId::test(i), &n).unwrap()
            })
            .collect();
        let (online, names) = hub.online_names(&room, 5);
        assert_eq!(online, 50);
        let names: Vec<&str> = names.iter().map(DisplayName::as_str).collect();
        assert_eq!(names, ["n00", "n01", "n02", "n03", "n04"]);
        assert_eq!(
            hub.online_names(&RoomName::parse("none").unwrap(), 5),
            (0, vec![])
        );
    }

    #[test]
    fn publish_reaches_only_the_room() {
        let hub = hub();
        let lobby = RoomName::lobby();
        let other = RoomName::parse("other").unwrap();
        let mut w = hub.watch(&other).unwrap();
        hub.publish(vec![Message {
            id: EventId::assigned(1),
            room: lobby,
            name: name("a"),
            text: "x".into(),
            ts: 0,
            sender: ClientId::test(1),
        }]);
        assert!(w.rx.try_recv().is_err());
    }

    #[test]
    fn shutdown_refuses_new_and_ends_open_streams() {
        let hub = hub();
        let mut s = hub.watch(&RoomName::lobby()).unwrap();
        hub.shutdown();
        assert!(matches!(&*s.rx.try_recv().unwrap(), Event::Shutdown));
        assert!(hub.watch(&RoomName::lobby()).is_err());
    }

    #[test]
    fn names_default_to_guest_and_latest_wins() {
        let hub = hub();
        assert!(hub
            .name_of(ClientId::test(5))
            .as_str()
            .starts_with("guest-"));
        hub.set_name(ClientId::test(5), &name("x"));
        hub.set_name(ClientId::test(5), &name("y"));
        assert_eq!(hub.name_of(ClientId::test(5)).as_str(), "y");
    }
}
