//! HTTPS and HTTP/2: certificates from files (made here by a throwaway CA,
//! never committed), HTTP/1.1 and HTTP/2 by ALPN, h2c on the plain port,
//! SSE over HTTP/2 with per-stream flow control, SIGHUP reload, Secure
//! cookies and HSTS, graceful shutdown, and ACME against a real Pebble.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData,
};
use serde_json::{json, Value};
use ssechat::sse::Item;
use tempfile::TempDir;

use crate::external::{free_port, need};
use crate::helpers::{
    binary_fails, events_at, spawn_app, spawn_app_with, spawn_binary, TestApp, WAIT,
};

/* ---------------- certificates ---------------- */

/// A certificate authority that lives as long as the test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    spki: Vec<u8>,
    pub pem: String,
}

/// A leaf certificate: the chain (leaf, then the CA) and the key, as PEM.
pub struct Leaf {
    pub chain: String,
    pub key: String,
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "ssechat throwaway test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let spki = key.subject_public_key_info();
        let issuer = CertifiedIssuer::self_signed(params, key).unwrap();
        let pem = issuer.pem();
        TestCa { issuer, spki, pem }
    }

    /// A certificate for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        Leaf {
            chain: format!("{}{}", cert.pem(), self.pem),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    pub fn root(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap()
    }

    /// base64(SHA-256(SubjectPublicKeyInfo)): what Chromium's
    /// `--ignore-certificate-errors-spki-list` takes.
    pub fn spki_hash(&self) -> String {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&self.spki))
    }
}

impl Leaf {
    /// Writes `<name>.crt` and `<name>.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &self.chain).unwrap();
        std::fs::write(&k, &self.key).unwrap();
        (c, k)
    }
}

/// A client that trusts only `roots` and reports the peer's certificate.
fn client_for(roots: &[reqwest::Certificate], h2: Option<bool>) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .tls_info(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(40));
    for r in roots {
        b = b.add_root_certificate(r.clone());
    }
    match h2 {
        Some(true) => b.http2_prior_knowledge(),
        Some(false) => b.http1_only(),
        None => b,
    }
}

fn https_client(ca: &TestCa) -> reqwest::Client {
    client_for(&[ca.root()], None).build().unwrap()
}

fn peer_cert(res: &reqwest::Response) -> Vec<u8> {
    res.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("the server's certificate")
        .to_vec()
}

/// An in-process server with HTTPS from a fresh CA.
struct TlsApp {
    app: TestApp,
    ca: TestCa,
    base: String,
    _dir: TempDir,
}

