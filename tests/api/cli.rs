//! `ssechat send` and `ssechat listen` as a user runs them: the built
//! binary as the client, against the built binary as the server (and
//! through a small faulty proxy, and through Debian's tinyproxy).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::external::{free_port, need};
use crate::helpers::{all_messages, spawn_binary, ssechat_command, token, BinApp, WAIT};

/// The binary as a client, with nothing from the developer's environment
/// that would change where it connects or who it is.
fn client(args: &[&str]) -> Command {
    let mut cmd = ssechat_command();
    cmd.args(args);
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A server with its history in memory and no rate limit.
fn server(extra: &[&str]) -> BinApp {
    let mut args = vec!["--db", ":memory:", "--post-rate", "0", "--retry-ms", "200"];
    args.extend_from_slice(extra);
    spawn_binary(&args)
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs a client to its end (bounded), with `stdin` as its input.
fn run(mut cmd: Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the ssechat binary starts");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let out = read_all(child.stdout.take().unwrap());
    let err = read_all(child.stderr.take().unwrap());
    let code = wait_exit(&mut child, WAIT);
    writer.join().unwrap();
    Output {
        code,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// The exit code, within `within` (else the child is killed and the test
/// fails).
fn wait_exit(child: &mut Child, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the client did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM");
}

/// A running `ssechat listen`: its stdout lines as they come, its stderr
/// kept.
struct Listener {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Listener {
    /// Starts `listen args…` and waits until it is connected (its
    /// `>> listening to` notice), so what is sent next is live for it.
    fn start(mut cmd: Command) -> Listener {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the ssechat binary starts");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let (ready_tx, ready) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if line.starts_with(">> listening to") {
                    let _ = ready_tx.send(());
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut l = Listener {
            child,
            lines,
            stderr,
        };
        if ready.recv_timeout(WAIT).is_err() {
            let _ = l.child.kill();
            panic!("the listener did not connect: {}", l.stderr());
        }
        l
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next line it prints, within the shared bound.
    fn line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no line from the listener; stderr:\n{}", self.stderr()))
    }

    fn take(&self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.line()).collect()
    }

    /// Waits for the exit; returns the code and every line not yet read.
    fn finish(mut self) -> (i32, Vec<String>) {
        let code = wait_exit(&mut self.child, WAIT);
        let rest = self.lines.iter().collect();
        (code, rest)
    }
}

impl Drop for Listener {
    /// A listener runs for ever unless told otherwise: never leave one behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listen(base: &str, args: &[&str]) -> Command {
    let mut cmd = client(&["listen", "--url", base]);
    cmd.args(args);
    cmd
}

fn send(base: &str, args: &[&str]) -> Command {
    let mut cmd = client(&["send", "--url", base]);
    cmd.args(args);
    cmd
}

fn ids_and_texts(messages: &[Value]) -> (Vec<String>, Vec<String>) {
    messages
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["text"].as_str().unwrap().to_owned(),
            )
        })
        .unzip()
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

#[tokio::test]
async fn send_by_arguments_prints_the_stored_id() {
    let app = server(&[]);
    let out = run(
        send(
            &app.base,
            &["--room", "ops", "--name", "deploy", "v1.4", "is", "out"],
        ),
        "",
    );
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let stored = all_messages(&app.base, "ops").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0]["text"], "v1.4 is out",
        "the words are one message"
    );
    assert_eq!(stored[0]["name"], "deploy");
    assert_eq!(
        out.stdout,
        format!("{}\n", stored[0]["id"].as_str().unwrap())
    );
}

#[tokio::test]
async fn send_from_stdin_stores_each_line_in_order_and_prints_its_id() {
    let app = server(&[]);
    let lines: Vec<String> = (1..=30).map(|i| format!("line {i} <b>&amp;</b>")).collect();
    // Empty lines are skipped; CRLF input loses its CR.
    let input = format!("{}\n\n{}\r\n", lines[..29].join("\n"), lines[29]);
    let out = run(send(&app.base, &["--room", "logs"]), &input);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let (ids, texts) = ids_and_texts(&all_messages(&app.base, "logs").await);
    assert_eq!(texts, lines, "every line, once, in order");
    let printed: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(printed, ids, "the ids printed are the stored ids, in order");
}

