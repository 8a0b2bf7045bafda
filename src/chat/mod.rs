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
pub mod message;
pub mod presence;
pub mod replay;
mod rooms;
pub mod subscriber;
pub mod types;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use self::cluster::{Cluster, Inbox};
use self::fanout::RecvError;
use self::history::{History, HistoryError, NewMessage};
use self::hub::{Hub, Subscription};
use self::message::{messages_after, Event, Format, Message};
use self::replay::{Fetch, Replay};
use self::subscriber::EventStream;
use self::types::{ClientId, DisplayName, EventId, RoomName};
use self::writer::Writer;
use crate::metrics::Metrics;

pub use self::hub::TypingTooOften;
pub use self::rooms::LISTED_ROOMS;
pub use self::writer::Accepted;

/// How long opening a stream waits for the cluster-wide online count before
/// it says this node's.
const CLUSTER_ONLINE_WAIT: Duration = Duration::from_secs(2);

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

/// A stream, opened: the client's name, how many are online, the first
/// page of what it missed, and the live subscription its body reads.
pub struct OpenStream {
    pub name: DisplayName,
    pub online: usize,
    /// Where the stream resumes: the client's `since` / `Last-Event-ID`,
    /// or the room's newest id if that was beyond it (a history reset or
    /// restored: an id from the future must not hide what comes next).
    pub since: Option<EventId>,
    /// The first page of messages after `since`, oldest first; the body
    /// reads the rest page by page.
    first_page: Vec<Message>,
    chat: Chat,
    room: RoomName,
    client: ClientId,
    sub: Subscription,
    metrics: Arc<Metrics>,
}

impl OpenStream {
    /// The stream's body: `prelude`, the replay after `since`, then the
    /// room's live events newer than what it sent. `guards` are dropped
    /// with the stream.
    pub fn into_body<G>(
        self,
        prelude: Vec<Bytes>,
        format: Format,
        retry_ms: u64,
        guards: G,
    ) -> EventStream<G> {
        let OpenStream {
            since,
            first_page,
            chat,
            room,
            client,
            sub,
            metrics,
            ..
        } = self;
        let body = EventStream::new(
            sub, prelude, client, format, since, retry_ms, metrics, guards,
        );
        if since.is_none() {
            return body;
        }
        let fetch: Fetch = Box::new(move |after| {
            let (chat, room) = (chat.clone(), room.clone());
            tokio::spawn(async move { chat.after(&room, Some(after), replay::PAGE).await })
        });
        body.with_replay(Replay::new(first_page, fetch))
    }
}

/// What a long-poll finds when it starts.
pub enum Newer {
    /// Messages are there already: answer at once.
    Now(Vec<Message>),
    /// Nothing yet: wait with [`Waiting::until`] (boxed: a subscription
    /// is much larger than a list).
    Later(Box<Waiting>),
}

/// A long-poll watching its room for messages newer than it has.
pub struct Waiting {
    chat: Chat,
    room: RoomName,
    since: Option<EventId>,
    limit: usize,
    sub: Subscription,
}

