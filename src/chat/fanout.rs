//! A room's broadcast channel, made for one sender and thousands of
//! receivers that each wake once per event.
//!
//! `tokio::sync::broadcast` takes the channel-wide `tail` mutex every time a
//! receiver finds nothing new, and a stream looks at least twice per wake
//! (once more to see whether a batch can grow, once when hyper polls the
//! body again), so every receiver of a room queues on that one lock. Here
//! "anything new?" is one atomic load, a receiver's waker lives in its own
//! [`AtomicWaker`], and the ring lock is taken only to clone a value that
//! is there.
//!
//! Semantics follow `tokio::sync::broadcast`: a receiver sees what is sent
//! after it subscribed, in order; one that falls more than `capacity`
//! behind gets [`RecvError::Lagged`] with the number it missed and goes on
//! from the oldest value kept; [`RecvError::Closed`] comes once the sender
//! is gone and everything sent has been received.
//!
//! Memory: each receiver notes how far it has read (a store into its own
//! slot); each send, which visits every receiver anyway to wake it, also
//! finds the slowest and drops what everybody has read. A quiet room so
//! keeps about one event, not `capacity` of them.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::Ordering::{Acquire, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use slab::Slab;

/// Why a receive gave no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error("receiver lagged behind by {0} values")]
    Lagged(u64),
    #[error("channel closed")]
    Closed,
}

/// Why `try_recv` gave no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    Lagged(u64),
    Closed,
}

struct Shared<T> {
    ring: Mutex<Ring<T>>,
    /// How many values were ever sent: the position the next one gets.
    tail: AtomicU64,
    closed: AtomicBool,
    receivers: Mutex<Slab<Arc<Slot>>>,
}

/// A receiver's part that the sender sees.
struct Slot {
    waker: AtomicWaker,
    /// The receiver's position, or less (it is published after reading).
    read_to: AtomicU64,
}

struct Ring<T> {
    values: VecDeque<T>,
    /// The position of `values[0]`.
    first: u64,
    capacity: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can be left half-done by a panic that matters more than
    // refusing service would.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

pub fn channel<T: Clone>(capacity: usize) -> Sender<T> {
    let capacity = capacity.max(1);
    Sender {
        shared: Arc::new(Shared {
            ring: Mutex::new(Ring {
                values: VecDeque::with_capacity(capacity),
                first: 0,
                capacity,
            }),
            tail: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            receivers: Mutex::new(Slab::new()),
        }),
    }
}

impl<T: Clone> Sender<T> {
    /// A receiver of everything sent from now on.
    pub fn subscribe(&self) -> Receiver<T> {
        // Under the ring lock: no send can come between reading the tail
        // and joining the receivers, so every later send wakes this one and
        // counts its position before dropping anything.
        let ring = lock(&self.shared.ring);
        let next = self.shared.tail.load(SeqCst);
        let slot = Arc::new(Slot {
            waker: AtomicWaker::new(),
            read_to: AtomicU64::new(next),
        });
        let key = lock(&self.shared.receivers).insert(slot.clone());
        drop(ring);
        Receiver {
            shared: self.shared.clone(),
            next,
            slot,
            key,
        }
    }

    /// Sends to every receiver and wakes them; returns how many there are.
    pub fn send(&self, value: T) -> usize {
        self.push(value);
        self.waker().wake_all()
    }

    /// Puts a value in the channel without waking anyone: a receiver that
    /// looks finds it, and a receiver that subscribes later does not get
    /// it. [`Waker::wake_all`] wakes the waiting ones.
    pub fn push(&self, value: T) {
        let mut ring = lock(&self.shared.ring);
        if ring.values.len() == ring.capacity {
            ring.values.pop_front();
            ring.first += 1;
        }
        ring.values.push_back(value);
        self.shared
            .tail
            .store(ring.first + ring.values.len() as u64, SeqCst);
    }

