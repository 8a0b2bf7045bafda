//! The chat domain: validated types, messages and their frames, the live
//! hub, and the single writer. No HTTP here.

pub mod fanout;
pub mod hub;
pub mod message;
pub mod presence;
pub mod subscriber;
pub mod types;
pub mod writer;

use std::sync::Arc;

use self::hub::Hub;
use self::message::Message;
use self::types::{EventId, RoomName};
use self::writer::{Accepted, Writer};
use crate::store::redis::RedisStore;
use crate::store::{NewMessage, Store, StoreError};

/// Why the chat could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The chat as the HTTP layer sees it: live hub + history + writer.
#[derive(Clone)]
pub struct Chat {
    pub hub: Hub,
    store: Arc<dyn Store>,
    writer: Arc<Writer>,
    /// Set in cluster mode: presence and health come from Redis.
    cluster: Option<Arc<RedisStore>>,
}

impl Chat {
    pub fn new(hub: Hub, store: Arc<dyn Store>) -> Self {
        let writer = Arc::new(Writer::start(store.clone(), hub.clone()));
        Chat {
            hub,
            store,
            writer,
            cluster: None,
        }
    }

    /// A chat whose history, ids and presence live in Redis.
    pub fn clustered(hub: Hub, store: Arc<RedisStore>) -> Self {
        let mut chat = Chat::new(hub, store.clone());
        chat.cluster = Some(store);
        chat
    }

    pub fn cluster(&self) -> Option<&Arc<RedisStore>> {
        self.cluster.as_ref()
    }

    /// Whether everything this node depends on answers (Redis in cluster mode).
    pub fn healthy(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.is_healthy())
    }

    /// Distinct clients online in a room: cluster-wide in cluster mode
    /// (falling back to this node's count if Redis does not answer).
    pub async fn online(&self, room: &RoomName) -> usize {
        let local = self.hub.online(room);
        let Some(cluster) = self.cluster.clone() else {
            return local;
        };
        let room = room.clone();
        match tokio::task::spawn_blocking(move || cluster.online(&room)).await {
            Ok(Ok(n)) => n.max(local),
            _ => local,
        }
    }

    /// The online count and the first `limit` names (alphabetical): from
    /// Redis in cluster mode (a sample of names, sorted), else this node's;
    /// this node's if Redis does not answer.
    pub async fn online_names(
        &self,
        room: &RoomName,
        limit: usize,
    ) -> (usize, Vec<types::DisplayName>) {
        let local = self.hub.online_names(room, limit);
        let Some(cluster) = self.cluster.clone() else {
            return local;
        };
        let room = room.clone();
        match tokio::task::spawn_blocking(move || cluster.online_names(&room, limit)).await {
            Ok(Ok(remote)) => remote,
            _ => local,
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

    /// Runs a blocking store read off the async runtime.
    async fn read<T, F>(&self, f: F) -> Result<T, ChatError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
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

    pub async fn rooms(&self) -> Result<Vec<RoomName>, ChatError> {
        self.read(|s| s.rooms()).await
    }

    pub async fn prune(&self, keep: usize) -> Result<u64, ChatError> {
        self.read(move |s| s.prune(keep)).await
    }

    /// Stops the writer after the queued appends, and flushes storage.
    pub async fn close(&self) {
        self.writer.close().await;
    }
}
