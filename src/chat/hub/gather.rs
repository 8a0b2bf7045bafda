//! The hub's side of presence and typing: each room's gathering window,
//! the timer that publishes it on the room's board, batches from the
//! cluster, typing notices, and who is online.
//!
//! [`PRESENCE_GATHER`]: crate::chat::presence::PRESENCE_GATHER

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::{fanout, Event, Hub, PresenceBatch, Room, TypingTooOften};
use crate::chat::types::{ClientId, DisplayName, RoomName};

impl Hub {
    /// Makes sure the room's window is flushed: [`PRESENCE_GATHER`] after
    /// its first change, or later on a busy node in a room that had a
    /// window lately ([`Window::due`](crate::chat::presence::Window::due)).
    /// One timer per room and window, none while the room is quiet.
    pub(super) fn schedule_flush(&self, room: &RoomName, r: &mut Room) {
        if r.live.window.timer {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (a plain unit test): publish at once.
            let clustered = self.clustered();
            self.flush_window(r, clustered).wake_all();
            return;
        };
        r.live.window.timer = true;
        // Spaced by the node's streams, not only the room's: a hundred
        // rooms of 100 filling up at once cost as many writes per window
        // as one room of 10,000 (and took 12 s to connect instead of 1.5).
        let node = usize::try_from(self.shared.metrics.sse_streams.get()).unwrap_or(0);
        let due = r
            .live
            .window
            .due(tokio::time::Instant::now(), r.watchers.max(node));
        let (hub, room) = (self.clone(), room.clone());
        runtime.spawn(async move {
            tokio::time::sleep_until(due).await;
            let clustered = hub.clustered();
            let waker = {
                let mut state = hub.lock();
                let Some(r) = state.rooms.get_mut(&room) else {
                    return;
                };
                r.live.window.timer = false;
                if r.live.window.is_empty() {
                    return; // a message flushed it already
                }
                hub.flush_window(r, clustered)
            };
            waker.wake_all();
        });
    }

    /// Publishes the room's window on its board. The caller wakes the
    /// room's receivers (once, with whatever else it has for them).
    pub(super) fn flush_window(&self, r: &mut Room, clustered: bool) -> fanout::Waker<Arc<Event>> {
        let online = r.online(clustered);
        r.live.window.flush(&r.live.board, online);
        let receivers = r.tx.receiver_count();
        let m = &self.shared.metrics;
        m.events_delivered_total.inc_by(receivers as u64);
        r.tx.waker()
    }

    /// Applies presence changes the cluster ordered (every node, the one
    /// they came from included, hears every batch): they wait in the room's
    /// window like local ones would.
    pub fn cluster_batch(&self, batch: PresenceBatch) {
        let mut state = self.lock();
        let Some(r) = state.rooms.get_mut(&batch.room) else {
            return;
        };
        r.cluster_online = batch.online;
        r.live
            .window
            .changes_between(batch.from, batch.to, batch.changes);
        for (client, name) in &batch.typing {
            r.live.window.typing(*client, name);
        }
        if !r.live.window.is_empty() {
            self.schedule_flush(&batch.room, r);
        }
    }

    /// A client is typing in a room: its other streams' viewers hear of it
    /// within a window. One per client per 2 s (and a few per address).
    pub fn typing(
        &self,
        room: &RoomName,
        client: ClientId,
        name: &DisplayName,
        ip: Option<IpAddr>,
    ) -> Result<(), TypingTooOften> {
        let mut state = self.lock();
        state
            .typing
            .check(client, ip, Instant::now())
            .map_err(TypingTooOften)?;
        if let Some(cluster) = self.shared.cluster.get() {
            cluster.typing(room, client, name);
        } else if let Some(r) = state.rooms.get_mut(room) {
            r.live.window.typing(client, name);
            self.schedule_flush(room, r);
        }
        Ok(())
    }

    /// Distinct clients online in a room on this node, and the first
    /// `limit` of their names in alphabetical order.
    pub fn online_names(&self, room: &RoomName, limit: usize) -> (usize, Vec<DisplayName>) {
        let state = self.lock();
        let Some(r) = state.rooms.get(room) else {
            return (0, Vec::new());
        };
        let mut names: Vec<&DisplayName> = r.presence.values().map(|p| &p.name).collect();
        let by_name = |a: &&DisplayName, b: &&DisplayName| a.as_str().cmp(b.as_str());
        if names.len() > limit && limit > 0 {
            // Linear: a room of thousands is not sorted whole under the lock.
            names.select_nth_unstable_by(limit - 1, by_name);
        }
        names.truncate(limit);
        names.sort_unstable_by(by_name);
        (r.presence.len(), names.into_iter().cloned().collect())
    }
}
