//! `ssechat-bench`: the load generator for ssechat (and for the minimal
//! reference server `sse-reference`, to compare against the same minute on
//! the same machine). See docs/BENCHMARK.md.
//!
//! One run:
//! 1. waits for `GET /healthz`, reads the server's RSS (`--pid`);
//! 2. opens N SSE subscribers (raw HTTP/1.1 over tokio `TcpStream`s, at most
//!    `--connect-concurrency` handshakes at a time) and waits until each one
//!    got its `hello` (ssechat) or its response head (reference);
//! 3. waits until the server's CPU is quiet (join events settle), reads RSS
//!    again: RSS KiB per idle connection;
//! 4. (unless `--idle-only`) reads the server's CPU time, posts M messages at
//!    `--rate` or as fast as `--in-flight` posters allow, each text carrying
//!    a unique token `b<run>-<seq>-<send ns>`; every subscriber recognises
//!    every delivery by it; stops when every expected delivery arrived (or
//!    no delivery came for `--drain` seconds after the last POST, or
//!    `--timeout`), reads CPU again: CPU µs per delivery;
//! 5. closes every connection and reports (stderr; `--json`: one JSON line
//!    on stdout). Exit status 0 when nothing was lost, duplicated or
//!    reordered, 2 otherwise, 1 on a usage or setup error.
//!
//! Only loopback is ever contacted.