#[tokio::test]
async fn a_refused_message_exits_2_with_the_servers_reason() {
    let app = server(&["--max-message-chars", "10"]);
    let out = run(send(&app.base, &["--room", "r", "far too long for it"]), "");
    assert_eq!(out.code, 2);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("400") && out.stderr.contains("at most 10 characters"),
        "the server's reason on stderr: {}",
        out.stderr
    );
    // From stdin the other lines still go, and the run still says 2.
    let out = run(
        send(&app.base, &["--room", "r"]),
        "ok 1\nfar too long for it\nok 2\n",
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("line 2 refused"), "{}", out.stderr);
    let (ids, texts) = ids_and_texts(&all_messages(&app.base, "r").await);
    assert_eq!(texts, ["ok 1", "ok 2"]);
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), ids);
}

#[test]
fn an_unreachable_server_exits_1() {
    // A port nobody listens on.
    let base = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = run(send(&base, &["--retry-for", "1", "hello"]), "");
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    assert!(out.stderr.contains("refused"), "says why: {}", out.stderr);
    assert!(
        out.stderr.contains("retrying for up to 1 s"),
        "says it retries, before giving up: {}",
        out.stderr
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it retried before giving up"
    );
}

#[tokio::test]
async fn listen_prints_name_colon_text_and_me_for_own_messages() {
    let app = server(&[]);
    let me = token();
    let l = Listener::start(listen(
        &app.base,
        &["--room", "t", "--client", &me, "--count", "3"],
    ));
    for (who, name, text) in [
        (None, "alice", "hello"),
        (Some(&me), "bob", "two\nlines"),
        (None, "carol", "a\r\nb\rc"),
    ] {
        let mut cmd = send(&app.base, &["--room", "t", "--name", name, text]);
        if let Some(t) = who {
            cmd.env("SSECHAT_CLIENT", t);
        }
        assert_eq!(run(cmd, "").code, 0);
    }
    let (code, lines) = l.finish();
    assert_eq!(code, 0, "--count 3 exits 0");
    assert_eq!(
        lines,
        [
            "alice: hello",
            "me: two",
            "  lines",
            "carol: a",
            "  b",
            "  c"
        ]
    );
}

#[tokio::test]
async fn listen_json_prints_each_message_event_as_one_line() {
    let app = server(&[]);
    let me = token();
    let l = Listener::start(listen(
        &app.base,
        &["--room", "j", "--json", "--client", &me],
    ));
    let mut own = send(&app.base, &["--room", "j", "mine\n<script>"]);
    own.env("SSECHAT_CLIENT", &me);
    assert_eq!(run(own, "").code, 0);
    assert_eq!(run(send(&app.base, &["--room", "j", "theirs"]), "").code, 0);
    let got = json_lines(&l.take(2));
    let stored = all_messages(&app.base, "j").await;
    for (g, s) in got.iter().zip(&stored) {
        for field in ["id", "room", "name", "text", "ts"] {
            assert_eq!(g[field], s[field], "{field}");
        }
    }
    assert_eq!(got[0]["me"], true);
    assert_eq!(got[1]["me"], false);
    assert_eq!(got[0]["text"], "mine\n<script>", "text exactly as sent");
}

