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
//! a stream (online = its length), the room's tally (joins and leaves ever,
//! which streams use to tell what changed since their hello), and per node
//! a set of its clients, so a node that dies without saying goodbye can be
//! reaped by the others: nodes keep a heartbeat in a sorted set, and any
//! node removes the entries of a node whose heartbeat expired, sending the
//! leaves it owed. Presence crosses nodes in batches: each node sends what
//! changed in a room during a gathering window as one script call, which
//! publishes the cluster-wide changes once (`b` payloads), typing included.
//!
//! Keys: `ssechat:seq`, `ssechat:rooms`, `ssechat:room:{room}` (stream),
//! `ssechat:idem:{sender}`, `ssechat:pc:{room}`, `ssechat:pn:{room}`,
//! `ssechat:pt:{room}` (tally),
//! `ssechat:pnode:{node}:{room}`, `ssechat:nrooms:{node}`, `ssechat:nodes`;
//! channel `ssechat:events`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::{Commands, Script};
use tokio_util::sync::CancellationToken;

use super::{Appended, NewMessage, Store, StoreError, StoreResult};
use crate::chat::hub::{ClusterPresence, Hub, Joined, PresenceBatch, PRESENCE_GATHER};
use crate::chat::message::{Change, Message, PresenceKind, Tally};
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

/// Removes one client of one node from a room; used by batches and reap.
/// Returns the client's name if this was its last node (a leave to tell).
const LEAVE_FN: &str = r#"
local function leave(room, node, client)
  local pc, pn = 'ssechat:pc:' .. room, 'ssechat:pn:' .. room
  if redis.call('SREM', 'ssechat:pnode:' .. node .. ':' .. room, client) == 1 then
    local n = redis.call('HINCRBY', pc, client, -1)
    if n <= 0 then
      redis.call('HDEL', pc, client)
      local name = redis.call('HGET', pn, client) or 'someone'
      redis.call('HDEL', pn, client)
      return name
    end
  end
  return false
end
local function tally(room)
  local t = redis.call('HMGET', 'ssechat:pt:' .. room, 'j', 'l')
  return tonumber(t[1] or '0'), tonumber(t[2] or '0')
end
local function publish(room, j0, l0, j, l, out)
  redis.call('HSET', 'ssechat:pt:' .. room, 'j', j, 'l', l)
  local online = redis.call('HLEN', 'ssechat:pc:' .. room)
  if #out > 0 then
    redis.call('PUBLISH', 'ssechat:events', 'b\n' .. room .. '\n' .. online .. '\n' ..
      j0 .. ' ' .. l0 .. '\n' .. j .. ' ' .. l .. '\n' .. table.concat(out, '\n'))
  end
  return online
end
"#;

