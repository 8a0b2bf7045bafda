//! The live side of the chat: rooms, their broadcast channels and presence.
//!
//! `Hub` is a cheap `Clone` handle around `Arc<Shared>` (as in mini-redis).
//! All live state sits behind one std `Mutex`: every critical section is a
//! few map operations and a non-blocking `fanout::Sender::send`, never an
//! `.await`, so a blocking mutex is both correct and faster than an async one.
//!
//! A room exists here only while something watches it (an SSE stream or a
//! long-poll); the last guard to drop removes it, so rooms that come and go
//! cost nothing. History is not here: it is in the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::oneshot;

use super::fanout;

use super::message::{Event, Message, MessageFrames, PresenceKind};
use super::types::{ClientId, DisplayName, RoomName};
use crate::metrics::Metrics;

/// Names remembered for clients that set one; beyond this, arbitrary old
/// entries are forgotten (the page sends its name with every request, so a
/// forgotten name comes back on the client's next request).
const MAX_REMEMBERED_NAMES: usize = 100_000;

/// How long join and leave events wait in a room's channel for company
/// before the room's streams are woken (anything else sent meanwhile wakes
/// them sooner). Everyone reconnecting at once after a restart then costs
/// each stream one write per burst of joins instead of one per join:
/// 10,000 clients in rooms of 100 connect in 0.9 s instead of 4.2 s
/// (20 ms gave 3.5 s). A tenth of a second is not seen by people.
pub(crate) const PRESENCE_GATHER: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Events a subscriber may fall behind before it is cut off. Bounds the
    /// memory a slow reader can pin: the channel keeps at most this many.
    capacity: usize,
    shutting_down: AtomicBool,
    keepalive: Arc<Event>,
    metrics: Arc<Metrics>,
    /// In cluster mode presence is counted in Redis and join/leave events
    /// come back through it; the hub then only tracks this node's streams
    /// and tells the cluster when a client's first stream here opens and
    /// its last one closes. Both calls are made under the hub lock, so the
    /// cluster sees them in the order they happened.
    cluster: OnceLock<Arc<dyn ClusterPresence>>,
}

/// Cluster-wide presence, as the hub needs it. Calls must not block: they
/// queue work and return.
pub trait ClusterPresence: Send + Sync {
    /// The client's first stream on this node opened; the receiver yields
    /// the cluster-wide online count.
    fn join(
        &self,
        room: &RoomName,
        client: ClientId,
        name: &DisplayName,
    ) -> oneshot::Receiver<usize>;
    /// The client's last stream on this node closed.
    fn leave(&self, room: &RoomName, client: ClientId);
}

#[derive(Default)]
struct State {
    rooms: HashMap<RoomName, Room>,
    names: HashMap<ClientId, DisplayName>,
}

struct Room {
    tx: fanout::Sender<Arc<Event>>,
    /// Clients with at least one open stream, and how many each has.
    presence: HashMap<ClientId, Presence>,
    /// Receivers handed out (streams and long-polls).
    watchers: usize,
    /// Presence events wait in the channel; a wake-up is on its way.
    wake_pending: bool,
    /// Presence events put in the channel since the last wake-up.
    unwoken: usize,
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
    /// Cluster mode: the cluster-wide online count, once Redis answers.
    pub cluster_online: Option<oneshot::Receiver<usize>>,
}

