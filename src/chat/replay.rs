//! Replay streamed from storage: what a reconnecting stream missed, read a
//! page at a time as the socket takes it, never the whole history at once.
//!
//! A stream asking for everything after id 0 in a room of 1,000 large
//! messages used to have all of it encoded into one buffer before its
//! first byte went out (17-20 MB per stream, for a client that need not
//! read a byte of it). Now a stream holds one page at most: up to
//! [`PAGE`] messages and [`PAGE_BYTES`] of them; the next page is read
//! only when the body is asked for more, which hyper does only once the
//! socket has taken what it had.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::history::HistoryError;
use super::message::{Format, Message};
use super::types::{ClientId, EventId};
use super::ChatError;
use crate::sse;

/// Messages read from storage at a time.
pub const PAGE: usize = 64;
/// A page is cut short (at least one message kept) past this many bytes.
pub const PAGE_BYTES: usize = 1 << 20;
/// Bytes of frames handed to the connection per chunk.
const CHUNK_BYTES: usize = 64 * 1024;

/// A read of the next page, running: messages after the given id, at most
/// [`PAGE`]. (A task's handle, so the stream stays `Sync` for warp.)
pub type PageRead = JoinHandle<Result<Vec<Message>, ChatError>>;
pub type Fetch = Box<dyn FnMut(EventId) -> PageRead + Send + Sync>;

/// A stream's replay in progress.
pub struct Replay {
    /// Read, not yet sent.
    page: VecDeque<Message>,
    /// Storage may hold more after `page`.
    more: bool,
    fetch: Fetch,
    pending: Option<PageRead>,
}

/// What the replay has for the connection next.
pub enum Step {
    /// Frames to send.
    Chunk(Bytes),
    /// Reading history failed: a comment saying so; the stream ends (the
    /// client reconnects with the last id it got and goes on from there).
    Failed(Bytes),
    /// All sent: the stream goes live.
    Done,
}

impl Replay {
    /// A replay starting with `first`, the first page (read when the stream
    /// opened, so an unreadable history is an error before the 200);
    /// `fetch` reads the ones after it.
    pub fn new(first: Vec<Message>, fetch: Fetch) -> Self {
        let mut replay = Replay {
            page: VecDeque::new(),
            more: false,
            fetch,
            pending: None,
        };
        replay.take_page(first);
        replay
    }

    fn take_page(&mut self, mut page: Vec<Message>) {
        self.more = page.len() >= PAGE;
        let mut bytes = 0;
        let fits = page
            .iter()
            .position(|m| {
                bytes += m.text.len() + m.name.as_str().len() + 128;
                bytes > PAGE_BYTES
            })
            .map_or(page.len(), |at| at.max(1));
        if fits < page.len() {
            page.truncate(fits);
            self.more = true;
        }
        self.page = page.into();
    }

    /// The next chunk of frames for `viewer`, reading a page when the last
    /// one is sent. `last_id` follows what was sent.
    pub fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        last_id: &mut Option<EventId>,
        viewer: ClientId,
        format: Format,
    ) -> Poll<Step> {
        loop {
            if !self.page.is_empty() {
                let mut chunk = BytesMut::new();
                while chunk.len() < CHUNK_BYTES {
                    let Some(m) = self.page.pop_front() else {
                        break;
                    };
                    chunk.extend_from_slice(&m.frame(format, m.sender == viewer));
                    *last_id = Some(m.id);
                }
                return Poll::Ready(Step::Chunk(chunk.freeze()));
            }
            let Some(after) = last_id.filter(|_| self.more) else {
                return Poll::Ready(Step::Done);
            };
            let pending = self.pending.get_or_insert_with(|| (self.fetch)(after));
            let read = match Pin::new(pending).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(read)) => read,
                Poll::Ready(Err(e)) => Err(ChatError::from(HistoryError::Unavailable(format!(
                    "replay read task failed: {e}"
                )))),
            };
            match read {
                Ok(page) => {
                    self.pending = None;
                    self.take_page(page);
                    if self.page.is_empty() {
                        return Poll::Ready(Step::Done);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replay: reading history failed; ending the stream");
                    self.pending = None;
                    return Poll::Ready(Step::Failed(sse::comment(
                        "could not read the history; reconnect to continue",
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::types::{DisplayName, RoomName};
    use std::sync::{Arc, Mutex};

    fn msg(id: u64, text: &str) -> Message {
        Message {
            id: EventId::assigned(id),
            room: RoomName::lobby(),
            name: DisplayName::parse("n").unwrap(),
            text: text.to_owned(),
            ts: 0,
            sender: ClientId::test(1),
        }
    }

    /// A replay over `total` stored messages of `size` bytes, counting reads.
    fn over(total: u64, size: usize) -> (Replay, Arc<Mutex<Vec<EventId>>>) {
        let reads = Arc::new(Mutex::new(Vec::new()));
        let seen = reads.clone();
        let text = "x".repeat(size);
        let all: Vec<Message> = (1..=total).map(|i| msg(i, &text)).collect();
        let first: Vec<Message> = all.iter().take(PAGE).cloned().collect();
        let fetch: Fetch = Box::new(move |after: EventId| {
            seen.lock().unwrap().push(after);
            let page: Vec<Message> = all
                .iter()
                .filter(|m| m.id > after)
                .take(PAGE)
                .cloned()
                .collect();
            tokio::spawn(async move { Ok(page) })
        });
        (Replay::new(first, fetch), reads)
    }

    fn ids_in(chunk: &[u8]) -> Vec<u64> {
        crate::sse::Parser::new()
            .feed(chunk)
            .into_iter()
            .filter_map(|i| match i {
                crate::sse::Item::Event(e) => e.last_event_id.parse().ok(),
                _ => None,
            })
            .collect()
    }

    async fn step(replay: &mut Replay, last: &mut Option<EventId>) -> Step {
        std::future::poll_fn(|cx| replay.poll_step(cx, last, ClientId::test(2), Format::Json)).await
    }

    #[tokio::test]
    async fn pages_are_read_only_as_they_are_taken_and_all_arrive_once() {
        let (mut replay, reads) = over(200, 10);
        let mut last = Some(EventId::assigned(0));
        let mut ids = Vec::new();
        let Step::Chunk(c) = step(&mut replay, &mut last).await else {
            panic!("the first page is there")
        };
        ids.extend(ids_in(&c));
        assert!(reads.lock().unwrap().is_empty(), "nothing read ahead");
        loop {
            match step(&mut replay, &mut last).await {
                Step::Chunk(c) => ids.extend(ids_in(&c)),
                Step::Done => break,
                Step::Failed(_) => panic!("unexpected failure"),
            }
        }
        assert_eq!(ids, (1..=200).collect::<Vec<_>>());
        assert_eq!(last, Some(EventId::assigned(200)));
        assert_eq!(
            *reads.lock().unwrap(),
            [
                EventId::assigned(64),
                EventId::assigned(128),
                EventId::assigned(192)
            ],
            "one read per page, after what was sent"
        );
    }

    #[tokio::test]
    async fn a_page_of_huge_messages_is_cut_at_a_mebibyte() {
        let (replay, _) = over(64, 100_000);
        assert_eq!(replay.page.len(), 10, "10 x 100 kB fit, the 11th does not");
        assert!(replay.more);
        let (one, _) = over(1, 5_000_000);
        assert_eq!(one.page.len(), 1, "a page holds one message at least");
    }
}
