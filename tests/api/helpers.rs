//! The one way tests start a server and talk to it: `spawn_app()` runs the
//! real `Application` in-process on port 0; `TestApp` has a helper per
//! endpoint; `SseClient` reads a stream with the EventSource rules
//! (`ssechat::sse::Parser`) and every wait is bounded.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use ssechat::chat::Chat;
use ssechat::config::Config;
use ssechat::metrics::Metrics;
use ssechat::sse::{Item, ParsedEvent, Parser};
use ssechat::startup::Application;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub chat: Chat,
    pub metrics: std::sync::Arc<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// Flags for tests: in-memory history, limits off, unless `extra` says otherwise.
pub fn test_config(extra: &[&str]) -> Config {
    let mut args = vec![
        "ssechat",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--db",
        ":memory:",
        "--post-rate",
        "0",
        "--max-streams",
        "0",
        "--max-streams-per-ip",
        "0",
        "--max-long-polls",
        "0",
    ];
    args.extend_from_slice(extra);
    // Flags only: what the developer exported (SSECHAT_DB, SSECHAT_REDIS,
    // ...) must not change what the suite tests.
    Config::from_flags(args).expect("test flags parse")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
    spawn_with_config(test_config(extra)).await
}

pub async fn spawn_with_config(config: Config) -> TestApp {
    let app = Application::build(config).await.expect("server starts");
    let addr = app.addr();
    let chat = app.chat();
    let metrics = app.metrics();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(40))
            .build()
            .unwrap(),
        chat,
        metrics,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("GET")
    }

    /// POST a JSON body as a given client token (or none).
    pub async fn post_json(&self, client: Option<&str>, body: Value) -> reqwest::Response {
        let mut req = self.http.post(self.url("/chat/messages")).json(&body);
        if let Some(c) = client {
            req = req.header("X-Chat-Client", c);
        }
        req.send().await.expect("POST")
    }

    /// POST `text` to a room as a client; asserts 201 and returns the id.
    pub async fn send(&self, client: Option<&str>, room: &str, text: &str) -> String {
        let res = self
            .post_json(client, serde_json::json!({"room": room, "text": text}))
            .await;
        assert_eq!(res.status(), 201, "POST should be accepted");
        let v: Value = res.json().await.unwrap();
        v["id"].as_str().expect("id is a string").to_owned()
    }

    pub async fn post_raw(
        &self,
        path_and_query: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self.http.post(self.url(path_and_query)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("POST")
    }

    pub async fn history(&self, query: &str) -> Value {
        let res = self.get(&format!("/chat/messages?{query}")).await;
        assert_eq!(res.status(), 200, "history should answer 200");
        res.json().await.unwrap()
    }

    /// Texts stored in a room, oldest first (up to 500).
    pub async fn texts(&self, room: &str) -> Vec<String> {
        texts_at(&self.base, room).await
    }

    pub async fn events(&self, query: &str) -> SseClient {
        self.events_with(query, &[]).await
    }

    pub async fn events_with(&self, query: &str, headers: &[(&str, &str)]) -> SseClient {
        events_at(
            &self.http,
            &self.url(&format!("/chat/events?{query}")),
            headers,
        )
        .await
    }

    /// Opens a stream as `client` and reads up to its hello.
    pub async fn subscribe(&self, room: &str, client: &str, name: &str) -> SseClient {
        let mut s = self
            .events(&format!("room={room}&client={client}&name={name}"))
            .await;
        assert_eq!(s.status, 200);
        s.expect("hello").await;
        s
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            tokio::time::timeout(WAIT, h)
                .await
                .expect("server stops in time")
                .unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A fresh client token, as a script would hold.
pub fn token() -> String {
    ssechat::chat::types::ClientToken::mint()
        .expose()
        .to_owned()
}

pub struct SseClient {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    parser: Parser,
    items: VecDeque<Item>,
    pub ended: bool,
    /// Raw bytes seen so far (for byte-level assertions).
    pub raw: Vec<u8>,
}

impl SseClient {
    pub fn new(res: reqwest::Response) -> Self {
        SseClient {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body: res.bytes_stream().boxed(),
            parser: Parser::new(),
            items: VecDeque::new(),
            ended: false,
            raw: Vec::new(),
        }
    }

    /// The next item, or `None` when the stream ends. Fails after `WAIT`.
    pub async fn next_item(&mut self) -> Option<Item> {
        self.next_item_within(WAIT)
            .await
            .expect("an SSE item in time")
    }

    /// `Err(())` on timeout, `Ok(None)` at end of stream.
    pub async fn next_item_within(&mut self, d: Duration) -> Result<Option<Item>, ()> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            if let Some(i) = self.items.pop_front() {
                return Ok(Some(i));
            }
            if self.ended {
                return Ok(None);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Err(()),
                Ok(None) | Ok(Some(Err(_))) => self.ended = true,
                Ok(Some(Ok(chunk))) => {
                    self.raw.extend_from_slice(&chunk);
                    self.items.extend(self.parser.feed(&chunk));
                }
            }
        }
    }

    /// The next dispatched event, skipping comments and retry hints.
    pub async fn next_event(&mut self) -> ParsedEvent {
        loop {
            match self.next_item().await {
                Some(Item::Event(e)) => return e,
                Some(_) => continue,
                None => panic!("stream ended while waiting for an event"),
            }
        }
    }

    /// The next event, which must be of type `name`.
    pub async fn expect(&mut self, name: &str) -> ParsedEvent {
        let e = self.next_event().await;
        assert_eq!(e.event, name, "unexpected event {e:?}");
        e
    }

    /// The next event's data as JSON; it must be of type `name`.
    pub async fn expect_json(&mut self, name: &str) -> Value {
        let e = self.expect(name).await;
        serde_json::from_str(&e.data).expect("event data is JSON")
    }

    /// Skips events until one of type `name` arrives.
    pub async fn until(&mut self, name: &str) -> ParsedEvent {
        loop {
            let e = self.next_event().await;
            if e.event == name {
                return e;
            }
        }
    }

    /// Reads to the end of the stream, returning what remained.
    pub async fn rest(&mut self) -> Vec<Item> {
        let mut out = Vec::new();
        while let Some(i) = self.next_item().await {
            out.push(i);
        }
        out
    }
}

