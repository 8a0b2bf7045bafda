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

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
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
    receivers: Mutex<Slab<Arc<AtomicWaker>>>,
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
        let waker = Arc::new(AtomicWaker::new());
        // Registered before reading the tail: a send that the read misses
        // wakes this receiver.
        let key = lock(&self.shared.receivers).insert(waker.clone());
        Receiver {
            shared: self.shared.clone(),
            next: self.shared.tail.load(SeqCst),
            waker,
            key,
        }
    }

    /// Sends to every receiver and wakes them; returns how many there are.
    pub fn send(&self, value: T) -> usize {
        {
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
        self.wake_all()
    }

    fn wake_all(&self) -> usize {
        let receivers = lock(&self.shared.receivers);
        for (_, waker) in receivers.iter() {
            waker.wake();
        }
        receivers.len()
    }

    pub fn receiver_count(&self) -> usize {
        lock(&self.shared.receivers).len()
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, SeqCst);
        for (_, waker) in lock(&self.shared.receivers).iter() {
            waker.wake();
        }
    }
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// The position of the next value to receive.
    next: u64,
    waker: Arc<AtomicWaker>,
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
            return Err(TryRecvError::Lagged(missed));
        }
        let value = ring.values[(self.next - ring.first) as usize].clone();
        self.next += 1;
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
        self.waker.register(cx.waker());
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
    fn closed_comes_after_everything_sent() {
        let tx = channel(4);
        let mut rx = tx.subscribe();
        tx.send(1);
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_receiver_sees_every_value_once_under_concurrency() {
        const N: u64 = 20_000;
        let tx = channel::<u64>(64);
        let tasks: Vec<_> = (0..8)
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
            for i in 0..N {
                tx.send(i);
                if i % 64 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        for t in tasks {
            let (seen, _lagged) = tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("a receiver missed a wake-up")
                .unwrap();
            assert_eq!(seen, N, "received plus skipped must cover every value");
        }
        sender.join().unwrap();
    }
}
