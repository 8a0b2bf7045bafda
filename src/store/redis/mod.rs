//! Cluster mode: Redis is the engine. History, ids, idempotency and
//! presence live in Redis; every node keeps one subscription and delivers
//! what it hears to its chat's inbox. Split by role:
//!
//! - [`history`]: the chat's history port: one Lua script (`append.lua`)
//!   appends a message: it takes the next id from one global counter,
//!   `XADD`s it to the room's stream (trimmed to `--history`), records the
//!   idempotency key, and `PUBLISH`es it — atomically, so the publish order
//!   is the id order, and every node hears every message in the same order.
//! - [`presence`]: the chat's cluster port. Per room, a hash client →
//!   number of nodes where the client has a stream (online = its length),
//!   the room's tally (joins and leaves ever: streams tell what changed
//!   since their hello from it), and per node a set of its clients, so a
//!   node that dies without saying goodbye can be reaped by the others:
//!   nodes keep a heartbeat in a sorted set, and any node removes the
//!   entries of a node whose heartbeat expired, sending the leaves it
//!   owed. Presence crosses nodes in batches: each node sends what changed
//!   in a room during a gathering window as one script call (`batch.lua`),
//!   which publishes the cluster-wide changes, typing included, once.
//! - [`subscriber`]: the node's one subscription: parses what is published
//!   and hands it to the chat's inbox; a node that loses its subscription
//!   has the inbox catch up from the streams when it is back.
//!
//! Keys: `ssechat:seq`, `ssechat:active` (rooms by newest id), `ssechat:room:{room}` (stream),
//! `ssechat:idem:{sender}:{client_msg_id}`, `ssechat:pc:{room}`, `ssechat:pn:{room}`,
//! `ssechat:pt:{room}` (tally), `ssechat:pnode:{node}:{room}`, `ssechat:nrooms:{node}`, `ssechat:nodes`;
//! channel `ssechat:events`.

pub mod history;
pub mod presence;
pub mod subscriber;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::chat::history::{HistoryError, HistoryResult};
use crate::chat::types::random_hex;

pub use self::history::RedisHistory;
pub use self::presence::{Presence, RedisCluster};

/// The pub/sub channel every node listens to.
const CHANNEL: &str = "ssechat:events";
/// Redis commands fail after this instead of hanging a thread.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections kept open for reuse.
const POOL: usize = 8;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unavailable(e: redis::RedisError) -> HistoryError {
    HistoryError::Unavailable(format!("redis: {e}"))
}

/// One node's way to Redis: a client, a small pool of blocking
/// connections, and whether the subscription is up.
pub struct Conn {
    client: redis::Client,
    pool: Mutex<Vec<redis::Connection>>,
    /// The subscription is up (set by the subscriber loop).
    healthy: AtomicBool,
}

impl Conn {
    /// Runs `f` on a pooled connection. After a connection-level failure the
    /// pool is emptied (its connections are from before the failure, most
    /// likely dead too).
    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> HistoryResult<T> {
        let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.fresh().map_err(unavailable)?,
        };
        match f(&mut conn) {
            Ok(v) => {
                let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                if pool.len() < POOL {
                    pool.push(conn);
                }
                Ok(v)
            }
            Err(e) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
                }
                Err(unavailable(e))
            }
        }
    }

    /// Like `with`, retried once on a fresh connection if the first attempt
    /// failed at the connection level. Only for operations that are safe to
    /// repeat (reads, presence, heartbeats), never for appends.
    fn with_retry<T>(
        &self,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> HistoryResult<T> {
        self.with(&f).or_else(|_| self.with(&f))
    }

    fn fresh(&self) -> redis::RedisResult<redis::Connection> {
        let c = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        c.set_read_timeout(Some(IO_TIMEOUT))?;
        c.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(c)
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::SeqCst);
    }
}

/// A node connected to Redis: its history and its presence, sharing one
/// pool. [`RedisCluster::start`] makes the chat's cluster port of the
/// presence; [`subscriber::run`] and [`presence::heartbeat`] make the node
/// hear the cluster and stay alive in it.
pub struct Redis {
    pub conn: Arc<Conn>,
    pub history: Arc<RedisHistory>,
    pub presence: Arc<Presence>,
}

impl Redis {
    /// Connects, waiting up to `wait` for Redis to answer (0: one try), and
    /// registers this node (a fresh random id) with its first heartbeat.
    /// Blocking.
    pub fn connect(
        url: &str,
        history: usize,
        wait: Duration,
        node_ttl: Duration,
    ) -> Result<Self, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("invalid --redis URL {url:?}: {e}"))?;
        let deadline = Instant::now() + wait;
        let conn = loop {
            match client.get_connection_with_timeout(IO_TIMEOUT) {
                Ok(c) => break c,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "cannot reach Redis at {url}: {e} (start Redis, or pass --redis-wait SECONDS to wait for it)"
                    ))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for Redis");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        };
        conn.set_read_timeout(Some(IO_TIMEOUT)).ok();
        conn.set_write_timeout(Some(IO_TIMEOUT)).ok();
        let conn = Arc::new(Conn {
            client,
            pool: Mutex::new(vec![conn]),
            healthy: AtomicBool::new(true),
        });
        let presence = Presence::new(conn.clone(), random_hex(8), node_ttl);
        presence.heartbeat().map_err(|e| e.to_string())?;
        Ok(Redis {
            history: Arc::new(RedisHistory::new(conn.clone(), history)),
            presence: Arc::new(presence),
            conn,
        })
    }
}