/// Texts stored in a room of the server at `base`, oldest first (up to 500).
/// Opens an SSE stream at `url` (any server: in-process, binary, proxy)
/// with extra request headers, within the shared time bound.
pub async fn events_at(http: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> SseClient {
    let mut req = http.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("stream opens in time")
        .expect("GET /chat/events");
    SseClient::new(res)
}

pub async fn texts_at(base: &str, room: &str) -> Vec<String> {
    let v: Value = reqwest::get(format!("{base}/chat/messages?room={room}&limit=500"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

/// Every message of `room` at `base`, oldest first, paging with `since`.
pub async fn all_messages(base: &str, room: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut since = "0".to_owned();
    loop {
        let url = format!("{base}/chat/messages?room={room}&since={since}&limit=500");
        let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        let page = v["messages"].as_array().unwrap().clone();
        if page.is_empty() {
            return out;
        }
        since = v["last_id"].as_str().unwrap().to_owned();
        out.extend(page);
    }
}

/// The value of the line `name VALUE` in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("metric {name} missing in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// The server's `/metrics` text.
pub async fn metrics_at(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits (bounded) until the server at `base` reports `name` ≥ `min` on
/// `/metrics`: for states no stream event announces (a long-poll waiting,
/// a subscriber dropped inside the server).
pub async fn wait_metric(base: &str, name: &str, min: f64) {
    wait_metric_where(base, name, &format!(">= {min}"), |v| v >= min).await
}

/// Waits (bounded) until `name` on `/metrics` satisfies `ok` (described by
/// `want` in the failure).
pub async fn wait_metric_where(base: &str, name: &str, want: &str, ok: impl Fn(f64) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = metrics_at(base).await;
        if ok(metric_value(&text, name)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {name} {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until `cond` holds, checking after each yield.
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(WAIT, what, cond).await
}

/// [`eventually`] with a bound of its own, for what has no event to wait
/// for and takes longer than [`WAIT`] (a process's memory going down).
pub async fn eventually_within(bound: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + bound;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {bound:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Resident memory of process `pid`, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Whether a test that cannot run (a missing external program, no root
/// for a tmpfs) fails instead of skipping: `SSECHAT_REQUIRE_EXTERNAL=1`, as
/// CI sets it. Any other value, or none, skips. The one place this is
/// decided.
pub fn require_external() -> bool {
    std::env::var("SSECHAT_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1")
}

/// Skips `test` loudly because of `why` (say what is missing and how to get
/// it), or fails it when [`require_external`] says so.
pub fn skip(test: &str, why: &str) {
    assert!(
        !require_external(),
        "{test}: {why}, and SSECHAT_REQUIRE_EXTERNAL=1 requires it"
    );
    eprintln!(
        "\n==============================================================\n\
         SKIPPED: {test}: {why}\n\
         =============================================================="
    );
}

/// The built `ssechat` binary as a command that sees none of the
/// developer's configuration: every variable the server reads
/// (`SSECHAT_*`, `HOST`, `PORT`) is removed from its environment, so only
/// the test's flags decide.
pub fn ssechat_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ssechat"));
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("SSECHAT_") || k == "HOST" || k == "PORT" {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// The built `ssechat` binary running as a child process (for crash and
/// restart tests: `kill -9` needs a real process).
pub struct BinApp {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub base: String,
    /// Log lines the process printed after it was ready.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Starts the binary with `args` on port 0 and waits (bounded) for its
/// "listening on" line to learn the port.
pub fn spawn_binary(args: &[&str]) -> BinApp {
    use std::io::BufRead;
    let mut child = ssechat_command()
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the ssechat binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // "listening on http://ADDR/" or "https://ADDR/".
            let url = line.split("listening on ").nth(1);
            if let Some((scheme, rest)) = url.and_then(|u| u.split_once("://")) {
                if let Some(tx) = tx.take() {
                    let addr = rest.split('/').next().unwrap();
                    let _ = tx.send(Ok((scheme.to_owned(), addr.to_owned())));
                }
            } else if line.contains("cannot start") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Err(line.clone()));
                }
            }
            sink.lock().unwrap().push(line);
        }
    });
    let (scheme, addr): (String, SocketAddr) = match rx.recv_timeout(WAIT) {
        Ok(Ok((scheme, a))) => (scheme, a.parse().expect("address in the log")),
        Ok(Err(line)) => panic!("server refused to start: {line}"),
        Err(_) => panic!("server did not say it was listening within {WAIT:?}"),
    };
    BinApp {
        child,
        addr,
        base: format!("{scheme}://{addr}"),
        log,
    }
}

/// Runs the binary expecting it to refuse to start: returns (exit code, stderr).
pub fn binary_fails(args: &[&str]) -> (i32, String) {
    let mut child = ssechat_command()
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the ssechat binary starts");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server was expected to refuse to start, but it kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl BinApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POSTs `text` to `room` (no client token); asserts 201, returns the id.
    pub async fn send(&self, room: &str, text: &str) -> String {
        let res = reqwest::Client::new()
            .post(self.url("/chat/messages"))
            .json(&serde_json::json!({"room": room, "text": text}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "POST should be accepted");
        let v: Value = res.json().await.unwrap();
        v["id"].as_str().expect("id is a string").to_owned()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit (bounded); returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BinApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
