//! Admission limits: per-client POST rate and per-address stream-opening
//! rate (token buckets); open SSE streams, waiting long-polls, history
//! reads and connections, in total and per address. A limit of 0 is off.
//!
//! Permits are RAII guards, so a stream, a long-poll or a connection that
//! ends any way at all (client gone, shutdown, lag) gives its place back.
//!
//! Per-address limits key on [`address_key`]: IPv6 clients by their /64.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::chat::types::ClientId;
use crate::metrics::Metrics;

/// Buckets kept before full (idle) ones are forgotten. If they are all in
/// use (only a client with tens of thousands of addresses or tokens can do
/// that), arbitrary ones are forgotten too, down to half: memory stays
/// bounded, and the sweep, which visits every bucket, stays rare.
const MAX_BUCKETS: usize = 50_000;

/// History reads (`GET /chat/messages` without waiting) one address may
/// have in flight: an answer of 500 large messages to a client that does
/// not read it is held until it does.
pub const READS_PER_IP: usize = 32;

pub struct Limits {
    post_rate: f64,
    post_burst: f64,
    /// Streams an address may open per second, and in a burst.
    open_rate: f64,
    open_burst: f64,
    max_streams: usize,
    max_streams_per_ip: usize,
    max_long_polls: usize,
    max_long_polls_per_ip: usize,
    max_connections_per_ip: usize,
    buckets: Mutex<HashMap<Key, Bucket>>,
    streams: Arc<Places>,
    long_polls: Arc<Places>,
    reads: Arc<Places>,
    connections: Arc<Places>,
}

/// Places held, in total and per address.
#[derive(Default)]
struct Places {
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
    /// Streams opened from an address.
    Opens(IpAddr),
}