/// One node's window of one room. ARGV: room, node, heartbeat expiry, then
/// (kind, client, name) per operation: `j` (first stream on this node),
/// `l` (last stream on this node closed), `t` (typing). Publishes the
/// changes that are cluster-wide (a client's first node and last node) and
/// the typing, once; returns {online, joined, left}.
const BATCH: &str = r#"
local room, node = ARGV[1], ARGV[2]
redis.call('ZADD', 'ssechat:nodes', ARGV[3], node)
local pc, pn = 'ssechat:pc:' .. room, 'ssechat:pn:' .. room
local pnode = 'ssechat:pnode:' .. node .. ':' .. room
local j0, l0 = tally(room)
local j, l, out = j0, l0, {}
for i = 4, #ARGV, 3 do
  local kind, client, name = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if kind == 'j' then
    redis.call('SADD', 'ssechat:nrooms:' .. node, room)
    if redis.call('SADD', pnode, client) == 1 then
      redis.call('HSET', pn, client, name)
      if redis.call('HINCRBY', pc, client, 1) == 1 then
        j = j + 1
        out[#out + 1] = 'j ' .. client .. ' ' .. name
      end
    end
  elseif kind == 'l' then
    local gone = leave(room, node, client)
    if gone then
      l = l + 1
      out[#out + 1] = 'l ' .. client .. ' ' .. gone
    end
  else
    out[#out + 1] = 't ' .. client .. ' ' .. name
  end
end
local online = publish(room, j0, l0, j, l, out)
return {online, j, l}
"#;

/// ARGV: room. The cluster-wide count and up to 100 names (a sample: a
/// room of thousands is not sorted inside Redis).
const ONLINE: &str = r#"
local pn = 'ssechat:pn:' .. ARGV[1]
local n = redis.call('HLEN', 'ssechat:pc:' .. ARGV[1])
local names, cursor = {}, '0'
repeat
  local r = redis.call('HSCAN', pn, cursor, 'COUNT', 100)
  cursor = r[1]
  for i = 2, #r[2], 2 do
    if #names < 100 then names[#names + 1] = r[2][i] end
  end
until cursor == '0' or #names >= 100
return {n, names}
"#;

/// Removes every presence entry of node ARGV[1] if its heartbeat is older
/// than ARGV[2] (ms), or unconditionally when ARGV[3] == '1' (own shutdown),
/// publishing one batch of leaves per room.
const REAP: &str = r#"
local node = ARGV[1]
local score = redis.call('ZSCORE', 'ssechat:nodes', node)
if ARGV[3] ~= '1' and score and tonumber(score) > tonumber(ARGV[2]) then return 0 end
local rooms = redis.call('SMEMBERS', 'ssechat:nrooms:' .. node)
for _, room in ipairs(rooms) do
  local j0, l0 = tally(room)
  local l, out = l0, {}
  local clients = redis.call('SMEMBERS', 'ssechat:pnode:' .. node .. ':' .. room)
  for _, client in ipairs(clients) do
    local gone = leave(room, node, client)
    if gone then
      l = l + 1
      out[#out + 1] = 'l ' .. client .. ' ' .. gone
    end
  end
  publish(room, j0, l0, j0, l, out)
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
    batch: Script,
    online: Script,
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
            batch: Script::new(&format!("{LEAVE_FN}{BATCH}")),
            online: Script::new(ONLINE),
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

    /// Sends one window of one room's presence operations (see [`BATCH`]);
    /// returns the cluster-wide online count and the room's tally after it.
    pub fn presence_batch(&self, room: &RoomName, ops: &[PresenceOp]) -> StoreResult<Joined> {
        let expiry = now_ms() + self.node_ttl.as_millis() as u64;
        let (online, joined, left): (usize, u64, u64) = self.with_retry(|c| {
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

    pub fn online(&self, room: &RoomName) -> StoreResult<usize> {
        self.with_retry(|c| c.hlen(format!("ssechat:pc:{room}")))
    }

    /// The cluster-wide count and up to `limit` (≤ 100) names, sorted: one
    /// round trip.
    pub fn online_names(
        &self,
        room: &RoomName,
        limit: usize,
    ) -> StoreResult<(usize, Vec<DisplayName>)> {
        let (n, names): (usize, Vec<String>) =
            self.with_retry(|c| self.online.arg(room.as_str()).invoke(c))?;
        let mut names: Vec<DisplayName> = names
            .iter()
            .filter_map(|n| DisplayName::parse(n).ok())
            .collect();
        names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        names.truncate(limit);
        Ok((n, names))
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
    /// A room's presence changes and typing, as one node's window made them.
    Presence(PresenceBatch),
}

fn parse_tally(s: &str) -> Option<Tally> {
    let (j, l) = s.split_once(' ')?;
    Some(Tally {
        joined: j.parse().ok()?,
        left: l.parse().ok()?,
    })
}

fn parse_published(payload: &str) -> Option<Published> {
    if let Some(batch) = payload.strip_prefix("b\n") {
        let mut lines = batch.split('\n');
        let room = RoomName::parse(lines.next()?).ok()?;
        let online = lines.next()?.parse().ok()?;
        let from = parse_tally(lines.next()?)?;
        let to = parse_tally(lines.next()?)?;
        let mut changes = Vec::new();
        let mut typing = Vec::new();
        for line in lines {
            let mut parts = line.splitn(3, ' ');
            let (kind, client, name) = (parts.next()?, parts.next()?, parts.next()?);
            let (about, name) = (ClientId::from_hex(client), DisplayName::parse(name).ok()?);
            let kind = match kind {
                "j" => PresenceKind::Join,
                "l" => PresenceKind::Leave,
                _ => {
                    typing.push((about, name));
                    continue;
                }
            };
            changes.push(Change { kind, name, about });
        }
        return Some(Published::Presence(PresenceBatch {
            room,
            from,
            to,
            online,
            changes,
            typing,
        }));
    }
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
                Some(Published::Presence(batch)) => hub.cluster_batch(batch),
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

/// Cluster presence for the hub: operations queue up in the order the hub
/// issued them (a leave and a re-join of the same client must not swap)
/// and go to Redis in windows: at most one script call per room per
/// [`PRESENCE_GATHER`], all rooms of a window in one round trip. A lone
/// join after a quiet spell goes at once (its hello waits for it).
pub struct PresenceQueue {
    tx: tokio::sync::mpsc::UnboundedSender<(RoomName, PresenceOp)>,
}

/// One presence operation of this node.
pub enum PresenceOp {
    Join(ClientId, DisplayName, tokio::sync::oneshot::Sender<Joined>),
    Leave(ClientId),
    Typing(ClientId, DisplayName),
}

/// How often a window whose Redis call failed is tried again before its
/// leaves are given up (joins and typing are not retried: the hello falls
/// back to this node's count, and typing is stale by then).
const LEAVE_ATTEMPTS: u32 = 20;

impl PresenceQueue {
    pub fn start(store: Arc<RedisStore>) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(RoomName, PresenceOp)>();
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
                let s = store.clone();
                let failed = tokio::task::spawn_blocking(move || send_window(&s, ops))
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
                last += Duration::from_millis(500);
            }
        });
        PresenceQueue { tx }
    }
}

/// Sends a window of operations, one script call per room in one pipeline;
/// answers the joins. Returns the leaves of rooms whose call failed.
fn send_window(
    store: &RedisStore,
    ops: Vec<(RoomName, PresenceOp)>,
) -> Vec<(RoomName, PresenceOp)> {
    let mut rooms: Vec<(RoomName, Vec<PresenceOp>)> = Vec::new();
    for (room, op) in ops {
        match rooms.iter_mut().find(|(r, _)| *r == room) {
            Some((_, list)) => list.push(op),
            None => rooms.push((room, vec![op])),
        }
    }
    let mut failed = Vec::new();
    for (room, ops) in rooms {
        match store.presence_batch(&room, &ops) {
            Ok(joined) => {
                for op in ops {
                    if let PresenceOp::Join(_, _, reply) = op {
                        let _ = reply.send(joined);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "cluster presence failed; retrying its leaves");
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

impl ClusterPresence for PresenceQueue {
    fn join(
        &self,
        room: &RoomName,
        client: ClientId,
        name: &DisplayName,
    ) -> tokio::sync::oneshot::Receiver<Joined> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let _ = self
            .tx
            .send((room.clone(), PresenceOp::Join(client, name.clone(), reply)));
        rx
    }

    fn leave(&self, room: &RoomName, client: ClientId) {
        let _ = self.tx.send((room.clone(), PresenceOp::Leave(client)));
    }

    fn typing(&self, room: &RoomName, client: ClientId, name: &DisplayName) {
        let _ = self
            .tx
            .send((room.clone(), PresenceOp::Typing(client, name.clone())));
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
        let Some(Published::Presence(b)) =
            parse_published("b\nlobby\n3\n4 1\n5 2\nj 0a bob smith\nl 0b al\nt 0c cy")
        else {
            panic!()
        };
        assert_eq!(b.room.as_str(), "lobby");
        assert_eq!(
            (b.online, b.from, b.to),
            (
                3,
                Tally { joined: 4, left: 1 },
                Tally { joined: 5, left: 2 }
            )
        );
        assert_eq!(b.changes.len(), 2);
        assert_eq!(b.changes[0].about, ClientId(10));
        assert_eq!(b.changes[0].name.as_str(), "bob smith");
        assert_eq!(b.changes[1].kind, PresenceKind::Leave);
        assert_eq!(
            b.typing,
            [(ClientId(12), DisplayName::parse("cy").unwrap())]
        );
        assert!(parse_published("x\n").is_none());
    }
}
