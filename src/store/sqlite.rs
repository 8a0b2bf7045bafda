//! SQLite store (issue 3): placeholder until built.

use std::path::Path;

use super::{Appended, NewMessage, Store, StoreError, StoreResult};
use crate::chat::message::Message;
use crate::chat::types::{EventId, RoomName};

pub struct SqliteStore;

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Err(StoreError::Unavailable(format!(
            "SQLite storage is not built yet; use --db :memory: (asked for {})",
            path.display()
        )))
    }
}

impl Store for SqliteStore {
    fn append(&self, _: &[NewMessage], _: i64) -> StoreResult<Vec<Appended>> {
        unreachable!()
    }
    fn after(&self, _: &RoomName, _: Option<EventId>, _: usize) -> StoreResult<Vec<Message>> {
        unreachable!()
    }
    fn latest(&self, _: &RoomName, _: usize) -> StoreResult<Vec<Message>> {
        unreachable!()
    }
    fn last_id(&self, _: &RoomName) -> StoreResult<Option<EventId>> {
        unreachable!()
    }
    fn rooms(&self) -> StoreResult<Vec<RoomName>> {
        unreachable!()
    }
    fn prune(&self, _: usize) -> StoreResult<u64> {
        unreachable!()
    }
    fn flush(&self) -> StoreResult<()> {
        unreachable!()
    }
}