mod http;
mod sys;
mod watcher;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::{Parser as ClapParser, ValueEnum};
use serde::Serialize;
use ssechat::sse::{EventRef, ItemRef, Parser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Mutex, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use http::{Chunked, Conn, Target};

/// Load generator for ssechat: N SSE subscribers, M posted messages, every
/// delivery checked; reports server CPU µs per delivery, server RSS KiB per
/// idle connection, loss/duplicates/order, latency and throughput.
#[derive(Debug, Clone, ClapParser)]
#[command(name = "ssechat-bench", version, about, long_about = None)]
struct Args {
    /// Server base URL; only 127.0.0.1, ::1 ([::1]) or localhost are accepted.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,

    /// Post to this server instead of `--url` (loopback only): subscribe on
    /// one cluster node, post to another, to measure cross-node delivery.
    #[arg(long)]
    post_url: Option<String>,

    /// SSE subscribers to open.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,

    /// Messages to post.
    #[arg(long, default_value_t = 1000)]
    messages: u32,

    /// Post at this fixed rate (messages/s). Without it, post as fast as
    /// `--in-flight` concurrent posters allow.
    #[arg(long)]
    rate: Option<f64>,

    /// Concurrent posters (keep-alive connections). Default: 16, or 8 with
    /// `--rate` (where it only caps how many POSTs may be outstanding).
    #[arg(long)]
    in_flight: Option<usize>,

    /// Room to subscribe and post to (ssechat mode).
    #[arg(long, default_value = "bench")]
    room: String,

    /// Spread the subscribers over this many rooms `<room>-0..` (ssechat
    /// mode, `--idle-only` only): keeps the presence join storm of N
    /// distinct clients in one room (N² join events) out of an idle-memory
    /// measurement.
    #[arg(long, default_value_t = 1)]
    rooms: usize,

    /// Bytes of message text (the token, padded with '.').
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,

    /// The server's pid, for CPU (/proc/PID/stat) and RSS (/proc/PID/status).
    #[arg(long)]
    pid: Option<u32>,

    /// Only open the subscribers, measure RSS per connection, close them,
    /// and time how soon a new subscriber is served after that.
    #[arg(long)]
    idle_only: bool,

    /// Overall bound on the run, in seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,

    /// After the last POST is answered, give up on missing deliveries when
    /// none arrived for this many seconds.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,

    /// Routes and framing: ssechat (`/chat/events`, `/chat/messages`, JSON)
    /// or reference (`/events`, `/messages`, plain text).
    #[arg(long, value_enum, default_value_t = Mode::Ssechat)]
    mode: Mode,

    /// Print one JSON line with every figure on stdout at the end.
    #[arg(long)]
    json: bool,

    /// SSE connections being opened (not yet hello'd) at once. Above the
    /// server's accept pace the listen queue overflows and the kernel retries
    /// the SYN only after 1 s.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,

    /// Longest wait for the server's CPU to go quiet before measuring.
    #[arg(long, default_value_t = 30.0)]
    settle_max: f64,

    /// Write "post" to this file when the post phase starts and "done" when
    /// it ends, so a profiler (perf stat/record) can cover just that phase.
    #[arg(long, value_name = "PATH")]
    phase_file: Option<std::path::PathBuf>,

    /// Open one watching stream before the subscribers and keep it through
    /// the run and the leave storm: reports whether it was cut off, the
    /// presence events it got in each storm, and (ssechat) how soon after
    /// everybody left it heard the room was down to itself.
    #[arg(long)]
    watcher: bool,

    /// Print a free loopback TCP port and exit (for scripts).
    #[arg(long)]
    free_port: bool,

    /// Footprint probe: spawn the command after `--`, time process start →
    /// first 200 on `GET /healthz` at `--url`, read its RSS 1 s later, stop
    /// it (SIGTERM) and report `startup_ms` and `idle_rss_kib`.
    #[arg(long)]
    startup_probe: bool,

    /// The server command for `--startup-probe`.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Ssechat,
    Reference,
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on the one monotonic clock of this process.
fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// State shared by the subscribers, the posters and the conductor.
struct Shared {
    target: Target,
    /// Where posters post (`--post-url`, else `target`).
    post_target: Target,
    mode: Mode,
    room: String,
    rooms: usize,
    messages: u32,
    payload_bytes: usize,
    /// `b<run>-`: marks this run's tokens.
    prefix: String,
    /// Finds `prefix` in event data (built once: searching is per event).
    finder: memchr::memmem::Finder<'static>,
    expected: u64,
    /// Subscribers keep per-delivery records (not in `--idle-only`).
    record: bool,

    ready: AtomicUsize,
    failed: AtomicUsize,
    received: AtomicU64,
    last_delivery_ns: AtomicU64,
    progress: Notify,

    next_seq: AtomicU32,
    posts_ok: AtomicU64,
    post_errors: AtomicU64,
    posts_done: AtomicU64,
    last_ack_ns: AtomicU64,
    first_post_error: std::sync::Mutex<Option<String>>,
}

impl Shared {
    fn room_for(&self, idx: usize) -> String {
        if self.rooms <= 1 {
            self.room.clone()
        } else {
            format!("{}-{}", self.room, idx % self.rooms)
        }
    }

    /// The text of message `seq`, sent at `sent_ns`: token, then padding.
    fn text(&self, seq: u32, sent_ns: u64) -> String {
        let mut t = format!("{}{seq}-{sent_ns}", self.prefix);
        if t.len() < self.payload_bytes {
            let pad = self.payload_bytes - t.len();
            t.extend(std::iter::repeat_n('.', pad));
        }
        t
    }

    /// The complete POST request for message `seq`.
    fn post_request(&self, seq: u32, sent_ns: u64) -> Vec<u8> {
        let text = self.text(seq, sent_ns);
        let (path, ctype, body) = match self.mode {
            // Room and text only contain [A-Za-z0-9_.-]: no JSON escaping needed.
            Mode::Ssechat => (
                "/chat/messages",
                "application/json",
                format!("{{\"room\":\"{}\",\"text\":\"{text}\"}}", self.room),
            ),
            Mode::Reference => ("/messages", "text/plain", text),
        };
        format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {ctype}\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.target.host,
            body.len()
        )
        .into_bytes()
    }

    fn post_error(&self, e: String) {
        self.post_errors.fetch_add(1, Relaxed);
        let mut first = self
            .first_post_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
    }
}

/// Finds this run's token in an event's data: (seq, send time ns).
fn parse_token(data: &str, prefix: &memchr::memmem::Finder<'_>) -> Option<(u32, u64)> {
    fn digits(s: &str) -> (&str, &str) {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        s.split_at(n)
    }
    let i = prefix.find(data.as_bytes())?;
    let (seq, rest) = digits(&data[i + prefix.needle().len()..]);
    let (ns, _) = digits(rest.strip_prefix('-')?);
    Some((seq.parse().ok()?, ns.parse().ok()?))
}

/// Event ids are opaque but increasing; ssechat's are decimal numbers.
fn id_after(id: &str, prev: &str) -> bool {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if numeric(id) && numeric(prev) {
        let (a, b) = (id.trim_start_matches('0'), prev.trim_start_matches('0'));
        (a.len(), a) > (b.len(), b)
    } else {
        id > prev
    }
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct SubStats {
    latencies_us: Vec<u32>,
    /// Seqs in arrival order.
    order: Vec<u32>,
    seen: Vec<u64>,
    duplicates: u64,
    id_disorder: u64,
    foreign: u64,
    last_id: String,
    disconnected: bool,
    ready: bool,
    error: Option<String>,
}

impl SubStats {
    fn on_event(
        &mut self,
        ev: EventRef<'_>,
        sh: &Shared,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) {
        if !self.ready {
            if ev.event == "hello" {
                self.mark_ready(sh, permit);
            }
            return;
        }
        if ev.event != "message" {
            return; // join / leave
        }
        let now = now_ns();
        let Some((seq, sent)) = parse_token(ev.data, &sh.finder) else {
            self.foreign += 1;
            return;
        };
        if seq >= sh.messages || self.seen.is_empty() {
            self.foreign += 1;
            return;
        }
        let (word, bit) = (seq as usize / 64, 1u64 << (seq % 64));
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        if sh.mode == Mode::Ssechat {
            if !self.last_id.is_empty() && !id_after(ev.last_event_id, &self.last_id) {
                self.id_disorder += 1;
            }
            self.last_id.clear();
            self.last_id.push_str(ev.last_event_id);
        }
        self.latencies_us
            .push((now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32);
        self.order.push(seq);
        sh.last_delivery_ns.fetch_max(now, Relaxed);
        if sh.received.fetch_add(1, Relaxed) + 1 == sh.expected {
            sh.progress.notify_one();
        }
    }

    fn mark_ready(&mut self, sh: &Shared, permit: &mut Option<OwnedSemaphorePermit>) {
        self.ready = true;
        permit.take();
        sh.ready.fetch_add(1, Relaxed);
        sh.progress.notify_one();
    }

    fn fail(&mut self, sh: &Shared, e: String) -> SubStats {
        self.error = Some(e);
        if !self.ready {
            sh.failed.fetch_add(1, Relaxed);
            sh.progress.notify_one();
        } else {
            self.disconnected = true;
        }
        std::mem::take(self)
    }

    /// Keeps per-delivery records for `messages` messages.
    fn record_on(&mut self, messages: u32) {
        self.seen = vec![0; (messages as usize).div_ceil(64).max(1)];
        self.latencies_us.reserve(messages as usize);
        self.order.reserve(messages as usize);
    }
}

async fn subscriber(
    idx: usize,
    sh: Arc<Shared>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> SubStats {
    let mut st = SubStats::default();
    if sh.record {
        st.record_on(sh.messages);
    }
    let mut permit = tokio::select! {
        p = permits.acquire_owned() => p.ok(),
        _ = stop.changed() => return st.fail(&sh, "stopped before connecting".into()),
    };
    let path = match sh.mode {
        Mode::Ssechat => format!("/chat/events?room={}", sh.room_for(idx)),
        Mode::Reference => "/events".to_string(),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        sh.target.host
    );
    let mut scratch = vec![0u8; if sh.record { 16 * 1024 } else { 2048 }];
    let mut buf = Vec::new();
    let opened = async {
        let mut s = sh
            .target
            .connect_as(idx)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let head = http::read_head(&mut s, &mut buf, &mut scratch).await?;
        if head.status != 200 {
            return Err(format!("GET {path}: status {}", head.status));
        }
        Ok::<_, String>((s, head))
    };
    let (mut stream, head): (TcpStream, _) = tokio::select! {
        r = opened => match r {
            Ok(v) => v,
            Err(e) => return st.fail(&sh, e),
        },
        _ = stop.changed() => return st.fail(&sh, "stopped while connecting".into()),
    };
    if sh.mode == Mode::Reference {
        st.mark_ready(&sh, &mut permit);
    }
    let mut chunked = head.chunked.then(Chunked::default);
    let mut parser = Parser::new();
    let mut pending = std::mem::take(&mut buf);
    loop {
        if !pending.is_empty() {
            // Events are looked at where the parser holds them: nothing is
            // allocated per delivery (this process shares the cores with
            // the server it measures).
            let mut on_item = |item: ItemRef<'_>| {
                if let ItemRef::Event(ev) = item {
                    st.on_event(ev, &sh, &mut permit);
                }
            };
            match &mut chunked {
                Some(dec) => match dec.feed(&pending, |d| parser.feed_with(d, &mut on_item)) {
                    Ok(false) => {}
                    Ok(true) => return st.fail(&sh, "stream ended".into()),
                    Err(e) => return st.fail(&sh, e),
                },
                None => parser.feed_with(&pending, &mut on_item),
            }
            pending.clear();
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = stream.read(&mut scratch) => match r {
                Ok(0) => return st.fail(&sh, "server closed the stream".into()),
                Ok(n) => pending.extend_from_slice(&scratch[..n]),
                Err(e) => return st.fail(&sh, format!("read: {e}")),
            },
        }
    }
    if !st.ready {
        return st.fail(&sh, "stopped before hello".into());
    }
    st
}

/// Where posters take the next message from.
#[derive(Clone)]
enum Source {
    /// As fast as possible: the shared counter.
    Counter,
    /// At a fixed rate: the dispatcher's schedule.
    Queue(Arc<Mutex<mpsc::UnboundedReceiver<u32>>>),
}

async fn poster(sh: Arc<Shared>, source: Source, mut stop: watch::Receiver<bool>) -> Vec<u32> {
    let mut conn = Conn::new(sh.post_target.clone());
    let mut rtts = Vec::new();
    loop {
        let seq = match &source {
            Source::Counter => {
                let s = sh.next_seq.fetch_add(1, Relaxed);
                if s >= sh.messages {
                    break;
                }
                s
            }
            Source::Queue(q) => {
                let next = async { q.lock().await.recv().await };
                tokio::select! {
                    s = next => match s { Some(s) => s, None => break },
                    _ = stop.changed() => break,
                }
            }
        };
        let sent = now_ns();
        let req = sh.post_request(seq, sent);
        let r = tokio::select! {
            r = conn.exchange(&req) => r,
            _ = stop.changed() => break,
        };
        let acked = now_ns();
        match r {
            Ok((201, _)) => {
                sh.posts_ok.fetch_add(1, Relaxed);
                rtts.push(((acked - sent) / 1000).min(u32::MAX as u64) as u32);
            }
            Ok((status, body)) => sh.post_error(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
            Err(e) => sh.post_error(e),
        }
        sh.last_ack_ns.fetch_max(acked, Relaxed);
        if sh.posts_done.fetch_add(1, Relaxed) + 1 == sh.messages as u64 {
            sh.progress.notify_one();
        }
    }
    rtts
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

/// Percentiles in ms of microsecond samples (sorts them).
fn percentiles(samples: &mut [u32]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at = |p: f64| {
        let i = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i] as f64 / 1000.0
    };
    Some(Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: at(1.0),
    })
}

#[derive(Debug, Default, Serialize)]
struct Report {
    mode: Option<Mode>,
    url: String,
    subscribers: usize,
    messages: u32,
    rate: Option<f64>,
    in_flight: usize,
    payload_bytes: usize,
    idle_only: bool,
    /// Server CPU (utime+stime) over the post phase / deliveries received.
    cpu_us_per_delivery: Option<f64>,
    /// (RSS with N idle hello'd subscribers − RSS before) / N.
    rss_kib_per_conn: Option<f64>,
    expected: u64,
    received: u64,
    lost: u64,
    duplicated: u64,
    /// ssechat: deliveries whose event id is not above the previous one.
    out_of_order: u64,
    /// Deliveries in a different order than the most complete subscriber saw.
    order_mismatch: u64,
    foreign: u64,
    connect_failed: usize,
    disconnected: usize,
    first_subscriber_error: Option<String>,
    posts_ok: u64,
    post_errors: u64,
    first_post_error: Option<String>,
    latency_ms: Option<Percentiles>,
    post_rtt_ms: Option<Percentiles>,
    deliveries_per_s: Option<f64>,
    posts_per_s: Option<f64>,
    post_phase_s: Option<f64>,
    server_cpu_ms: Option<f64>,
    cpu_us_per_post: Option<f64>,
    /// This load generator's own CPU over the post phase / deliveries: it
    /// shares the machine, so a heavier client slows the server's fan-out.
    bench_cpu_us_per_delivery: Option<f64>,
    rss_before_kib: Option<u64>,
    rss_after_kib: Option<u64>,
    connect_s: f64,
    settle_s: f64,
    /// `--idle-only`: all subscribers closed → a new one got its hello.
    reconnect_ms: Option<f64>,
    /// `--watcher`: the server ended the watching stream.
    watcher_cut_off: Option<bool>,
    watcher_error: Option<String>,
    /// Presence events (join, leave, presence) the watcher got while the
    /// subscribers connected (and the run went on), and while they left.
    watcher_presence_join: Option<u64>,
    watcher_presence_leave: Option<u64>,
    /// All subscribers closed → the watcher told it is alone (ssechat).
    leave_s: Option<f64>,
    timed_out: bool,
    ok: bool,
    // --startup-probe
    startup_ms: Option<f64>,
    idle_rss_kib: Option<u64>,
}

/// Waits until the server's CPU time stops moving (at most one clock tick
/// per 250 ms), bounded by `max`; without a pid, a short fixed pause.
async fn settle(pid: Option<u32>, max: Duration) -> f64 {
    let t0 = Instant::now();
    match pid {
        None => tokio::time::sleep(Duration::from_millis(300).min(max)).await,
        Some(pid) => {
            let mut prev = sys::cpu_ticks(pid);
            while t0.elapsed() < max {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let now = sys::cpu_ticks(pid);
                match (prev, now) {
                    (Some(a), Some(b)) if b.saturating_sub(a) <= 1 => break,
                    (_, None) => break,
                    _ => prev = now,
                }
            }
        }
    }
    t0.elapsed().as_secs_f64()
}

async fn wait_healthy(target: &Target, within: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        if http::healthz(target).await {
            return true;
        }
        if t0.elapsed() >= within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tells `--phase-file` watchers which phase the run is in.
fn mark_phase(args: &Args, phase: &str) {
    if let Some(path) = &args.phase_file {
        if let Err(e) = std::fs::write(path, phase) {
            eprintln!("ssechat-bench: cannot write {}: {e}", path.display());
        }
    }
}

fn fatal(msg: impl std::fmt::Display) -> ! {
    eprintln!("ssechat-bench: {msg}");
    std::process::exit(1);
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    now_ns();
    if args.free_port {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fatal(e));
        println!("{}", l.local_addr().unwrap_or_else(|e| fatal(e)).port());
        return;
    }
    let target = Target::parse(&args.url).unwrap_or_else(|e| fatal(e));
    match sys::raise_nofile_limit() {
        Ok((soft, _)) => {
            let need = (args.subscribers + args.in_flight.unwrap_or(16) + 64) as libc::rlim_t;
            if soft < need {
                eprintln!("ssechat-bench: warning: open-files limit {soft} < {need} needed");
            }
        }
        Err(e) => eprintln!("ssechat-bench: warning: cannot raise the open-files limit: {e}"),
    }
    if args.startup_probe {
        let report = startup_probe(&args, &target).await;
        finish(&args, report);
    }
    if args.room.is_empty()
        || args.room.len() > 60
        || !args
            .room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        fatal("--room must match [A-Za-z0-9_-]{1,60}");
    }
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        fatal("--rate must be positive");
    }
    if args.rooms > 1 && !args.idle_only {
        fatal("--rooms > 1 is only supported with --idle-only");
    }
    let report = run(&args, target).await;
    finish(&args, report);
}

fn finish(args: &Args, report: Report) -> ! {
    print_summary(args, &report);
    if args.json && args.startup_probe {
        let probe = serde_json::json!({
            "startup_ms": report.startup_ms,
            "idle_rss_kib": report.idle_rss_kib,
            "ok": report.ok,
        });
        println!("{probe}");
    } else if args.json {
        println!("{}", serde_json::to_string(&report).expect("serialisable"));
    }
    std::process::exit(if report.ok { 0 } else { 2 });
}

async fn startup_probe(args: &Args, target: &Target) -> Report {
    let Some((prog, rest)) = args.command.split_first() else {
        fatal("--startup-probe needs the server command after --");
    };
    let mut report = Report {
        url: args.url.clone(),
        ..Report::default()
    };
    if http::healthz(target).await {
        fatal(format!("something already answers on {}", target.host));
    }
    let t0 = Instant::now();
    let mut child = std::process::Command::new(prog)
        .args(rest)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| fatal(format!("cannot start {prog}: {e}")));
    let pid = child.id();
    let limit = Duration::from_secs_f64(args.timeout.min(30.0));
    loop {
        if http::healthz(target).await {
            report.startup_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            fatal(format!("{prog} exited before answering: {status}"));
        }
        if t0.elapsed() >= limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if report.startup_ms.is_some() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        report.idle_rss_kib = sys::rss_kib(pid);
    }
    sys::terminate(pid);
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(6) {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
    report.ok = report.startup_ms.is_some();
    report.timed_out = !report.ok;
    report
}

async fn run(args: &Args, target: Target) -> Report {
    let t_run = Instant::now();
    let deadline = t_run + Duration::from_secs_f64(args.timeout.max(1.0));
    let in_flight = args
        .in_flight
        .unwrap_or(if args.rate.is_some() { 8 } else { 16 })
        .max(1);
    let n = args.subscribers;
    let m = if args.idle_only { 0 } else { args.messages };
    let mut report = Report {
        mode: Some(args.mode),
        url: args.url.clone(),
        subscribers: n,
        messages: m,
        rate: args.rate,
        in_flight,
        payload_bytes: args.payload_bytes,
        idle_only: args.idle_only,
        expected: n as u64 * m as u64,
        ..Report::default()
    };

    if !wait_healthy(&target, Duration::from_secs_f64(args.timeout.min(10.0))).await {
        fatal(format!("no 200 from http://{}/healthz", target.host));
    }
    let run_id = (now_ns() as u32 ^ std::process::id().rotate_left(16)) % 1_000_000_000;
    let post_target = match &args.post_url {
        Some(u) => Target::parse(u).unwrap_or_else(|e| fatal(e)),
        None => target.clone(),
    };
    let sh = Arc::new(Shared {
        target: target.clone(),
        post_target,
        mode: args.mode,
        room: args.room.clone(),
        rooms: args.rooms.max(1),
        messages: m,
        payload_bytes: args.payload_bytes,
        prefix: format!("b{run_id}-"),
        finder: memchr::memmem::Finder::new(&format!("b{run_id}-")).into_owned(),
        expected: report.expected,
        record: !args.idle_only,
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        received: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        progress: Notify::new(),
        next_seq: AtomicU32::new(0),
        posts_ok: AtomicU64::new(0),
        post_errors: AtomicU64::new(0),
        posts_done: AtomicU64::new(0),
        last_ack_ns: AtomicU64::new(0),
        first_post_error: std::sync::Mutex::new(None),
    });

    // Idle memory baseline, then the subscribers.
    let pid = args.pid;
    if let Some(p) = pid {
        settle(pid, Duration::from_secs(5)).await;
        report.rss_before_kib = sys::rss_kib(p);
        if report.rss_before_kib.is_none() {
            fatal(format!("cannot read /proc/{p}/status"));
        }
    }
    let (watch_stop_tx, watch_stop_rx) = watch::channel(false);
    let watching = args.watcher.then(|| {
        let w = watcher::Watcher::new();
        let task = tokio::spawn(watcher::watch_room(
            target.clone(),
            args.mode,
            sh.room.clone(),
            w.clone(),
            watch_stop_rx,
        ));
        (w, task)
    });
    if let Some((w, _)) = &watching {
        let t0 = Instant::now();
        while !w.ready.load(Relaxed) && !w.cut_off.load(Relaxed) {
            if t0.elapsed() > Duration::from_secs(10) {
                fatal("the watcher got no hello within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let t_connect = Instant::now();
    let subs: Vec<JoinHandle<SubStats>> = (0..n)
        .map(|i| tokio::spawn(subscriber(i, sh.clone(), permits.clone(), stop_rx.clone())))
        .collect();
    let mut last_report = Instant::now();
    loop {
        let (ready, failed) = (sh.ready.load(Relaxed), sh.failed.load(Relaxed));
        if ready + failed >= n {
            break;
        }
        if Instant::now() >= deadline {
            report.timed_out = true;
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            eprintln!("ssechat-bench: {ready}/{n} subscribers ready, {failed} failed");
            last_report = Instant::now();
        }
        tokio::select! {
            _ = sh.progress.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    report.connect_s = t_connect.elapsed().as_secs_f64();
    report.connect_failed = sh.failed.load(Relaxed);
    let settle_max = Duration::from_secs_f64(args.settle_max)
        .min(deadline.saturating_duration_since(Instant::now()));
    report.settle_s = settle(pid, settle_max).await;
    if let (Some(p), Some(before)) = (pid, report.rss_before_kib) {
        report.rss_after_kib = sys::rss_kib(p);
        if let (Some(after), true) = (report.rss_after_kib, n > 0) {
            report.rss_kib_per_conn = Some((after as f64 - before as f64) / n as f64);
        }
    }

    let mut posters: Vec<JoinHandle<Vec<u32>>> = Vec::new();
    let mut dispatcher = None;
    if !args.idle_only && !report.timed_out && m > 0 {
        mark_phase(args, "post");
        let cpu0 = pid.and_then(sys::cpu_ticks);
        let own0 = sys::cpu_ticks(std::process::id());
        let start_ns = now_ns();
        let source = match args.rate {
            None => Source::Counter,
            Some(rate) => {
                let (tx, rx) = mpsc::unbounded_channel();
                dispatcher = Some(tokio::spawn(async move {
                    let t0 = tokio::time::Instant::now();
                    for seq in 0..m {
                        tokio::time::sleep_until(t0 + Duration::from_secs_f64(seq as f64 / rate))
                            .await;
                        if tx.send(seq).is_err() {
                            break;
                        }
                    }
                }));
                Source::Queue(Arc::new(Mutex::new(rx)))
            }
        };
        for _ in 0..in_flight {
            posters.push(tokio::spawn(poster(
                sh.clone(),
                source.clone(),
                stop_rx.clone(),
            )));
        }
        // Until every expected delivery arrived; or, once every POST was
        // answered, no delivery for --drain seconds; or the deadline.
        let drain = Duration::from_secs_f64(args.drain);
        let mut last_received = 0;
        let mut last_change = Instant::now();
        loop {
            let done_posts = sh.posts_done.load(Relaxed) >= m as u64;
            let received = sh.received.load(Relaxed);
            if received != last_received {
                last_received = received;
                last_change = Instant::now();
            }
            if done_posts && received >= report.expected {
                break;
            }
            if done_posts && last_change.elapsed() >= drain {
                break;
            }
            if Instant::now() >= deadline {
                report.timed_out = true;
                break;
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                eprintln!(
                    "ssechat-bench: {} posts answered, {received}/{} deliveries",
                    sh.posts_done.load(Relaxed),
                    report.expected
                );
                last_report = Instant::now();
            }
            tokio::select! {
                _ = sh.progress.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        let cpu1 = pid.and_then(sys::cpu_ticks);
        let own1 = sys::cpu_ticks(std::process::id());
        mark_phase(args, "done");
        let received = sh.received.load(Relaxed);
        let end_ns = if received >= report.expected && !report.timed_out {
            sh.last_delivery_ns
                .load(Relaxed)
                .max(sh.last_ack_ns.load(Relaxed))
        } else {
            now_ns()
        };
        report.post_phase_s = Some((end_ns - start_ns) as f64 / 1e9);
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            let us = (b - a) as f64 * 1e6 / sys::clock_ticks_per_second() as f64;
            report.server_cpu_ms = Some(us / 1000.0);
            if received > 0 {
                report.cpu_us_per_delivery = Some(us / received as f64);
            }
            let ok = sh.posts_ok.load(Relaxed);
            if ok > 0 {
                report.cpu_us_per_post = Some(us / ok as f64);
            }
        }
        if let (Some(a), Some(b), true) = (own0, own1, received > 0) {
            let us = (b - a) as f64 * 1e6 / sys::clock_ticks_per_second() as f64;
            report.bench_cpu_us_per_delivery = Some(us / received as f64);
        }
        let last_delivery = sh.last_delivery_ns.load(Relaxed);
        if received > 0 && last_delivery > start_ns {
            report.deliveries_per_s =
                Some(received as f64 / ((last_delivery - start_ns) as f64 / 1e9));
        }
        let last_ack = sh.last_ack_ns.load(Relaxed);
        let posts_ok = sh.posts_ok.load(Relaxed);
        if posts_ok > 0 && last_ack > start_ns {
            report.posts_per_s = Some(posts_ok as f64 / ((last_ack - start_ns) as f64 / 1e9));
        }
    }

    // Close everything: the leave storm, if a watcher watches.
    if let Some((w, _)) = &watching {
        w.phase.store(watcher::LEAVING, Relaxed);
    }
    let t_leave = Instant::now();
    let _ = stop_tx.send(true);
    if let Some(d) = dispatcher {
        d.abort();
    }
    let mut rtts = Vec::new();
    for p in posters {
        if let Ok(Ok(v)) = tokio::time::timeout(Duration::from_secs(5), p).await {
            rtts.extend(v);
        }
    }
    let mut stats = Vec::with_capacity(n);
    let t_close = Instant::now();
    for h in subs {
        let left = Duration::from_secs(10).saturating_sub(t_close.elapsed());
        let abort = h.abort_handle();
        match tokio::time::timeout(left, h).await {
            Ok(Ok(s)) => stats.push(s),
            _ => abort.abort(),
        }
    }

    if let Some((w, task)) = watching {
        if args.mode == Mode::Ssechat {
            if w.until_online(1, Duration::from_secs(30)).await {
                report.leave_s = Some(t_leave.elapsed().as_secs_f64());
            }
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let _ = watch_stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        report.watcher_cut_off = Some(w.cut_off.load(Relaxed));
        report.watcher_error = w.error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        report.watcher_presence_join = Some(w.presence[0].load(Relaxed));
        report.watcher_presence_leave = Some(w.presence[1].load(Relaxed));
    }

    if args.idle_only && !report.timed_out {
        // A new client right after everybody left: served at once?
        let (probe_stop_tx, probe_stop_rx) = watch::channel(false);
        let ready_before = sh.ready.load(Relaxed);
        let t0 = Instant::now();
        let probe = tokio::spawn(subscriber(
            n,
            sh.clone(),
            Arc::new(Semaphore::new(1)),
            probe_stop_rx,
        ));
        let limit = Duration::from_secs(30)
            .min(deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5));
        while t0.elapsed() < limit {
            if sh.ready.load(Relaxed) > ready_before {
                report.reconnect_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if probe.is_finished() {
                break;
            }
            tokio::select! {
                _ = sh.progress.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        let _ = probe_stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), probe).await;
    }

    // Tally.
    report.received = sh.received.load(Relaxed);
    report.lost = report.expected.saturating_sub(report.received);
    report.posts_ok = sh.posts_ok.load(Relaxed);
    report.post_errors = sh.post_errors.load(Relaxed);
    report.first_post_error = sh
        .first_post_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    report.disconnected = stats.iter().filter(|s| s.disconnected).count();
    report.first_subscriber_error = stats.iter().find_map(|s| s.error.clone());
    report.duplicated = stats.iter().map(|s| s.duplicates).sum();
    report.out_of_order = stats.iter().map(|s| s.id_disorder).sum();
    report.foreign = stats.iter().map(|s| s.foreign).sum();
    if let Some(canon) = stats.iter().max_by_key(|s| s.order.len()) {
        let mut rank = vec![u32::MAX; m as usize];
        for (i, &seq) in canon.order.iter().enumerate() {
            rank[seq as usize] = i as u32;
        }
        for s in &stats {
            let mut prev = None;
            for &seq in &s.order {
                let r = rank[seq as usize];
                if r == u32::MAX {
                    continue;
                }
                if prev.is_some_and(|p| r < p) {
                    report.order_mismatch += 1;
                } else {
                    prev = Some(r);
                }
            }
        }
    }
    let mut lat: Vec<u32> = Vec::with_capacity(report.received as usize);
    for s in &mut stats {
        lat.append(&mut s.latencies_us);
    }
    report.latency_ms = percentiles(&mut lat);
    report.post_rtt_ms = percentiles(&mut rtts);
    report.ok = !report.timed_out
        && report.lost == 0
        && report.duplicated == 0
        && report.out_of_order == 0
        && report.order_mismatch == 0
        && report.post_errors == 0
        && report.connect_failed == 0
        && report.watcher_cut_off != Some(true)
        && (!args.idle_only || report.reconnect_ms.is_some());
    report
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.digits$}"))
}

fn print_summary(args: &Args, r: &Report) {
    let mut out = String::new();
    use std::fmt::Write;
    if args.startup_probe {
        let _ = writeln!(
            out,
            "ssechat-bench: startup probe of {:?}",
            args.command.join(" ")
        );
        let _ = writeln!(
            out,
            "  first 200 on /healthz after start : {} ms",
            opt(r.startup_ms, 1)
        );
        let _ = writeln!(
            out,
            "  idle RSS (1 s later)              : {} KiB",
            r.idle_rss_kib.map_or("n/a".into(), |v| v.to_string())
        );
        eprint!("{out}");
        return;
    }
    let mode = match args.mode {
        Mode::Ssechat => "ssechat",
        Mode::Reference => "reference",
    };
    let pace = match r.rate {
        Some(rate) => format!("rate={rate}/s (≤{} outstanding)", r.in_flight),
        None => format!("in-flight={}", r.in_flight),
    };
    let _ = writeln!(
        out,
        "ssechat-bench: {mode} at {} — subscribers={} messages={} {pace} payload={}B{}",
        r.url,
        r.subscribers,
        r.messages,
        r.payload_bytes,
        if r.idle_only { " (idle only)" } else { "" }
    );
    if !r.idle_only {
        let _ = writeln!(
            out,
            "  SERVER CPU per delivery  : {} µs   ({} ms CPU over the post phase; {} µs per POST)",
            opt(r.cpu_us_per_delivery, 3),
            opt(r.server_cpu_ms, 0),
            opt(r.cpu_us_per_post, 1)
        );
        let _ = writeln!(
            out,
            "  bench's own CPU/delivery : {} µs",
            opt(r.bench_cpu_us_per_delivery, 3)
        );
    }
    let _ = writeln!(
        out,
        "  SERVER RSS per idle conn : {} KiB  (RSS {} → {} KiB with {} subscribers)",
        opt(r.rss_kib_per_conn, 2),
        r.rss_before_kib.map_or("n/a".into(), |v| v.to_string()),
        r.rss_after_kib.map_or("n/a".into(), |v| v.to_string()),
        r.subscribers
    );
    if args.pid.is_none() {
        let _ = writeln!(out, "  (give --pid PID for the two figures above)");
    }
    let _ = writeln!(
        out,
        "  subscribers: ready in {:.2} s, {} failed, {} disconnected; settled in {:.2} s",
        r.connect_s, r.connect_failed, r.disconnected, r.settle_s
    );
    if let Some(e) = &r.first_subscriber_error {
        if r.connect_failed > 0 || r.disconnected > 0 {
            let _ = writeln!(out, "  first subscriber error: {e}");
        }
    }
    if r.idle_only {
        let _ = writeln!(
            out,
            "  after all left, a new subscriber got its hello in {} ms",
            opt(r.reconnect_ms, 1)
        );
    } else {
        let _ = writeln!(
            out,
            "  deliveries: expected {} received {} lost {} duplicated {} out-of-order {} order-mismatch {} foreign {}",
            r.expected, r.received, r.lost, r.duplicated, r.out_of_order, r.order_mismatch, r.foreign
        );
        let _ = writeln!(
            out,
            "  posts: {} acknowledged, {} failed{}",
            r.posts_ok,
            r.post_errors,
            r.first_post_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (first: {e})"))
        );
        for (label, p) in [
            ("latency POST→event ms", &r.latency_ms),
            ("POST round trip ms   ", &r.post_rtt_ms),
        ] {
            if let Some(l) = p {
                let _ = writeln!(
                    out,
                    "  {label}: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
                    l.p50, l.p90, l.p99, l.max
                );
            }
        }
        let _ = writeln!(
            out,
            "  throughput: {} deliveries/s, {} posts/s over {} s",
            opt(r.deliveries_per_s, 0),
            opt(r.posts_per_s, 0),
            opt(r.post_phase_s, 3)
        );
    }
    if let Some(cut) = r.watcher_cut_off {
        let _ = writeln!(
            out,
            "  watcher: {}; presence events {} while joining, {} while leaving; alone again after {} s{}",
            if cut { "CUT OFF" } else { "stayed connected" },
            r.watcher_presence_join.unwrap_or(0),
            r.watcher_presence_leave.unwrap_or(0),
            opt(r.leave_s, 2),
            r.watcher_error
                .as_ref()
                .map_or(String::new(), |e| format!(" ({e})"))
        );
    }
    let _ = writeln!(
        out,
        "  verdict: {}{}",
        if r.ok { "OK" } else { "FAIL" },
        if r.timed_out { " (timed out)" } else { "" }
    );
    eprint!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_inside_json() {
        let data = r#"{"id":"7","room":"bench","name":"guest-1","text":"b42-17-123456789......","ts":1,"me":false}"#;
        let f = |p: &'static str| memchr::memmem::Finder::new(p);
        assert_eq!(parse_token(data, &f("b42-")), Some((17, 123456789)));
        assert_eq!(parse_token(data, &f("b43-")), None);
        assert_eq!(parse_token("b42-x", &f("b42-")), None);
    }

    #[test]
    fn ids_compare_as_numbers() {
        assert!(id_after("10", "9"));
        assert!(!id_after("9", "10"));
        assert!(!id_after("9", "9"));
    }

    #[test]
    fn percentiles_pick_ranks() {
        let mut v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        let p = percentiles(&mut v).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
    }
}
