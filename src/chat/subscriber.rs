//! One SSE stream's body: the prelude (retry hint, hello), the replay (read
//! from storage page by page, see [`super::replay`]), then the room's live
//! events, as a `Stream` of shared byte chunks.
//!
//! Per live message the work is: receive an `Arc`, skip it if replay
//! already covered it, pick the pre-encoded bytes for this viewer. No
//! encoding, no allocation, no lock.
//!
//! Presence and typing are not in the message ring: before each message,
//! and whenever woken, the stream looks at the room's board (one atomic
//! load each) and writes what changed since it last wrote, as one event.
//! Presence it had no time to write is thus replaced by the current
//! state, never queued, and never makes the stream lag.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio_stream::Stream;

use super::fanout::{Receiver, RecvError, TryRecvError};
use super::hub::{Subscription, SubscriptionGuard};
use super::message::{self, Event, Format, Tally};
use super::presence::Board;
use super::replay::{Replay, Step};
use super::types::{ClientId, EventId};
use crate::metrics::Metrics;

pub struct EventStream<G> {
    /// Sent before live events; dropped (with its buffer) once sent.
    prelude: Option<std::vec::IntoIter<Bytes>>,
    /// What the client missed, read from storage a page at a time; live
    /// events wait in the channel meanwhile. Boxed: most streams have
    /// none, and every idle stream would reserve its room.
    replay: Option<Box<Replay>>,
    rx: Receiver<Arc<Event>>,
    /// A message received while presence was due: written right after it.
    stash: Option<Arc<Event>>,
    board: Arc<Board>,
    /// What this stream's client was told about the room's presence
    /// (its hello counted everything up to here, its own join included).
    seen: Tally,
    /// Typing notices of the board already looked at.
    typing_seen: u64,
    format: Format,
    /// The newest message id this stream has sent (or the client had):
    /// live events at or below it were covered by replay.
    last_id: Option<EventId>,
    done: bool,
    retry_ms: u64,
    metrics: Arc<Metrics>,
    /// Dropped with the stream: presence, permits, the disconnect log line.
    /// (Held inline: the stream is boxed once by the HTTP layer already.)
    /// The subscription's guard also says whose stream it is: the viewer.
    guards: (SubscriptionGuard, G),
}

impl<G> EventStream<G> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sub: Subscription,
        prelude: Vec<Bytes>,
        format: Format,
        last_id: Option<EventId>,
        retry_ms: u64,
        metrics: Arc<Metrics>,
        guards: G,
    ) -> Self {
        let Subscription {
            rx,
            guard,
            board,
            seen,
            typing_seen,
            ..
        } = sub;
        EventStream {
            prelude: Some(prelude.into_iter()),
            replay: None,
            rx,
            stash: None,
            board,
            seen,
            typing_seen,
            format,
            last_id,
            done: false,
            retry_ms,
            metrics,
            guards: (guard, guards),
        }
    }
}

impl<G> EventStream<G> {
    /// The client this stream is for (its own messages read `me:`).
    fn viewer(&self) -> ClientId {
        self.guards.0.client()
    }

    /// Sends `replay` after the prelude, before going live.
    pub fn with_replay(mut self, replay: Replay) -> Self {
        self.replay = Some(Box::new(replay));
        self
    }
}

/// When several events are ready at once, up to this many bytes of them
/// go out as one chunk: one pass through hyper and one `writev` entry
/// instead of one per event. A single ready event is passed on as the
/// shared bytes, uncopied.
const BATCH_BYTES: usize = 16 * 1024;

impl<G> EventStream<G> {
    /// Whether presence or typing news waits on the board.
    fn ephemeral_due(&self) -> bool {
        self.board.presence_after(self.seen)
            || (self.format == Format::Json && self.board.typing_seq() > self.typing_seen)
    }

    /// What changed on the board since this stream last looked, as one
    /// chunk: at most one presence event, then typing notices (JSON only,
    /// never the viewer's own).
    fn ephemeral(&mut self) -> Option<Bytes> {
        let mut presence = None;
        if self.board.presence_after(self.seen) {
            let latest = self.board.latest();
            presence = latest.frame_for(self.seen, self.format);
            if latest.end.seq() > self.seen.seq() {
                self.seen = latest.end;
            }
        }
        let typing = if self.format == Format::Json && self.board.typing_seq() > self.typing_seen {
            let (chunk, to) = self.board.typing_after(self.typing_seen, self.viewer());
            self.typing_seen = to;
            chunk
        } else {
            None
        };
        match (presence, typing) {
            (Some(p), Some(t)) => {
                let mut b = BytesMut::with_capacity(p.len() + t.len());
                b.extend_from_slice(&p);
                b.extend_from_slice(&t);
                Some(b.freeze())
            }
            (p, t) => p.or(t),
        }
    }

