//! One SSE stream's body: the prelude (retry hint, hello), the replay (read
//! from storage page by page, see [`super::replay`]), then the room's live
//! events, as a `Stream` of shared byte chunks.
//!
//! Per live event the work is: receive an `Arc`, skip it if replay already
//! covered it, pick the pre-encoded bytes for this viewer. No encoding, no
//! allocation, no lock.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio_stream::Stream;

use super::fanout::{Receiver, RecvError, TryRecvError};
use super::hub::{Subscription, SubscriptionGuard};
use super::message::{self, Event, Format};
use super::replay::{Replay, Step};
use super::types::{ClientId, EventId};
use crate::metrics::Metrics;

pub struct EventStream<G> {
    /// Sent before live events; dropped (with its buffer) once sent.
    prelude: Option<std::vec::IntoIter<Bytes>>,
    /// What the client missed, read from storage a page at a time; live
    /// events wait in the channel meanwhile.
    replay: Option<Replay>,
    rx: Receiver<Arc<Event>>,
    viewer: ClientId,
    format: Format,
    /// The newest message id this stream has sent (or the client had):
    /// live events at or below it were covered by replay.
    last_id: Option<EventId>,
    done: bool,
    retry_ms: u64,
    metrics: Arc<Metrics>,
    /// Dropped with the stream: presence, permits, the disconnect log line.
    /// (Held inline: the stream is boxed once by the HTTP layer already.)
    _guards: (SubscriptionGuard, G),
}

impl<G> EventStream<G> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sub: Subscription,
        prelude: Vec<Bytes>,
        viewer: ClientId,
        format: Format,
        last_id: Option<EventId>,
        retry_ms: u64,
        metrics: Arc<Metrics>,
        guards: G,
    ) -> Self {
        let Subscription { rx, guard, .. } = sub;
        EventStream {
            prelude: Some(prelude.into_iter()),
            replay: None,
            rx,
            viewer,
            format,
            last_id,
            done: false,
            retry_ms,
            metrics,
            _guards: (guard, guards),
        }
    }
}

impl<G> EventStream<G> {
    /// Sends `replay` after the prelude, before going live.
    pub fn with_replay(mut self, replay: Replay) -> Self {
        self.replay = Some(replay);
        self
    }
}

/// When several events are ready at once, up to this many bytes of them
/// go out as one chunk: one pass through hyper and one `writev` entry
/// instead of one per event. A single ready event is passed on as the
/// shared bytes, uncopied.
const BATCH_BYTES: usize = 16 * 1024;

impl<G> EventStream<G> {
    /// The next frame this stream should send, skipping what it must not.
    /// With `cx`, an empty channel registers for a wake-up; without, it
    /// only looks (the batch loop's "anything more?").
    fn next_frame(&mut self, mut cx: Option<&mut Context<'_>>) -> Poll<Option<Bytes>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            let received = match cx.as_deref_mut() {
                Some(cx) => match self.rx.poll_recv(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                },
                None => match self.rx.try_recv() {
                    Err(TryRecvError::Empty) => return Poll::Pending,
                    Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                    Err(TryRecvError::Closed) => Err(RecvError::Closed),
                    Ok(event) => Ok(event),
                },
            };
            let event = match received {
                Err(RecvError::Closed) => return Poll::Ready(None),
                Err(RecvError::Lagged(missed)) => {
                    self.done = true;
                    self.metrics.subscribers_dropped_total.inc();
                    tracing::warn!(missed, "slow subscriber disconnected");
                    return Poll::Ready(Some(message::lagged_frame(missed)));
                }
                Ok(event) => event,
            };
            let bytes = match &*event {
                Event::Messages(list) => {
                    let fresh = message::messages_after(list, self.last_id);
                    let Some(newest) = fresh.last() else { continue };
                    self.last_id = Some(newest.message.id);
                    let (viewer, format) = (Some(self.viewer), self.format);
                    if let [one] = fresh {
                        one.frame_for(viewer, format).clone()
                    } else {
                        // Several: one chunk, sized exactly.
                        let frames = || fresh.iter().map(|m| m.frame_for(viewer, format));
                        let mut buf = BytesMut::with_capacity(frames().map(Bytes::len).sum());
                        frames().for_each(|f| buf.extend_from_slice(f));
                        buf.freeze()
                    }
                }
                Event::Presence { about, .. } if *about == self.viewer => continue,
                Event::Presence { json, text, .. } => match self.format {
                    Format::Json => json.clone(),
                    Format::Text => text.clone(),
                },
                Event::Keepalive => message::keepalive_frame(),
                Event::Shutdown => {
                    self.done = true;
                    message::shutdown_frame(self.retry_ms)
                }
            };
            return Poll::Ready(Some(bytes));
        }
    }
}

