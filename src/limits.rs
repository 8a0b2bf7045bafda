//! Admission limits: per-client POST rate (token bucket), open SSE streams
//! in total and per IP, waiting long-polls. A limit of 0 is off.
//!
//! Permits are RAII guards, so a stream that ends any way at all (client
//! gone, shutdown, lag) gives its place back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::chat::types::ClientId;

/// Buckets kept before full (idle) ones are forgotten.
const MAX_BUCKETS: usize = 50_000;

pub struct Limits {
    post_rate: f64,
    post_burst: f64,
    max_streams: usize,
    max_streams_per_ip: usize,
    max_long_polls: usize,
    buckets: Mutex<HashMap<ClientId, Bucket>>,
    streams: Arc<Counts>,
    long_polls: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Counts {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Refusals, with what the client should be told.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Over the POST rate: retry after this many seconds.
    Rate {
        retry_after: u64,
    },
    TooManyStreams,
    TooManyStreamsFromIp,
    TooManyLongPolls,
}

impl Limits {
    pub fn new(
        post_rate: f64,
        post_burst: u32,
        max_streams: usize,
        max_streams_per_ip: usize,
        max_long_polls: usize,
    ) -> Self {
        Limits {
            post_rate,
            post_burst: f64::from(post_burst.max(1)),
            max_streams,
            max_streams_per_ip,
            max_long_polls,
            buckets: Mutex::new(HashMap::new()),
            streams: Arc::default(),
            long_polls: Arc::default(),
        }
    }

    fn buckets(&self) -> MutexGuard<'_, HashMap<ClientId, Bucket>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one token from the client's bucket.
    pub fn check_post(&self, client: ClientId) -> Result<(), Refused> {
        if self.post_rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets();
        if buckets.len() >= MAX_BUCKETS {
            let (rate, burst) = (self.post_rate, self.post_burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(client).or_insert(Bucket {
            tokens: self.post_burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.post_rate)
            .min(self.post_burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / self.post_rate;
            Err(Refused::Rate {
                retry_after: wait.ceil().max(1.0) as u64,
            })
        }
    }

    /// A place for one SSE stream.
    pub fn acquire_stream(&self, ip: Option<IpAddr>) -> Result<StreamPermit, Refused> {
        let total = self.streams.total.fetch_add(1, Ordering::SeqCst) + 1;
        let mut permit = StreamPermit {
            counts: self.streams.clone(),
            ip: None,
        };
        if self.max_streams > 0 && total > self.max_streams {
            return Err(Refused::TooManyStreams);
        }
        if let Some(ip) = ip {
            let mut per_ip = self
                .streams
                .per_ip
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let n = per_ip.entry(ip).or_insert(0);
            if self.max_streams_per_ip > 0 && *n >= self.max_streams_per_ip {
                return Err(Refused::TooManyStreamsFromIp);
            }
            *n += 1;
            permit.ip = Some(ip);
        }
        Ok(permit)
    }

    /// A place for one waiting long-poll.
    pub fn acquire_long_poll(&self) -> Result<LongPollPermit, Refused> {
        let n = self.long_polls.fetch_add(1, Ordering::SeqCst) + 1;
        let permit = LongPollPermit(self.long_polls.clone());
        if self.max_long_polls > 0 && n > self.max_long_polls {
            return Err(Refused::TooManyLongPolls);
        }
        Ok(permit)
    }

    pub fn open_streams(&self) -> usize {
        self.streams.total.load(Ordering::SeqCst)
    }
}

pub struct StreamPermit {
    counts: Arc<Counts>,
    ip: Option<IpAddr>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::SeqCst);
        if let Some(ip) = self.ip {
            let mut per_ip = self.counts.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

pub struct LongPollPermit(Arc<AtomicUsize>);

impl Drop for LongPollPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_refuses() {
        let l = Limits::new(1.0, 3, 0, 0, 0);
        for _ in 0..3 {
            assert!(l.check_post(ClientId(1)).is_ok());
        }
        assert_eq!(
            l.check_post(ClientId(1)),
            Err(Refused::Rate { retry_after: 1 })
        );
        assert!(l.check_post(ClientId(2)).is_ok(), "buckets are per client");
    }

    #[test]
    fn zero_rate_is_off() {
        let l = Limits::new(0.0, 1, 0, 0, 0);
        for _ in 0..100 {
            assert!(l.check_post(ClientId(1)).is_ok());
        }
    }

    #[test]
    fn stream_permits_are_counted_and_returned() {
        let l = Limits::new(0.0, 1, 2, 1, 1);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "::1".parse().unwrap();
        let a = l.acquire_stream(Some(ip)).unwrap();
        assert_eq!(
            l.acquire_stream(Some(ip)).err(),
            Some(Refused::TooManyStreamsFromIp)
        );
        let _b = l.acquire_stream(Some(other)).unwrap();
        assert_eq!(l.acquire_stream(None).err(), Some(Refused::TooManyStreams));
        drop(a);
        assert!(l.acquire_stream(Some(ip)).is_ok());
        assert_eq!(l.open_streams(), 1);
        let p = l.acquire_long_poll().unwrap();
        assert!(l.acquire_long_poll().is_err());
        drop(p);
        assert!(l.acquire_long_poll().is_ok());
    }
}