impl Limits {
    /// A key's refill rate (tokens per second) and bucket size.
    fn rate_and_burst(&self, key: &Key) -> (f64, f64) {
        match key {
            Key::Client(_) => (self.post_rate, self.post_burst),
            Key::Ip(_) => (self.post_rate * IP_FACTOR, self.post_burst * IP_FACTOR),
            Key::Opens(_) => (self.open_rate, self.open_burst),
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Refusals, each with the one thing the client is told (the HTTP layer
/// adds the status and the metric label, see `http::error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Over the POST rate: retry after this many seconds.
    #[error("too many messages: slow down and retry in {retry_after} s")]
    Rate { retry_after: u64 },
    #[error("the server has too many open streams; retry later")]
    TooManyStreams,
    #[error("too many open streams from your address; close some and retry")]
    TooManyStreamsFromIp,
    #[error("too many long-polls waiting; retry later")]
    TooManyLongPolls,
    #[error("too many long-polls waiting from your address; retry later")]
    TooManyLongPollsFromIp,
    #[error("too many history reads in flight from your address; read the answers, then retry")]
    TooManyReadsFromIp,
    /// Over the stream-opening rate of an address.
    #[error("too many streams opened from your address: slow down and retry in {retry_after} s")]
    OpeningTooFast { retry_after: u64 },
}

impl Limits {
    pub fn new(
        post_rate: f64,
        post_burst: u32,
        max_streams: usize,
        max_streams_per_ip: usize,
        max_long_polls: usize,
    ) -> Self {
        let post_burst = f64::from(post_burst.max(1));
        Limits {
            post_rate,
            post_burst,
            open_rate: post_rate * IP_FACTOR,
            open_burst: post_burst * IP_FACTOR,
            max_streams,
            max_streams_per_ip,
            max_long_polls,
            max_long_polls_per_ip: 0,
            max_connections_per_ip: 0,
            buckets: Mutex::new(HashMap::new()),
            streams: Arc::default(),
            long_polls: Arc::default(),
            reads: Arc::default(),
            connections: Arc::default(),
        }
    }

    /// The per-address shares of long-polls and connections (0: off).
    pub fn with_per_ip(mut self, long_polls: usize, connections: usize) -> Self {
        self.max_long_polls_per_ip = long_polls;
        self.max_connections_per_ip = connections;
        self
    }

    /// The stream-opening rate and burst of an address (rate 0: off).
    /// Either left `None` stays as big as the address's posting bucket
    /// (`IP_FACTOR` times the per-client rate and burst).
    pub fn with_stream_opens(mut self, rate: Option<f64>, burst: Option<u32>) -> Self {
        if let Some(rate) = rate {
            self.open_rate = rate;
        }
        if let Some(burst) = burst {
            self.open_burst = f64::from(burst.max(1));
        }
        self
    }

    fn buckets(&self) -> MutexGuard<'_, HashMap<Key, Bucket>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one token from the client's bucket and one from its IP's
    /// (which holds `IP_FACTOR` times as many: people behind one NAT share
    /// it, and anonymous posts, which have no client of their own, are held
    /// back by it). A refusal takes nothing.
    pub fn check_post(&self, client: ClientId, ip: Option<IpAddr>) -> Result<(), Refused> {
        self.take_tokens(&[
            Some(Key::Client(client)),
            ip.map(|ip| Key::Ip(address_key(ip))),
        ])
    }

    /// Opening a stream costs a token from the address's own bucket
    /// (`--stream-open-rate`, `--stream-open-burst`): reconnecting is cheap
    /// for a browser, but every open reads history and counts a presence.
    pub fn check_stream_open(&self, ip: Option<IpAddr>) -> Result<(), Refused> {
        self.take_tokens(&[ip.map(|ip| Key::Opens(address_key(ip)))])
            .map_err(|r| match r {
                Refused::Rate { retry_after } => Refused::OpeningTooFast { retry_after },
                other => other,
            })
    }

    /// Takes a token from each key's bucket, or none if one is short. A
    /// key whose rate is 0 is not limited.
    fn take_tokens(&self, keys: &[Option<Key>]) -> Result<(), Refused> {
        let limited = |k: &&Key| self.rate_and_burst(k).0 > 0.0;
        if !keys.iter().flatten().any(|k| limited(&k)) {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets();
        if buckets.len() >= MAX_BUCKETS {
            // A full bucket is the same as none.
            buckets.retain(|k, b| {
                let (rate, burst) = self.rate_and_burst(k);
                b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst
            });
            let excess = buckets.len().saturating_sub(MAX_BUCKETS / 2);
            let forget: Vec<Key> = buckets.keys().take(excess).copied().collect();
            for k in forget {
                buckets.remove(&k);
            }
        }
        let mut wait: f64 = 0.0;
        for key in keys.iter().flatten().filter(limited) {
            let (rate, burst) = self.rate_and_burst(key);
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
        for key in keys.iter().flatten().filter(limited) {
            if let Some(b) = buckets.get_mut(key) {
                b.tokens -= 1.0;
            }
        }
        Ok(())
    }

    /// A place for one SSE stream.
    pub fn acquire_stream(&self, ip: Option<IpAddr>) -> Result<StreamPermit, Refused> {
        acquire(&self.streams, ip, self.max_streams, self.max_streams_per_ip).map_err(|over| {
            match over {
                Over::Total => Refused::TooManyStreams,
                Over::PerIp => Refused::TooManyStreamsFromIp,
            }
        })
    }

    /// A place for one waiting long-poll.
    pub fn acquire_long_poll(&self, ip: Option<IpAddr>) -> Result<LongPollPermit, Refused> {
        acquire(
            &self.long_polls,
            ip,
            self.max_long_polls,
            self.max_long_polls_per_ip,
        )
        .map_err(|over| match over {
            Over::Total => Refused::TooManyLongPolls,
            Over::PerIp => Refused::TooManyLongPollsFromIp,
        })
    }

    /// A place for one history answer in flight.
    pub fn acquire_read(&self, ip: Option<IpAddr>) -> Result<Permit, Refused> {
        acquire(&self.reads, ip, 0, READS_PER_IP).map_err(|_| Refused::TooManyReadsFromIp)
    }

    /// A place for one connection from `ip`, or `None` when the address
    /// holds its share already (the caller closes the connection at once).
    pub fn acquire_connection(&self, ip: IpAddr) -> Option<Permit> {
        acquire(&self.connections, Some(ip), 0, self.max_connections_per_ip).ok()
    }

    pub fn open_streams(&self) -> usize {
        self.streams.total.load(Ordering::SeqCst)
    }
}

enum Over {
    Total,
    PerIp,
}

fn acquire(
    places: &Arc<Places>,
    ip: Option<IpAddr>,
    max_total: usize,
    max_per_ip: usize,
) -> Result<Permit, Over> {
    let total = places.total.fetch_add(1, Ordering::SeqCst) + 1;
    // From here on, dropping the permit gives the place back.
    let mut permit = Permit {
        places: places.clone(),
        ip: None,
    };
    if max_total > 0 && total > max_total {
        return Err(Over::Total);
    }
    if let Some(ip) = ip.map(address_key) {
        let mut per_ip = places.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if max_per_ip > 0 && *n >= max_per_ip {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            return Err(Over::PerIp);
        }
        *n += 1;
        permit.ip = Some(ip);
    }
    Ok(permit)
}

/// A place held; given back on drop.
pub struct Permit {
    places: Arc<Places>,
    ip: Option<IpAddr>,
}

pub type StreamPermit = Permit;
pub type LongPollPermit = Permit;

impl Drop for Permit {
    fn drop(&mut self) {
        self.places.total.fetch_sub(1, Ordering::SeqCst);
        if let Some(ip) = self.ip {
            let mut per_ip = self.places.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Failed `accept`s (out of file descriptors, mostly): the accept loop
/// backs off instead of spinning, each is counted, and the log says so at
/// most once a second.
#[derive(Default)]
pub struct AcceptErrors {
    backoff: Option<Duration>,
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    const FIRST: Duration = Duration::from_millis(10);
    const MOST: Duration = Duration::from_secs(1);

    /// Records a failure; returns how long to wait before accepting again
    /// (doubling from 10 ms up to 1 s while failures continue).
    pub fn failed(&mut self, error: &std::io::Error, metrics: &Metrics) -> Duration {
        metrics.accept_errors_total.inc();
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            tracing::error!(%error, failures = self.unlogged, "accept failed; backing off");
            self.logged_at = Some(now);
            self.unlogged = 0;
        }
        let wait = self
            .backoff
            .map_or(Self::FIRST, |b| (b * 2).min(Self::MOST));
        self.backoff = Some(wait);
        wait
    }

    /// An accept went through: the next failure starts the backoff anew.
    pub fn succeeded(&mut self) {
        self.backoff = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_refuses() {
        let l = Limits::new(1.0, 3, 0, 0, 0);
        for _ in 0..3 {
            assert!(l.check_post(ClientId::test(1), None).is_ok());
        }
        assert_eq!(
            l.check_post(ClientId::test(1), None),
            Err(Refused::Rate { retry_after: 1 })
        );
        assert!(
            l.check_post(ClientId::test(2), None).is_ok(),
            "buckets are per client"
        );
    }

    #[test]
    fn buckets_stay_bounded_when_every_one_is_in_use() {
        let l = Limits::new(0.001, 5, 0, 0, 0);
        // Past the cap twice: two sweeps.
        for i in 0..(MAX_BUCKETS + MAX_BUCKETS / 2 + 1) as u128 {
            let _ = l.check_post(ClientId::test(i), None);
            assert!(l.buckets().len() <= MAX_BUCKETS, "at {i}");
        }
        assert!(l.check_post(ClientId::test(u128::MAX), None).is_ok());
    }

    #[test]
    fn zero_rate_is_off() {
        let l = Limits::new(0.0, 1, 0, 0, 0);
        for _ in 0..100 {
            assert!(l.check_post(ClientId::test(1), None).is_ok());
        }
    }

    #[test]
    fn an_ip_gets_a_bigger_shared_bucket() {
        let l = Limits::new(1.0, 2, 0, 0, 0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let allowed = (0..100)
            .filter(|i| l.check_post(ClientId::test(*i), Some(ip)).is_ok())
            .count();
        assert_eq!(allowed, 8, "burst 2 x IP_FACTOR 4, across many clients");
        assert!(l
            .check_post(ClientId::test(500), Some("10.0.0.2".parse().unwrap()))
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
        let p = l.acquire_long_poll(None).unwrap();
        assert!(l.acquire_long_poll(None).is_err());
        drop(p);
        assert!(l.acquire_long_poll(None).is_ok());
    }

    #[test]
    fn per_address_shares_of_long_polls_reads_and_connections() {
        let l = Limits::new(0.0, 1, 0, 0, 0).with_per_ip(1, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let p = l.acquire_long_poll(Some(a)).unwrap();
        assert_eq!(
            l.acquire_long_poll(Some(a)).err(),
            Some(Refused::TooManyLongPollsFromIp)
        );
        assert!(l.acquire_long_poll(Some(b)).is_ok());
        drop(p);
        assert!(l.acquire_long_poll(Some(a)).is_ok());
        let c1 = l.acquire_connection(a).unwrap();
        let _c2 = l.acquire_connection(a).unwrap();
        assert!(l.acquire_connection(a).is_none());
        assert!(l.acquire_connection(b).is_some(), "others are unaffected");
        drop(c1);
        assert!(l.acquire_connection(a).is_some());
        let reads: Vec<_> = (0..READS_PER_IP)
            .map(|_| l.acquire_read(Some(a)).unwrap())
            .collect();
        assert_eq!(
            l.acquire_read(Some(a)).err(),
            Some(Refused::TooManyReadsFromIp)
        );
        drop(reads);
        assert!(l.acquire_read(Some(a)).is_ok());
    }

    #[test]
    fn opening_streams_is_rate_limited_per_address() {
        let l = Limits::new(1.0, 2, 0, 0, 0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let allowed = (0..100)
            .filter(|_| l.check_stream_open(Some(a)).is_ok())
            .count();
        assert_eq!(allowed, 8, "burst 2 x IP_FACTOR 4");
        assert!(l
            .check_stream_open(Some("10.0.0.2".parse().unwrap()))
            .is_ok());
        assert!(
            l.check_post(ClientId::test(1), Some(a)).is_ok(),
            "a bucket of its own"
        );
    }

    #[test]
    fn the_stream_opening_rate_is_set_on_its_own() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let l = Limits::new(1.0, 2, 0, 0, 0).with_stream_opens(Some(1.0), Some(50));
        let allowed = (0..100)
            .filter(|_| l.check_stream_open(Some(a)).is_ok())
            .count();
        assert_eq!(allowed, 50, "its own burst, not the posting one");
        let off = Limits::new(1.0, 2, 0, 0, 0).with_stream_opens(Some(0.0), None);
        assert!((0..1000).all(|_| off.check_stream_open(Some(a)).is_ok()));
        let posts_off = Limits::new(0.0, 2, 0, 0, 0).with_stream_opens(Some(1.0), Some(3));
        assert!((0..100).all(|i| posts_off.check_post(ClientId::test(i), Some(a)).is_ok()));
        let opened = (0..10)
            .filter(|_| posts_off.check_stream_open(Some(a)).is_ok())
            .count();
        assert_eq!(opened, 3, "opening stays limited when posting is not");
    }

    #[test]
    fn accept_failures_back_off_up_to_a_second() {
        let m = Metrics::default();
        let mut e = AcceptErrors::default();
        let err = std::io::Error::from_raw_os_error(24);
        let waits: Vec<_> = (0..10).map(|_| e.failed(&err, &m)).collect();
        assert_eq!(waits[0], Duration::from_millis(10));
        assert_eq!(waits[1], Duration::from_millis(20));
        assert_eq!(waits[9], Duration::from_secs(1));
        assert_eq!(m.accept_errors_total.get(), 10);
        e.succeeded();
        assert_eq!(e.failed(&err, &m), Duration::from_millis(10));
    }
}