    /// The next frame this stream should send, skipping what it must not.
    /// With `cx`, an empty channel registers for a wake-up; without, it
    /// only looks (the batch loop's "anything more?").
    fn next_frame(&mut self, mut cx: Option<&mut Context<'_>>) -> Poll<Option<Bytes>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            // Presence first: what the board says happened before any
            // message still to be read (staging publishes a room's pending
            // presence before it pushes the message).
            if let Some(b) = self.ephemeral() {
                return Poll::Ready(Some(b));
            }
            let received = if let Some(event) = self.stash.take() {
                Ok(event)
            } else {
                let fresh = match cx.as_deref_mut() {
                    Some(cx) => match self.rx.poll_recv(cx) {
                        Poll::Pending => {
                            // Registered: a board change from now on wakes
                            // us; one from before, we see here.
                            if self.ephemeral_due() {
                                continue;
                            }
                            return Poll::Pending;
                        }
                        Poll::Ready(r) => r,
                    },
                    None => match self.rx.try_recv() {
                        Err(TryRecvError::Empty) => return Poll::Pending,
                        Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                        Err(TryRecvError::Closed) => Err(RecvError::Closed),
                        Ok(event) => Ok(event),
                    },
                };
                // The board changed between the look above and this
                // message (the stager published, then pushed): the
                // presence goes first.
                if let Ok(event) = &fresh {
                    if matches!(**event, Event::Messages(_)) && self.ephemeral_due() {
                        self.stash = Some(event.clone());
                        continue;
                    }
                }
                fresh
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
                    let (viewer, format) = (Some(self.viewer()), self.format);
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
        let viewer = this.viewer();
        if let Some(replay) = &mut this.replay {
            let step = replay.poll_step(cx, &mut this.last_id, viewer, this.format);
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
    use crate::chat::message::Message;
    use crate::chat::presence::PRESENCE_GATHER;
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
            id: EventId::assigned(id),
            room: RoomName::lobby(),
            name: DisplayName::parse("n").unwrap(),
            text: format!("t{id}"),
            ts: 0,
            sender: ClientId::test(sender),
        }
    }

    #[tokio::test]
    async fn a_stream_opened_after_staging_gets_the_next_message_not_the_staged_one() {
        let hub = Hub::new(16, Arc::new(Metrics::default()));
        let (room, me) = (RoomName::lobby(), DisplayName::parse("myself").unwrap());
        // Someone is in the room, so it exists; the writer stages (and
        // answers the POST) before the wake-up.
        let _other = hub.open_stream(&room, ClientId::test(9), &me).unwrap();
        let staged = hub.stage(vec![msg(1, 2)]);
        let sub = hub.open_stream(&room, ClientId::test(1), &me).unwrap();
        let mut s = EventStream::new(
            sub,
            Vec::new(),
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
                ClientId::test(client),
                &DisplayName::parse(&format!("c{client}")).unwrap(),
            )
            .unwrap();
        EventStream::new(
            sub,
            Vec::new(),
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

    /// Everything the stream has ready now, as (event, data) pairs.
    fn drain(s: &mut EventStream<()>, cx: &mut Context<'_>) -> Vec<(String, String)> {
        let mut got = Vec::new();
        while let Poll::Ready(Some(Ok(chunk))) = Pin::new(&mut *s).poll_next(cx) {
            got.extend(events_in(&chunk));
        }
        got
    }

    fn stream_as(hub: &Hub, client: u128, format: Format) -> EventStream<()> {
        let name = DisplayName::parse(&format!("c{client}")).unwrap();
        let sub = hub
            .open_stream(&RoomName::lobby(), ClientId::test(client), &name)
            .unwrap();
        let m = hub.metrics().clone();
        EventStream::new(sub, Vec::new(), format, None, 1000, m, ())
    }

    const AFTER_WINDOW: std::time::Duration =
        PRESENCE_GATHER.saturating_add(std::time::Duration::from_millis(1));

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_joins_wakes_a_stream_once_and_is_one_summary() {
        let (hub, mut first, wakes, waker) = watched(64);
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut first).poll_next(&mut cx).is_pending());
        let _others: Vec<_> = (2..=4).map(|c| stream_of(&hub, c)).collect();
        tokio::task::yield_now().await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "joins wait for company");
        tokio::time::sleep(AFTER_WINDOW).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "one wake for the burst");
        let got = drain(&mut first, &mut cx);
        assert_eq!(
            got,
            [("presence".into(), ">> 3 joined (4 online)".into())],
            "one write for the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_crowd_arriving_in_a_big_room_wakes_its_streams_less_often() {
        use crate::chat::presence::spacing;
        let (hub, mut first, wakes, waker) = watched(64);
        let mut cx = Context::from_waker(&waker);
        assert!(drain(&mut first, &mut cx).is_empty());
        // 3,000 streams are there (spacing: 0.3 s), then 200 more arrive,
        // one every 10 ms, for 2 s.
        let mut crowd: Vec<_> = (2..3_002).map(|c| stream_of(&hub, c)).collect();
        tokio::time::sleep(spacing(3_000) + AFTER_WINDOW).await;
        let _ = drain(&mut first, &mut cx);
        let before = wakes.0.load(Ordering::SeqCst);
        let mut got = Vec::new();
        for c in 3_002..3_202 {
            crowd.push(stream_of(&hub, c));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            got.extend(drain(&mut first, &mut cx));
        }
        tokio::time::sleep(spacing(3_200) + AFTER_WINDOW).await;
        got.extend(drain(&mut first, &mut cx));
        let woken = wakes.0.load(Ordering::SeqCst) - before;
        // 2 s at one window per 0.3 s: 7 or 8 windows (20 at 0.1 s).
        assert!((6..=8).contains(&woken), "woken {woken} times");
        assert_eq!(got.len(), woken, "one presence write per window");
        let last = &got.last().unwrap().1;
        assert!(
            last.replace(',', "").ends_with("(3201 online)"),
            "the last window tells the count: {last}"
        );
        assert_eq!(hub.metrics().subscribers_dropped_total.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn on_a_busy_node_a_small_rooms_churn_is_spaced_too() {
        use crate::chat::presence::spacing;
        let (hub, mut first, wakes, waker) = watched(64);
        let mut cx = Context::from_waker(&waker);
        assert!(drain(&mut first, &mut cx).is_empty());
        // 3,000 streams elsewhere on the node (spacing: 0.3 s).
        let elsewhere = RoomName::parse_or_default(Some("elsewhere")).unwrap();
        let name = DisplayName::parse("x").unwrap();
        let _crowd: Vec<_> = (10_000..13_000)
            .map(|c| {
                hub.open_stream(&elsewhere, ClientId::test(c), &name)
                    .unwrap()
            })
            .collect();
        // The lobby, a room of one, has a window, then a change right after.
        let _second = stream_of(&hub, 2);
        tokio::time::sleep(AFTER_WINDOW).await;
        assert_eq!(drain(&mut first, &mut cx).len(), 1);
        let before = wakes.0.load(Ordering::SeqCst);
        let _third = stream_of(&hub, 3);
        tokio::time::sleep(AFTER_WINDOW).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), before, "not 0.1 s after");
        tokio::time::sleep(spacing(3_003)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), before + 1);
        let got = drain(&mut first, &mut cx);
        assert_eq!(got, [("join".into(), ">> c3 joined (3 online)".into())]);
        // After a quiet spell a lone change goes out 0.1 s later again.
        tokio::time::sleep(spacing(3_003)).await;
        let _fourth = stream_of(&hub, 4);
        tokio::time::sleep(AFTER_WINDOW).await;
        assert_eq!(drain(&mut first, &mut cx).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn presence_a_stream_could_not_write_is_replaced_not_queued() {
        // A buffer of 4 messages, and a crowd of 300 coming and going over
        // many windows while the first stream does not read at all.
        let (hub, mut first, _wakes, waker) = watched(4);
        let mut cx = Context::from_waker(&waker);
        assert!(drain(&mut first, &mut cx).is_empty());
        let mut crowd = Vec::new();
        for c in 2..302 {
            crowd.push(stream_of(&hub, c));
            if c % 30 == 0 {
                tokio::time::sleep(AFTER_WINDOW).await;
            }
        }
        crowd.truncate(200); // 100 leave
        tokio::time::sleep(AFTER_WINDOW).await;
        let got = drain(&mut first, &mut cx);
        assert_eq!(
            got,
            [(
                "presence".into(),
                ">> 300 joined, 100 left (201 online)".into()
            )],
            "one summary of everything it missed, and still connected"
        );
        assert!(!first.done);
        assert_eq!(hub.metrics().subscribers_dropped_total.get(), 0);
        // It goes on with messages as usual.
        hub.publish(vec![msg(1, 2)]);
        assert_eq!(
            drain(&mut first, &mut cx),
            [("message".into(), "n: t1".into())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_never_hears_of_its_own_join_nor_what_its_hello_counted() {
        let hub = Hub::new(16, Arc::new(Metrics::default()));
        let waker = std::task::Waker::from(Arc::new(CountingWaker::default()));
        let mut cx = Context::from_waker(&waker);
        let mut a = stream_of(&hub, 1);
        let mut b = stream_of(&hub, 2);
        let mut c = stream_of(&hub, 3); // same window as b
        tokio::time::sleep(AFTER_WINDOW).await;
        assert_eq!(
            drain(&mut a, &mut cx),
            [("presence".into(), ">> 2 joined (3 online)".into())]
        );
        assert_eq!(
            drain(&mut b, &mut cx),
            [("join".into(), ">> c3 joined (3 online)".into())],
            "b hears of c, who came after its hello, not of itself"
        );
        assert!(drain(&mut c, &mut cx).is_empty(), "c's hello counted all");
        // A window whose only change is the viewer's own join: nothing.
        drop(a);
        tokio::time::sleep(AFTER_WINDOW).await;
        let _ = drain(&mut b, &mut cx);
        let _ = drain(&mut c, &mut cx);
        let mut d = stream_of(&hub, 4);
        tokio::time::sleep(AFTER_WINDOW).await;
        assert!(drain(&mut d, &mut cx).is_empty());
        assert_eq!(
            drain(&mut c, &mut cx),
            [("join".into(), ">> c4 joined (3 online)".into())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_wakes_at_once_and_pending_joins_come_first() {
        let hub = Hub::new(16, Arc::new(Metrics::default()));
        let mut first = stream_of(&hub, 1);
        let _second = stream_of(&hub, 2);
        let _third = stream_of(&hub, 3);
        hub.publish(vec![msg(1, 2)]);
        let started = tokio::time::Instant::now();
        let chunk = first.next().await.unwrap().unwrap();
        assert_eq!(started.elapsed(), std::time::Duration::ZERO, "no waiting");
        let events = events_in(&chunk);
        let kinds: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(kinds, ["presence", "message"]);
        // The window was published with the message: the timer finds
        // nothing more to say.
        tokio::time::sleep(AFTER_WINDOW).await;
        let waker = std::task::Waker::from(Arc::new(CountingWaker::default()));
        assert!(drain(&mut first, &mut Context::from_waker(&waker)).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_read_after_a_window_was_published_comes_after_it() {
        let hub = Hub::new(16, Arc::new(Metrics::default()));
        let waker = std::task::Waker::from(Arc::new(CountingWaker::default()));
        let mut cx = Context::from_waker(&waker);
        let mut first = stream_of(&hub, 1);
        assert!(drain(&mut first, &mut cx).is_empty());
        // Staged (presence published, message pushed) but not yet woken:
        // whatever the stream looks at first, presence goes out first.
        let _second = stream_of(&hub, 2);
        let staged = hub.stage(vec![msg(1, 3)]);
        let got = drain(&mut first, &mut cx);
        staged.wake();
        let kinds: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(kinds, ["join", "message"]);
    }

    #[tokio::test(start_paused = true)]
    async fn typing_reaches_other_json_streams_only() {
        let hub = Hub::new(16, Arc::new(Metrics::default()));
        let waker = std::task::Waker::from(Arc::new(CountingWaker::default()));
        let mut cx = Context::from_waker(&waker);
        let mut typist = stream_as(&hub, 1, Format::Json);
        let mut reader = stream_as(&hub, 2, Format::Json);
        let mut text = stream_as(&hub, 3, Format::Text);
        tokio::time::sleep(AFTER_WINDOW).await;
        for s in [&mut typist, &mut reader, &mut text] {
            let _ = drain(s, &mut cx);
        }
        let name = DisplayName::parse("c1").unwrap();
        hub.typing(&RoomName::lobby(), ClientId::test(1), &name, None)
            .unwrap();
        assert!(
            hub.typing(&RoomName::lobby(), ClientId::test(1), &name, None)
                .is_err(),
            "one per 2 s"
        );
        tokio::time::sleep(AFTER_WINDOW).await;
        assert_eq!(
            drain(&mut reader, &mut cx),
            [("typing".into(), r#"{"name":"c1"}"#.into())]
        );
        assert!(drain(&mut typist, &mut cx).is_empty(), "not to the typist");
        assert!(drain(&mut text, &mut cx).is_empty(), "not to text streams");
    }

    #[tokio::test]
    async fn a_published_batch_arrives_as_one_chunk_without_replayed_ids() {
        let hub = Hub::new(16, Arc::new(Metrics::default()));
        let sub = hub
            .open_stream(
                &RoomName::lobby(),
                ClientId::test(1),
                &DisplayName::parse("myself").unwrap(),
            )
            .unwrap();
        // The client already has id 1 (say from replay).
        let mut s = EventStream::new(
            sub,
            Vec::new(),
            Format::Text,
            Some(EventId::assigned(1)),
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
