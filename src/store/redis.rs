//! Cluster mode: Redis is the engine. History, ids, idempotency and
//! presence live in Redis; every node keeps one subscription and fans out
//! locally through its hub.
//!
//! One Lua script appends a message: it takes the next id from one global
//! counter, `XADD`s it to the room's stream (trimmed to `--history`),
//! records the idempotency key, and `PUBLISH`es it — atomically, so the
//! publish order is the id order, and every node hears every message in the
//! same order. A node that loses its subscription catches up from the
//! streams when it is back (streams skip ids they already sent).
//!
//! Presence: per room, a hash client → number of nodes where the client has
//! a stream (online = its length), and per node a set of its clients, so a
//! node that dies without saying goodbye can be reaped by the others: nodes
//! keep a heartbeat in a sorted set, and any node removes the entries of a
//! node whose heartbeat expired, sending the leave events it owed.
//!
//! Keys: `ssechat:seq`, `ssechat:rooms`, `ssechat:room:{room}` (stream),
//! `ssechat:idem:{sender}`, `ssechat:pc:{room}`, `ssechat:pn:{room}`,
//! `ssechat:pnode:{node}:{room}`, `ssechat:nrooms:{node}`, `ssechat:nodes`;
//! channel `ssechat:events`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::{Commands, Script};
use tokio_util::sync::CancellationToken;

use super::{Appended, NewMessage, Store, StoreError, StoreResult};
use crate::chat::hub::Hub;
use crate::chat::message::{Event, Message, PresenceKind};
use crate::chat::types::{random_hex, ClientId, DisplayName, EventId, RoomName};

const CHANNEL: &str = "ssechat:events";
/// How often a node refreshes its heartbeat and looks for dead nodes, as
/// a fraction of the node TTL (at least a few beats per TTL).
pub fn heartbeat_every(node_ttl: Duration) -> Duration {
    (node_ttl / 4).max(Duration::from_millis(250))
}
/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;
/// Redis commands fail after this instead of hanging a thread.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const POOL: usize = 8;

const APPEND: &str = r#"
if ARGV[6] ~= '' then
  local found = redis.call('HGET', KEYS[4], ARGV[6])
  if found then return {0, found} end
end
local id = redis.call('INCR', KEYS[1])
if ARGV[7] == '0' then
  redis.call('XADD', KEYS[2], id .. '-0', 'n', ARGV[2], 't', ARGV[3], 'ts', ARGV[4], 's', ARGV[5])
else
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], id .. '-0', 'n', ARGV[2], 't', ARGV[3], 'ts', ARGV[4], 's', ARGV[5])
end
redis.call('SADD', KEYS[3], ARGV[1])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[6], id .. ' ' .. ARGV[1])
  redis.call('EXPIRE', KEYS[4], ARGV[8])
end
redis.call('PUBLISH', 'ssechat:events',
  'm\n' .. id .. '\n' .. ARGV[1] .. '\n' .. ARGV[4] .. '\n' .. ARGV[5] .. '\n' .. ARGV[2] .. '\n' .. ARGV[3])
return {1, tostring(id)}
"#;