    /// A handle that wakes this channel's receivers (and does not close the
    /// channel when dropped).
    pub fn waker(&self) -> Waker<T> {
        Waker {
            shared: self.shared.clone(),
        }
    }

    pub fn receiver_count(&self) -> usize {
        lock(&self.shared.receivers).len()
    }
}

/// Wakes a channel's waiting receivers: the second half of a send split in
/// two, so a thread can put values in order ([`Sender::push`]) and a task on
/// the runtime can do the waking, which is cheaper there.
pub struct Waker<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Waker<T> {
    /// Wakes every receiver, drops what all of them have read, and returns
    /// how many there are.
    pub fn wake_all(&self) -> usize {
        let (count, slowest) = {
            let receivers = lock(&self.shared.receivers);
            let mut slowest = u64::MAX;
            for (_, slot) in receivers.iter() {
                slot.waker.wake();
                slowest = slowest.min(slot.read_to.load(Acquire));
            }
            (receivers.len(), slowest)
        };
        self.drop_read_to(slowest);
        count
    }

    /// Drops what every receiver has read (all of it if none is left).
    fn drop_read_to(&self, slowest: u64) {
        let mut ring = lock(&self.shared.ring);
        let read_by_all = slowest.min(self.shared.tail.load(SeqCst));
        while ring.first < read_by_all {
            ring.values.pop_front();
            ring.first += 1;
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, SeqCst);
        for (_, slot) in lock(&self.shared.receivers).iter() {
            slot.waker.wake();
        }
    }
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// The position of the next value to receive.
    next: u64,
    slot: Arc<Slot>,
    key: usize,
}

impl<T: Clone> Receiver<T> {
    /// The next value if there is one; never registers for a wake-up.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        if self.next >= self.shared.tail.load(SeqCst) {
            return Err(if self.shared.closed.load(SeqCst) {
                TryRecvError::Closed
            } else {
                TryRecvError::Empty
            });
        }
        let ring = lock(&self.shared.ring);
        if self.next < ring.first {
            let missed = ring.first - self.next;
            self.next = ring.first;
            self.slot.read_to.store(self.next, Release);
            return Err(TryRecvError::Lagged(missed));
        }
        let value = ring.values[(self.next - ring.first) as usize].clone();
        drop(ring);
        self.next += 1;
        // Release is enough: trimming also needs the ring lock, which this
        // receiver held while it cloned.
        self.slot.read_to.store(self.next, Release);
        Ok(value)
    }

    /// The next value, or a wake-up once there is one.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, RecvError>> {
        let attempt = |rx: &mut Self| match rx.try_recv() {
            Ok(v) => Poll::Ready(Ok(v)),
            Err(TryRecvError::Lagged(n)) => Poll::Ready(Err(RecvError::Lagged(n))),
            Err(TryRecvError::Closed) => Poll::Ready(Err(RecvError::Closed)),
            Err(TryRecvError::Empty) => Poll::Pending,
        };
        if let Poll::Ready(r) = attempt(self) {
            return Poll::Ready(r);
        }
        self.slot.waker.register(cx.waker());
        // A send between the first look and the registration woke nobody:
        // look again.
        attempt(self)
    }

    pub async fn recv(&mut self) -> Result<T, RecvError> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        lock(&self.shared.receivers).remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn receivers_get_what_is_sent_after_they_subscribe_in_order() {
        let tx = channel(8);
        tx.send(0);
        let mut a = tx.subscribe();
        assert_eq!(tx.send(1), 1);
        let mut b = tx.subscribe();
        assert_eq!(tx.send(2), 2);
        assert_eq!(a.try_recv(), Ok(1));
        assert_eq!(a.try_recv(), Ok(2));
        assert_eq!(a.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(b.try_recv(), Ok(2));
        assert_eq!(b.try_recv(), Err(TryRecvError::Empty));
        drop(b);
        assert_eq!(tx.receiver_count(), 1);
    }

    #[test]
    fn a_receiver_that_falls_behind_learns_how_much_it_missed() {
        let tx = channel(4);
        let mut rx = tx.subscribe();
        for i in 0..10 {
            tx.send(i);
        }
        assert_eq!(rx.try_recv(), Err(TryRecvError::Lagged(6)));
        assert_eq!(rx.try_recv(), Ok(6));
        for want in 7..10 {
            assert_eq!(rx.try_recv(), Ok(want));
        }
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn what_everybody_has_read_is_dropped_at_the_next_send() {
        let tx = channel(64);
        let value = Arc::new(());
        let mut a = tx.subscribe();
        let mut b = tx.subscribe();
        tx.send(value.clone());
        assert_eq!(a.try_recv(), Ok(value.clone()));
        tx.send(Arc::new(()));
        // b has not read the first value: the ring keeps it.
        assert_eq!(Arc::strong_count(&value), 2);
        assert_eq!(b.try_recv(), Ok(value.clone()));
        drop(a);
        tx.send(Arc::new(()));
        // Everybody left has read it now: only the test holds it.
        assert_eq!(Arc::strong_count(&value), 1);
        assert_eq!(b.try_recv().map(|v| Arc::ptr_eq(&v, &value)), Ok(false));
        assert_eq!(b.try_recv().map(|v| Arc::ptr_eq(&v, &value)), Ok(false));
        assert_eq!(b.try_recv(), Err(TryRecvError::Empty));
        drop(b);
        tx.send(Arc::new(()));
        assert_eq!(
            lock(&tx.shared.ring).values.len(),
            0,
            "no receivers keep nothing"
        );
    }

    #[tokio::test]
    async fn a_pushed_value_is_there_before_the_wake_and_not_for_later_subscribers() {
        let tx = channel(8);
        let mut early = tx.subscribe();
        let waiting = tokio::spawn(async move { early.recv().await });
        tokio::task::yield_now().await;
        tx.push(7);
        let mut late = tx.subscribe();
        assert_eq!(late.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(tx.waker().wake_all(), 2);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got, Ok(7));
        assert_eq!(late.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn closed_comes_after_everything_sent() {
        let tx = channel(4);
        let mut rx = tx.subscribe();
        tx.send(1);
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    }

    /// Receivers on two workers against a sender on its own thread:
    /// values come in order, once each, and nobody misses a wake-up.
    /// Returns the total each receiver skipped as lagged.
    async fn race(n: u64, capacity: usize, receivers: usize) -> Vec<u64> {
        let tx = channel::<u64>(capacity);
        let tasks: Vec<_> = (0..receivers)
            .map(|_| {
                let mut rx = tx.subscribe();
                tokio::spawn(async move {
                    let (mut want, mut lagged) = (0u64, 0u64);
                    loop {
                        match rx.recv().await {
                            Ok(v) => {
                                assert_eq!(v, want, "out of order or doubled");
                                want += 1;
                            }
                            Err(RecvError::Lagged(n)) => {
                                lagged += n;
                                want += n;
                            }
                            Err(RecvError::Closed) => return (want, lagged),
                        }
                    }
                })
            })
            .collect();
        let sender = std::thread::spawn(move || {
            for i in 0..n {
                tx.send(i);
                if i % 64 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let mut skipped = Vec::new();
        for t in tasks {
            let (seen, lagged) = tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("a receiver missed a wake-up")
                .unwrap();
            assert_eq!(seen, n, "received plus skipped must cover every value");
            skipped.push(lagged);
        }
        sender.join().unwrap();
        skipped
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_receiver_sees_every_value_once_under_concurrency() {
        race(20_000, 64, 8).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_what_was_read_never_makes_a_receiver_lag() {
        // Room for everything: any lag would be a value dropped unread.
        let skipped = race(5_000, 5_000, 8).await;
        assert!(skipped.iter().all(|&s| s == 0), "{skipped:?}");
    }
}
