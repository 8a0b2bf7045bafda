//! The single writer: every append goes through one thread, which
//! commits in batches (group commit) and then publishes the new messages to
//! the hub in commit order.
//!
//! One writer is what makes ids and delivery agree: ids are assigned in the
//! order messages are committed, and the same thread broadcasts them in that
//! order, so every subscriber sees strictly increasing ids with no gaps that
//! later fill in. A message is broadcast only after it is durable, so an id
//! a subscriber has seen is never lost or reused by a crash.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use super::hub::Hub;
use super::message::Message;
use crate::store::{Appended, NewMessage, Store, StoreError};

/// The most messages committed in one transaction.
const MAX_BATCH: usize = 512;
/// Appends waiting for the writer; senders wait (asynchronously) beyond it.
const QUEUE: usize = 8192;

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

pub struct Writer {
    tx: Mutex<Option<mpsc::Sender<(NewMessage, Reply)>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    publisher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A committed batch on its way from the writer thread to the publisher
/// task: the new messages in id order, and every POST's answer.
struct Committed {
    new: Vec<Message>,
    replies: Vec<(Reply, Result<Appended, StoreError>)>,
}

/// The writer has stopped (shutdown): nothing was stored.
#[derive(Debug, thiserror::Error)]
#[error("the writer has stopped")]
pub struct WriterClosed;

impl Writer {
    /// Starts the writer thread and its publisher task (call from within
    /// the tokio runtime).
    ///
    /// The thread only commits. Broadcasting and answering happen in a task
    /// on the runtime: waking a thousand subscribers from inside the
    /// runtime queues them on the waking worker, whereas every wake from a
    /// foreign thread goes through the shared inject queue and may unpark a
    /// worker (measured: about twice the futex and wake-up traffic).
    pub fn start(store: Arc<dyn Store>, hub: Hub) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (committed_tx, mut committed) = mpsc::unbounded_channel::<Committed>();
        let publishes = !store.broadcasts_itself();
        let publisher = tokio::spawn(async move {
            while let Some(Committed { new, replies }) = committed.recv().await {
                hub.metrics().messages_total.inc_by(new.len() as u64);
                if publishes && !new.is_empty() {
                    hub.publish(new);
                }
                for (reply, outcome) in replies {
                    let _ = reply.send(outcome);
                }
            }
        });
        let thread = std::thread::Builder::new()
            .name("ssechat-writer".into())
            .spawn(move || run(store, rx, committed_tx))
            .expect("spawning the writer thread");
        Writer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            publisher: Mutex::new(Some(publisher)),
        }
    }

    pub async fn append(
        &self,
        msg: NewMessage,
    ) -> Result<Result<Appended, StoreError>, WriterClosed> {
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
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<(NewMessage, Reply)>,
    committed: mpsc::UnboundedSender<Committed>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut replies = Vec::with_capacity(MAX_BATCH);
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
        let done = match store.append(&batch, now_ms()) {
            Ok(outcomes) => {
                let new: Vec<_> = outcomes
                    .iter()
                    .filter_map(|o| match o {
                        Appended::New(m) => Some(m.clone()),
                        Appended::Duplicate { .. } => None,
                    })
                    .collect();
                Committed {
                    new,
                    replies: replies
                        .drain(..)
                        .zip(outcomes.into_iter().map(Ok))
                        .collect(),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, messages = batch.len(), "append failed; messages refused");
                Committed {
                    new: Vec::new(),
                    replies: replies.drain(..).map(|r| (r, Err(e.clone()))).collect(),
                }
            }
        };
        let _ = committed.send(done);
        batch.clear();
    }
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "flushing the store at shutdown failed");
    }
}
