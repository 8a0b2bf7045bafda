//! History storage behind a narrow seam.
//!
//! The chat core needs five things from storage: append a batch (assigning
//! ids, honouring idempotency keys), read after an id, read the latest,
//! list rooms, and flush. Appends are only ever made by the single writer
//! thread (see `chat::writer`), so implementations may assume one appender;
//! reads come from any thread (the async side calls them through
//! `spawn_blocking`).

pub mod memory;
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
}
