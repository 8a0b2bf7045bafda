//! The chat page in a real browser (Debian's Chromium through chromedriver),
//! directly and through nginx. Every test starts its own server, browser
//! and proxy on free loopback ports and stops them; every wait is bounded.
//! Without chromium/chromedriver/nginx the tests print `SKIPPED` and pass,
//! unless `SSECHAT_REQUIRE_EXTERNAL=1`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::external::{
    need, BrowserOpts, ChromeDriver, FixedServer, Nginx, Session, KEY_ENTER, KEY_NULL, KEY_SHIFT,
};
use crate::helpers::{metric_value, spawn_app, texts_at, TestApp};

/// Who is here, typing, unread, links, CSP, screenshots, first-load size.
mod features;

/// Longest wait for anything a page should show.
const BW: Duration = Duration::from_secs(20);

/// Browsers are heavy: a few tests at a time keep the machine responsive
/// enough for the page's own timers (a starved page looks like a broken
/// network).
static BROWSERS: Semaphore = Semaphore::const_new(3);

async fn browser(test: &str) -> Option<(SemaphorePermit<'static>, ChromeDriver)> {
    let permit = BROWSERS.acquire().await.unwrap();
    let wd = ChromeDriver::start(test).await?;
    Some((permit, wd))
}

/* ---------------- reading and driving the page ---------------- */

/// The rows of `#messages`: `line` is `name: text` (as the user reads it,
/// without the time), `settled` a message that came back from the server.
const ROWS_JS: &str = r#"
const rows = [];
for (const li of document.querySelectorAll('#messages > li')) {
  const n = li.querySelector('.msg-name'), t = li.querySelector('.msg-text');
  const msg = li.classList.contains('msg');
  rows.push({
    kind: msg ? 'msg' : (li.classList.contains('notice') ? 'notice' : 'other'),
    settled: msg && !li.matches('.pending, .sent, .failed'),
    pending: li.classList.contains('pending'),
    line: n && t ? n.textContent + ': ' + t.textContent : li.textContent,
    inner: li.innerText,
  });
}
"#;

/// Waits until every one of `lines` is shown exactly once, settled, and
/// (when `in_order`) in that order.
async fn wait_lines(s: &Session, who: &str, lines: &[String], in_order: bool) -> Value {
    let script = format!(
        "{ROWS_JS}
const want = arguments[0], ordered = arguments[1];
const msgs = rows.filter(r => r.kind === 'msg');
let ok = want.every(w => msgs.filter(r => r.line === w).length === 1
                      && msgs.find(r => r.line === w).settled);
if (ok && ordered) {{
  const idx = want.map(w => msgs.findIndex(r => r.line === w));
  ok = idx.every((v, i) => i === 0 || v > idx[i - 1]);
}}
return {{ok, rows: msgs.map(r => (r.settled ? '' : '[unsettled] ') + r.line)}};"
    );
    s.wait_js(
        &format!("{who} to show {lines:?} exactly once"),
        BW,
        &script,
        json!([lines, in_order]),
    )
    .await
}

/// How many message rows read exactly `line` (any state).
async fn count_line(s: &Session, line: &str) -> u64 {
    let script = format!(
        "{ROWS_JS} return rows.filter(r => r.kind === 'msg' && r.line === arguments[0]).length;"
    );
    s.execute(&script, json!([line])).await.as_u64().unwrap()
}

async fn wait_state(s: &Session, who: &str, state: &str, within: Duration) {
    s.wait_js(
        &format!("{who}: #status[data-state={state}]"),
        within,
        "const e = document.getElementById('status');
         return {ok: !!e && !e.hidden && e.dataset.state === arguments[0], state: e && e.dataset.state};",
        json!([state]),
    )
    .await;
}

async fn wait_online(s: &Session, who: &str, n: u32) {
    s.wait_js(
        &format!("{who}: online count {n}"),
        BW,
        "const t = document.getElementById('online').textContent.trim();
         return {ok: t === String(arguments[0]), online: t};",
        json!([n]),
    )
    .await;
}