impl<G: Unpin> Stream for EventStream<G> {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(prelude) = &mut this.prelude {
            if let Some(b) = prelude.next() {
                this.metrics.bytes_sent_total.inc_by(b.len() as u64);
                return Poll::Ready(Some(Ok(b)));
            }
            this.prelude = None;
        }
        if let Some(replay) = &mut this.replay {
            let step = replay.poll_step(cx, &mut this.last_id, this.viewer, this.format);
            match step {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Step::Chunk(b)) => {
                    this.metrics.bytes_sent_total.inc_by(b.len() as u64);
                    return Poll::Ready(Some(Ok(b)));
                }
                Poll::Ready(Step::Failed(b)) => {
                    this.done = true;
                    this.replay = None;
                    return Poll::Ready(Some(Ok(b)));
                }
                Poll::Ready(Step::Done) => this.replay = None,
            }
        }
        let first = match this.next_frame(Some(cx)) {
            Poll::Ready(Some(b)) => b,
            other => return other.map(|o| o.map(Ok)),
        };
        let mut batch: Option<BytesMut> = None;
        while batch.as_ref().map_or(first.len(), BytesMut::len) < BATCH_BYTES {
            match this.next_frame(None) {
                Poll::Ready(Some(more)) => {
                    batch
                        .get_or_insert_with(|| {
                            let mut b = BytesMut::with_capacity(BATCH_BYTES.min(8 * first.len()));
                            b.extend_from_slice(&first);
                            b
                        })
                        .extend_from_slice(&more);
                }
                // Nothing more now or the end: send what we have. The next
                // poll registers for a wake-up, or sees the end again.
                _ => break,
            }
        }
        Poll::Ready(Some(Ok(batch.map_or(first, BytesMut::freeze))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::hub::Hub;
    use crate::chat::hub::PRESENCE_GATHER;
    use crate::chat::message::Message;
    use crate::chat::types::{DisplayName, RoomName};
    use crate::sse::{Item, Parser};
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn msg(id: u64, sender: u128) -> Message {
        Message {
            id: EventId(id),
            room: RoomName::lobby(),
            name: DisplayName::parse("n").unwrap(),
            text: format!("t{id}"),
            ts: 0,
            sender: ClientId(sender),
        }
    }

    #[tokio::test]
    async fn a_stream_opened_after_staging_gets_the_next_message_not_the_staged_one() {
        let hub = Hub::new(16, Arc::new(Metrics::default()));
        let (room, me) = (RoomName::lobby(), DisplayName::parse("myself").unwrap());
        // Someone is in the room, so it exists; the writer stages (and
        // answers the POST) before the wake-up.
        let _other = hub.open_stream(&room, ClientId(9), &me).unwrap();
        let staged = hub.stage(vec![msg(1, 2)]);
        let sub = hub.open_stream(&room, ClientId(1), &me).unwrap();
        let mut s = EventStream::new(
            sub,
            Vec::new(),
            ClientId(1),
            Format::Text,
            None,
            1000,
            hub.metrics().clone(),
            (),
        );
        staged.wake();
        hub.publish(vec![msg(2, 2)]);
        let chunk = s.next().await.unwrap().unwrap();
        let texts: Vec<String> = Parser::new()
            .feed(&chunk)
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(e.data),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["n: t2"]);
    }

    fn stream_of(hub: &Hub, client: u128) -> EventStream<()> {
        let sub = hub
            .open_stream(
                &RoomName::lobby(),
                ClientId(client),
                &DisplayName::parse(&format!("c{client}")).unwrap(),
            )
            .unwrap();
        EventStream::new(
            sub,
            Vec::new(),
            ClientId(client),
            Format::Text,
            None,
            1000,
            hub.metrics().clone(),
            (),
        )
    }

    fn events_in(chunk: &[u8]) -> Vec<(String, String)> {
        Parser::new()
            .feed(chunk)
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some((e.event, e.data)),
                _ => None,
            })
            .collect()
    }

    /// A hub with one stream, and a waker that counts the stream's wakes.
    fn watched(capacity: usize) -> (Hub, EventStream<()>, Arc<CountingWaker>, std::task::Waker) {
        let hub = Hub::new(capacity, Arc::new(Metrics::default()));
        let stream = stream_of(&hub, 1);
        let wakes = Arc::new(CountingWaker::default());
        let waker = std::task::Waker::from(wakes.clone());
        (hub, stream, wakes, waker)
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_joins_wakes_a_stream_once_and_goes_out_as_one_write() {
        let (hub, mut first, wakes, waker) = watched(64);
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut first).poll_next(&mut cx).is_pending());
        let _others: Vec<_> = (2..=4).map(|c| stream_of(&hub, c)).collect();
        tokio::task::yield_now().await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "joins wait for company");
        tokio::time::sleep(PRESENCE_GATHER + std::time::Duration::from_millis(1)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "one wake for the burst");
        let Poll::Ready(Some(Ok(chunk))) = Pin::new(&mut first).poll_next(&mut cx) else {
            panic!("the joins are there");
        };
        let kinds: Vec<String> = events_in(&chunk).into_iter().map(|e| e.0).collect();
        assert_eq!(kinds, ["join", "join", "join"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_longer_than_the_buffer_wakes_streams_before_they_lag() {
        let (hub, mut first, wakes, waker) = watched(16);
        let mut cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        let mut drain = |s: &mut EventStream<()>, got: &mut Vec<(String, String)>| {
            while let Poll::Ready(Some(Ok(chunk))) = Pin::new(&mut *s).poll_next(&mut cx) {
                got.extend(events_in(&chunk));
            }
        };
        drain(&mut first, &mut got);
        let mut others = Vec::new();
        let mut seen_wakes = 0;
        for c in 2..=41 {
            others.push(stream_of(&hub, c));
            // A stream task runs when woken, and only then.
            let now = wakes.0.load(Ordering::SeqCst);
            if now != seen_wakes {
                seen_wakes = now;
                drain(&mut first, &mut got);
            }
        }
        tokio::time::sleep(PRESENCE_GATHER * 2).await;
        drain(&mut first, &mut got);
        let kinds: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(kinds, vec!["join"; 40], "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_wakes_at_once_and_pending_joins_come_first() {
        let hub = Hub::new(16, Arc::new(Metrics::default()));
        let mut first = stream_of(&hub, 1);
        let _second = stream_of(&hub, 2);
        hub.publish(vec![msg(1, 2)]);
        let started = tokio::time::Instant::now();
        let chunk = first.next().await.unwrap().unwrap();
        assert_eq!(started.elapsed(), std::time::Duration::ZERO, "no waiting");
        let events = events_in(&chunk);
        let kinds: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(kinds, ["join", "message"]);
    }

    #[tokio::test]
    async fn a_published_batch_arrives_as_one_chunk_without_replayed_ids() {
        let hub = Hub::new(16, Arc::new(Metrics::default()));
        let sub = hub
            .open_stream(
                &RoomName::lobby(),
                ClientId(1),
                &DisplayName::parse("myself").unwrap(),
            )
            .unwrap();
        // The client already has id 1 (say from replay).
        let mut s = EventStream::new(
            sub,
            Vec::new(),
            ClientId(1),
            Format::Text,
            Some(EventId(1)),
            1000,
            hub.metrics().clone(),
            (),
        );
        hub.publish(vec![msg(1, 2), msg(2, 1), msg(3, 2)]);
        let chunk = s.next().await.unwrap().unwrap();
        let events: Vec<(String, String)> = Parser::new()
            .feed(&chunk)
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some((e.last_event_id, e.data)),
                _ => None,
            })
            .collect();
        assert_eq!(
            events,
            [("2".into(), "me: t2".into()), ("3".into(), "n: t3".into())]
        );
    }
}
