//! In-memory history (`--db :memory:`): fast, bounded, gone on restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use crate::chat::history::{Appended, History, HistoryResult, NewMessage};
use crate::chat::message::Message;
use crate::chat::types::{ClientId, EventId, RoomName};

/// Idempotency keys remembered at most; the oldest are forgotten first.
const MAX_KEYS: usize = 100_000;

pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// Messages kept per room (0 = unbounded).
    history: usize,
}

#[derive(Default)]
struct Inner {
    last_id: u64,
    rooms: HashMap<RoomName, VecDeque<Message>>,
    keys: HashMap<(ClientId, String), (EventId, RoomName)>,
    key_order: VecDeque<(ClientId, String)>,
}

impl MemoryStore {
    pub fn new(history: usize) -> Self {
        // Ids start from the clock (microseconds since the epoch), so a
        // restarted in-memory server never hands out an id a browser already
        // holds as its Last-Event-ID: ids keep increasing across restarts.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        MemoryStore {
            inner: Mutex::new(Inner {
                last_id: start,
                ..Inner::default()
            }),
            history,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl History for MemoryStore {
    fn append(&self, batch: &[NewMessage], now_ms: i64) -> HistoryResult<Vec<Appended>> {
        let mut inner = self.lock();
        let mut out = Vec::with_capacity(batch.len());
        for m in batch {
            let key = m
                .client_msg_id
                .as_ref()
                .map(|k| (m.sender, k.as_str().to_owned()));
            if let Some((id, room)) = key.as_ref().and_then(|k| inner.keys.get(k)) {
                out.push(Appended::Duplicate {
                    id: *id,
                    room: room.clone(),
                });
                continue;
            }
            inner.last_id += 1;
            let msg = m.stored(EventId::assigned(inner.last_id), now_ms);
            if let Some(key) = key {
                inner.keys.insert(key.clone(), (msg.id, msg.room.clone()));
                inner.key_order.push_back(key);
                if inner.key_order.len() > MAX_KEYS {
                    if let Some(old) = inner.key_order.pop_front() {
                        inner.keys.remove(&old);
                    }
                }
            }
            let log = inner.rooms.entry(m.room.clone()).or_default();
            log.push_back(msg.clone());
            if self.history > 0 && log.len() > self.history {
                log.pop_front();
            }
            out.push(Appended::New(msg));
        }
        Ok(out)
    }

    fn after(
        &self,
        room: &RoomName,
        after: Option<EventId>,
        limit: usize,
    ) -> HistoryResult<Vec<Message>> {
        let inner = self.lock();
        let Some(log) = inner.rooms.get(room) else {
            return Ok(Vec::new());
        };
        let start = match after {
            Some(a) => log.partition_point(|m| m.id <= a),
            None => 0,
        };
        Ok(log.range(start..).take(limit).cloned().collect())
    }

    fn latest(&self, room: &RoomName, limit: usize) -> HistoryResult<Vec<Message>> {
        let inner = self.lock();
        let Some(log) = inner.rooms.get(room) else {
            return Ok(Vec::new());
        };
        let start = log.len().saturating_sub(limit);
        Ok(log.range(start..).cloned().collect())
    }

    fn last_id(&self, room: &RoomName) -> HistoryResult<Option<EventId>> {
        Ok(self
            .lock()
            .rooms
            .get(room)
            .and_then(|l| l.back())
            .map(|m| m.id))
    }

    fn rooms(&self, limit: usize) -> HistoryResult<Vec<RoomName>> {
        let inner = self.lock();
        let mut rooms: Vec<_> = inner
            .rooms
            .iter()
            .filter_map(|(r, l)| Some((l.back()?.id, r)))
            .collect();
        let by_latest = |a: &(EventId, &RoomName), b: &(EventId, &RoomName)| b.0.cmp(&a.0);
        if rooms.len() > limit {
            rooms.select_nth_unstable_by(limit.saturating_sub(1), by_latest);
            rooms.truncate(limit);
        }
        rooms.sort_unstable_by(by_latest);
        Ok(rooms.into_iter().map(|(_, r)| r.clone()).collect())
    }

    fn prune(&self, keep: usize) -> HistoryResult<u64> {
        let mut inner = self.lock();
        let mut removed = 0;
        for log in inner.rooms.values_mut() {
            while log.len() > keep {
                log.pop_front();
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn flush(&self) -> HistoryResult<()> {
        Ok(())
    }
}
