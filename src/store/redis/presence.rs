//! Cluster mode's presence, and the chat's cluster port built on it.
//!
//! [`Presence`] makes the blocking Redis calls (`batch.lua`, `online.lua`,
//! `reap.lua`, heartbeats); [`RedisCluster`] is what the chat holds: its
//! join, leave and typing calls queue up in the order the hub issued them
//! (a leave and a re-join of the same client must not swap) and go to
//! Redis in gathering windows, one script call per room per window, so a
//! crowd arriving costs one publish per node per window, not one per join;
//! [`heartbeat`] keeps the node alive and reaps dead ones.

use std::sync::Arc;
use std::time::Duration;

use redis::{Commands, Script};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{now_ms, Conn};
use crate::chat::cluster::Cluster;
use crate::chat::cluster::{ClusterPresence, Joined, PRESENCE_GATHER};
use crate::chat::history::HistoryResult;
use crate::chat::message::Tally;
use crate::chat::types::{ClientId, DisplayName, RoomName};

const LEAVE_FN: &str = include_str!("leave_fn.lua");
const BATCH: &str = include_str!("batch.lua");
const ONLINE: &str = include_str!("online.lua");
const REAP: &str = include_str!("reap.lua");

/// A lost leave would show the client online for as long as this node
/// lives: a window whose call failed has its leaves retried this many
/// times, this far apart, while Redis is away (joins and typing are not
/// retried: the hello falls back to this node's count, and typing is
/// stale by then).
const LEAVE_ATTEMPTS: u32 = 20;
const LEAVE_RETRY: Duration = Duration::from_millis(500);

/// How often a node refreshes its heartbeat and looks for dead nodes, as
/// a fraction of the node TTL (at least a few beats per TTL).
pub fn heartbeat_every(node_ttl: Duration) -> Duration {
    (node_ttl / 4).max(Duration::from_millis(250))
}

/// This node's presence records in Redis. Every call blocks.
pub struct Presence {
    conn: Arc<Conn>,
    node: String,
    /// How long this node's heartbeat keeps its presence alive.
    node_ttl: Duration,
    batch: Script,
    online: Script,
    reap: Script,
}

impl Presence {
    pub(super) fn new(conn: Arc<Conn>, node: String, node_ttl: Duration) -> Self {
        Presence {
            conn,
            node,
            node_ttl,
            batch: Script::new(&format!("{LEAVE_FN}{BATCH}")),
            online: Script::new(ONLINE),
            reap: Script::new(&format!("{LEAVE_FN}{REAP}")),
        }
    }

    /// This node's id in the cluster.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Sends one window of one room's operations (see `batch.lua`);
    /// returns the cluster-wide online count and the room's tally after it.
    pub fn batch(&self, room: &RoomName, ops: &[PresenceOp]) -> HistoryResult<Joined> {
        let expiry = now_ms() + self.node_ttl.as_millis() as u64;
        let (online, joined, left): (usize, u64, u64) = self.conn.with_retry(|c| {
            let mut call = self.batch.prepare_invoke();
            call.arg(room.as_str()).arg(&self.node).arg(expiry);
            for op in ops {
                let (kind, client, name) = match op {
                    PresenceOp::Join(client, name, _) => ("j", client, name.as_str()),
                    PresenceOp::Leave(client) => ("l", client, ""),
                    PresenceOp::Typing(client, name) => ("t", client, name.as_str()),
                };
                call.arg(kind).arg(client.to_hex()).arg(name);
            }
            call.invoke(c)
        })?;
        Ok(Joined {
            online,
            tally: Tally { joined, left },
        })
    }

    /// The cluster-wide count and up to `limit` (≤ 100) names, sorted: one
    /// round trip.
    pub fn online_names(
        &self,
        room: &RoomName,
        limit: usize,
    ) -> HistoryResult<(usize, Vec<DisplayName>)> {
        let (n, names): (usize, Vec<String>) = self
            .conn
            .with_retry(|c| self.online.arg(room.as_str()).invoke(c))?;
        let mut names: Vec<DisplayName> = names
            .iter()
            .filter_map(|n| DisplayName::parse(n).ok())
            .collect();
        names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        names.truncate(limit);
        Ok((n, names))
    }