/// Opens the chat page and waits until the script has started.
async fn open_chat(s: &Session, url: &str) {
    s.goto(url).await;
    s.wait_js(
        "the page script to start",
        BW,
        "return !!window.ssechat",
        json!([]),
    )
    .await;
}

async fn set_name(s: &Session, name: &str) {
    let e = s.find("#name").await;
    s.clear(&e).await;
    s.send_keys(&e, name).await;
}

/// Types `text` into the message box and presses Enter (keyboard only).
async fn type_and_send(s: &Session, keys: &str) {
    let t = s.find("#text").await;
    s.send_keys(&t, &format!("{keys}{KEY_ENTER}")).await;
}

async fn post(base: &str, room: &str, name: &str, text: &str) -> String {
    let res = reqwest::Client::new()
        .post(format!("{base}/chat/messages"))
        .json(&json!({"room": room, "name": name, "text": text}))
        .send()
        .await
        .expect("POST /chat/messages");
    assert_eq!(res.status(), 201, "the POST is accepted");
    let v: Value = res.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `target/` of this build (respects CARGO_TARGET_DIR).
fn target_dir() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_ssechat"));
    exe.parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/* ---------------- 1. two people chat ---------------- */

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_two_people_chat_see_me_names_online_count_and_leave() {
    let Some((_p, wd)) = browser("browser_two_people_chat").await else {
        return;
    };
    let app = spawn_app().await;
    let url = app.url("/chat?room=b1");
    let (a, b) = tokio::join!(
        wd.session(BrowserOpts::default()),
        wd.session(BrowserOpts::default())
    );

    open_chat(&a, &url).await;
    wait_state(&a, "alice", "connected", BW).await;
    set_name(&a, "alice").await;
    wait_online(&a, "alice", 1).await;
    open_chat(&b, &url).await;
    set_name(&b, "bob").await;
    wait_state(&b, "bob", "connected", BW).await;
    wait_online(&a, "alice", 2).await;
    wait_online(&b, "bob", 2).await;
    let joined = a
        .wait_js(
            "alice to see a join notice",
            BW,
            &format!("{ROWS_JS} return rows.find(r => r.kind === 'notice' && / joined \\(2 online\\)$/.test(r.line));"),
            json!([]),
        )
        .await;
    assert!(joined["line"].as_str().unwrap().starts_with(">> "));

    type_and_send(&b, "hello from bob").await;
    wait_lines(&b, "bob", &lines(&["me: hello from bob"]), false).await;
    wait_lines(&a, "alice", &lines(&["bob: hello from bob"]), false).await;
    let focus = b
        .execute(
            "return document.activeElement && document.activeElement.id",
            json!([]),
        )
        .await;
    assert_eq!(
        focus, "text",
        "focus stays in the message box after sending"
    );
    let cleared = b
        .execute("return document.getElementById('text').value", json!([]))
        .await;
    assert_eq!(cleared, "", "the box is emptied after sending");

    type_and_send(&a, "hi bob").await;
    wait_lines(
        &a,
        "alice",
        &lines(&["bob: hello from bob", "me: hi bob"]),
        true,
    )
    .await;
    wait_lines(
        &b,
        "bob",
        &lines(&["me: hello from bob", "alice: hi bob"]),
        true,
    )
    .await;
    // Own rows are marked for the eye too, not only by the word "me".
    let mine = a
        .execute(
            "return Array.from(document.querySelectorAll('#messages li.msg.me')).length",
            json!([]),
        )
        .await;
    assert_eq!(
        mine, 1,
        "exactly alice's own message is marked .me for alice"
    );

    // The name is remembered for the next visit.
    b.goto(&url).await;
    b.wait_js(
        "bob's page to reload",
        BW,
        "return !!window.ssechat",
        json!([]),
    )
    .await;
    let name = b
        .execute("return document.getElementById('name').value", json!([]))
        .await;
    assert_eq!(name, "bob", "the chosen name is remembered");
    wait_lines(
        &b,
        "bob",
        &lines(&["me: hello from bob", "alice: hi bob"]),
        true,
    )
    .await;

    b.quit().await;
    wait_online(&a, "alice", 1).await;
    a.wait_js(
        "alice to see a leave notice",
        BW,
        &format!("{ROWS_JS} return rows.find(r => r.kind === 'notice' && / left \\(1 online\\)$/.test(r.line));"),
        json!([]),
    )
    .await;
    a.quit().await;
}

/* ---------------- 2. restart without loss ---------------- */

/// A server on a fixed port and database, so it can be killed and started
/// again where the pages expect it.
struct Restartable {
    _dir: tempfile::TempDir,
    port: u16,
    args: Vec<String>,
}

impl Restartable {
    /// Starts it the first time, on a free port it keeps from then on.
    async fn start_first() -> (Self, FixedServer) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("chat.db").display().to_string();
        let args = vec!["--db".into(), db, "--retry-ms".into(), "700".into()];
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = FixedServer::start_on_a_free_port(&argv).await;
        let me = Restartable {
            _dir: dir,
            port: server.port,
            args,
        };
        (me, server)
    }

    /// Starts it again, on the same port.
    async fn start(&self) -> FixedServer {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        FixedServer::start(self.port, &args).await
    }
}