/// A TCP relay in front of the server that the test can close to new
/// connections: while closed, the listener cannot get back in, so what is
/// posted meanwhile can only reach it by replay.
struct Relay {
    base: String,
    open: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let is_open = open.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !is_open.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees the door shut
                }
                tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        });
        Relay { base, open }
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_gets_every_message_exactly_once_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let db = db.to_str().unwrap();
    let port = free_port().to_string();
    let args = [
        "--port",
        &port,
        "--db",
        db,
        "--post-rate",
        "0",
        "--retry-ms",
        "200",
    ];
    let mut first = spawn_binary(&args);
    let base = first.base.clone();
    let relay = Relay::start(first.addr).await;
    let l = Listener::start(listen(&relay.base, &["--room", "rs", "--json"]));
    let input: String = (1..=5).map(|i| format!("before {i}\n")).collect();
    assert_eq!(run(send(&base, &["--room", "rs"]), &input).code, 0);
    let mut got = json_lines(&l.take(5));

    relay.set_open(false);
    assert_eq!(first.terminate(), Some(0), "the server stops cleanly");
    // Sent while the server is down: `send` retries until it is back.
    let mut sender = send(&base, &["--room", "rs"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = sender.stdin.take().unwrap();
    input.write_all(b"while down 1\nwhile down 2\n").unwrap();
    drop(input);
    let second = spawn_binary(&args);
    assert_eq!(second.base, base, "the same address again");
    assert_eq!(wait_exit(&mut sender, WAIT), 0, "the sender got through");
    let input: String = (1..=5).map(|i| format!("after {i}\n")).collect();
    assert_eq!(run(send(&base, &["--room", "rs"]), &input).code, 0);

    // Back in: the seven it missed come by replay, then live ones.
    relay.set_open(true);
    got.extend(json_lines(&l.take(7)));
    assert_eq!(
        run(send(&base, &["--room", "rs", "live again"]), "").code,
        0
    );
    got.extend(json_lines(&l.take(1)));
    sigterm(&l.child);
    let (code, rest) = l.finish();
    assert_eq!(code, 0);
    assert!(rest.is_empty(), "nothing twice: {rest:?}");
    let got: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let (ids, texts) = ids_and_texts(&all_messages(&base, "rs").await);
    assert_eq!(texts.len(), 13, "nothing doubled by the sender: {texts:?}");
    assert_eq!(got, ids, "every message, once, in order");
}

#[tokio::test]
async fn state_file_makes_a_second_listener_resume_where_the_first_stopped() {
    let app = server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("last-id");
    let state_arg = state.to_str().unwrap();
    let args = ["--room", "st", "--state", state_arg, "--json"];

    let mut a: Vec<&str> = args.to_vec();
    a.extend(["--count", "3"]);
    let first = Listener::start(listen(&app.base, &a));
    let input: String = (1..=5).map(|i| format!("m{i}\n")).collect();
    assert_eq!(run(send(&app.base, &["--room", "st"]), &input).code, 0);
    let (code, seen) = first.finish();
    assert_eq!(code, 0);
    let seen = json_lines(&seen);
    assert_eq!(seen.len(), 3, "--count 3");
    let kept = std::fs::read_to_string(&state).unwrap();
    assert_eq!(kept.trim(), seen[2]["id"].as_str().unwrap());

    let mut a: Vec<&str> = args.to_vec();
    a.extend(["--count", "2"]);
    let second = Listener::start(listen(&app.base, &a));
    let (code, rest) = second.finish();
    assert_eq!(code, 0);
    let texts: Vec<_> = json_lines(&rest)
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, ["m4", "m5"], "resumed after m3, nothing twice");
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "no temporary file left behind");
}

#[tokio::test]
async fn exec_runs_once_per_message_in_order_with_the_json_on_stdin() {
    let app = server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("exec.log");
    let cmd = format!(
        "{{ cat; echo \"$SSECHAT_MSG_ID $SSECHAT_MSG_NAME $SSECHAT_MSG_TEXT\"; }} >> '{}'",
        log.display()
    );
    let l = Listener::start(listen(
        &app.base,
        &["--room", "x", "--json", "--count", "4", "--exec", &cmd],
    ));
    let input: String = (1..=4).map(|i| format!("job {i}\n")).collect();
    assert_eq!(
        run(send(&app.base, &["--room", "x", "--name", "ci"]), &input).code,
        0
    );
    let (code, printed) = l.finish();
    assert_eq!(code, 0);
    let log = std::fs::read_to_string(&log).unwrap();
    let mut expected = String::new();
    for (json, m) in printed.iter().zip(json_lines(&printed)) {
        expected.push_str(&format!(
            "{json}\n{} ci {}\n",
            m["id"].as_str().unwrap(),
            m["text"].as_str().unwrap()
        ));
    }
    assert_eq!(printed.len(), 4);
    assert_eq!(
        log, expected,
        "one run per message, in order, JSON on stdin"
    );
}