async fn spawn_tls(extra: &[&str]) -> TlsApp {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = ca
        .leaf(&["127.0.0.1", "localhost"])
        .write(dir.path(), "server");
    let mut args = vec![
        "--tls-cert",
        c.to_str().unwrap(),
        "--tls-key",
        k.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let app = spawn_app_with(&args).await;
    let base = format!("https://{}", app.addr);
    TlsApp {
        app,
        ca,
        base,
        _dir: dir,
    }
}

/// ESTABLISHED TCP connections whose local port is `port` (the server's
/// side of each client connection), from /proc/net/tcp.
pub fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "01"
                && f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

async fn post(http: &reqwest::Client, base: &str, room: &str, text: &str) -> String {
    let res = http
        .post(format!("{base}/chat/messages"))
        .json(&json!({"room": room, "text": text}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 201, "the POST is accepted");
    let v: Value = res.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/* ---------------- HTTPS from files ---------------- */

#[tokio::test]
async fn https_speaks_http1_and_http2_by_alpn() {
    let t = spawn_tls(&[]).await;
    for (h2, want) in [
        (Some(false), reqwest::Version::HTTP_11),
        (None, reqwest::Version::HTTP_2),
    ] {
        let http = client_for(&[t.ca.root()], h2).build().unwrap();
        let res = http
            .get(format!("{}/healthz", t.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), want, "ALPN picks {want:?}");
        assert_eq!(res.text().await.unwrap(), "ok");
    }
    // A client that does not trust the CA is refused: it really is TLS.
    let stranger = client_for(&[], None).build().unwrap();
    assert!(stranger
        .get(format!("{}/healthz", t.base))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn plain_port_takes_http2_with_prior_knowledge_and_http1() {
    let app = spawn_app().await;
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let res = h2c.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.text().await.unwrap(), "ok");
    let res = app.get("/healthz").await;
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn an_event_stream_over_http2_gets_a_posted_message() {
    let t = spawn_tls(&[]).await;
    let http = https_client(&t.ca);
    let mut s = events_at(&http, &format!("{}/chat/events?room=h2", t.base), &[]).await;
    assert_eq!(s.status, 200);
    s.expect("hello").await;
    // Same client, same connection: the POST is another stream beside it.
    let id = post(&http, &t.base, "h2", "over h2").await;
    let e = s.until("message").await;
    assert_eq!(e.last_event_id, id);
    let v: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(v["text"], "over h2");
    assert_eq!(
        established_to(t.app.addr.port()),
        1,
        "stream and POST share one connection"
    );
}

#[tokio::test]
async fn one_unread_http2_stream_does_not_hold_up_the_others() {
    let app = spawn_app().await;
    // Small per-stream windows, a large connection window: the unread
    // stream closes its own window, never the connection's.
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .http2_initial_stream_window_size(32 * 1024)
        .http2_initial_connection_window_size(8 * 1024 * 1024)
        .build()
        .unwrap();
    let url = app.url("/chat/events?room=flow");
    let mut unread = events_at(&http, &url, &[]).await;
    unread.expect("hello").await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut s = events_at(&http, &url, &[]).await;
        s.expect("hello").await;
        readers.push(s);
    }
    assert_eq!(established_to(app.addr.port()), 1, "one connection");

    // ~230 KB of events: far past the unread stream's window and the
    // server's per-stream send buffer.
    let text = "x".repeat(1900);
    let mut ids = Vec::new();
    for _ in 0..120 {
        ids.push(post(&http, &app.base, "flow", &text).await);
        for s in &mut readers {
            assert_eq!(s.until("message").await.last_event_id, *ids.last().unwrap());
        }
    }
    // The unread stream was only paused: reading it now, it is all there.
    for id in &ids {
        assert_eq!(unread.until("message").await.last_event_id, *id);
    }
}

/// A TLS connection (ALPN `proto`) that finishes its handshake, then sends
/// nothing: how long until the server closes it (read gives EOF or an
/// error), or `None` if it is still open after `within`.
async fn silent_after_handshake(t: &TlsApp, proto: &[u8], within: Duration) -> Option<Duration> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::AsyncReadExt;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(t.ca.pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![proto.to_vec()];
    let tcp = tokio::net::TcpStream::connect(t.app.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(proto));
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within.saturating_sub(started.elapsed()), tls.read(&mut buf))
            .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            // HTTP/2 never started (no preface from us), so nothing should
            // come; whatever does is read past.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_connection_that_says_nothing_after_the_tls_handshake_is_closed() {
    let t = spawn_tls(&[]).await;
    // The bound is the plain port's first-bytes wait, 30 s: not sooner
    // (a slow client is not cut early), and not never.
    let within = Duration::from_secs(60);
    let (h2, h1) = tokio::join!(
        silent_after_handshake(&t, b"h2", within),
        silent_after_handshake(&t, b"http/1.1", within),
    );
    for (proto, took) in [("h2", h2), ("http/1.1", h1)] {
        let took = took.unwrap_or_else(|| panic!("{proto}: still open after {within:?}"));
        assert!(
            took >= Duration::from_secs(25),
            "{proto}: closed after {took:?}, sooner than the 30 s first-bytes bound"
        );
    }
}

#[tokio::test]
async fn cookie_is_secure_over_tls_and_hsts_is_sent_when_asked() {
    let t = spawn_tls(&["--hsts"]).await;
    let http = https_client(&t.ca);
    let res = http.get(format!("{}/chat", t.base)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=31536000"
    );

    // Without --hsts over TLS: Secure cookie, no HSTS.
    let t2 = spawn_tls(&[]).await;
    let res = https_client(&t2.ca)
        .get(format!("{}/chat", t2.base))
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("strict-transport-security").is_none());

    // Plain HTTP with --hsts: neither (browsers ignore HSTS over HTTP).
    let plain = spawn_app_with(&["--hsts"]).await;
    let res = plain.get("/chat").await;
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(res.headers().get("strict-transport-security").is_none());
}

#[tokio::test]
async fn shutdown_ends_http2_streams_with_a_retry_hint() {
    let t = spawn_tls(&[]).await;
    let http = https_client(&t.ca);
    let url = format!("{}/chat/events?room=bye2", t.base);
    let mut a = events_at(&http, &url, &[]).await;
    let mut b = events_at(&http, &url, &[]).await;
    a.expect("hello").await;
    b.expect("hello").await;
    assert_eq!(established_to(t.app.addr.port()), 1);
    t.app.stop().await;
    for s in [&mut a, &mut b] {
        let rest = s.rest().await;
        assert!(rest.iter().any(|i| matches!(i, Item::Retry(_))), "{rest:?}");
        assert!(s.ended);
    }
}

/* ---------------- the binary: start errors and SIGHUP ---------------- */

#[test]
fn a_missing_or_broken_certificate_stops_the_start_naming_the_file() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = ca.leaf(&["127.0.0.1"]).write(dir.path(), "ok");
    let missing = dir.path().join("missing.crt");
    let junk = dir.path().join("junk.crt");
    std::fs::write(&junk, "not a certificate").unwrap();
    let (c, k, missing, junk) = (
        c.to_str().unwrap(),
        k.to_str().unwrap(),
        missing.to_str().unwrap(),
        junk.to_str().unwrap(),
    );
    for (cert, key, named) in [(missing, k, missing), (junk, k, junk), (c, junk, junk)] {
        let (code, err) = binary_fails(&["--db", ":memory:", "--tls-cert", cert, "--tls-key", key]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(named), "the message names {named}: {err}");
    }
}

/// Sends SIGHUP to the binary and waits for its log to say `what`.
fn hup_and_wait(bin: &crate::helpers::BinApp, what: &str) {
    let seen = || {
        bin.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(what))
            .count()
    };
    let before = seen();
    let ok = Command::new("kill")
        .args(["-HUP", &bin.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = std::time::Instant::now() + WAIT;
    while seen() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no {what:?} in the log after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_without_dropping_a_stream() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let first = ca.leaf(&["127.0.0.1"]);
    let (c, k) = first.write(dir.path(), "server");
    let bin = spawn_binary(&[
        "--db",
        ":memory:",
        "--tls-cert",
        c.to_str().unwrap(),
        "--tls-key",
        k.to_str().unwrap(),
    ]);
    assert!(bin.base.starts_with("https://"), "{}", bin.base);
    let served = |http: reqwest::Client| {
        let url = bin.url("/healthz");
        async move { peer_cert(&http.get(url).send().await.expect("GET /healthz")) }
    };
    assert_eq!(served(https_client(&ca)).await, first.der);
    let streams = https_client(&ca);
    let mut s = events_at(&streams, &bin.url("/chat/events?room=hup"), &[]).await;
    s.expect("hello").await;

    let second = ca.leaf(&["127.0.0.1"]);
    second.write(dir.path(), "server");
    hup_and_wait(&bin, "certificate reloaded");
    assert_eq!(
        served(https_client(&ca)).await,
        second.der,
        "new connections get the new certificate"
    );

    std::fs::write(&c, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
    hup_and_wait(&bin, "certificate not reloaded");
    assert!(bin
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("certificate not reloaded") && l.contains("server.crt")));
    assert_eq!(
        served(https_client(&ca)).await,
        second.der,
        "a broken file keeps the certificate in use"
    );

    // The stream opened before both reloads is still live.
    let id = post(&https_client(&ca), &bin.base, "hup", "still here").await;
    assert_eq!(s.until("message").await.last_event_id, id);
}

/* ---------------- ACME against Pebble ---------------- */

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(prog: &Path, args: &[&str], env: &[(&str, &str)], log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    Proc(
        Command::new(prog)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start"),
    )
}

/// Waits (bounded) until `GET url` answers at all.
async fn wait_up(http: &reqwest::Client, url: &str, p: &mut Proc, log: &Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if http.get(url).send().await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = p.0.try_wait() {
            panic!(
                "{url}: exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} not up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_obtains_a_certificate_from_pebble_and_a_restart_serves_it_without_ordering() {
    let Some(progs) = need("acme_pebble", &["pebble", "pebble-challtestsrv"]) else {
        return;
    };
    let (pebble, challtestsrv) = (&progs[0], &progs[1]);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (pc, pk) = ca
        .leaf(&["127.0.0.1", "localhost"])
        .write(dir.path(), "pebble");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (acme_port, mgmt_port, dns_port, dns_mgmt, port) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );

    let dns_log = dir.path().join("challtestsrv.log");
    let mut dns = start(
        challtestsrv,
        &[
            "-dns01",
            &format!("127.0.0.1:{dns_port}"),
            "-management",
            &format!("127.0.0.1:{dns_mgmt}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-defaultIPv6",
            "",
            "-defaultIPv4",
            "127.0.0.1",
        ],
        &[],
        &dns_log,
    );
    let plain = reqwest::Client::new();
    wait_up(
        &plain,
        &format!("http://127.0.0.1:{dns_mgmt}/"),
        &mut dns,
        &dns_log,
    )
    .await;

    let config = dir.path().join("pebble.json");
    std::fs::write(
        &config,
        json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": pc,
            "privateKey": pk,
            "httpPort": free_port(),
            "tlsPort": port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }})
        .to_string(),
    )
    .unwrap();
    let pebble_log = dir.path().join("pebble.log");
    let mut acme = start(
        pebble,
        &[
            "-config",
            config.to_str().unwrap(),
            "-dnsserver",
            &format!("127.0.0.1:{dns_port}"),
        ],
        &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")],
        &pebble_log,
    );
    let to_pebble = https_client(&ca);
    let directory = format!("https://127.0.0.1:{acme_port}/dir");
    wait_up(&to_pebble, &directory, &mut acme, &pebble_log).await;

    let cache = dir.path().join("cache");
    let port_s = port.to_string();
    let args = [
        "--db",
        ":memory:",
        "--port",
        &port_s,
        "--acme-domain",
        "chat.example.org",
        "--acme-directory",
        &directory,
        "--acme-root",
        ca_file.to_str().unwrap(),
        "--acme-cache",
        cache.to_str().unwrap(),
    ];
    let bin = spawn_binary(&args);

    // Pebble's root for what it issues, and a client that trusts only it.
    let root = to_pebble
        .get(format!("https://127.0.0.1:{mgmt_port}/roots/0"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let root = reqwest::Certificate::from_pem(&root).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = || {
        client_for(std::slice::from_ref(&root), None)
            .resolve("chat.example.org", addr)
            .build()
            .unwrap()
    };
    let url = format!("https://chat.example.org:{port}/healthz");

    // Order, validation by TLS-ALPN-01 on our port, issue: bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let issued = loop {
        match client().get(&url).send().await {
            Ok(res) => break peer_cert(&res),
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "no certificate from Pebble in time: {e}\nssechat: {:#?}\npebble: {}",
                bin.log.lock().unwrap(),
                std::fs::read_to_string(&pebble_log).unwrap_or_default()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(bin);

    // Pebble gone: a restart can only serve what the cache kept, at once.
    drop(acme);
    let bin = spawn_binary(&args);
    let res = client()
        .get(&url)
        .send()
        .await
        .expect("the kept certificate is served at once");
    assert_eq!(res.status(), 200);
    assert_eq!(
        peer_cert(&res),
        issued,
        "the same certificate, not a new one"
    );
    let log = bin.log.lock().unwrap().join("\n");
    assert!(log.contains("serving the certificate kept"), "{log}");
    assert!(!log.contains("ordering a certificate"), "{log}");
}
