//! `tls-load`: HTTPS load for the TLS figures, against ssechat or
//! sse-reference (`ssechat-bench` speaks plain HTTP/1.1 only). hyper's
//! client over tokio-rustls (ring), HTTP/1.1 or HTTP/2 by ALPN:
//!
//! - `--test fanout`: N subscribers (one connection each), M messages
//!   posted K at a time; server CPU per delivery (from /proc/PID/stat).
//! - `--test idle`: N open event streams over TLS; server RSS per connection.
//! - `--test handshakes`: full TLS handshakes (no resumption) per second
//!   from C concurrent loops, and server CPU per handshake.
//! - `--make-cert DIR`: a throwaway CA and a certificate for 127.0.0.1
//!   (`ca.pem`, `cert.pem` with the chain, `key.pem`).
//!
//! One JSON line on stdout. Loopback only. The client shares the cores with
//! the server and costs more than the server per delivery; its own CPU is
//! reported too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, Parser)]
struct Args {
    /// Write a throwaway CA and server certificate into DIR, then exit.
    #[arg(long)]
    make_cert: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// CA certificate (PEM) that signed the server's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// `ssechat` or `reference`.
    #[arg(long, default_value = "ssechat")]
    mode: String,
    /// `h1` or `h2`.
    #[arg(long, default_value = "h1")]
    proto: String,
    /// Server process, for CPU and RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// `fanout`, `idle` or `handshakes`.
    #[arg(long, default_value = "fanout")]
    test: String,
    #[arg(long, default_value_t = 200)]
    subscribers: usize,
    #[arg(long, default_value_t = 500)]
    messages: u64,
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
}

const TOKEN: &[u8] = b"tlsload-";

fn main() {
    let args = Args::parse();
    if let Some(dir) = &args.make_cert {
        make_cert(dir);
        return;
    }
    assert!(args.addr.ip().is_loopback(), "loopback targets only");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(run(args));
    println!("{out}");
}

fn make_cert(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), format!("{}{}", cert.pem(), ca.pem())).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

struct Client {
    addr: SocketAddr,
    /// ALPN http/1.1 (posters), and h2.
    tls_h1: TlsConnector,
    tls_h2: TlsConnector,
    h2: bool,
    reference: bool,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn send(
        &mut self,
        req: hyper::Request<Full<Bytes>>,
    ) -> hyper::Result<hyper::Response<hyper::body::Incoming>> {
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

impl Client {
    fn new(args: &Args) -> Client {
        let ca = args.ca.as_ref().expect("--ca");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca).expect("CA PEM"))
            .unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        // Every connection a full handshake, as a new visitor makes.
        config.resumption = rustls::client::Resumption::disabled();
        let mut h2_config = config.clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        h2_config.alpn_protocols = vec![b"h2".to_vec()];
        Client {
            addr: args.addr,
            tls_h1: TlsConnector::from(Arc::new(config)),
            tls_h2: TlsConnector::from(Arc::new(h2_config)),
            h2: args.proto == "h2",
            reference: args.mode == "reference",
        }
    }

    async fn handshake(
        &self,
        h2: bool,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let tls = if h2 { &self.tls_h2 } else { &self.tls_h1 };
        tls.connect(name, tcp).await
    }

    async fn connect(&self, h2: bool) -> Sender {
        let io = TokioIo::new(self.handshake(h2).await.expect("TLS connect"));
        if h2 {
            let (s, c) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(c);
            Sender::H2(s)
        } else {
            let (s, c) = http1::handshake(io).await.unwrap();
            tokio::spawn(c);
            Sender::H1(s)
        }
    }

    fn events(&self) -> hyper::Request<Full<Bytes>> {
        let path = if self.reference {
            "/events"
        } else {
            "/chat/events?room=tlsload"
        };
        hyper::Request::get(format!("https://{}{path}", self.addr))
            .body(Full::default())
            .unwrap()
    }

    fn post(&self, n: u64) -> hyper::Request<Full<Bytes>> {
        let text = format!("tlsload-{n} {}", "x".repeat(100));
        let (path, body, ct) = if self.reference {
            ("/messages", text, "text/plain")
        } else {
            (
                "/chat/messages",
                format!(r#"{{"room":"tlsload","text":"{text}"}}"#),
                "application/json",
            )
        };
        hyper::Request::post(format!("https://{}{path}", self.addr))
            .header("content-type", ct)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }

    /// Opens a stream; returns once its first bytes arrived, with a task
    /// counting the messages it receives.
    async fn subscribe(self: &Arc<Self>, delivered: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
        let mut sender = self.connect(self.h2).await;
        let res = sender.send(self.events()).await.expect("GET events");
        assert_eq!(res.status(), 200, "events status");
        let mut body = res.into_body();
        let first = body.frame().await.expect("first frame").expect("body");
        let mut carry: Vec<u8> = Vec::new();
        count(
            &mut carry,
            first.data_ref().map(|b| &b[..]).unwrap_or(&[]),
            &delivered,
        );
        tokio::spawn(async move {
            let _keep = sender;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    count(&mut carry, data, &delivered);
                }
            }
        })
    }
}

