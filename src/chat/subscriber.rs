//! One SSE stream's body: the prelude (retry hint, hello, replay), then the
//! room's live events, as a `Stream` of shared byte chunks.
//!
//! Per live event the work is: receive an `Arc`, skip it if replay already
//! covered it, pick the pre-encoded bytes for this viewer. No encoding, no
//! allocation, no lock.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use super::hub::Subscription;
use super::message::{self, Event, Format};
use super::types::{ClientId, EventId};
use crate::metrics::Metrics;

pub struct EventStream {
    prelude: VecDeque<Bytes>,
    rx: BroadcastStream<Arc<Event>>,
    viewer: ClientId,
    format: Format,
    /// The newest message id this stream has sent (or the client had):
    /// live events at or below it were covered by replay.
    last_id: Option<EventId>,
    done: bool,
    retry_ms: u64,
    metrics: Arc<Metrics>,
    /// Dropped with the stream: presence, permits, the disconnect log line.
    _guards: Box<dyn Send + Sync>,
}

impl EventStream {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sub: Subscription,
        prelude: Vec<Bytes>,
        viewer: ClientId,
        format: Format,
        last_id: Option<EventId>,
        retry_ms: u64,
        metrics: Arc<Metrics>,
        guards: Box<dyn Send + Sync>,
    ) -> Self {
        let Subscription { rx, guard, .. } = sub;
        EventStream {
            prelude: prelude.into(),
            rx: BroadcastStream::new(rx),
            viewer,
            format,
            last_id,
            done: false,
            retry_ms,
            metrics,
            _guards: Box::new((guard, guards)),
        }
    }

    fn deliver(&self, bytes: &Bytes) -> Bytes {
        bytes.clone()
    }
}

impl Stream for EventStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(b) = this.prelude.pop_front() {
            this.metrics.bytes_sent_total.inc_by(b.len() as u64);
            return Poll::Ready(Some(Ok(b)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let event = match Pin::new(&mut this.rx).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                    this.done = true;
                    this.metrics.subscribers_dropped_total.inc();
                    tracing::warn!(missed, "slow subscriber disconnected");
                    return Poll::Ready(Some(Ok(message::lagged_frame(missed))));
                }
                Poll::Ready(Some(Ok(event))) => event,
            };
            let bytes = match &*event {
                Event::Message(m) => {
                    if this.last_id.is_some_and(|last| m.message.id <= last) {
                        continue;
                    }
                    this.last_id = Some(m.message.id);
                    this.deliver(m.frame_for(Some(this.viewer), this.format))
                }
                Event::Presence { about, .. } if *about == this.viewer => continue,
                Event::Presence { json, text, .. } => this.deliver(match this.format {
                    Format::Json => json,
                    Format::Text => text,
                }),
                Event::Keepalive => message::keepalive_frame(),
                Event::Shutdown => {
                    this.done = true;
                    message::shutdown_frame(this.retry_ms)
                }
            };
            return Poll::Ready(Some(Ok(bytes)));
        }
    }
}