/// KEYS: pc, pn, pnode, nrooms, nodes. ARGV: client, name, room, node, expiry.
const JOIN: &str = r#"
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[4])
redis.call('SADD', KEYS[4], ARGV[3])
local added = redis.call('SADD', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if added == 1 then
  local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
  if n == 1 then
    local online = redis.call('HLEN', KEYS[1])
    redis.call('PUBLISH', 'ssechat:events',
      'p\njoin\n' .. ARGV[3] .. '\n' .. online .. '\n' .. ARGV[1] .. '\n' .. ARGV[2])
  end
end
return redis.call('HLEN', KEYS[1])
"#;

/// Removes one client of one node from a room; used by leave and reap.
const LEAVE_FN: &str = r#"
local function leave(room, node, client)
  local pc, pn = 'ssechat:pc:' .. room, 'ssechat:pn:' .. room
  if redis.call('SREM', 'ssechat:pnode:' .. node .. ':' .. room, client) == 1 then
    local n = redis.call('HINCRBY', pc, client, -1)
    if n <= 0 then
      redis.call('HDEL', pc, client)
      local name = redis.call('HGET', pn, client) or 'someone'
      redis.call('HDEL', pn, client)
      local online = redis.call('HLEN', pc)
      redis.call('PUBLISH', 'ssechat:events',
        'p\nleave\n' .. room .. '\n' .. online .. '\n' .. client .. '\n' .. name)
    end
  end
end
"#;

/// ARGV: room, node, client.
const LEAVE: &str = r#"
leave(ARGV[1], ARGV[2], ARGV[3])
return redis.call('HLEN', 'ssechat:pc:' .. ARGV[1])
"#;

/// Removes every presence entry of node ARGV[1] if its heartbeat is older
/// than ARGV[2] (ms), or unconditionally when ARGV[3] == '1' (own shutdown).
const REAP: &str = r#"
local node = ARGV[1]
local score = redis.call('ZSCORE', 'ssechat:nodes', node)
if ARGV[3] ~= '1' and score and tonumber(score) > tonumber(ARGV[2]) then return 0 end
local rooms = redis.call('SMEMBERS', 'ssechat:nrooms:' .. node)
for _, room in ipairs(rooms) do
  local clients = redis.call('SMEMBERS', 'ssechat:pnode:' .. node .. ':' .. room)
  for _, client in ipairs(clients) do leave(room, node, client) end
  redis.call('DEL', 'ssechat:pnode:' .. node .. ':' .. room)
end
redis.call('DEL', 'ssechat:nrooms:' .. node)
redis.call('ZREM', 'ssechat:nodes', node)
return #rooms
"#;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

pub struct RedisStore {
    client: redis::Client,
    pool: Mutex<Vec<redis::Connection>>,
    history: usize,
    node: String,
    /// How long this node's heartbeat keeps its presence alive.
    node_ttl: Duration,
    append: Script,
    join: Script,
    leave: Script,
    reap: Script,
    /// The subscription is up (and the last command went through).
    healthy: AtomicBool,
}

impl RedisStore {
    /// Connects, waiting up to `wait` for Redis to answer (0: one try).
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
        let node = random_hex(8);
        let store = RedisStore {
            client,
            pool: Mutex::new(vec![conn]),
            history,
            node,
            node_ttl,
            append: Script::new(APPEND),
            join: Script::new(JOIN),
            leave: Script::new(&format!("{LEAVE_FN}{LEAVE}")),
            reap: Script::new(&format!("{LEAVE_FN}{REAP}")),
            healthy: AtomicBool::new(true),
        };
        store.heartbeat().map_err(|e| e.to_string())?;
        Ok(store)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Runs `f` on a pooled connection. After a connection-level failure the
    /// pool is emptied (its connections are from before the failure, most
    /// likely dead too).
    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> StoreResult<T> {
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
    ) -> StoreResult<T> {
        self.with(&f).or_else(|_| self.with(&f))
    }

    fn fresh(&self) -> redis::RedisResult<redis::Connection> {
        let c = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        c.set_read_timeout(Some(IO_TIMEOUT))?;
        c.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(c)
    }

    /// Registers a stream's client in a room, cluster-wide; returns the
    /// cluster-wide online count. Publishes `join` if the client was not
    /// online anywhere.
    pub fn join(
        &self,
        room: &RoomName,
        client: ClientId,
        name: &DisplayName,
    ) -> StoreResult<usize> {
        let expiry = now_ms() + self.node_ttl.as_millis() as u64;
        self.with_retry(|c| {
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

    pub fn leave(&self, room: &RoomName, client: ClientId) -> StoreResult<usize> {
        self.with_retry(|c| {
            self.leave
                .arg(room.as_str())
                .arg(&self.node)
                .arg(client.to_hex())
                .invoke(c)
        })
    }

    pub fn online(&self, room: &RoomName) -> StoreResult<usize> {
        self.with_retry(|c| c.hlen(format!("ssechat:pc:{room}")))
    }

    /// Refreshes this node's heartbeat and reaps nodes whose heartbeat ran out.
    pub fn heartbeat(&self) -> StoreResult<()> {
        let now = now_ms();
        let dead: Vec<String> = self.with_retry(|c| {
            let _: () = c.zadd(
                "ssechat:nodes",
                &self.node,
                now + self.node_ttl.as_millis() as u64,
            )?;
            c.zrangebyscore("ssechat:nodes", "-inf", now)
        })?;
        for node in dead {
            let rooms: usize =
                self.with_retry(|c| self.reap.arg(&node).arg(now).arg("0").invoke(c))?;
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
        let r: StoreResult<usize> =
            self.with(|c| self.reap.arg(&self.node).arg(now_ms()).arg("1").invoke(c));
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not remove this node's presence from Redis");
        }
    }

    fn parse_entries(room: &RoomName, reply: redis::streams::StreamRangeReply) -> Vec<Message> {
        reply
            .ids
            .into_iter()
            .filter_map(|e| {
                let id = e.id.split('-').next()?.parse().ok()?;
                let get = |k: &str| -> Option<String> { e.get(k) };
                Some(Message {
                    id: EventId(id),
                    room: room.clone(),
                    name: DisplayName::parse(&get("n")?).ok()?,
                    text: get("t")?,
                    ts: get("ts")?.parse().ok()?,
                    sender: ClientId::from_hex(&get("s")?),
                })
            })
            .collect()
    }
}

impl Store for RedisStore {
    fn append(&self, batch: &[NewMessage], now_ms: i64) -> StoreResult<Vec<Appended>> {
        // One round trip for the batch; each script call is atomic.
        let pipe = {
            let mut pipe = redis::pipe();
            for m in batch {
                let sender = m.sender.to_hex();
                pipe.cmd("EVALSHA")
                    .arg(self.append.get_hash())
                    .arg(4)
                    .arg("ssechat:seq")
                    .arg(format!("ssechat:room:{}", m.room))
                    .arg("ssechat:rooms")
                    .arg(format!("ssechat:idem:{sender}"))
                    .arg(m.room.as_str())
                    .arg(m.name.as_str())
                    .arg(&m.text)
                    .arg(now_ms)
                    .arg(&sender)
                    .arg(m.client_msg_id.as_ref().map_or("", |k| k.as_str()))
                    .arg(self.history)
                    .arg(IDEMPOTENCY_TTL_SECS);
            }
            pipe
        };
        let replies: Vec<(i64, String)> = self.with(|c| match pipe.query(c) {
            // A restarted Redis has forgotten the script: load, then retry.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.append.load(c)?;
                pipe.query(c)
            }
            other => other,
        })?;
        // An id that does not parse would be a bug in the script or a
        // foreign writer: refuse rather than hand out id 0.
        let id_of = |s: &str| {
            s.parse().map(EventId).map_err(|_| {
                StoreError::Unavailable(format!(
                    "redis: unexpected id {s:?} from the append script"
                ))
            })
        };
        batch
            .iter()
            .zip(replies)
            .map(|(m, (new, value))| {
                Ok(if new == 1 {
                    Appended::New(m.stored(id_of(&value)?, now_ms))
                } else {
                    let (id, room) = value.split_once(' ').unwrap_or((&value, ""));
                    Appended::Duplicate {
                        id: id_of(id)?,
                        room: RoomName::parse(room).unwrap_or_else(|_| m.room.clone()),
                    }
                })
            })
            .collect()
    }

    fn after(
        &self,
        room: &RoomName,
        after: Option<EventId>,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let start = format!("{}-0", after.map_or(0, |a| a.0.saturating_add(1)));
        let reply = self.with_retry(|c| {
            c.xrange_count(
                format!("ssechat:room:{room}"),
                &start,
                "+",
                limit.min(1_000_000),
            )
        })?;
        Ok(Self::parse_entries(room, reply))
    }

    fn latest(&self, room: &RoomName, limit: usize) -> StoreResult<Vec<Message>> {
        let reply = self
            .with_retry(|c| c.xrevrange_count(format!("ssechat:room:{room}"), "+", "-", limit))?;
        let mut v = Self::parse_entries(room, reply);
        v.reverse();
        Ok(v)
    }

    fn last_id(&self, room: &RoomName) -> StoreResult<Option<EventId>> {
        Ok(self.latest(room, 1)?.pop().map(|m| m.id))
    }

    fn rooms(&self) -> StoreResult<Vec<RoomName>> {
        let names: Vec<String> = self.with_retry(|c| c.smembers("ssechat:rooms"))?;
        let mut rooms: Vec<_> = names
            .iter()
            .filter_map(|n| RoomName::parse(n).ok())
            .collect();
        rooms.sort();
        Ok(rooms)
    }

    fn prune(&self, _keep: usize) -> StoreResult<u64> {
        Ok(0) // XADD trims as it appends
    }

    fn flush(&self) -> StoreResult<()> {
        Ok(()) // Redis' own persistence settings decide
    }

    fn broadcasts_itself(&self) -> bool {
        true
    }
}

/// One published item, parsed.
enum Published {
    Message(Message),
    /// A join or leave, ready to hand to the room's streams.
    Presence(RoomName, Event),
}

fn parse_published(payload: &str) -> Option<Published> {
    let mut parts = payload.splitn(7, '\n');
    match parts.next()? {
        "m" => {
            let id = parts.next()?.parse().ok()?;
            let room = RoomName::parse(parts.next()?).ok()?;
            let ts = parts.next()?.parse().ok()?;
            let sender = ClientId::from_hex(parts.next()?);
            let name = DisplayName::parse(parts.next()?).ok()?;
            let text = parts.next()?.to_owned();
            Some(Published::Message(Message {
                id: EventId(id),
                room,
                name,
                text,
                ts,
                sender,
            }))
        }
        "p" => {
            let kind = match parts.next()? {
                "join" => PresenceKind::Join,
                _ => PresenceKind::Leave,
            };
            let room = RoomName::parse(parts.next()?).ok()?;
            let online = parts.next()?.parse().ok()?;
            let client = ClientId::from_hex(parts.next()?);
            let name = DisplayName::parse(parts.next()?).ok()?;
            Some(Published::Presence(
                room,
                Event::presence(kind, &name, online, client),
            ))
        }
        _ => None,
    }
}

/// The node's one subscription: feeds the hub, reconnects with backoff,
/// and after a reconnect replays what this node's live rooms missed.
pub async fn run_subscriber(
    store: Arc<RedisStore>,
    hub: Hub,
    cancel: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let last_seen = AtomicU64::new(0);
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    let mut was_down = false;
    loop {
        let connected = async {
            let mut pubsub = store.client.get_async_pubsub().await?;
            pubsub.subscribe(CHANNEL).await?;
            redis::RedisResult::Ok(pubsub)
        };
        let pubsub = tokio::select! {
            () = cancel.cancelled() => return,
            r = connected => match r {
                Ok(p) => p,
                Err(e) => {
                    store.healthy.store(false, Ordering::SeqCst);
                    if !was_down {
                        tracing::error!(error = %e, "lost Redis; retrying");
                    }
                    was_down = true;
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(100);
        store.healthy.store(true, Ordering::SeqCst);
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        if was_down {
            tracing::info!("Redis is back; catching up");
            catch_up(&store, &hub, last_seen.load(Ordering::SeqCst)).await;
        }
        // A dead connection does not always end the message stream, so
        // ping it: no answer within a few seconds means reconnect.
        let (mut sink, mut messages) = pubsub.split();
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        loop {
            let msg = tokio::select! {
                () = cancel.cancelled() => return,
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(IO_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if matches!(pong, Ok(Ok(_))) {
                        continue;
                    }
                    break;
                }
                m = messages.next() => m,
            };
            let Some(msg) = msg else { break };
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            match parse_published(&payload) {
                Some(Published::Message(m)) => {
                    last_seen.fetch_max(m.id.0, Ordering::SeqCst);
                    hub.publish(vec![m]);
                }
                Some(Published::Presence(room, event)) => hub.broadcast(&room, event),
                None => tracing::warn!("ignored a malformed event from Redis"),
            }
        }
        drop((sink, messages));
        store.healthy.store(false, Ordering::SeqCst);
        tracing::error!("Redis subscription ended; reconnecting");
        was_down = true;
    }
}

/// Publishes to the hub what this node's live rooms missed while the
/// subscription was down (streams skip what they already sent).
async fn catch_up(store: &Arc<RedisStore>, hub: &Hub, last_seen: u64) {
    for room in hub.live_room_names() {
        let (s, r) = (store.clone(), room.clone());
        let missed =
            tokio::task::spawn_blocking(move || s.after(&r, Some(EventId(last_seen)), 100_000))
                .await;
        match missed {
            Ok(Ok(messages)) if !messages.is_empty() => hub.publish(messages),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(room = %room, error = %e, "catch-up failed"),
            Err(e) => tracing::warn!(error = %e, "catch-up task failed"),
        }
    }
}

/// Cluster presence for the hub: operations queue up and run one at a time
/// in the order the hub issued them (a leave and a re-join of the same
/// client must not swap).
pub struct PresenceQueue {
    tx: tokio::sync::mpsc::UnboundedSender<PresenceOp>,
}

enum PresenceOp {
    Join(
        RoomName,
        ClientId,
        DisplayName,
        tokio::sync::oneshot::Sender<usize>,
    ),
    Leave(RoomName, ClientId),
}

impl PresenceQueue {
    pub fn start(store: Arc<RedisStore>) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PresenceOp>();
        tokio::spawn(async move {
            while let Some(op) = rx.recv().await {
                let s = store.clone();
                let _ = tokio::task::spawn_blocking(move || match op {
                    PresenceOp::Join(room, client, name, reply) => match s
                        .join(&room, client, &name)
                    {
                        Ok(online) => {
                            let _ = reply.send(online);
                        }
                        Err(e) => tracing::warn!(room = %room, error = %e, "cluster join failed"),
                    },
                    PresenceOp::Leave(room, client) => {
                        // A lost leave would show the client online for as
                        // long as this node lives: retry while Redis is away.
                        for attempt in 0..20 {
                            match s.leave(&room, client) {
                                Ok(_) => return,
                                Err(e) if attempt == 19 => {
                                    tracing::error!(room = %room, error = %e, "cluster leave lost")
                                }
                                Err(_) => std::thread::sleep(Duration::from_millis(500)),
                            }
                        }
                    }
                })
                .await;
            }
        });
        PresenceQueue { tx }
    }
}

impl crate::chat::hub::ClusterPresence for PresenceQueue {
    fn join(
        &self,
        room: &RoomName,
        client: ClientId,
        name: &DisplayName,
    ) -> tokio::sync::oneshot::Receiver<usize> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let _ = self
            .tx
            .send(PresenceOp::Join(room.clone(), client, name.clone(), reply));
        rx
    }

    fn leave(&self, room: &RoomName, client: ClientId) {
        let _ = self.tx.send(PresenceOp::Leave(room.clone(), client));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_payloads_parse_with_any_text() {
        let p = "m\n42\nlobby\n1700\n0000000000000000000000000000000a\nalice\nline1\nline2\n\nend";
        let Some(Published::Message(m)) = parse_published(p) else {
            panic!()
        };
        assert_eq!(m.id, EventId(42));
        assert_eq!(m.text, "line1\nline2\n\nend");
        assert_eq!(m.sender, ClientId(10));
        let Some(Published::Presence(room, Event::Presence { text, about, .. })) =
            parse_published("p\nleave\nlobby\n3\n0a\nbob")
        else {
            panic!()
        };
        assert_eq!(room.as_str(), "lobby");
        assert_eq!(about, ClientId(10));
        assert_eq!(&text[..], b"event: leave\ndata: >> bob left (3 online)\n\n");
        assert!(parse_published("x\n").is_none());
    }
}
