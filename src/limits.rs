//! Admission limits: per-client POST rate (token bucket), open SSE streams
//! in total and per IP, waiting long-polls. A limit of 0 is off.
//!
//! Permits are RAII guards, so a stream that ends any way at all (client
//! gone, shutdown, lag) gives its place back.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
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
    buckets: Mutex<HashMap<Key, Bucket>>,
    streams: Arc<Counts>,
    long_polls: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Counts {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// How many times the per-client rate and burst an IP address gets.
pub const IP_FACTOR: f64 = 4.0;

/// What per-address limits key on: an IPv4 address, or the /64 of an IPv6
/// one. An IPv6 host usually gets a whole /64 and may use any address in
/// it, so per-address limits would otherwise be per whim.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Client(ClientId),
    Ip(IpAddr),
}

impl Key {
    fn factor(&self) -> f64 {
        match self {
            Key::Client(_) => 1.0,
            Key::Ip(_) => IP_FACTOR,
        }
    }
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

    fn buckets(&self) -> MutexGuard<'_, HashMap<Key, Bucket>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one token from the client's bucket and one from its IP's
    /// (which holds `IP_FACTOR` times as many: people behind one NAT share
    /// it, and anonymous posts, which have no client of their own, are held
    /// back by it). A refusal takes nothing.
    pub fn check_post(&self, client: ClientId, ip: Option<IpAddr>) -> Result<(), Refused> {
        if self.post_rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets();
        if buckets.len() >= MAX_BUCKETS {
            let (rate, burst) = (self.post_rate, self.post_burst);
            buckets.retain(|k, b| {
                let f = k.factor();
                b.tokens + now.duration_since(b.at).as_secs_f64() * rate * f < burst * f
            });
        }
        let keys = [
            Some(Key::Client(client)),
            ip.map(|ip| Key::Ip(address_key(ip))),
        ];
        let mut wait: f64 = 0.0;
        for key in keys.iter().flatten() {
            let (rate, burst) = (
                self.post_rate * key.factor(),
                self.post_burst * key.factor(),
            );
            let b = buckets.entry(*key).or_insert(Bucket {
                tokens: burst,
                at: now,
            });
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
            b.at = now;
            if b.tokens < 1.0 {
                wait = wait.max((1.0 - b.tokens) / rate);
            }
        }
        if wait > 0.0 {
            return Err(Refused::Rate {
                retry_after: wait.ceil().max(1.0) as u64,
            });
        }
        for key in keys.iter().flatten() {
            if let Some(b) = buckets.get_mut(key) {
                b.tokens -= 1.0;
            }
        }
        Ok(())
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
        if let Some(ip) = ip.map(address_key) {
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
            assert!(l.check_post(ClientId(1), None).is_ok());
        }
        assert_eq!(
            l.check_post(ClientId(1), None),
            Err(Refused::Rate { retry_after: 1 })
        );
        assert!(
            l.check_post(ClientId(2), None).is_ok(),
            "buckets are per client"
        );
    }

    #[test]
    fn zero_rate_is_off() {
        let l = Limits::new(0.0, 1, 0, 0, 0);
        for _ in 0..100 {
            assert!(l.check_post(ClientId(1), None).is_ok());
        }
    }

    #[test]
    fn an_ip_gets_a_bigger_shared_bucket() {
        let l = Limits::new(1.0, 2, 0, 0, 0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let allowed = (0..100)
            .filter(|i| l.check_post(ClientId(*i), Some(ip)).is_ok())
            .count();
        assert_eq!(allowed, 8, "burst 2 x IP_FACTOR 4, across many clients");
        assert!(l
            .check_post(ClientId(500), Some("10.0.0.2".parse().unwrap()))
            .is_ok());
    }

    #[test]
    fn ipv6_addresses_share_limits_per_64() {
        let l = Limits::new(0.0, 1, 0, 1, 0);
        let _a = l
            .acquire_stream(Some("2001:db8:1:2::1".parse().unwrap()))
            .unwrap();
        assert_eq!(
            l.acquire_stream(Some("2001:db8:1:2:ffff::9".parse().unwrap()))
                .err(),
            Some(Refused::TooManyStreamsFromIp),
            "same /64"
        );
        assert!(l
            .acquire_stream(Some("2001:db8:1:3::1".parse().unwrap()))
            .is_ok());
        assert_eq!(
            address_key("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
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
