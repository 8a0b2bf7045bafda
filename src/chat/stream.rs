//! Opening a client's event stream: count it present, subscribe to the
//! room, read the first page of what it missed, then hand HTTP a body that
//! replays the rest page by page and goes on live.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::hub::Subscription;
use super::message::{Format, Message};
use super::replay::{self, Fetch, Replay};
use super::subscriber::EventStream;
use super::types::{ClientId, DisplayName, EventId, RoomName};
use super::{Chat, ChatError};
use crate::metrics::Metrics;

/// How long opening a stream waits for the cluster-wide online count before
/// it says this node's.
const CLUSTER_ONLINE_WAIT: Duration = Duration::from_secs(2);

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
    /// Also whose stream it is: the body's viewer.
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
            sub,
            metrics,
            ..
        } = self;
        let body = EventStream::new(sub, prelude, format, since, retry_ms, metrics, guards);
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

impl Chat {
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
            sub,
            metrics: self.hub.metrics().clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{chat, msg, texts};
    use super::*;

    /// The body's next chunk, within a bound.
    async fn next_chunk(body: &mut EventStream<()>) -> Bytes {
        let next = futures_util::StreamExt::next(body);
        tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .expect("a chunk within 10 s")
            .expect("the stream is open")
            .expect("no error")
    }

    #[tokio::test]
    async fn a_stream_replays_after_since_then_gets_live_messages() {
        let chat = chat();
        let first = chat.post(msg("a")).await.unwrap();
        chat.post(msg("b")).await.unwrap();
        let name = chat.name_for(
            ClientId::test(2),
            Some(&DisplayName::parse("mine").unwrap()),
        );
        let stream = chat
            .open_stream(&RoomName::lobby(), ClientId::test(2), &name, Some(first.id))
            .await
            .unwrap();
        assert_eq!(texts(&stream.first_page), ["b"]);
        assert_eq!(stream.online, 1);
        assert_eq!(
            chat.name_for(ClientId::test(2), None).as_str(),
            "mine",
            "remembered"
        );
        let mut body = stream.into_body(Vec::new(), Format::Text, 1000, ());
        let replayed = next_chunk(&mut body).await;
        assert_eq!(&replayed[..], b"event: message\nid: 2\ndata: n: b\n\n");
        chat.post(msg("c")).await.unwrap();
        let chunk = next_chunk(&mut body).await;
        assert_eq!(&chunk[..], b"event: message\nid: 3\ndata: n: c\n\n");
    }
}