/// Two separate browsers on `room`, each connected. With `set_names` they
/// take the names in `who`; otherwise `who` only labels failures.
async fn two_pages(
    wd: &ChromeDriver,
    base: &str,
    room: &str,
    who: [&str; 2],
    set_names: bool,
) -> (Session, Session) {
    let url = format!("{base}/chat?room={room}");
    let (a, b) = tokio::join!(
        wd.session(BrowserOpts::default()),
        wd.session(BrowserOpts::default())
    );
    for (s, who) in [(&a, who[0]), (&b, who[1])] {
        open_chat(s, &url).await;
        if set_names {
            set_name(s, who).await;
        }
        wait_state(s, who, "connected", BW).await;
    }
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_pages_resume_after_server_restart_with_every_message_once() {
    let Some((_p, wd)) = browser("browser_pages_resume_after_server_restart").await else {
        return;
    };
    let (server, mut srv) = Restartable::start_first().await;
    let (a, b) = two_pages(&wd, &srv.base, "b2", ["a", "b"], false).await;
    post(&srv.base, "b2", "carol", "before the outage").await;
    let before = lines(&["carol: before the outage"]);
    wait_lines(&a, "a", &before, false).await;
    wait_lines(&b, "b", &before, false).await;

    srv.kill9();
    wait_state(&a, "a", "reconnecting", BW).await;
    wait_state(&b, "b", "reconnecting", BW).await;
    // A real outage: several reconnect attempts fail (each ~0.7 s apart). That
    // is no reason to give up on SSE: the server, not the path to it, is down.
    for (s, who) in [(&a, "a"), (&b, "b")] {
        s.wait_js(
            &format!("{who}: several failed reconnect attempts"),
            BW,
            "return {ok: window.ssechat.failures >= 4, failures: window.ssechat.failures, mode: window.ssechat.mode};",
            json!([]),
        )
        .await;
        let state = s
            .execute(
                "return document.getElementById('status').dataset.state",
                json!([]),
            )
            .await;
        assert_eq!(
            state, "reconnecting",
            "{who} says it is reconnecting during the outage"
        );
    }

    srv = server.start().await;
    // Posted at once, before the pages are back: they must catch up on them.
    post(&srv.base, "b2", "carol", "during 1").await;
    post(&srv.base, "b2", "dave", "during 2").await;
    wait_state(&a, "a", "connected", BW).await;
    wait_state(&b, "b", "connected", BW).await;
    post(&srv.base, "b2", "carol", "after 1").await;
    post(&srv.base, "b2", "dave", "after 2").await;

    let all = lines(&[
        "carol: before the outage",
        "carol: during 1",
        "dave: during 2",
        "carol: after 1",
        "dave: after 2",
    ]);
    wait_lines(&a, "a", &all, true).await;
    wait_lines(&b, "b", &all, true).await;
    // A duplicate would arrive before a later message: check again behind a marker.
    post(&srv.base, "b2", "carol", "marker").await;
    let mut with_marker = all.clone();
    with_marker.push("carol: marker".into());
    wait_lines(&a, "a", &with_marker, true).await;
    wait_lines(&b, "b", &with_marker, true).await;
    for s in [&a, &b] {
        let mode = s.execute("return window.ssechat.mode", json!([])).await;
        assert_eq!(
            mode, "sse",
            "back on SSE after the outage, not stuck on long-poll"
        );
    }
    a.quit().await;
    b.quit().await;
}

/* ---------------- 3. typed while the server is down ---------------- */

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_message_typed_while_server_down_arrives_once_for_everyone() {
    let Some((_p, wd)) = browser("browser_message_typed_while_server_down").await else {
        return;
    };
    let (server, mut srv) = Restartable::start_first().await;
    let (a, b) = two_pages(&wd, &srv.base, "b3", ["alice", "bob"], true).await;

    srv.kill9();
    wait_state(&a, "alice", "reconnecting", BW).await;
    type_and_send(&a, "typed while down").await;
    type_and_send(&a, "and a second one").await;
    let pending = a
        .wait_js(
            "alice's messages to show as pending",
            BW,
            &format!("{ROWS_JS} return rows.filter(r => r.pending).length === 2;"),
            json!([]),
        )
        .await;
    assert_eq!(pending, true);
    let queued = a
        .execute("return window.ssechat.queue.map(q => q.text)", json!([]))
        .await;
    assert_eq!(queued, json!(["typed while down", "and a second one"]));
    // How a user sees it (looked at by hand; not compared).
    let dir = target_dir().join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("chat-offline-pending.png"), a.screenshot().await).unwrap();

    srv = server.start().await;
    let mine = lines(&["me: typed while down", "me: and a second one"]);
    let theirs = lines(&["alice: typed while down", "alice: and a second one"]);
    wait_lines(&a, "alice", &mine, true).await;
    wait_lines(&b, "bob", &theirs, true).await;
    // Retries used the same client_msg_id: stored once each, in order.
    post(&srv.base, "b3", "carol", "marker").await;
    wait_lines(
        &b,
        "bob",
        &lines(&["alice: and a second one", "carol: marker"]),
        true,
    )
    .await;
    wait_lines(
        &a,
        "alice",
        &lines(&["me: and a second one", "carol: marker"]),
        true,
    )
    .await;
    assert_eq!(count_line(&a, "me: typed while down").await, 1);
    assert_eq!(
        texts_at(&srv.base, "b3").await,
        vec!["typed while down", "and a second one", "marker"]
    );
    let left = a
        .execute("return window.ssechat.queue.length", json!([]))
        .await;
    assert_eq!(left, 0, "nothing left in the outgoing queue");
    a.quit().await;
    b.quit().await;
}

