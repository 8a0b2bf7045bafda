//! Cluster mode's presence, and the chat's cluster port built on it.
//!
//! [`Presence`] makes the blocking Redis calls (`join.lua`, `leave.lua`,
//! `reap.lua`, heartbeats); [`RedisCluster`] is what the chat holds: its
//! join and leave calls queue up and run one at a time in the order the
//! hub issued them (a leave and a re-join of the same client must not
//! swap); [`heartbeat`] keeps the node alive and reaps dead ones.

use std::sync::Arc;
use std::time::Duration;

use redis::{Commands, Script};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{now_ms, Conn};
use crate::chat::cluster::Cluster;
use crate::chat::history::HistoryResult;
use crate::chat::hub::ClusterPresence;
use crate::chat::types::{ClientId, DisplayName, RoomName};

const JOIN: &str = include_str!("join.lua");
const LEAVE_FN: &str = include_str!("leave_fn.lua");
const LEAVE: &str = include_str!("leave.lua");
const REAP: &str = include_str!("reap.lua");

/// A lost leave would show the client online for as long as this node
/// lives: it is retried this many times, this far apart, while Redis is away.
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
    join: Script,
    leave: Script,
    reap: Script,
}

impl Presence {
    pub(super) fn new(conn: Arc<Conn>, node: String, node_ttl: Duration) -> Self {
        Presence {
            conn,
            node,
            node_ttl,
            join: Script::new(JOIN),
            leave: Script::new(&format!("{LEAVE_FN}{LEAVE}")),
            reap: Script::new(&format!("{LEAVE_FN}{REAP}")),
        }
    }

    /// This node's id in the cluster.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Registers a stream's client in a room, cluster-wide; returns the
    /// cluster-wide online count. Publishes `join` if the client was not
    /// online anywhere.
    pub fn join(
        &self,
        room: &RoomName,
        client: ClientId,
        name: &DisplayName,
    ) -> HistoryResult<usize> {
        let expiry = now_ms() + self.node_ttl.as_millis() as u64;
        self.conn.with_retry(|c| {
            self.join
                .key(format!("ssechat:pc:{room}"))
                .key(format!("ssechat:pn:{room}"))
                .key(format!("ssechat:pnode:{}:{room}", self.node))
                .key(format!("ssechat:nrooms:{}", self.node))
                .key("ssechat:nodes")
                .arg(client.to_hex())
                .arg(name.as_str())
                .arg(room.as_str())
                .arg(&self.node)
                .arg(expiry)
                .invoke(c)
        })
    }

    pub fn leave(&self, room: &RoomName, client: ClientId) -> HistoryResult<usize> {
        self.conn.with_retry(|c| {
            self.leave
                .arg(room.as_str())
                .arg(&self.node)
                .arg(client.to_hex())
                .invoke(c)
        })
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

enum PresenceOp {
    Join(RoomName, ClientId, DisplayName, oneshot::Sender<usize>),
    Leave(RoomName, ClientId),
}

/// The chat's cluster port, on Redis.
pub struct RedisCluster {
    presence: Arc<Presence>,
    conn: Arc<Conn>,
    queue: mpsc::UnboundedSender<PresenceOp>,
}

impl RedisCluster {
    /// Starts the presence queue (call within the tokio runtime). Its task
    /// ends once the cluster is dropped and the queue has drained.
    pub fn start(presence: Arc<Presence>) -> Self {
        let (queue, mut rx) = mpsc::unbounded_channel::<PresenceOp>();
        let p = presence.clone();
        tokio::spawn(async move {
            while let Some(op) = rx.recv().await {
                let p = p.clone();
                let _ = tokio::task::spawn_blocking(move || run_op(&p, op)).await;
            }
        });
        RedisCluster {
            conn: presence.conn.clone(),
            presence,
            queue,
        }
    }
}

fn run_op(p: &Presence, op: PresenceOp) {
    match op {
        PresenceOp::Join(room, client, name, reply) => match p.join(&room, client, &name) {
            Ok(online) => {
                let _ = reply.send(online);
            }
            Err(e) => tracing::warn!(room = %room, error = %e, "cluster join failed"),
        },
        PresenceOp::Leave(room, client) => {
            for attempt in 1..=LEAVE_ATTEMPTS {
                match p.leave(&room, client) {
                    Ok(_) => return,
                    Err(e) if attempt == LEAVE_ATTEMPTS => {
                        tracing::error!(room = %room, error = %e, "cluster leave lost")
                    }
                    Err(_) => std::thread::sleep(LEAVE_RETRY),
                }
            }
        }
    }
}

impl ClusterPresence for RedisCluster {
    fn join(
        &self,
        room: &RoomName,
        client: ClientId,
        name: &DisplayName,
    ) -> oneshot::Receiver<usize> {
        let (reply, rx) = oneshot::channel();
        let _ = self
            .queue
            .send(PresenceOp::Join(room.clone(), client, name.clone(), reply));
        rx
    }

    fn leave(&self, room: &RoomName, client: ClientId) {
        let _ = self.queue.send(PresenceOp::Leave(room.clone(), client));
    }
}

impl Cluster for RedisCluster {
    fn online(&self, room: &RoomName) -> Option<usize> {
        self.presence.online(room).ok()
    }

    fn online_many(&self, rooms: &[RoomName]) -> Option<Vec<usize>> {
        self.presence.online_many(rooms).ok()
    }

    fn is_healthy(&self) -> bool {
        self.conn.is_healthy()
    }

    fn depart(&self) {
        self.presence.reap_self();
    }
}
