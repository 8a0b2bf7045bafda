//! The single writer: every append goes through one thread, which
//! commits in batches (group commit), puts the new messages in their rooms'
//! channels in commit order, answers the waiting POSTs, and leaves waking
//! the subscribers to one publisher task.
//!
//! One writer is what makes ids and delivery agree: ids are assigned in the
//! order messages are committed, and the same thread puts them in the
//! channels in that order, so every subscriber sees strictly increasing ids
//! with no gaps that later fill in. A message is broadcast only after it is durable, so an id
//! a subscriber has seen is never lost or reused by a crash.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use super::history::{Appended, History, HistoryError, NewMessage};
use super::hub::{Hub, Staged};
use super::types::{EventId, RoomName};
use crate::metrics::Metrics;

/// The most messages committed in one transaction.
const MAX_BATCH: usize = 512;
/// Appends waiting for the writer; senders wait (asynchronously) beyond it.
const QUEUE: usize = 8192;

type Reply = oneshot::Sender<Result<Accepted, HistoryError>>;

/// What a POST learns of its message: the id and room it is stored under,
/// and whether it is new (or an earlier one with the same
/// `client_msg_id`). The message itself goes to the fan-out, uncopied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: EventId,
    pub room: RoomName,
    pub new: bool,
}

pub struct Writer {
    tx: Mutex<Option<mpsc::Sender<(NewMessage, Reply)>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    publisher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The writer has stopped (shutdown): nothing was stored.
#[derive(Debug, thiserror::Error)]
#[error("the writer has stopped")]
pub struct WriterClosed;

impl Writer {
    /// Starts the writer thread and its publisher task (call from within
    /// the tokio runtime).
    ///
    /// The thread commits, puts the new messages in their rooms' channels
    /// ([`Hub::stage`]), and answers. Waking the subscribers happens in a
    /// task on the runtime: waking a thousand subscribers from inside the
    /// runtime queues them on the waking worker, whereas every wake from a
    /// foreign thread goes through the shared inject queue and may unpark a
    /// worker (measured: about twice the futex and wake-up traffic).
    /// Answers go straight from the thread, a few wakes per batch: answered
    /// from the publisher, a POST waited behind the fan-out it had just
    /// started (measured at 1,000 subscribers: 14 ms → 2 ms mean in the
    /// handler). Staging first keeps the promise that a stream opened after
    /// a POST was answered does not get that message live.
    ///
    /// `deliver` is the hub new messages go to; `None` when something else
    /// delivers them (a cluster, whose history publishes what it stores).
    pub fn start(
        history: Arc<dyn History>,
        deliver: Option<Hub>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (staged_tx, mut staged) = mpsc::unbounded_channel::<Staged>();
        let publish = deliver.map(|hub| (hub, staged_tx));
        let publisher = tokio::spawn(async move {
            while let Some(batch) = staged.recv().await {
                batch.wake();
            }
        });
        let thread = std::thread::Builder::new()
            .name("ssechat-writer".into())
            .spawn(move || run(history, rx, publish, metrics));
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                publisher.abort();
                return Err(e);
            }
        };
        Ok(Writer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            publisher: Mutex::new(Some(publisher)),
        })
    }

    pub async fn append(
        &self,
        msg: NewMessage,
    ) -> Result<Result<Accepted, HistoryError>, WriterClosed> {
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(WriterClosed)?;
        let (reply, rx) = oneshot::channel();
        tx.send((msg, reply)).await.map_err(|_| WriterClosed)?;
        rx.await.map_err(|_| WriterClosed)
    }

    /// Stops taking appends, lets the queued ones commit, flushes, and waits
    /// for the thread to end.
    pub async fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(publisher) = publisher {
            let _ = publisher.await;
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn run(
    history: Arc<dyn History>,
    mut rx: mpsc::Receiver<(NewMessage, Reply)>,
    publish: Option<(Hub, mpsc::UnboundedSender<Staged>)>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut replies: Vec<Reply> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some((msg, reply)) = next {
            batch.push(msg);
            replies.push(reply);
            next = if batch.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let started = std::time::Instant::now();
        let appended = history.append(&batch, now_ms());
        metrics
            .store_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        match appended {
            Ok(outcomes) => {
                let mut new = Vec::with_capacity(outcomes.len());
                let accepted: Vec<Accepted> = outcomes
                    .into_iter()
                    .map(|o| match o {
                        Appended::New(m) => {
                            let a = Accepted {
                                id: m.id,
                                room: m.room.clone(),
                                new: true,
                            };
                            new.push(m);
                            a
                        }
                        Appended::Duplicate { id, room } => Accepted {
                            id,
                            room,
                            new: false,
                        },
                    })
                    .collect();
                metrics.messages_total.inc_by(new.len() as u64);
                // In the channels before anyone hears of them.
                let staged = match (&publish, new.is_empty()) {
                    (Some((hub, _)), false) => Some(hub.stage(new)),
                    _ => None,
                };
                // Answer from here: each waiting POST is queued on the
                // runtime at once, ahead of the fan-out it would otherwise
                // wait behind. The messages are durable already.
                for (reply, outcome) in replies.drain(..).zip(accepted) {
                    let _ = reply.send(Ok(outcome));
                }
                if let (Some((_, publisher)), Some(staged)) = (&publish, staged) {
                    if let Err(unsent) = publisher.send(staged) {
                        // The publisher is gone (shutting down): wake here.
                        unsent.0.wake();
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, messages = batch.len(), "append failed; messages refused");
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        batch.clear();
    }
    if let Err(e) = history.flush() {
        tracing::error!(error = %e, "flushing the history at shutdown failed");
    }
}