/// Counts TOKEN in `data`, across chunk boundaries.
fn count(carry: &mut Vec<u8>, data: &[u8], total: &AtomicU64) {
    carry.extend_from_slice(data);
    let n = memchr::memmem::find_iter(carry, TOKEN).count() as u64;
    if n > 0 {
        total.fetch_add(n, Relaxed);
    }
    // Shorter than a token, so nothing counted is counted again (a
    // counted token's tail ends in '-', no token prefix does).
    let keep = carry.len().min(TOKEN.len() - 1);
    carry.drain(..carry.len() - keep);
}

/// utime + stime of a process, in microseconds.
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks * 1e6 / 100.0
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn run(args: Args) -> String {
    let client = Arc::new(Client::new(&args));
    let pid = args.pid.unwrap_or(0);
    let me = std::process::id();
    match args.test.as_str() {
        "idle" => {
            let rss0 = rss_kib(pid);
            let delivered = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..args.subscribers {
                tasks.push(client.subscribe(delivered.clone()).await);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss1 = rss_kib(pid);
            format!(
                r#"{{"ok":true,"test":"idle","proto":"{}","conns":{},"rss_kib_per_conn":{:.2}}}"#,
                args.proto,
                args.subscribers,
                (rss1 - rss0) / args.subscribers as f64
            )
        }
        "handshakes" => {
            let done = Arc::new(AtomicU64::new(0));
            let end = Instant::now() + Duration::from_secs_f64(args.seconds);
            let (cpu0, me0) = (cpu_us(pid), cpu_us(me));
            let t0 = Instant::now();
            let mut loops = Vec::new();
            for _ in 0..args.concurrency {
                let (client, done) = (client.clone(), done.clone());
                loops.push(tokio::spawn(async move {
                    while Instant::now() < end {
                        if client.handshake(client.h2).await.is_ok() {
                            done.fetch_add(1, Relaxed);
                        }
                    }
                }));
            }
            for l in loops {
                let _ = l.await;
            }
            let secs = t0.elapsed().as_secs_f64();
            let n = done.load(Relaxed) as f64;
            format!(
                r#"{{"ok":true,"test":"handshakes","handshakes_per_s":{:.0},"server_cpu_us_per_handshake":{:.1},"client_cpu_us_per_handshake":{:.1}}}"#,
                n / secs,
                (cpu_us(pid) - cpu0) / n,
                (cpu_us(me) - me0) / n
            )
        }
        _ => {
            let delivered = Arc::new(AtomicU64::new(0));
            let mut subs = Vec::new();
            for _ in 0..args.subscribers {
                subs.push(client.subscribe(delivered.clone()).await);
            }
            let base = delivered.load(Relaxed);
            let expected = args.subscribers as u64 * args.messages;
            let (cpu0, me0) = (cpu_us(pid), cpu_us(me));
            let t0 = Instant::now();
            let next = Arc::new(AtomicU64::new(0));
            let mut posters = Vec::new();
            for _ in 0..args.in_flight {
                let (client, next, total) = (client.clone(), next.clone(), args.messages);
                posters.push(tokio::spawn(async move {
                    let mut sender = client.connect(false).await;
                    loop {
                        let n = next.fetch_add(1, Relaxed);
                        if n >= total {
                            return;
                        }
                        let res = sender.send(client.post(n)).await.expect("POST");
                        assert!(res.status().is_success(), "POST {}", res.status());
                        let _ = res.into_body().collect().await;
                    }
                }));
            }
            for p in posters {
                p.await.unwrap();
            }
            let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
            while delivered.load(Relaxed) - base < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let secs = t0.elapsed().as_secs_f64();
            let got = delivered.load(Relaxed) - base;
            let (cpu, mine) = (cpu_us(pid) - cpu0, cpu_us(me) - me0);
            format!(
                r#"{{"ok":{},"test":"fanout","proto":"{}","deliveries":{got},"expected":{expected},"deliveries_per_s":{:.0},"cpu_us_per_delivery":{:.3},"client_cpu_us_per_delivery":{:.3}}}"#,
                got == expected,
                args.proto,
                got as f64 / secs,
                cpu / got.max(1) as f64,
                mine / got.max(1) as f64
            )
        }
    }
}
