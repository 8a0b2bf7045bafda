//! The history port: what the chat needs from storage, and the types that
//! cross it. The domain owns this interface; the store module implements it
//! (memory, SQLite, Redis) and nothing here knows which one it gets.
//!
//! Appends are only ever made by the single writer thread (see
//! `chat::writer`), so an implementation may assume one appender; reads
//! come from any thread (the chat calls them through `spawn_blocking`).

use super::message::Message;
use super::types::{ClientId, ClientMsgId, DisplayName, EventId, MessageText, RoomName};

/// A message accepted by the HTTP layer, not yet stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room: RoomName,
    pub name: DisplayName,
    pub text: MessageText,
    pub sender: ClientId,
    pub client_msg_id: Option<ClientMsgId>,
}

impl NewMessage {
    /// The stored message, once the history has given it an id and a time.
    pub fn stored(&self, id: EventId, ts: i64) -> Message {
        Message {
            id,
            room: self.room.clone(),
            name: self.name.clone(),
            text: self.text.as_str().to_owned(),
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
pub enum HistoryError {
    /// The storage cannot take writes right now (disk full, I/O error,
    /// locked, Redis away). The message is not stored; the client may retry.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

pub type HistoryResult<T> = Result<T, HistoryError>;

pub trait History: Send + Sync + 'static {
    /// Stores a batch atomically, assigning each new message an id greater
    /// than any before it. Called by the writer thread only.
    fn append(&self, batch: &[NewMessage], now_ms: i64) -> HistoryResult<Vec<Appended>>;

    /// Up to `limit` messages of `room` with id > `after` (all kept ones
    /// when `after` is `None`), oldest first.
    fn after(
        &self,
        room: &RoomName,
        after: Option<EventId>,
        limit: usize,
    ) -> HistoryResult<Vec<Message>>;

    /// The newest `limit` messages of `room`, oldest first.
    fn latest(&self, room: &RoomName, limit: usize) -> HistoryResult<Vec<Message>>;

    /// The newest id of `room`, if it has any message.
    fn last_id(&self, room: &RoomName) -> HistoryResult<Option<EventId>>;

    /// Rooms that have messages, the most recently active first, at most
    /// `limit`: one query, however many rooms there are (the welcome page
    /// asks on every visit, and anyone may create rooms).
    fn rooms(&self, limit: usize) -> HistoryResult<Vec<RoomName>>;

    /// Drops all but the newest `keep` messages of each room. Returns how
    /// many were removed.
    fn prune(&self, keep: usize) -> HistoryResult<u64>;

    /// Makes everything appended so far durable (no-op where not relevant).
    fn flush(&self) -> HistoryResult<()>;
}

/// One behavioural suite every history must pass (used by the store module's
/// tests, and by any new implementation).
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    pub fn new_msg(room: &RoomName, text: &str, key: Option<&str>) -> NewMessage {
        NewMessage {
            room: room.clone(),
            name: DisplayName::parse("n").unwrap(),
            text: MessageText::parse(text.to_owned(), 0).unwrap(),
            sender: ClientId::test(1),
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

    pub fn conformance(store: &dyn History) {
        let a = RoomName::parse("a").unwrap();
        let b = RoomName::parse("b").unwrap();
        assert_eq!(store.last_id(&a).unwrap(), None);
        assert!(store.rooms(10).unwrap().is_empty());

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
        assert_eq!(store.rooms(10).unwrap(), [a.clone(), b.clone()]);
        store.append(&[new_msg(&b, "y", None)], 3000).unwrap();
        assert_eq!(
            store.rooms(10).unwrap(),
            [b.clone(), a.clone()],
            "latest first"
        );
        assert_eq!(store.rooms(1).unwrap(), std::slice::from_ref(&b));

        let removed = store.prune(4).unwrap();
        assert_eq!(removed, 6);
        let kept = store.after(&a, None, 100).unwrap();
        assert_eq!(
            kept.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
            ["7", "8", "9", "10"]
        );
        assert_eq!(
            store.after(&b, None, 100).unwrap().len(),
            2,
            "other rooms untouched"
        );
        // An id older than what is kept replays all that is kept.
        assert_eq!(store.after(&a, Some(all[0].id), 100).unwrap(), kept);
        store.flush().unwrap();
    }
}
