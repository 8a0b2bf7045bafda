//! External programs for the browser and proxy tests, each started by the
//! test on a free loopback port and stopped on drop: chromedriver (with
//! Debian's Chromium), nginx, and the `ssechat` binary on a fixed port (so a
//! restarted server comes back where the pages expect it). Plus a thin
//! W3C WebDriver client over reqwest + serde_json.
//!
//! A missing program prints a loud `SKIPPED: <program> not found` and the
//! test returns, unless `SSECHAT_REQUIRE_EXTERNAL=1`, when it fails (both
//! decided by `helpers::skip`).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

/// How long starting a program or a single browser wait may take.
pub const START_WAIT: Duration = Duration::from_secs(15);

/// Where Debian puts the programs (nginx lives in sbin, often not on PATH).
const DIRS: &[&str] = &[
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/bin",
    "/sbin",
];

/// The program's path from PATH or the usual directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// All of `names`, or `None` after a loud SKIPPED line (a failure when
/// `SSECHAT_REQUIRE_EXTERNAL=1`).
pub fn need(test: &str, names: &[&str]) -> Option<Vec<PathBuf>> {
    let mut found = Vec::new();
    for name in names {
        match find_program(name) {
            Some(p) => found.push(p),
            None => {
                crate::helpers::skip(
                    test,
                    &format!(
                        "{name} not found (install it, e.g. \
                         `apt-get install chromium chromium-driver nginx-light`)"
                    ),
                );
                return None;
            }
        }
    }
    Some(found)
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded by `within`) until something listens on 127.0.0.1:`port`;
/// `what` names it in the failure.
pub fn wait_listening(port: u16, what: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} is not listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a child that was started in its own process group, with everything
/// it started (Chromium's helpers), then reaps it.
fn kill_group(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain syscalls on the group of a process this test started.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn own_group(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
}

/// Waits (bounded) until `GET url` answers 2xx: `Err` with the exit status
/// if the child exited first (for a fixed port: it was taken).
pub async fn wait_http_ok(
    url: &str,
    child: &mut Child,
    what: &str,
) -> Result<(), std::process::ExitStatus> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + START_WAIT;
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(status);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} not ready at {url} within {START_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/* ------------------------------------------------------------------ */
/* ssechat on a fixed port                                             */
/* ------------------------------------------------------------------ */

/// The built binary on a port chosen by the test, so that it can be killed
/// and restarted at the same address with the same database.
pub struct FixedServer {
    child: Child,
    pub port: u16,
    pub base: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl FixedServer {
    /// Starts `ssechat --port PORT args…` and waits for `/healthz`.
    pub async fn start(port: u16, args: &[&str]) -> FixedServer {
        match Self::try_start(port, args).await {
            Ok(server) => server,
            Err(log) => panic!("ssechat exited before it was ready on port {port}: {log:?}"),
        }
    }

    /// [`FixedServer::start`] on the first of a few free ports that stays
    /// free until the server binds it.
    pub async fn start_on_a_free_port(args: &[&str]) -> FixedServer {
        let mut last = Vec::new();
        for _ in 0..3 {
            match Self::try_start(free_port(), args).await {
                Ok(server) => return server,
                Err(log) => last = log,
            }
        }
        panic!("ssechat would not start on three free ports: {last:?}");
    }

    /// `Err` with its log if the server exited before it was ready.
    async fn try_start(port: u16, args: &[&str]) -> Result<FixedServer, Vec<String>> {
        let mut child = crate::helpers::ssechat_command()
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--post-rate", "0", "--max-streams-per-ip", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the ssechat binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let mut stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = String::new();
            let _ = stderr.read_to_string(&mut buf);
            sink.lock().unwrap().extend(buf.lines().map(str::to_owned));
        });
        let base = format!("http://127.0.0.1:{port}");
        if wait_http_ok(&format!("{base}/healthz"), &mut child, "ssechat")
            .await
            .is_err()
        {
            // The reader thread has the whole log once the pipe closes.
            let deadline = std::time::Instant::now() + START_WAIT;
            while Arc::strong_count(&log) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let lines = log.lock().unwrap().clone();
            return Err(lines);
        }
        Ok(FixedServer {
            child,
            port,
            base,
            log,
        })
    }

    /// SIGKILL: the server vanishes without a goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FixedServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/* ------------------------------------------------------------------ */
/* nginx                                                               */
/* ------------------------------------------------------------------ */

pub struct Nginx {
    child: Child,
    pub port: u16,
    pub base: String,
    _dir: TempDir,
}

impl Nginx {
    /// nginx on a free port in front of `upstream` (host:port).
    ///
    /// `force_buffering = false`: a plain `proxy_pass` with nginx's defaults
    /// (buffering on, HTTP/1.0 to the upstream; nginx honours the server's
    /// `X-Accel-Buffering: no`). `true`: buffering forced for every response
    /// with big buffers, so an SSE stream cannot get through live.
    pub async fn start(nginx: &Path, upstream: &str, force_buffering: bool) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let extra = if force_buffering {
            "proxy_ignore_headers X-Accel-Buffering;\n      proxy_buffering on;\n      \
             proxy_buffer_size 64k;\n      proxy_buffers 8 64k;\n      \
             proxy_busy_buffers_size 128k;"
        } else {
            ""
        };
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                 error_log stderr warn;\nevents {{ worker_connections 512; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/client_body;\n  \
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
                 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                 server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      \
                 proxy_pass http://{upstream};\n      {extra}\n    }}\n  }}\n}}\n"
            );
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let mut child = own_group(
                Command::new(nginx)
                    .arg("-c")
                    .arg(&conf_path)
                    .arg("-p")
                    .arg(dir.path())
                    .args(["-e", "stderr"]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx starts");
            let base = format!("http://127.0.0.1:{port}");
            // Ready when a request goes through it to the upstream.
            let http = reqwest::Client::new();
            let deadline = tokio::time::Instant::now() + START_WAIT;
            loop {
                if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
                    if r.status().is_success() {
                        return Nginx {
                            child,
                            port,
                            base,
                            _dir: dir,
                        };
                    }
                }
                if let Ok(Some(_)) = child.try_wait() {
                    let mut err = String::new();
                    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                    last_err = err;
                    break; // port taken meanwhile? try another one
                }
                if tokio::time::Instant::now() > deadline {
                    kill_group(&mut child);
                    panic!("nginx did not proxy /healthz within {START_WAIT:?}");
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        panic!("nginx would not start: {last_err}");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/* ------------------------------------------------------------------ */
/* chromedriver + a thin WebDriver client                              */
/* ------------------------------------------------------------------ */

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
pub const KEY_ENTER: &str = "\u{E007}";
pub const KEY_SHIFT: &str = "\u{E008}";
/// Releases held modifier keys.
pub const KEY_NULL: &str = "\u{E000}";

pub struct ChromeDriver {
    child: Child,
    pub base: String,
    chromium: PathBuf,
    http: reqwest::Client,
    open: Arc<Mutex<Vec<String>>>,
}

/// How a browser session starts.
#[derive(Clone, Copy)]
pub struct BrowserOpts {
    pub javascript: bool,
    pub width: u32,
    pub height: u32,
}

impl Default for BrowserOpts {
    fn default() -> Self {
        BrowserOpts {
            javascript: true,
            width: 1280,
            height: 800,
        }
    }
}

impl ChromeDriver {
    /// chromedriver on a free port, ready to create sessions; `None` (after
    /// a loud SKIPPED) when chromedriver or chromium is missing.
    pub async fn start(test: &str) -> Option<ChromeDriver> {
        let progs = need(test, &["chromedriver", "chromium"])?;
        let (driver, chromium) = (progs[0].clone(), progs[1].clone());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        for _ in 0..3 {
            let port = free_port();
            let mut child = own_group(
                Command::new(&driver)
                    .arg(format!("--port={port}"))
                    .arg("--allowed-ips=127.0.0.1"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
            let base = format!("http://127.0.0.1:{port}");
            let deadline = tokio::time::Instant::now() + START_WAIT;
            loop {
                if let Ok(r) = http.get(format!("{base}/status")).send().await {
                    if let Ok(v) = r.json::<Value>().await {
                        if v["value"]["ready"] == true {
                            return Some(ChromeDriver {
                                child,
                                base,
                                chromium,
                                http,
                                open: Arc::default(),
                            });
                        }
                    }
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile: try another
                }
                if tokio::time::Instant::now() > deadline {
                    kill_group(&mut child);
                    panic!("chromedriver not ready within {START_WAIT:?}");
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        panic!("chromedriver would not start");
    }

    /// A new browser with its own profile (its own cookies and storage).
    pub async fn session(&self, opts: BrowserOpts) -> Session {
        self.session_with_args(opts, &[]).await
    }

    /// A new browser as `session`, with more command-line flags.
    pub async fn session_with_args(&self, opts: BrowserOpts, extra: &[String]) -> Session {
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-extensions".into(),
            "--disable-default-apps".into(),
            "--password-store=basic".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--window-size={},{}", opts.width, opts.height),
        ];
        if !opts.javascript {
            args.push("--blink-settings=scriptEnabled=false".into());
        }
        args.extend_from_slice(extra);
        let mut chrome = json!({
            "binary": self.chromium.display().to_string(),
            "args": args,
        });
        if !opts.javascript {
            chrome["prefs"] = json!({"profile.managed_default_content_settings.javascript": 2});
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": chrome,
        }}});
        let res = self
            .http
            .post(format!("{}/session", self.base))
            .json(&caps)
            .send()
            .await
            .expect("POST /session");
        let v: Value = res.json().await.expect("session JSON");
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        self.open.lock().unwrap().push(id.clone());
        Session {
            http: self.http.clone(),
            url: format!("{}/session/{id}", self.base),
            id,
            open: self.open.clone(),
            _profile: profile,
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // Close the browsers politely (a blocking request: we may be
        // unwinding), then make sure nothing of ours is left running.
        let port: u16 = self.base.rsplit(':').next().unwrap().parse().unwrap();
        for id in self.open.lock().unwrap().drain(..) {
            let _ = blocking_delete(port, &format!("/session/{id}"));
        }
        kill_group(&mut self.child);
    }
}

fn blocking_delete(port: u16, path: &str) -> std::io::Result<()> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "DELETE {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    Ok(())
}

/// One browser (one WebDriver session): its own profile, any number of tabs.
pub struct Session {
    http: reqwest::Client,
    url: String,
    pub id: String,
    open: Arc<Mutex<Vec<String>>>,
    _profile: TempDir,
}

/// A WebDriver error (`{"value": {"error", "message"}}`).
#[derive(Debug)]
pub struct WdError(pub String);

impl Session {
    pub async fn try_cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WdError> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.map_err(|e| WdError(e.to_string()))?;
        let ok = res.status().is_success();
        let v: Value = res.json().await.map_err(|e| WdError(e.to_string()))?;
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(WdError(format!(
                "{}: {}",
                v["value"]["error"],
                v["value"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
            )))
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match self.try_cmd(method, path, body).await {
            Ok(v) => v,
            Err(e) => panic!("WebDriver {path}: {}", e.0),
        }
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn current_url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT_KEY].as_str().expect("element id").to_owned()
    }

    pub async fn send_keys(&self, element: &str, text: &str) {
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    pub async fn clear(&self, element: &str) {
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn click(&self, element: &str) {
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn text(&self, element: &str) -> String {
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    pub async fn attribute(&self, element: &str, name: &str) -> Option<String> {
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{element}/attribute/{name}"),
            None,
        )
        .await
        .as_str()
        .map(str::to_owned)
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns
    /// what it returns.
    pub async fn try_execute(&self, script: &str, args: Value) -> Result<Value, WdError> {
        self.try_cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Re-runs `script` until it returns something truthy, for at most
    /// `within`; returns that value or panics with the last one seen.
    pub async fn wait_js(&self, what: &str, within: Duration, script: &str, args: Value) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let last = match self.try_execute(script, args.clone()).await {
                Ok(v) if done(&v) => return v,
                Ok(v) => v,
                Err(e) => Value::String(format!("error: {}", e.0)),
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {within:?} waiting for: {what} (last: {last})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// PNG bytes of the current viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .expect("valid base64")
    }

    /// A Chrome DevTools Protocol command through chromedriver.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({"cmd": cmd, "params": params})),
        )
        .await
    }

    /// Opens a new tab, switches to it and returns its handle.
    pub async fn new_tab(&self) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/window/new",
                Some(json!({"type": "tab"})),
            )
            .await;
        let h = v["handle"].as_str().expect("window handle").to_owned();
        self.switch_to(&h).await;
        h
    }

    /// Closes the current tab (switch to another one afterwards).
    pub async fn close_tab(&self) {
        self.cmd(reqwest::Method::DELETE, "/window", None).await;
    }

    pub async fn window_handle(&self) -> String {
        self.cmd(reqwest::Method::GET, "/window", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn switch_to(&self, handle: &str) {
        self.cmd(
            reqwest::Method::POST,
            "/window",
            Some(json!({ "handle": handle })),
        )
        .await;
    }

    /// Closes the browser (all its tabs).
    pub async fn quit(self) {
        let _ = self
            .try_cmd(reqwest::Method::DELETE, "", None)
            .await
            .map_err(|e| eprintln!("closing the browser: {}", e.0));
        self.open.lock().unwrap().retain(|i| i != &self.id);
    }
}

/// A wait is over when the script returns something truthy, or an object
/// whose `ok` is truthy (the rest of it says what was seen).
fn done(v: &Value) -> bool {
    match v.get("ok") {
        Some(ok) => truthy(ok),
        None => truthy(v),
    }
}

pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

impl Session {
    /// The visible text of every element matching `css` (an empty list
    /// while the page is still loading).
    pub async fn try_cmd_elements_text(&self, css: &str) -> Result<Vec<String>, WdError> {
        let v = self
            .try_cmd(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        let mut out = Vec::new();
        for e in v.as_array().cloned().unwrap_or_default() {
            let id = e[ELEMENT_KEY].as_str().unwrap_or_default().to_owned();
            let t = self
                .try_cmd(reqwest::Method::GET, &format!("/element/{id}/text"), None)
                .await?;
            out.push(t.as_str().unwrap_or_default().to_owned());
        }
        Ok(out)
    }
}
