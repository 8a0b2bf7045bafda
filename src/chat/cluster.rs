//! The cluster port: what the chat needs when several nodes act as one
//! chat, and the entry point through which the cluster delivers to it.
//!
//! The domain owns both sides. A cluster implementation (the Redis
//! adapter in the store module) implements [`Cluster`] (presence, the
//! cluster-wide online count, health) and feeds what every node hears into
//! an [`Inbox`]; it never touches the hub. The presence types the port
//! speaks in are re-exported here, so an adapter needs nothing else. Publishing needs no method of its own: a clustered
//! history publishes each message as it stores it (atomically, so the
//! publish order is the id order) and every node, the appending one
//! included, receives it back through its inbox. The writer then leaves
//! delivery to the inbox (see `Chat::clustered`).

use std::sync::Arc;

use super::history::History;
use super::hub::Hub;

pub use super::hub::{ClusterPresence, Joined, PresenceBatch};
use super::message::Message;
pub use super::presence::PRESENCE_GATHER;
use super::types::{DisplayName, EventId, RoomName};

/// Cluster-wide presence and health. Presence calls (from
/// [`ClusterPresence`]) must not block: they queue work and return. The
/// other calls may block (network); the chat makes them off the runtime.
pub trait Cluster: ClusterPresence + Send + Sync + 'static {
    /// Distinct clients online in `room` across the cluster, or `None` if
    /// the cluster does not answer (the chat then uses this node's count).
    fn online(&self, room: &RoomName) -> Option<usize>;

    /// [`Cluster::online`] of each of `rooms`, in order, asked at once (one
    /// round trip, not one per room), or `None` if the cluster does not
    /// answer.
    fn online_many(&self, rooms: &[RoomName]) -> Option<Vec<usize>>;
    /// The count and up to `limit` names, sorted (a sample when there are
    /// more), or `None` if the cluster does not answer.
    fn online_names(&self, room: &RoomName, limit: usize) -> Option<(usize, Vec<DisplayName>)>;

    /// Whether this node hears the cluster (its subscription is up).
    fn is_healthy(&self) -> bool;

    /// This node leaves for good (clean shutdown): its clients' presence
    /// goes, and the leave events it owes are sent.
    fn depart(&self);
}

/// Where a cluster delivers what this node hears. Cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    hub: Hub,
    history: Arc<dyn History>,
}

/// How many messages per room a catch-up replays at most.
const CATCH_UP_LIMIT: usize = 100_000;

impl Inbox {
    pub(crate) fn new(hub: Hub, history: Arc<dyn History>) -> Self {
        Inbox { hub, history }
    }

    /// Stored messages, in id order per room, to this node's streams.
    pub fn messages(&self, messages: Vec<Message>) {
        self.hub.publish(messages);
    }

    /// A room's presence changes (and typing) as the cluster ordered
    /// them, to the room's streams here: they wait in the room's gathering
    /// window like local ones would.
    pub fn presence(&self, batch: PresenceBatch) {
        self.hub.cluster_batch(batch);
    }

    /// After this node stopped hearing the cluster for a while: delivers
    /// what its live rooms missed after `last_seen` (streams skip ids they
    /// already sent, so delivering too much is harmless).
    pub async fn catch_up(&self, last_seen: EventId) {
        for room in self.hub.live_room_names() {
            let (history, r) = (self.history.clone(), room.clone());
            let missed = tokio::task::spawn_blocking(move || {
                history.after(&r, Some(last_seen), CATCH_UP_LIMIT)
            })
            .await;
            match missed {
                Ok(Ok(messages)) if !messages.is_empty() => self.hub.publish(messages),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(room = %room, error = %e, "catch-up failed"),
                Err(e) => tracing::warn!(error = %e, "catch-up task failed"),
            }
        }
    }
}