pub struct SubscriptionGuard {
    hub: Hub,
    room: RoomName,
    /// Set for SSE streams (they count as presence), unset for long-polls.
    client: Option<ClientId>,
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

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.hub.release(&self.room, self.client);
    }
}

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

    /// Switches presence to cluster mode: join/leave events are no longer
    /// made here but arrive through `broadcast`.
    pub fn set_cluster(&self, cluster: Arc<dyn ClusterPresence>) {
        let _ = self.shared.cluster.set(cluster);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters more than refusing service forever would.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Opens an SSE stream's subscription. The join event goes to the room's
    /// other streams before this one subscribes, so it never sees its own.
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
                    let event = Event::presence(PresenceKind::Join, name, online, client);
                    self.presence_event(room, r, event);
                }
            }
        }
        r.watchers += 1;
        let rx = r.tx.subscribe();
        drop(state);
        self.shared.metrics.sse_streams.inc();
        Ok(Subscription {
            rx,
            guard: SubscriptionGuard {
                hub: self.clone(),
                room: room.clone(),
                client: Some(client),
            },
            online,
            first,
            cluster_online,
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
                client: None,
            },
            online,
            first: false,
            cluster_online: None,
        })
    }

    fn room_entry<'a>(&self, state: &'a mut State, room: &RoomName) -> &'a mut Room {
        let capacity = self.shared.capacity;
        state.rooms.entry(room.clone()).or_insert_with(|| Room {
            tx: fanout::channel(capacity),
            presence: HashMap::new(),
            watchers: 0,
            wake_pending: false,
            unwoken: 0,
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
                        } else {
                            let online = r.presence.len();
                            let event = Event::presence(PresenceKind::Leave, &name, online, client);
                            self.presence_event(room, r, event);
                        }
                    }
                }
            }
        }
        if r.watchers == 0 {
            state.rooms.remove(room);
        }
    }

    /// Puts a join or leave event in the room's channel and makes sure the
    /// streams wake within [`PRESENCE_GATHER`]: one timer per room and
    /// burst, none while the room is quiet.
    fn presence_event(&self, room: &RoomName, r: &mut Room, event: Event) {
        let event = Arc::new(event);
        let (events, len) = Self::counts(&event);
        count_delivered(&self.shared.metrics, r.tx.receiver_count(), events, len);
        r.tx.push(event);
        r.unwoken += 1;
        // A burst must not fill the channel while nobody reads it: streams
        // would fall more than the capacity behind and be cut off.
        let full_enough = r.unwoken >= (self.shared.capacity / 4).max(1);
        let runtime = tokio::runtime::Handle::try_current();
        if full_enough || runtime.is_err() {
            r.unwoken = 0;
            r.tx.waker().wake_all();
            return;
        }
        if r.wake_pending {
            return;
        }
        let Ok(runtime) = runtime else { return };
        r.wake_pending = true;
        let (hub, room, waker) = (self.clone(), room.clone(), r.tx.waker());
        runtime.spawn(async move {
            tokio::time::sleep(PRESENCE_GATHER).await;
            // Cleared first: an event pushed after this point schedules
            // its own wake-up; one pushed before is covered by this one.
            if let Some(r) = hub.lock().rooms.get_mut(&room) {
                r.wake_pending = false;
                r.unwoken = 0;
            }
            waker.wake_all();
            // The woken streams have read by now, most likely: let the
            // burst's events go (a quiet room would otherwise keep them
            // until its next event, the keep-alive at the latest).
            tokio::time::sleep(PRESENCE_GATHER).await;
            waker.trim();
        });
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
        let state = self.lock();
        let rooms = by_room
            .into_iter()
            .filter_map(|(room, list)| {
                let r = state.rooms.get(&room)?;
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
            Event::Presence { json, .. } => (1, json.len()),
            _ => (0, 0),
        }
    }

    /// Sends an event and counts it, fanned out to `n` receivers, once per
    /// event: no atomic increments on the per-subscriber path.
    fn sent(&self, tx: &fanout::Sender<Arc<Event>>, event: Arc<Event>) {
        let (events, len) = Self::counts(&event);
        let n = tx.send(event);
        count_delivered(&self.shared.metrics, n, events, len);
    }

    /// Sends an event to a room's streams on this node (cluster presence).
    pub fn broadcast(&self, room: &RoomName, event: Event) {
        let state = self.lock();
        if let Some(r) = state.rooms.get(room) {
            self.sent(&r.tx, Arc::new(event));
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
        let a1 = hub.open_stream(&room, ClientId(1), &name("a")).unwrap();
        assert_eq!(a1.online, 1);
        let a2 = hub.open_stream(&room, ClientId(1), &name("a")).unwrap();
        assert_eq!(
            a2.online, 1,
            "a second stream of one client is not a second person"
        );
        let mut b = hub.open_stream(&room, ClientId(2), &name("b")).unwrap();
        assert_eq!(b.online, 2);
        drop(a1);
        assert_eq!(hub.online(&room), 2);
        drop(a2);
        assert_eq!(hub.online(&room), 1);
        match &*b.rx.try_recv().unwrap() {
            Event::Presence { text, .. } => assert!(std::str::from_utf8(text)
                .unwrap()
                .contains("a left (1 online)")),
            _ => panic!("expected leave"),
        }
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
        let mut a = hub.open_stream(&room, ClientId(1), &name("a")).unwrap();
        let mut b = hub.open_stream(&room, ClientId(2), &name("b")).unwrap();
        assert!(matches!(&*a.rx.try_recv().unwrap(), Event::Presence { .. }));
        assert!(b.rx.try_recv().is_err());
    }

    #[test]
    fn publish_reaches_only_the_room() {
        let hub = hub();
        let lobby = RoomName::lobby();
        let other = RoomName::parse("other").unwrap();
        let mut w = hub.watch(&other).unwrap();
        hub.publish(vec![Message {
            id: EventId(1),
            room: lobby,
            name: name("a"),
            text: "x".into(),
            ts: 0,
            sender: ClientId(1),
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
        assert!(hub.name_of(ClientId(5)).as_str().starts_with("guest-"));
        hub.set_name(ClientId(5), &name("x"));
        hub.set_name(ClientId(5), &name("y"));
        assert_eq!(hub.name_of(ClientId(5)).as_str(), "y");
    }
}