impl Waiting {
    /// Waits until a message newer than `since` arrives, the deadline
    /// passes, or the server shuts down; returns what is newer then (empty
    /// on timeout or shutdown).
    pub async fn until(
        mut self,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<Message>, ChatError> {
        let woke = loop {
            match tokio::time::timeout_at(deadline, self.sub.rx.recv()).await {
                Err(_) => break false,
                Ok(Ok(ev)) => match &*ev {
                    // Messages the first read already covered (in a
                    // cluster, a POST is answered before its fan-out
                    // reaches every node).
                    Event::Messages(list) if messages_after(list, self.since).is_empty() => {
                        continue
                    }
                    Event::Messages(_) => break true,
                    Event::Shutdown => break false,
                    _ => continue,
                },
                // Fell behind: there is something new, surely.
                Ok(Err(RecvError::Lagged(_))) => break true,
                Ok(Err(RecvError::Closed)) => break false,
            }
        };
        if woke {
            self.chat.messages(&self.room, self.since, self.limit).await
        } else {
            Ok(Vec::new())
        }
    }
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

    /// Opens a client's stream in `room`: counts it as present, subscribes
    /// to the live events, then reads what it missed after `since` (so a
    /// message stored meanwhile is in both, and the stream skips the ids
    /// its replay sent).
    pub async fn open_stream(
        &self,
        room: &RoomName,
        client: ClientId,
        name: &DisplayName,
        since: Option<EventId>,
    ) -> Result<OpenStream, ChatError> {
        let mut sub = self
            .hub
            .open_stream(room, client, name)
            .map_err(|_| ChatError::ShuttingDown)?;
        // Cluster mode: the hello waits for the cluster to count the join
        // (within a gathering window); the stream then hears of every
        // change after it, and not of its own join.
        let online = match sub.cluster_online.take() {
            Some(rx) => match tokio::time::timeout(CLUSTER_ONLINE_WAIT, rx).await {
                Ok(Ok(joined)) => {
                    sub.seen = joined.tally;
                    joined.online
                }
                _ => sub.online,
            },
            None if self.cluster.is_some() => self.online(room).await,
            None => sub.online,
        };
        let (first_page, since) = match since {
            Some(after) => {
                let page = self.after(room, Some(after), replay::PAGE).await?;
                let since = if page.is_empty() {
                    self.clamped(room, after).await?
                } else {
                    Some(after)
                };
                (page, since)
            }
            None => (Vec::new(), None),
        };
        Ok(OpenStream {
            name: name.clone(),
            online,
            since,
            first_page,
            chat: self.clone(),
            room: room.clone(),
            client,
            sub,
            metrics: self.hub.metrics().clone(),
        })
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

    /// The start of a long-poll: watches the room, then reads (so a
    /// message stored in between wakes the wait).
    pub async fn newer(
        &self,
        room: &RoomName,
        since: Option<EventId>,
        limit: usize,
    ) -> Result<Newer, ChatError> {
        let sub = self.hub.watch(room).map_err(|_| ChatError::ShuttingDown)?;
        let found = self.messages(room, since, limit).await?;
        if !found.is_empty() {
            return Ok(Newer::Now(found));
        }
        // Wait for what is newer than the room has, even if the client's
        // id is from the future.
        let since = match since {
            Some(after) => self.clamped(room, after).await?,
            None => None,
        };
        Ok(Newer::Later(Box::new(Waiting {
            chat: self.clone(),
            room: room.clone(),
            since,
            limit,
            sub,
        })))
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
mod tests {
    use super::history::{Appended, HistoryResult};
    use super::types::MessageText;
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// The least history that works: one list, ids from 1.
    #[derive(Default)]
    struct ListHistory(Mutex<Vec<Message>>);

    impl History for ListHistory {
        fn append(&self, batch: &[NewMessage], now_ms: i64) -> HistoryResult<Vec<Appended>> {
            let mut list = self.0.lock().unwrap();
            Ok(batch
                .iter()
                .map(|m| {
                    let stored = m.stored(EventId(list.len() as u64 + 1), now_ms);
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

    fn chat() -> Chat {
        Chat::new(Arc::new(ListHistory::default()), 16, Arc::default()).unwrap()
    }

    fn msg(text: &str) -> NewMessage {
        NewMessage {
            room: RoomName::lobby(),
            name: DisplayName::parse("n").unwrap(),
            text: MessageText::parse(text.into(), 0).unwrap(),
            sender: ClientId(1),
            client_msg_id: None,
        }
    }

    fn texts(list: &[Message]) -> Vec<&str> {
        list.iter().map(|m| m.text.as_str()).collect()
    }

    async fn waiting(chat: &Chat, since: Option<EventId>) -> Waiting {
        match chat.newer(&RoomName::lobby(), since, 10).await.unwrap() {
            Newer::Later(w) => *w,
            Newer::Now(found) => panic!("expected nothing newer, found {found:?}"),
        }
    }

    #[tokio::test]
    async fn a_long_poll_answers_at_once_when_there_is_something_newer() {
        let chat = chat();
        let first = chat.post(msg("a")).await.unwrap();
        chat.post(msg("b")).await.unwrap();
        let Newer::Now(found) = chat
            .newer(&RoomName::lobby(), Some(first.id), 10)
            .await
            .unwrap()
        else {
            panic!("b is newer");
        };
        assert_eq!(texts(&found), ["b"]);
    }

    #[tokio::test]
    async fn a_long_poll_wakes_for_a_newer_message_and_reads_it() {
        let chat = chat();
        let first = chat.post(msg("a")).await.unwrap();
        let w = waiting(&chat, Some(first.id)).await;
        let poster = chat.clone();
        tokio::spawn(async move { poster.post(msg("b")).await.unwrap() });
        let got = w
            .until(Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(texts(&got), ["b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_ignores_what_it_has_and_times_out_empty() {
        let chat = chat();
        let first = chat.post(msg("a")).await.unwrap();
        let w = waiting(&chat, Some(first.id)).await;
        // The late fan-out of the message the poll already has.
        let again = chat.latest(&RoomName::lobby(), 1).await.unwrap();
        chat.inbox().messages(again);
        let started = Instant::now();
        let got = w.until(started + Duration::from_secs(5)).await.unwrap();
        assert!(got.is_empty());
        assert_eq!(started.elapsed(), Duration::from_secs(5), "waited it out");
    }

    #[tokio::test]
    async fn shutdown_ends_a_long_poll_empty_and_refuses_new_work() {
        let chat = chat();
        let first = chat.post(msg("a")).await.unwrap();
        let w = waiting(&chat, Some(first.id)).await;
        chat.shutdown();
        let got = w
            .until(Instant::now() + Duration::from_secs(30))
            .await
            .unwrap();
        assert!(got.is_empty());
        assert!(matches!(
            chat.post(msg("late")).await,
            Err(ChatError::ShuttingDown)
        ));
        assert!(matches!(
            chat.newer(&RoomName::lobby(), None, 1).await,
            Err(ChatError::ShuttingDown)
        ));
    }

    #[tokio::test]
    async fn a_stream_replays_after_since_then_gets_live_messages() {
        let chat = chat();
        let first = chat.post(msg("a")).await.unwrap();
        chat.post(msg("b")).await.unwrap();
        let name = chat.name_for(ClientId(2), Some(&DisplayName::parse("mine").unwrap()));
        let stream = chat
            .open_stream(&RoomName::lobby(), ClientId(2), &name, Some(first.id))
            .await
            .unwrap();
        assert_eq!(texts(&stream.first_page), ["b"]);
        assert_eq!(stream.online, 1);
        assert_eq!(
            chat.name_for(ClientId(2), None).as_str(),
            "mine",
            "remembered"
        );
        let mut body = stream.into_body(Vec::new(), Format::Text, 1000, ());
        let wait = Duration::from_secs(10);
        let replayed = tokio::time::timeout(wait, futures_util::StreamExt::next(&mut body))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&replayed[..], b"event: message\nid: 2\ndata: n: b\n\n");
        chat.post(msg("c")).await.unwrap();
        let chunk = tokio::time::timeout(wait, futures_util::StreamExt::next(&mut body))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&chunk[..], b"event: message\nid: 3\ndata: n: c\n\n");
    }
}