#[tokio::test]
async fn sigterm_finishes_the_message_in_hand_then_exits_0() {
    let app = server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // The command holds the message until the test lets it go, so the
    // signal surely arrives while the message is in hand.
    let cmd = format!(
        "touch '{d}/started'; while [ ! -e '{d}/go' ]; do sleep 0.02; done; cat > '{d}/done'"
    );
    let state = dir.path().join("state");
    let l = Listener::start(listen(
        &app.base,
        &[
            "--room",
            "s",
            "--json",
            "--exec",
            &cmd,
            "--state",
            state.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        run(send(&app.base, &["--room", "s", "in hand"]), "").code,
        0
    );
    let printed = l.line();
    let started = dir.path().join("started");
    let deadline = Instant::now() + WAIT;
    while !started.exists() {
        assert!(Instant::now() < deadline, "--exec did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    sigterm(&l.child);
    std::fs::write(dir.path().join("go"), "").unwrap();
    let stderr = l.stderr.clone();
    let (code, rest) = l.finish();
    assert_eq!(code, 0, "stderr: {}", stderr.lock().unwrap());
    assert!(rest.is_empty());
    let m: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("done")).unwrap(),
        format!("{printed}\n"),
        "the command ran to its end"
    );
    assert_eq!(
        std::fs::read_to_string(&state).unwrap().trim(),
        m["id"].as_str().unwrap(),
        "the state was written"
    );
}

/// Between client and server: the first POST is passed on (and stored)
/// but its answer is replaced by `503` with `Retry-After: 1`, as if the
/// reply had been lost; every later request is passed on untouched.
async fn lossy_proxy(upstream: String) -> (String, Arc<Mutex<Vec<u16>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let posts = Arc::new(Mutex::new(Vec::new()));
    let seen = posts.clone();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (http, seen, upstream) = (http.clone(), seen.clone(), upstream.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let head_end = loop {
                    let mut chunk = [0u8; 4096];
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let header = |name: &str| {
                    head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                    })
                };
                let len: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
                while buf.len() < head_end + len {
                    let mut chunk = [0u8; 4096];
                    let n = sock.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "body cut short");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let path = head.split(' ').nth(1).unwrap().to_owned();
                assert!(head.starts_with("POST "), "only POSTs expected: {head}");
                let res = http
                    .post(format!("{upstream}{path}"))
                    .header("content-type", header("content-type").unwrap())
                    .header("x-chat-client", header("x-chat-client").unwrap())
                    .body(buf[head_end..head_end + len].to_vec())
                    .send()
                    .await
                    .unwrap();
                let (status, body) = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(res.status().as_u16());
                    if seen.len() == 1 {
                        (None, r#"{"error":"server is shutting down"}"#.to_owned())
                    } else {
                        (Some(res.status()), String::new())
                    }
                };
                let (line, extra, body) = match status {
                    None => (
                        "503 Service Unavailable".to_owned(),
                        "Retry-After: 1\r\n",
                        body,
                    ),
                    Some(s) => (s.to_string(), "", res.text().await.unwrap()),
                };
                let reply = format!(
                    "HTTP/1.1 {line}\r\n{extra}content-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (base, posts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_after_503_is_stored_once() {
    let app = server(&[]);
    let (proxy, upstream_statuses) = lossy_proxy(app.base.clone()).await;
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        run(send(&proxy, &["--room", "re", "exactly once"]), "")
    })
    .await
    .unwrap();
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(
        *upstream_statuses.lock().unwrap(),
        [201, 200],
        "sent twice: stored, then recognised as the same message"
    );
    let stored = all_messages(&app.base, "re").await;
    assert_eq!(stored.len(), 1, "stored once: {stored:?}");
    assert_eq!(out.stdout.trim(), stored[0]["id"].as_str().unwrap());
}

/// Debian's tinyproxy on a free loopback port, logging each request.
struct Tinyproxy {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    fn start(program: &Path) -> Tinyproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("tinyproxy.log");
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 20\n\
                 LogFile \"{}\"\nLogLevel Info\nPidFile \"{}\"\nAllow 127.0.0.1\n",
                log.display(),
                dir.path().join("tinyproxy.pid").display()
            ),
        )
        .unwrap();
        let child = Command::new(program)
            .args(["-d", "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy starts");
        crate::external::wait_listening(port, "tinyproxy", WAIT);
        Tinyproxy {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn send_and_listen_go_through_a_forward_proxy_from_the_environment() {
    let Some(programs) = need(
        "send_and_listen_go_through_a_forward_proxy_from_the_environment",
        &["tinyproxy"],
    ) else {
        return;
    };
    let app = server(&[]);
    let proxy = Tinyproxy::start(&programs[0]);
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);

    let mut cmd = listen(&app.base, &["--room", "px", "--count", "2"]);
    cmd.env("HTTP_PROXY", &proxy_url);
    let l = Listener::start(cmd);
    // Lower case, as curl reads it.
    let mut cmd = send(
        &app.base,
        &["--room", "px", "--name", "far", "through the proxy"],
    );
    cmd.env("http_proxy", &proxy_url);
    assert_eq!(run(cmd, "").code, 0);
    // NO_PROXY: a proxy that is not there is not used for 127.0.0.1.
    let mut cmd = send(&app.base, &["--room", "px", "--name", "near", "direct"]);
    cmd.env("HTTP_PROXY", format!("http://127.0.0.1:{}", free_port()));
    cmd.env("NO_PROXY", "localhost,127.0.0.1");
    let direct = run(cmd, "");
    assert_eq!(direct.code, 0, "stderr: {}", direct.stderr);

    let (code, lines) = l.finish();
    assert_eq!(code, 0);
    assert_eq!(lines, ["far: through the proxy", "near: direct"]);
    let log = proxy.requests();
    let target = app.base.clone();
    for req in [
        format!("GET {target}/chat/events?room=px"),
        format!("POST {target}/chat/messages"),
    ] {
        assert!(log.contains(&req), "tinyproxy saw {req}:\n{log}");
    }
    assert_eq!(
        log.matches("POST ").count(),
        1,
        "only the first send went through the proxy:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_event_is_cut_off_and_the_listener_reconnects() {
    // A hostile "server": the first stream sends an event that never ends
    // (2 MiB of data lines and no blank line); the second a proper one.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                if sock.read(&mut b).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(b[0]);
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).to_lowercase());
            let _ = sock
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                      cache-control: no-cache\r\n\r\nretry: 100\n\n",
                )
                .await;
            if n == 0 {
                let line = format!("data: {}\n", "a".repeat(1000));
                for _ in 0..2048 {
                    if sock.write_all(line.as_bytes()).await.is_err() {
                        break;
                    }
                }
            } else {
                let event = "event: message\nid: 7\ndata: {\"id\":\"7\",\"room\":\"lobby\",\
                             \"name\":\"bob\",\"text\":\"fine\",\"ts\":1,\"me\":false}\n\n";
                let _ = sock.write_all(event.as_bytes()).await;
            }
            tokio::spawn(async move {
                let mut sink = [0u8; 1024];
                while sock.read(&mut sink).await.is_ok_and(|n| n > 0) {}
            });
        }
    });
    let out = tokio::task::spawn_blocking(move || {
        run(listen(&base, &["--since", "5", "--count", "1"]), "")
    })
    .await
    .unwrap();
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert!(out.stderr.contains("over 1 MiB"), "{}", out.stderr);
    assert_eq!(out.stdout, "bob: fine\n");
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 2);
    assert!(heads[1].contains("last-event-id: 5\r\n"), "{}", heads[1]);
}