    pub fn online(&self, room: &RoomName) -> HistoryResult<usize> {
        self.conn
            .with_retry(|c| c.hlen(format!("ssechat:pc:{room}")))
    }

    /// The online counts of `rooms`, in one round trip.
    pub fn online_many(&self, rooms: &[RoomName]) -> HistoryResult<Vec<usize>> {
        let mut pipe = redis::pipe();
        for room in rooms {
            pipe.hlen(format!("ssechat:pc:{room}"));
        }
        self.conn.with_retry(|c| pipe.query(c))
    }

    /// Refreshes this node's heartbeat and reaps nodes whose heartbeat ran out.
    pub fn heartbeat(&self) -> HistoryResult<()> {
        let now = now_ms();
        let dead: Vec<String> = self.conn.with_retry(|c| {
            let _: () = c.zadd(
                "ssechat:nodes",
                &self.node,
                now + self.node_ttl.as_millis() as u64,
            )?;
            c.zrangebyscore("ssechat:nodes", "-inf", now)
        })?;
        for node in dead {
            let rooms: usize = self
                .conn
                .with_retry(|c| self.reap.arg(&node).arg(now).arg("0").invoke(c))?;
            tracing::warn!(
                node,
                rooms,
                "reaped the presence of a node that stopped answering"
            );
        }
        Ok(())
    }

    /// Removes this node's presence (clean shutdown), sending its leaves.
    pub fn reap_self(&self) {
        let r: HistoryResult<usize> = self
            .conn
            .with(|c| self.reap.arg(&self.node).arg(now_ms()).arg("1").invoke(c));
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not remove this node's presence from Redis");
        }
    }
}

/// Keeps this node's heartbeat fresh and reaps dead nodes, until cancelled.
pub async fn heartbeat(presence: Arc<Presence>, cancel: CancellationToken) {
    let mut beat = tokio::time::interval(heartbeat_every(presence.node_ttl));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = beat.tick() => {}
        }
        let p = presence.clone();
        match tokio::task::spawn_blocking(move || p.heartbeat()).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "cluster heartbeat failed"),
            Err(e) => tracing::warn!(error = %e, "cluster heartbeat task failed"),
            Ok(Ok(())) => {}
        }
    }
}

/// One presence operation of this node, queued for its room's window.
pub enum PresenceOp {
    Join(ClientId, DisplayName, oneshot::Sender<Joined>),
    Leave(ClientId),
    Typing(ClientId, DisplayName),
}

/// The chat's cluster port, on Redis.
pub struct RedisCluster {
    presence: Arc<Presence>,
    conn: Arc<Conn>,
    queue: mpsc::UnboundedSender<(RoomName, PresenceOp)>,
}

impl RedisCluster {
    /// Starts the presence queue (call within the tokio runtime). Its task
    /// ends once the cluster is dropped and the queue has drained.
    ///
    /// Windows: an operation after a quiet spell goes at once (a lone
    /// join's hello waits for it); the next window opens a
    /// [`PRESENCE_GATHER`] after the last one was sent and takes all that
    /// queued meanwhile, every room in one round trip of the task.
    pub fn start(presence: Arc<Presence>) -> Self {
        let (queue, mut rx) = mpsc::unbounded_channel::<(RoomName, PresenceOp)>();
        let p = presence.clone();
        tokio::spawn(async move {
            let mut last = tokio::time::Instant::now() - PRESENCE_GATHER;
            let mut retry: Vec<(RoomName, PresenceOp)> = Vec::new();
            let mut attempts = 0;
            loop {
                if retry.is_empty() {
                    match rx.recv().await {
                        Some(op) => retry.push(op),
                        None => return,
                    }
                }
                tokio::time::sleep_until(last + PRESENCE_GATHER).await;
                last = tokio::time::Instant::now();
                let mut ops = std::mem::take(&mut retry);
                while let Ok(op) = rx.try_recv() {
                    ops.push(op);
                }
                let p = p.clone();
                let failed = tokio::task::spawn_blocking(move || send_window(&p, ops))
                    .await
                    .unwrap_or_default();
                if failed.is_empty() {
                    attempts = 0;
                    continue;
                }
                attempts += 1;
                if attempts >= LEAVE_ATTEMPTS {
                    tracing::error!(leaves = failed.len(), "cluster leaves lost");
                    attempts = 0;
                    continue;
                }
                retry = failed;
                last += LEAVE_RETRY;
            }
        });
        RedisCluster {
            conn: presence.conn.clone(),
            presence,
            queue,
        }
    }
}

