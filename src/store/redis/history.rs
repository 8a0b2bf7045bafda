//! Cluster mode's history: one Redis stream per room, ids from one global
//! counter, appended (and published) by `append.lua`.

use std::sync::Arc;

use redis::{Commands, Script};

use super::Conn;
use crate::chat::history::{Appended, History, HistoryError, HistoryResult, NewMessage};
use crate::chat::message::Message;
use crate::chat::types::{ClientId, DisplayName, EventId, RoomName};

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;

const APPEND: &str = include_str!("append.lua");

/// The Redis key remembering one `client_msg_id` of one sender (a fixed
/// length hex id, so the two cannot run into each other).
fn idempotency_key(sender: &str, client_msg_id: &str) -> String {
    format!("ssechat:idem:{sender}:{client_msg_id}")
}
/// Rooms scored by their newest id, kept by `append.lua`.
const ROOMS: &str = "ssechat:active";

pub struct RedisHistory {
    conn: Arc<Conn>,
    /// Messages kept per room (0: all).
    history: usize,
    append: Script,
}

impl RedisHistory {
    pub(super) fn new(conn: Arc<Conn>, history: usize) -> Self {
        RedisHistory {
            conn,
            history,
            append: Script::new(APPEND),
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
                    id: EventId::assigned(id),
                    room: room.clone(),
                    // Names were valid when stored; one the rules have
                    // since refused must not lose the message.
                    name: DisplayName::parse(&get("n")?)
                        .unwrap_or_else(|_| DisplayName::parse("unknown").expect("valid")),
                    text: get("t")?,
                    ts: get("ts")?.parse().ok()?,
                    sender: ClientId::from_hex(&get("s")?),
                })
            })
            .collect()
    }
}

impl History for RedisHistory {
    fn append(&self, batch: &[NewMessage], now_ms: i64) -> HistoryResult<Vec<Appended>> {
        // One round trip for the batch; each script call is atomic.
        let pipe = {
            let mut pipe = redis::pipe();
            for m in batch {
                let sender = m.sender.to_hex();
                let key = m.client_msg_id.as_ref().map_or("", |k| k.as_str());
                pipe.cmd("EVALSHA")
                    .arg(self.append.get_hash())
                    .arg(4)
                    .arg("ssechat:seq")
                    .arg(format!("ssechat:room:{}", m.room))
                    .arg(ROOMS)
                    .arg(idempotency_key(&sender, key))
                    .arg(m.room.as_str())
                    .arg(m.name.as_str())
                    .arg(m.text.as_str())
                    .arg(now_ms)
                    .arg(&sender)
                    .arg(key)
                    .arg(self.history)
                    .arg(IDEMPOTENCY_TTL_SECS);
            }
            pipe
        };
        let replies: Vec<(i64, String)> = self.conn.with(|c| match pipe.query(c) {
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
            s.parse().map(EventId::assigned).map_err(|_| {
                HistoryError::Unavailable(format!(
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
    ) -> HistoryResult<Vec<Message>> {
        let start = format!("{}-0", after.map_or(0, |a| a.get().saturating_add(1)));
        let reply = self.conn.with_retry(|c| {
            c.xrange_count(
                format!("ssechat:room:{room}"),
                &start,
                "+",
                limit.min(1_000_000),
            )
        })?;
        Ok(Self::parse_entries(room, reply))
    }

    fn latest(&self, room: &RoomName, limit: usize) -> HistoryResult<Vec<Message>> {
        let reply = self
            .conn
            .with_retry(|c| c.xrevrange_count(format!("ssechat:room:{room}"), "+", "-", limit))?;
        let mut v = Self::parse_entries(room, reply);
        v.reverse();
        Ok(v)
    }

    fn last_id(&self, room: &RoomName) -> HistoryResult<Option<EventId>> {
        Ok(self.latest(room, 1)?.pop().map(|m| m.id))
    }

    fn rooms(&self, limit: usize) -> HistoryResult<Vec<RoomName>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let last = isize::try_from(limit - 1).unwrap_or(isize::MAX);
        let names: Vec<String> = self.conn.with_retry(|c| c.zrevrange(ROOMS, 0, last))?;
        Ok(names
            .iter()
            .filter_map(|n| RoomName::parse(n).ok())
            .collect())
    }

    fn prune(&self, _keep: usize) -> HistoryResult<u64> {
        Ok(0) // XADD trims as it appends
    }

    fn flush(&self) -> HistoryResult<()> {
        Ok(()) // Redis' own persistence settings decide
    }
}
