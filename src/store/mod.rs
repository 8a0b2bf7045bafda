//! History storage behind a narrow seam.
//!
//! The chat core needs five things from storage: append a batch (assigning
//! ids, honouring idempotency keys), read after an id, read the latest,
//! list rooms, and flush. Appends are only ever made by the single writer
//! thread (see `chat::writer`), so implementations may assume one appender;
//! reads come from any thread (the async side calls them through
//! `spawn_blocking`).

pub mod memory;
pub mod redis;
pub mod sqlite;

use crate::chat::message::Message;
use crate::chat::types::{ClientId, ClientMsgId, DisplayName, EventId, RoomName};

/// A message accepted by the HTTP layer, not yet stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room: RoomName,
    pub name: DisplayName,
    pub text: String,
    pub sender: ClientId,
    pub client_msg_id: Option<ClientMsgId>,
}

impl NewMessage {
    /// The stored message, once the store has given it an id and a time.
    pub fn stored(&self, id: EventId, ts: i64) -> Message {
        Message {
            id,
            room: self.room.clone(),
            name: self.name.clone(),
            text: self.text.clone(),
            ts,
            sender: self.sender,
        }
    }
}

/// What became of one appended message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored now, with its id.
    New(Message),
    /// The sender already used this `client_msg_id`: the original.
    Duplicate { id: EventId, room: RoomName },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The storage cannot take writes right now (disk full, I/O error,
    /// locked). The message is not stored; the client may retry.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

pub trait Store: Send + Sync + 'static {
    /// Stores a batch atomically, assigning each new message an id greater
    /// than any before it. Called by the writer thread only.
    fn append(&self, batch: &[NewMessage], now_ms: i64) -> StoreResult<Vec<Appended>>;

    /// Up to `limit` messages of `room` with id > `after` (all kept ones
    /// when `after` is `None`), oldest first.
    fn after(
        &self,
        room: &RoomName,
        after: Option<EventId>,
        limit: usize,
    ) -> StoreResult<Vec<Message>>;

    /// The newest `limit` messages of `room`, oldest first.
    fn latest(&self, room: &RoomName, limit: usize) -> StoreResult<Vec<Message>>;

    /// The newest id of `room`, if it has any message.
    fn last_id(&self, room: &RoomName) -> StoreResult<Option<EventId>>;

    /// Rooms that have messages.
    fn rooms(&self) -> StoreResult<Vec<RoomName>>;

    /// Drops all but the newest `keep` messages of each room. Returns how
    /// many were removed.
    fn prune(&self, keep: usize) -> StoreResult<u64>;

    /// Makes everything appended so far durable (no-op where not relevant).
    fn flush(&self) -> StoreResult<()>;

    /// Whether appended messages reach the hub through the store itself
    /// (cluster mode: every node hears them from Redis, in one global
    /// order) rather than from the writer that appended them.
    fn broadcasts_itself(&self) -> bool {
        false
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! One behavioural suite every store must pass.

    use super::*;
    use crate::chat::types::ClientMsgId;

    pub fn new_msg(room: &RoomName, text: &str, key: Option<&str>) -> NewMessage {
        NewMessage {
            room: room.clone(),
            name: DisplayName::parse("n").unwrap(),
            text: text.to_owned(),
            sender: ClientId(1),
            client_msg_id: key.map(|k| ClientMsgId::parse(k).unwrap()),
        }
    }

    fn new_ids(out: &[Appended]) -> Vec<EventId> {
        out.iter()
            .filter_map(|a| match a {
                Appended::New(m) => Some(m.id),
                Appended::Duplicate { .. } => None,
            })
            .collect()
    }

    pub fn conformance(store: &dyn Store) {
        let a = RoomName::parse("a").unwrap();
        let b = RoomName::parse("b").unwrap();
        assert_eq!(store.last_id(&a).unwrap(), None);
        assert!(store.rooms().unwrap().is_empty());

        let out = store
            .append(
                &[
                    new_msg(&a, "1", Some("k1")),
                    new_msg(&b, "x", None),
                    new_msg(&a, "2", None),
                    new_msg(&a, "dup in batch", Some("k1")),
                ],
                1000,
            )
            .unwrap();
        let ids = new_ids(&out);
        assert_eq!(ids.len(), 3);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "increasing ids");
        assert_eq!(
            out[3],
            Appended::Duplicate {
                id: ids[0],
                room: a.clone()
            }
        );
        let again = store
            .append(&[new_msg(&b, "retry", Some("k1"))], 2000)
            .unwrap();
        assert_eq!(
            again[0],
            Appended::Duplicate {
                id: ids[0],
                room: a.clone()
            },
            "a key is per client, across rooms"
        );

        for i in 3..=10 {
            store
                .append(&[new_msg(&a, &i.to_string(), None)], 3000)
                .unwrap();
        }
        let all = store.after(&a, None, 100).unwrap();
        let texts: Vec<_> = all.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]);
        assert_eq!(all[0].ts, 1000);
        assert_eq!(store.last_id(&a).unwrap(), Some(all[9].id));
        let page = store.after(&a, Some(all[2].id), 3).unwrap();
        assert_eq!(
            page.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
            ["4", "5", "6"]
        );
        let latest = store.latest(&a, 2).unwrap();
        assert_eq!(
            latest.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
            ["9", "10"]
        );
        assert_eq!(store.rooms().unwrap(), [a.clone(), b.clone()]);

        let removed = store.prune(4).unwrap();
        assert_eq!(removed, 6);
        let kept = store.after(&a, None, 100).unwrap();
        assert_eq!(
            kept.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
            ["7", "8", "9", "10"]
        );
        assert_eq!(
            store.after(&b, None, 100).unwrap().len(),
            1,
            "other rooms untouched"
        );
        // An id older than what is kept replays all that is kept.
        assert_eq!(store.after(&a, Some(all[0].id), 100).unwrap(), kept);
        store.flush().unwrap();
    }

    #[test]
    fn memory_store_conforms() {
        conformance(&memory::MemoryStore::new(0));
    }

    #[test]
    fn memory_store_bounds_history_itself() {
        let s = memory::MemoryStore::new(2);
        let r = RoomName::lobby();
        for i in 0..5 {
            s.append(&[new_msg(&r, &i.to_string(), None)], 0).unwrap();
        }
        let kept: Vec<_> = s
            .after(&r, None, 10)
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(kept, ["3", "4"]);
    }
}