/// Sends a window: one script call per room; answers the joins. Returns
/// the leaves of rooms whose call failed, to try again.
fn send_window(p: &Presence, ops: Vec<(RoomName, PresenceOp)>) -> Vec<(RoomName, PresenceOp)> {
    let mut rooms: Vec<(RoomName, Vec<PresenceOp>)> = Vec::new();
    for (room, op) in ops {
        match rooms.iter_mut().find(|(r, _)| *r == room) {
            Some((_, list)) => list.push(op),
            None => rooms.push((room, vec![op])),
        }
    }
    let mut failed = Vec::new();
    for (room, ops) in rooms {
        match p.batch(&room, &ops) {
            Ok(joined) => {
                for op in ops {
                    if let PresenceOp::Join(_, _, reply) = op {
                        let _ = reply.send(joined);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "cluster presence failed; its leaves are retried");
                failed.extend(
                    ops.into_iter()
                        .filter(|op| matches!(op, PresenceOp::Leave(_)))
                        .map(|op| (room.clone(), op)),
                );
            }
        }
    }
    failed
}

impl ClusterPresence for RedisCluster {
    fn join(
        &self,
        room: &RoomName,
        client: ClientId,
        name: &DisplayName,
    ) -> oneshot::Receiver<Joined> {
        let (reply, rx) = oneshot::channel();
        let _ = self
            .queue
            .send((room.clone(), PresenceOp::Join(client, name.clone(), reply)));
        rx
    }

    fn leave(&self, room: &RoomName, client: ClientId) {
        let _ = self.queue.send((room.clone(), PresenceOp::Leave(client)));
    }

    fn typing(&self, room: &RoomName, client: ClientId, name: &DisplayName) {
        let _ = self
            .queue
            .send((room.clone(), PresenceOp::Typing(client, name.clone())));
    }
}

impl Cluster for RedisCluster {
    fn online(&self, room: &RoomName) -> Option<usize> {
        self.presence.online(room).ok()
    }

    fn online_many(&self, rooms: &[RoomName]) -> Option<Vec<usize>> {
        self.presence.online_many(rooms).ok()
    }

    fn online_names(&self, room: &RoomName, limit: usize) -> Option<(usize, Vec<DisplayName>)> {
        self.presence.online_names(room, limit).ok()
    }

    fn is_healthy(&self) -> bool {
        self.conn.is_healthy()
    }

    fn depart(&self) {
        self.presence.reap_self();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A script that calls a helper the prepended functions do not define
    /// fails only when Redis runs it: check every call has its definition.
    #[test]
    fn every_helper_a_script_calls_is_defined() {
        for (name, script) in [("batch.lua", BATCH), ("reap.lua", REAP)] {
            for helper in ["leave", "tally", "publish"] {
                if script.contains(&format!("{helper}(")) {
                    assert!(
                        LEAVE_FN.contains(&format!("local function {helper}(")),
                        "{name} calls {helper}(), which leave_fn.lua does not define"
                    );
                }
            }
        }
    }
}