/// A private CA and a certificate for 127.0.0.1 signed by it (openssl),
/// and nginx serving HTTPS with it in front of `upstream`.
struct HttpsFront {
    child: Child,
    base: String,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl HttpsFront {
    fn start(openssl: &Path, nginx: &Path, upstream: std::net::SocketAddr) -> HttpsFront {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ossl = |args: &[&str]| {
            let out = Command::new(openssl)
                .current_dir(d)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", "/CN=ssechat test CA"];
        args.extend(ec);
        args.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        ossl(&args);
        let mut args = vec!["req", "-subj", "/CN=127.0.0.1"];
        args.extend(ec);
        args.extend(["-keyout", "srv.key", "-out", "srv.csr"]);
        ossl(&args);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        ossl(&[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "srv.pem",
        ]);
        let port = free_port();
        let dd = d.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dd}/nginx.pid;\n\
             error_log stderr warn;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dd}/cb;\n  \
             proxy_temp_path {dd}/px;\n  fastcgi_temp_path {dd}/fc;\n  \
             uwsgi_temp_path {dd}/uw;\n  scgi_temp_path {dd}/sc;\n  \
             server {{\n    listen 127.0.0.1:{port} ssl;\n    \
             ssl_certificate {dd}/srv.pem;\n    ssl_certificate_key {dd}/srv.key;\n    \
             location / {{\n      proxy_pass http://{upstream};\n      \
             proxy_http_version 1.1;\n      proxy_buffering off;\n    }}\n  }}\n}}\n"
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let child = Command::new(nginx)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-p")
            .arg(d)
            .args(["-e", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        crate::external::wait_listening(port, "nginx", WAIT);
        HttpsFront {
            child,
            base: format!("https://127.0.0.1:{port}"),
            ca: d.join("ca.pem"),
            _dir: dir,
        }
    }
}

impl Drop for HttpsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn https_with_a_private_ca_works_with_ca_and_fails_fast_without() {
    let test = "https_with_a_private_ca_works_with_ca_and_fails_fast_without";
    let Some(programs) = need(test, &["openssl", "nginx"]) else {
        return;
    };
    let app = server(&[]);
    let front = HttpsFront::start(&programs[0], &programs[1], app.addr);
    let ca = front.ca.to_str().unwrap();

    let started = Instant::now();
    let out = run(send(&front.base, &["--room", "tls", "untrusted"]), "");
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("certificate"), "{}", out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no retries for a bad certificate"
    );

    let l = Listener::start(listen(
        &front.base,
        &["--room", "tls", "--ca", ca, "--count", "1"],
    ));
    let out = run(
        send(&front.base, &["--room", "tls", "--ca", ca, "over TLS"]),
        "",
    );
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let (code, lines) = l.finish();
    assert_eq!(code, 0);
    assert_eq!(lines.len(), 1);
    assert!(lines[0].ends_with(": over TLS"), "{lines:?}");
    let stored = all_messages(&app.base, "tls").await;
    assert_eq!(stored.len(), 1, "the untrusted attempt sent nothing");
}