/* ---------------- 4. without JavaScript ---------------- */

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_without_javascript_the_form_posts_and_the_page_shows_it() {
    let Some((_p, wd)) = browser("browser_without_javascript").await else {
        return;
    };
    let app = spawn_app().await;
    let url = app.url("/chat?room=b4");
    let s = wd
        .session(BrowserOpts {
            javascript: false,
            ..BrowserOpts::default()
        })
        .await;
    s.goto(&url).await;
    let status = s.find("#status").await;
    assert!(
        s.attribute(&status, "hidden").await.is_some(),
        "the script did not run (JavaScript is off), so the status stays hidden"
    );
    let text = s.find("#text").await;
    s.send_keys(&text, "sent without javascript").await;
    let send = s.find("#send").await;
    s.click(&send).await;

    // The browser followed the 303 back to the page, which now shows it.
    let deadline = tokio::time::Instant::now() + BW;
    loop {
        let rows = s
            .try_cmd_elements_text("#messages li.msg .msg-text")
            .await
            .unwrap_or_default();
        if rows.iter().any(|t| t == "sent without javascript") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the message did not show after the form post (rows: {rows:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let here = s.current_url().await;
    assert!(
        here.ends_with("/chat?room=b4"),
        "redirected back to the room page, not left on {here}"
    );
    assert_eq!(app.texts("b4").await, vec!["sent without javascript"]);
    // What the browser got from the POST: a 303 to the room.
    let res = app
        .http
        .post(app.url("/chat/messages"))
        .header("accept", "text/html,application/xhtml+xml")
        .form(&[("room", "b4"), ("text", "again")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/chat?room=b4");
    s.quit().await;
}

/* ---------------- 5. through nginx ---------------- */

/// A chat page opened through an nginx of our own in front of a fresh
/// server, once the page reached `state`. The fields keep everything alive.
struct ThroughNginx {
    s: Session,
    app: TestApp,
    _proxy: Nginx,
    _wd: (SemaphorePermit<'static>, ChromeDriver),
}

async fn through_nginx(
    test: &str,
    buffering: bool,
    room: &str,
    state: &str,
) -> Option<ThroughNginx> {
    let nginx = need(test, &["nginx"])?;
    let wd = browser(test).await?;
    let app = spawn_app().await;
    let proxy = Nginx::start(&nginx[0], &app.addr.to_string(), buffering).await;
    let s = wd.1.session(BrowserOpts::default()).await;
    open_chat(&s, &format!("{}/chat?room={room}", proxy.base)).await;
    wait_state(&s, "page", state, BW).await;
    Some(ThroughNginx {
        s,
        app,
        _proxy: proxy,
        _wd: wd,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_through_nginx_defaults_messages_arrive_live_over_sse() {
    let Some(ThroughNginx {
        s,
        app,
        _proxy,
        _wd,
    }) = through_nginx("browser_through_nginx_defaults", false, "b5", "connected").await
    else {
        return;
    };
    app.send(None, "b5", "live through nginx").await;
    s.wait_js(
        "the message to arrive",
        Duration::from_secs(5),
        &format!("{ROWS_JS} return rows.some(r => r.line.endsWith(': live through nginx'));"),
        json!([]),
    )
    .await;
    type_and_send(&s, "sent through nginx").await;
    wait_lines(&s, "page", &lines(&["me: sent through nginx"]), false).await;
    let (mode, state) = (
        s.execute("return window.ssechat.mode", json!([])).await,
        s.execute(
            "return document.getElementById('status').dataset.state",
            json!([]),
        )
        .await,
    );
    assert_eq!(mode, "sse", "nginx defaults pass SSE through live");
    assert_eq!(state, "connected");
    assert_eq!(
        app.texts("b5").await,
        vec!["live through nginx", "sent through nginx"]
    );
    s.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_through_buffering_nginx_the_page_falls_back_to_long_poll() {
    let Some(ThroughNginx {
        s,
        app,
        _proxy,
        _wd,
    }) = through_nginx("browser_through_buffering_nginx", true, "b5b", "fallback").await
    else {
        return;
    };
    let status = s
        .execute(
            "return document.getElementById('status').textContent",
            json!([]),
        )
        .await;
    assert!(
        status.as_str().unwrap().contains("long-poll"),
        "the page says it is on long-poll: {status}"
    );
    assert_eq!(
        s.execute("return window.ssechat.mode", json!([])).await,
        "poll"
    );
    // A long-poll is answered as soon as a message arrives: well within its 25 s.
    app.send(None, "b5b", "through the buffering proxy").await;
    s.wait_js(
        "the message to arrive by long-poll",
        Duration::from_secs(10),
        &format!("{ROWS_JS} return rows.some(r => r.settled && r.line.endsWith(': through the buffering proxy'));"),
        json!([]),
    )
    .await;
    type_and_send(&s, "sent while on long-poll").await;
    wait_lines(&s, "page", &lines(&["me: sent while on long-poll"]), false).await;
    assert_eq!(
        app.texts("b5b").await,
        vec!["through the buffering proxy", "sent while on long-poll"]
    );
    s.quit().await;
}

/* ---------------- 6. seven tabs ---------------- */

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_seven_tabs_of_one_browser_all_receive_messages() {
    let Some((_p, wd)) = browser("browser_seven_tabs").await else {
        return;
    };
    let app = spawn_app().await;
    let url = app.url("/chat?room=b6");
    let s = wd.session(BrowserOpts::default()).await;
    let mut tabs = vec![s.window_handle().await];
    open_chat(&s, &url).await;
    wait_state(&s, "tab 1", "connected", BW).await;
    for i in 2..=7 {
        tabs.push(s.new_tab().await);
        open_chat(&s, &url).await;
        wait_state(&s, &format!("tab {i}"), "connected", BW).await;
    }
    let leaders = leader_tabs(&s, &tabs).await;
    assert_eq!(leaders.len(), 1, "one tab holds the stream for all");

    app.send(None, "b6", "to every tab").await;
    every_tab_shows_once(&s, &tabs, "tab", ": to every tab").await;
    // The seventh tab (a follower) can send; every tab shows it as its own.
    s.switch_to(&tabs[6]).await;
    type_and_send(&s, "from tab seven").await;
    for (i, t) in tabs.iter().enumerate() {
        s.switch_to(t).await;
        wait_lines(
            &s,
            &format!("tab {}", i + 1),
            &lines(&["me: from tab seven"]),
            false,
        )
        .await;
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric_value(&metrics, "ssechat_sse_streams"),
        1.0,
        "seven tabs share one SSE connection"
    );

    // The tab holding the stream goes away: another one takes over.
    let leader = leader_tabs(&s, &tabs).await.pop().expect("a leader");
    s.switch_to(&leader).await;
    s.close_tab().await;
    let rest: Vec<_> = tabs.into_iter().filter(|t| *t != leader).collect();
    s.switch_to(&rest[0]).await;
    s.wait_js(
        "another tab to take the stream over",
        BW,
        "return window.ssechat.leader && document.getElementById('status').dataset.state === 'connected';",
        json!([]),
    )
    .await;
    app.send(None, "b6", "after the leader left").await;
    every_tab_shows_once(&s, &rest, "remaining tab", ": after the leader left").await;
    s.quit().await;
}

/// The tabs whose page holds the shared stream.
async fn leader_tabs(s: &Session, tabs: &[String]) -> Vec<String> {
    let mut leaders = Vec::new();
    for t in tabs {
        s.switch_to(t).await;
        if s.execute("return window.ssechat.leader", json!([])).await == true {
            leaders.push(t.clone());
        }
    }
    leaders
}

/// Waits until every tab shows exactly one settled line ending in `end`.
async fn every_tab_shows_once(s: &Session, tabs: &[String], who: &str, end: &str) {
    for (i, t) in tabs.iter().enumerate() {
        s.switch_to(t).await;
        s.wait_js(
            &format!("{who} {} to show the message", i + 1),
            BW,
            &format!("{ROWS_JS} return rows.filter(r => r.settled && r.line.endsWith(arguments[0])).length === 1;"),
            json!([end]),
        )
        .await;
    }
}

/* ---------------- 7. HTML and line breaks are text ---------------- */

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_html_and_line_breaks_render_as_text() {
    let Some((_p, wd)) = browser("browser_html_and_line_breaks").await else {
        return;
    };
    let app = spawn_app().await;
    let url = app.url("/chat?room=b7");
    let s = wd.session(BrowserOpts::default()).await;
    open_chat(&s, &url).await;
    wait_state(&s, "page", "connected", BW).await;

    let theirs = "<b>not bold</b> & <i>x</i>\nsecond line\n\n<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>";
    app.post_json(
        None,
        json!({"room": "b7", "name": "<em>eve</em>", "text": theirs}),
    )
    .await;
    // Typed by the user: Shift+Enter is a line break, Enter sends.
    type_and_send(
        &s,
        &format!("<b>mine</b>{KEY_SHIFT}{KEY_ENTER}{KEY_NULL}next line"),
    )
    .await;
    let mine = "<b>mine</b>\nnext line";

    let check = r#"
const out = [];
for (const li of document.querySelectorAll('#messages li.msg')) {
  if (li.matches('.pending, .sent')) continue;
  out.push({name: li.querySelector('.msg-name').innerText, text: li.querySelector('.msg-text').innerText, inner: li.innerText});
}
const tags = document.querySelectorAll('#messages b, #messages i, #messages em, #messages img, #messages script').length;
return {ok: out.length === 2, out, tags, pwned: window.pwned || null};
"#;
    for phase in ["live", "server-rendered"] {
        if phase == "server-rendered" {
            open_chat(&s, &url).await;
        }
        let v = s
            .wait_js(&format!("both messages ({phase})"), BW, check, json!([]))
            .await;
        let out = v["out"].as_array().unwrap();
        assert_eq!(out[0]["name"], "<em>eve</em>", "{phase}: name as text");
        assert_eq!(
            out[0]["text"], theirs,
            "{phase}: HTML and line breaks kept as text"
        );
        assert_eq!(out[1]["name"], "me");
        assert_eq!(out[1]["text"], mine, "{phase}: typed line break kept");
        let inner = out[0]["inner"].as_str().unwrap();
        assert!(inner.contains("<b>not bold</b>") && inner.contains("x</i>\nsecond line"));
        assert_eq!(v["tags"], 0, "{phase}: no element was made from user text");
        assert_eq!(v["pwned"], Value::Null, "{phase}: no user script ran");
    }
    // The line break is visible: the two-line text is taller than one line.
    let tall = s
        .execute(
            "const t = document.querySelectorAll('#messages li.msg .msg-text')[1];
             return t.getClientRects().length >= 2 || t.getBoundingClientRect().height > 1.5 * parseFloat(getComputedStyle(t).lineHeight);",
            json!([]),
        )
        .await;
    assert_eq!(
        tall, true,
        "a line break in the text starts a new line on screen"
    );
    s.quit().await;
}

/* ---------------- the page as people see it ---------------- */

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_new_messages_do_not_yank_a_reader_who_scrolled_up() {
    let Some((_p, wd)) = browser("browser_auto_scroll").await else {
        return;
    };
    let app = spawn_app().await;
    for i in 0..40 {
        app.send(None, "b8", &format!("history {i}")).await;
    }
    let s = wd
        .session(BrowserOpts {
            width: 800,
            height: 600,
            ..BrowserOpts::default()
        })
        .await;
    open_chat(&s, &app.url("/chat?room=b8")).await;
    wait_state(&s, "page", "connected", BW).await;
    const POS: &str = "const l = document.getElementById('messages');
        return {ok: true, top: l.scrollTop, gap: l.scrollHeight - l.scrollTop - l.clientHeight,
                overflow: l.scrollHeight > l.clientHeight + 100, jump: !document.getElementById('jump').hidden};";
    let v = s.execute(POS, json!([])).await;
    assert_eq!(v["overflow"], true, "enough history to scroll: {v}");
    assert!(
        v["gap"].as_f64().unwrap() <= 2.0,
        "opens at the newest message: {v}"
    );

    app.send(None, "b8", "live while at the bottom").await;
    s.wait_js(
        "the live message",
        BW,
        &format!("{ROWS_JS} return rows.some(r => r.line.endsWith(': live while at the bottom'));"),
        json!([]),
    )
    .await;
    let v = s.execute(POS, json!([])).await;
    assert!(
        v["gap"].as_f64().unwrap() <= 2.0,
        "follows new messages at the bottom: {v}"
    );

    // The reader scrolls up to read; a new message must not move the view.
    s.execute(
        "document.getElementById('messages').scrollTop = 0;",
        json!([]),
    )
    .await;
    app.send(None, "b8", "live while reading history").await;
    s.wait_js(
        "the second live message",
        BW,
        &format!(
            "{ROWS_JS} return rows.some(r => r.line.endsWith(': live while reading history'));"
        ),
        json!([]),
    )
    .await;
    let v = s.execute(POS, json!([])).await;
    assert_eq!(v["top"], 0, "the view stays where the reader is: {v}");
    assert_eq!(v["jump"], true, "a 'new messages' button appears: {v}");
    let jump = s.find("#jump").await;
    s.click(&jump).await;
    s.wait_js(
        "the jump button to go to the newest message",
        BW,
        &format!("{} ", POS.replace("ok: true", "ok: l.scrollHeight - l.scrollTop - l.clientHeight <= 2 && document.getElementById('jump').hidden")),
        json!([]),
    )
    .await;
    s.quit().await;
}
