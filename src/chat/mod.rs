//! The chat domain: validated types, messages and their frames, the live
//! hub, the single writer, and the two ports the domain owns: [`history`]
//! (storage) and [`cluster`] (several nodes as one chat). No HTTP here, and
//! no storage: the store module implements the ports.
//!
//! [`Chat`] is what the rest of the program sees: open a stream, wait for
//! newer messages, append, read history. The hub and the writer stay
//! inside.

pub mod cluster;
pub(crate) mod fanout;
pub mod history;
pub(crate) mod hub;
mod long_poll;
pub mod message;
pub mod presence;
pub mod replay;
mod rooms;
mod stream;
pub mod subscriber;
pub mod types;
mod writer;

use std::sync::Arc;

use self::cluster::{Cluster, Inbox};
use self::history::{History, HistoryError, NewMessage};
use self::hub::Hub;
use self::message::Message;
use self::types::{ClientId, DisplayName, EventId, RoomName};
use self::writer::Writer;
use crate::metrics::Metrics;

pub use self::hub::TypingTooOften;
pub use self::long_poll::{Newer, Waiting};
pub use self::rooms::LISTED_ROOMS;
pub use self::stream::OpenStream;
pub use self::writer::Accepted;

/// Why the chat could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// The chat could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the writer thread: {0}")]
pub struct StartError(#[from] std::io::Error);

/// The chat as the rest of the program sees it. Cheap to clone.
#[derive(Clone)]
pub struct Chat {
    hub: Hub,
    history: Arc<dyn History>,
    writer: Arc<Writer>,
    /// Set in cluster mode: presence, online counts and health come from it.
    cluster: Option<Arc<dyn Cluster>>,
}

impl Chat {
    /// A chat on one node: history from `history`, presence counted here.
    /// `stream_buffer` is how many events a stream may fall behind.
    pub fn new(
        history: Arc<dyn History>,
        stream_buffer: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StartError> {
        let hub = Hub::new(stream_buffer, metrics.clone());
        let writer = Writer::start(history.clone(), Some(hub.clone()), metrics)?;
        Ok(Chat {
            hub,
            history,
            writer: Arc::new(writer),
            cluster: None,
        })
    }

    /// A chat that is one node of a cluster: the history publishes what it
    /// stores and every node (this one too) hears it through [`Chat::inbox`],
    /// so the writer does not deliver; presence is counted by `cluster`.
    pub fn clustered(
        history: Arc<dyn History>,
        cluster: Arc<dyn Cluster>,
        stream_buffer: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StartError> {
        let hub = Hub::new(stream_buffer, metrics.clone());
        hub.set_cluster(cluster.clone());
        let writer = Writer::start(history.clone(), None, metrics)?;
        Ok(Chat {
            hub,
            history,
            writer: Arc::new(writer),
            cluster: Some(cluster),
        })
    }

    /// Where a cluster delivers what this node hears.
    pub fn inbox(&self) -> Inbox {
        Inbox::new(self.hub.clone(), self.history.clone())
    }

    /// Whether everything this node depends on answers (the cluster, if any).
    pub fn healthy(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.is_healthy())
    }

    pub fn is_shutting_down(&self) -> bool {
        self.hub.is_shutting_down()
    }

    /// The name a client goes by: `chosen` if it gave one (remembered for
    /// its next requests), else the latest it gave, else its guest name.
    pub fn name_for(&self, client: ClientId, chosen: Option<&DisplayName>) -> DisplayName {
        match chosen {
            Some(name) => {
                self.hub.set_name(client, name);
                name.clone()
            }
            None => self.hub.name_of(client),
        }
    }

    /// Distinct clients online in a room: cluster-wide in cluster mode
    /// (falling back to this node's count if the cluster does not answer).
    pub async fn online(&self, room: &RoomName) -> usize {
        let local = self.hub.online(room);
        let Some(cluster) = self.cluster.clone() else {
            return local;
        };
        let room = room.clone();
        match tokio::task::spawn_blocking(move || cluster.online(&room)).await {
            Ok(Some(n)) => n.max(local),
            _ => local,
        }
    }

    /// The online count and the first `limit` names (alphabetical): from
    /// the cluster in cluster mode (a sorted sample of names), else this
    /// node's; this node's if the cluster does not answer.
    pub async fn online_names(&self, room: &RoomName, limit: usize) -> (usize, Vec<DisplayName>) {
        let local = self.hub.online_names(room, limit);
        let Some(cluster) = self.cluster.clone() else {
            return local;
        };
        let room = room.clone();
        match tokio::task::spawn_blocking(move || cluster.online_names(&room, limit)).await {
            Ok(Some(remote)) => remote,
            _ => local,
        }
    }

    /// A client is typing in a room: the room's other JSON streams hear of
    /// it within a gathering window. At most one per client per 2 s (and a
    /// few per address); refused with the seconds to wait.
    pub fn typing(
        &self,
        room: &RoomName,
        client: ClientId,
        name: &DisplayName,
        ip: Option<std::net::IpAddr>,
    ) -> Result<(), hub::TypingTooOften> {
        self.hub.typing(room, client, name, ip)
    }

    /// `since`, or the room's newest id if `since` is beyond it (none if
    /// the room has no message): after a history reset or a restored
    /// backup, a client's id may be from the future, and what is newer
    /// than the room's newest is what it must get.
    pub async fn clamped(
        &self,
        room: &RoomName,
        since: EventId,
    ) -> Result<Option<EventId>, ChatError> {
        let newest = self.last_id(room).await?;
        Ok(if newest < Some(since) {
            newest
        } else {
            Some(since)
        })
    }

    /// Messages of `room` after `since`, or its latest when `since` is
    /// `None`: at most `limit`, oldest first.
    pub async fn messages(
        &self,
        room: &RoomName,
        since: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<Message>, ChatError> {
        match since {
            Some(after) => self.after(room, Some(after), limit).await,
            None => self.latest(room, limit).await,
        }
    }

    /// Stores and broadcasts a message; returns once it is stored.
    pub async fn post(&self, msg: NewMessage) -> Result<Accepted, ChatError> {
        if self.hub.is_shutting_down() {
            return Err(ChatError::ShuttingDown);
        }
        Ok(self
            .writer
            .append(msg)
            .await
            .map_err(|_| ChatError::ShuttingDown)??)
    }

    /// Runs a blocking history read off the async runtime.
    async fn read<T, F>(&self, f: F) -> Result<T, ChatError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn History) -> Result<T, HistoryError> + Send + 'static,
    {
        let history = self.history.clone();
        tokio::task::spawn_blocking(move || f(&*history))
            .await
            .map_err(|e| HistoryError::Unavailable(format!("read task failed: {e}")))?
            .map_err(ChatError::from)
    }

    pub async fn after(
        &self,
        room: &RoomName,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<Message>, ChatError> {
        let room = room.clone();
        self.read(move |s| s.after(&room, after, limit)).await
    }

    pub async fn latest(&self, room: &RoomName, limit: usize) -> Result<Vec<Message>, ChatError> {
        let room = room.clone();
        self.read(move |s| s.latest(&room, limit)).await
    }

    pub async fn last_id(&self, room: &RoomName) -> Result<Option<EventId>, ChatError> {
        let room = room.clone();
        self.read(move |s| s.last_id(&room)).await
    }

    pub async fn prune(&self, keep: usize) -> Result<u64, ChatError> {
        self.read(move |s| s.prune(keep)).await
    }

    /// One keep-alive tick to every open stream.
    pub fn keepalive(&self) {
        self.hub.keepalive();
    }

    /// Refuses new streams, long-polls and posts, and tells every open
    /// stream and long-poll to end.
    pub fn shutdown(&self) {
        self.hub.shutdown();
    }

    /// Rooms with live machinery on this node (streams or long-polls).
    pub fn live_rooms(&self) -> usize {
        self.hub.live_rooms()
    }

    /// Stops the writer after the queued appends, flushes storage, and
    /// leaves the cluster (if any).
    pub async fn close(&self) {
        self.writer.close().await;
        if let Some(cluster) = self.cluster.clone() {
            let _ = tokio::task::spawn_blocking(move || cluster.depart()).await;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Fixtures for the chat's unit tests: a list as history, a chat on it.
    use super::history::{Appended, HistoryResult};
    use super::types::MessageText;
    use super::*;
    use std::sync::Mutex;

    /// The least history that works: one list, ids from 1.
    #[derive(Default)]
    pub(super) struct ListHistory(Mutex<Vec<Message>>);

    impl History for ListHistory {
        fn append(&self, batch: &[NewMessage], now_ms: i64) -> HistoryResult<Vec<Appended>> {
            let mut list = self.0.lock().unwrap();
            Ok(batch
                .iter()
                .map(|m| {
                    let stored = m.stored(EventId::assigned(list.len() as u64 + 1), now_ms);
                    list.push(stored.clone());
                    Appended::New(stored)
                })
                .collect())
        }
        fn after(
            &self,
            room: &RoomName,
            after: Option<EventId>,
            limit: usize,
        ) -> HistoryResult<Vec<Message>> {
            let list = self.0.lock().unwrap();
            Ok(list
                .iter()
                .filter(|m| &m.room == room && after.is_none_or(|a| m.id > a))
                .take(limit)
                .cloned()
                .collect())
        }
        fn latest(&self, room: &RoomName, limit: usize) -> HistoryResult<Vec<Message>> {
            let all = self.after(room, None, usize::MAX)?;
            Ok(all[all.len().saturating_sub(limit)..].to_vec())
        }
        fn last_id(&self, room: &RoomName) -> HistoryResult<Option<EventId>> {
            Ok(self.latest(room, 1)?.pop().map(|m| m.id))
        }
        fn rooms(&self, _limit: usize) -> HistoryResult<Vec<RoomName>> {
            Ok(Vec::new())
        }
        fn prune(&self, _keep: usize) -> HistoryResult<u64> {
            Ok(0)
        }
        fn flush(&self) -> HistoryResult<()> {
            Ok(())
        }
    }

    pub(super) fn chat() -> Chat {
        Chat::new(Arc::new(ListHistory::default()), 16, Arc::default()).unwrap()
    }

    pub(super) fn msg(text: &str) -> NewMessage {
        NewMessage {
            room: RoomName::lobby(),
            name: DisplayName::parse("n").unwrap(),
            text: MessageText::parse(text.into(), 0).unwrap(),
            sender: ClientId::test(1),
            client_msg_id: None,
        }
    }

    pub(super) fn texts(list: &[Message]) -> Vec<&str> {
        list.iter().map(|m| m.text.as_str()).collect()
    }
}
