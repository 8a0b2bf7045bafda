//! The page people use, in Chromium: it runs under its CSP, links are safe,
//! a hidden tab counts unread messages in its title, who is here and who
//! is typing show and clear, tabs work without sharing; screenshots at
//! desktop and phone widths; the first load's size on the wire.

use std::io::Read as _;
use std::time::Duration;

use serde_json::{json, Value};

use super::{browser, open_chat, target_dir, type_and_send, wait_online, wait_state, BW, ROWS_JS};
use crate::external::{BrowserOpts, Session};
use crate::helpers::{metric_value, spawn_app, spawn_app_with, token, TestApp};

/// Installed before any page script runs: records CSP violations (what the
/// console would report), uncaught errors, and what the page logs.
const WATCH_JS: &str = r#"
window.__csp = []; window.__errors = []; window.__console = [];
document.addEventListener('securitypolicyviolation', (e) =>
  window.__csp.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + e.sourceFile + ':' + e.lineNumber));
window.addEventListener('error', (e) => window.__errors.push(String(e.message)));
window.addEventListener('unhandledrejection', (e) => window.__errors.push(String(e.reason)));
for (const k of ['warn', 'error']) {
  const orig = console[k].bind(console);
  console[k] = (...a) => { window.__console.push(k + ': ' + a.map(String).join(' ')); orig(...a); };
}
"#;

async fn watch(s: &Session) {
    s.cdp(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({ "source": WATCH_JS }),
    )
    .await;
}

/// What the watcher saw: CSP violations, errors, console warnings.
async fn watched(s: &Session) -> Value {
    s.execute(
        "return {csp: window.__csp, errors: window.__errors, console: window.__console};",
        json!([]),
    )
    .await
}

/// Minimises (hidden) or restores (visible) the browser window.
async fn set_hidden(s: &Session, hidden: bool) {
    let cmd = if hidden {
        "/window/minimize"
    } else {
        "/window/maximize"
    };
    s.try_cmd(reqwest::Method::POST, cmd, Some(json!({})))
        .await
        .expect("window command");
    let want = if hidden { "hidden" } else { "visible" };
    s.wait_js(
        &format!("the page to be {want}"),
        BW,
        "return {ok: document.visibilityState === arguments[0], now: document.visibilityState};",
        json!([want]),
    )
    .await;
}

async fn wait_text(s: &Session, what: &str, id: &str, want: &str) -> Value {
    s.wait_js(
        what,
        BW,
        "const e = document.getElementById(arguments[0]);
         return {ok: !!e && e.textContent === arguments[1], now: e && e.textContent};",
        json!([id, want]),
    )
    .await
}

async fn who_names(s: &Session) -> Vec<String> {
    let v = s
        .execute(
            "return Array.from(document.querySelectorAll('#who-list li')).map(l => l.firstChild.textContent);",
            json!([]),
        )
        .await;
    serde_json::from_value(v).unwrap()
}

async fn wait_who(s: &Session, who: &str, names: &[&str]) {
    s.wait_js(
        &format!("{who}: who is here = {names:?}"),
        BW,
        "const shown = Array.from(document.querySelectorAll('#who-list li')).map(l => l.firstChild.textContent);
         const panel = document.getElementById('who');
         return {ok: !panel.hidden && JSON.stringify(shown) === JSON.stringify(arguments[0]), shown};",
        json!([names]),
    )
    .await;
}

async fn post_typing(app: &TestApp, client: &str, room: &str, name: &str) {
    let res = app
        .http
        .post(app.url("/chat/typing"))
        .header("x-chat-client", client)
        .json(&json!({"room": room, "name": name}))
        .send()
        .await
        .unwrap();
    assert!(
        res.status().is_success(),
        "POST /chat/typing: {}",
        res.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_page_runs_under_its_csp_links_are_safe_and_buttons_name_their_message() {
    let Some((_p, wd)) = browser("browser_csp_and_links").await else {
        return;
    };
    let app = spawn_app().await;
    let text = "docs: https://example.com/a?b=(1). not links: javascript:alert(1) \
                data:text/html,<b>x</b> ftp://files.example <a href=x>y</a>";
    let send = || app.post_json(None, json!({"room": "c1", "name": "eve", "text": text}));
    assert_eq!(send().await.status(), 201);
    let s = wd.session(BrowserOpts::default()).await;
    watch(&s).await;
    open_chat(&s, &app.url("/chat?room=c1")).await;
    wait_state(&s, "page", "connected", BW).await;
    assert_eq!(send().await.status(), 201, "and once live");
    let links = s
        .wait_js(
            "both messages with their links",
            BW,
            "const rows = Array.from(document.querySelectorAll('#messages li.msg .msg-text'));
             const out = rows.map(r => ({text: r.textContent,
               links: Array.from(r.querySelectorAll('a')).map(a => ({href: a.getAttribute('href'), rel: a.rel, target: a.target, text: a.textContent}))}));
             return {ok: out.length === 2, out,
                     elements: document.querySelectorAll('#messages b, #messages .msg-text a:not(.msg-link)').length};",
            json!([]),
        )
        .await;
    for row in links["out"].as_array().unwrap() {
        assert_eq!(row["text"], text, "the text reads exactly as sent");
        assert_eq!(
            row["links"],
            json!([{"href": "https://example.com/a?b=(1)", "rel": "noopener noreferrer nofollow",
                    "target": "_blank", "text": "https://example.com/a?b=(1)"}]),
            "one link, the https one; javascript:, data: and ftp: stay text"
        );
    }
    assert_eq!(links["elements"], 0, "no element made from the text's HTML");

    // A message the server refuses: its buttons say which message they act on.
    s.execute(
        "document.getElementById('name').value = 'bad\\u0001name';",
        json!([]),
    )
    .await;
    type_and_send(&s, "refused because of my name").await;
    let labels = s
        .wait_js(
            "the refused message's buttons",
            BW,
            "const b = Array.from(document.querySelectorAll('#messages li.failed button'));
             return {ok: b.length === 2, labels: b.map(x => x.getAttribute('aria-label'))};",
            json!([]),
        )
        .await;
    assert_eq!(
        labels["labels"],
        json!([
            "Edit unsent message “refused because of my name”",
            "Dismiss unsent message “refused because of my name”"
        ])
    );
    let seen = watched(&s).await;
    assert_eq!(seen["csp"], json!([]), "no CSP violation: {seen}");
    assert_eq!(seen["errors"], json!([]), "no uncaught error: {seen}");
    let inline = s
        .execute(
            // (The text box's height is set through CSSOM, which CSP allows.)
            "return document.querySelectorAll('script:not([src]), style').length",
            json!([]),
        )
        .await;
    assert_eq!(inline, 0, "nothing inline in the page");
    s.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_hidden_tab_counts_unread_in_its_title_and_marks_where_they_start() {
    let Some((_p, wd)) = browser("browser_hidden_tab_title").await else {
        return;
    };
    let app = spawn_app().await;
    app.send(None, "c2", "read before").await;
    let s = wd.session(BrowserOpts::default()).await;
    open_chat(&s, &app.url("/chat?room=c2")).await;
    wait_state(&s, "page", "connected", BW).await;
    assert_eq!(
        s.execute("return document.title", json!([])).await,
        "#c2 — ssechat"
    );

    set_hidden(&s, true).await;
    for i in 1..=3 {
        app.send(None, "c2", &format!("missed {i}")).await;
    }
    s.wait_js(
        "the title to count 3 unread",
        BW,
        "return {ok: document.title === '(3) #c2 — ssechat', title: document.title};",
        json!([]),
    )
    .await;
    let marker = s
        .execute(
            "const m = document.querySelector('#messages .unread-marker');
             return m && m.nextElementSibling.querySelector('.msg-text').textContent;",
            json!([]),
        )
        .await;
    assert_eq!(
        marker, "missed 1",
        "the 'new messages' marker sits before the first missed"
    );

    set_hidden(&s, false).await;
    s.wait_js(
        "the count to go when the tab is seen",
        BW,
        "return {ok: document.title === '#c2 — ssechat' && window.ssechat.unread === 0, title: document.title};",
        json!([]),
    )
    .await;
    s.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_who_is_here_and_who_is_typing_show_and_clear() {
    let Some((_p, wd)) = browser("browser_who_and_typing").await else {
        return;
    };
    let app = spawn_app_with(&["--post-rate", "0"]).await;
    // Alice was here before the page opened (a script with a stream).
    let alice = token();
    let _alice_stream = app.subscribe("c3", &alice, "alice").await;
    let (d, e) = tokio::join!(
        wd.session(BrowserOpts::default()),
        wd.session(BrowserOpts::default())
    );
    open_chat(&d, &app.url("/chat?room=c3&name=dana")).await;
    wait_state(&d, "dana", "connected", BW).await;
    wait_who(&d, "dana", &["alice", "dana"]).await;
    let you = d
        .execute(
            "return Array.from(document.querySelectorAll('#who-list li')).map(l => l.textContent)",
            json!([]),
        )
        .await;
    assert_eq!(you, json!(["alice", "dana (you)"]));

    open_chat(&e, &app.url("/chat?room=c3&name=erin")).await;
    wait_state(&e, "erin", "connected", BW).await;
    wait_who(&d, "dana", &["alice", "dana", "erin"]).await;
    wait_online(&d, "dana", 3).await;

    // Erin types: dana sees it, then erin's message clears it.
    let t = e.find("#text").await;
    e.send_keys(&t, "hello da").await;
    wait_text(&d, "dana sees erin typing", "typing", "erin is typing…").await;
    let live = d
        .execute(
            "const t = document.getElementById('typing');
             return t.closest('[aria-live]') === null && !t.hasAttribute('role');",
            json!([]),
        )
        .await;
    assert_eq!(live, true, "typing is not announced to screen readers");
    e.send_keys(&t, &format!("na{}", crate::external::KEY_ENTER))
        .await;
    wait_text(&d, "erin's message clears her typing", "typing", "").await;

    // A typist who stops: the notice goes by itself (5 s), and two read as two.
    post_typing(&app, &alice, "c3", "alice").await;
    wait_text(&d, "dana sees alice typing", "typing", "alice is typing…").await;
    post_typing(&app, &token(), "c3", "bob").await;
    wait_text(&d, "two typists", "typing", "alice and bob are typing…").await;
    let started = tokio::time::Instant::now();
    wait_text(&d, "the typing notices expire", "typing", "").await;
    assert!(
        started.elapsed() <= Duration::from_secs(8),
        "gone after about 5 s"
    );

    e.quit().await;
    wait_who(&d, "dana", &["alice", "dana"]).await;
    let names = who_names(&d).await;
    assert_eq!(names, ["alice", "dana"]);
    d.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_tabs_that_cannot_share_each_receive_for_themselves() {
    let Some((_p, wd)) = browser("browser_tabs_without_sharing").await else {
        return;
    };
    let app = spawn_app().await;
    let url = app.url("/chat?room=c4");
    let s = wd.session(BrowserOpts::default()).await;
    // As over HTTP/2, where the page does not share: no channel between tabs.
    s.cdp(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({"source": "delete window.BroadcastChannel;"}),
    )
    .await;
    let first = s.window_handle().await;
    open_chat(&s, &url).await;
    wait_state(&s, "tab 1", "connected", BW).await;
    let second = s.new_tab().await;
    s.cdp(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({"source": "delete window.BroadcastChannel;"}),
    )
    .await;
    open_chat(&s, &url).await;
    wait_state(&s, "tab 2", "connected", BW).await;
    app.send(None, "c4", "to both tabs").await;
    for (i, t) in [&first, &second].into_iter().enumerate() {
        s.switch_to(t).await;
        let v = s
            .wait_js(
                &format!("tab {} to show the message", i + 1),
                BW,
                &format!("{ROWS_JS} return {{ok: rows.some(r => r.settled && r.line.endsWith(': to both tabs')), shared: window.ssechat.shared, leader: window.ssechat.leader}};"),
                json!([]),
            )
            .await;
        assert_eq!(v["shared"], false);
        assert_eq!(v["leader"], true, "each tab receives by itself");
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(metric_value(&metrics, "ssechat_sse_streams"), 2.0);
    s.quit().await;
}

/// A room with yesterday's and today's messages: the server stores what
/// it is sent, then yesterday's rows are moved back a day in its database.
async fn room_with_two_days(app: &TestApp, db: &std::path::Path, room: &str) {
    let yesterday = [
        (
            "alice",
            "Morning all! Has anyone tried ssechat behind the office proxy?",
        ),
        ("bob", "Yes — WebSockets are blocked here, this works fine."),
        (
            "carol",
            "The guide is at https://example.com/ssechat/proxies (see “buffering”).",
        ),
    ];
    for (name, text) in yesterday {
        app.post_json(None, json!({"room": room, "name": name, "text": text}))
            .await;
    }
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute("UPDATE messages SET ts = ts - 86400000", [])
        .unwrap();
    for (name, text) in [
        ("bob", "New day, new bugs."),
        ("alice", "Multi-line works too:\n  • first\n  • second"),
        ("carol", "<b>tags</b> show as text, & that's fine"),
    ] {
        app.post_json(None, json!({"room": room, "name": name, "text": text}))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_screenshots_desktop_and_phone_with_everything_in_view() {
    let Some((_p, wd)) = browser("browser_screenshots").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let app = spawn_app_with(&["--db", db.to_str().unwrap()]).await;
    room_with_two_days(&app, &db, "lobby").await;
    let alice = token();
    let _alice_stream = app.subscribe("lobby", &alice, "alice").await;
    let (s, other) = tokio::join!(
        wd.session(BrowserOpts::default()),
        wd.session(BrowserOpts::default())
    );
    watch(&s).await;
    open_chat(&s, &app.url("/chat?room=lobby&name=dana")).await;
    wait_state(&s, "dana", "connected", BW).await;
    open_chat(&other, &app.url("/chat?room=lobby&name=erin")).await;
    wait_who(&s, "dana", &["alice", "dana", "erin"]).await;
    type_and_send(&s, "Hi everyone, dana here.").await;
    // Dana looks away; erin writes: the marker shows where dana left off.
    set_hidden(&s, true).await;
    type_and_send(&other, "welcome dana! https://example.com/welcome").await;
    s.wait_js(
        "the title to count erin's message",
        BW,
        "return document.title.startsWith('(1) ');",
        json!([]),
    )
    .await;
    set_hidden(&s, false).await;
    s.execute("document.activeElement.blur()", json!([])).await;

    let shots = target_dir().join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let layout = r#"
const vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
const r = (sel) => document.querySelector(sel).getBoundingClientRect();
const inside = (b) => b.left >= 0 && b.top >= 0 && b.right <= vw + 0.5 && b.bottom <= vh + 0.5 && b.width > 0 && b.height > 0;
const log = r('#messages');
const last = (sel) => { const all = document.querySelectorAll(sel); return all[all.length - 1]; };
const inLog = (sel) => { const e = last(sel); if (!e) return false; const b = e.getBoundingClientRect();
  return b.top >= log.top - 1 && b.bottom <= log.bottom + 1 && b.height > 0; };
return {vw, vh, scrollW: document.documentElement.scrollWidth,
        listScrollW: document.getElementById('messages').scrollWidth,
        listW: document.getElementById('messages').clientWidth,
        text: inside(r('#text')), send: inside(r('#send')), status: inside(r('#status')),
        who: inside(r('#who')), typing: inside(r('#typing')) && document.getElementById('typing').textContent !== '',
        link: inLog('#messages a.msg-link'), day: inLog('#messages li.day'), marker: inLog('#messages .unread-marker'),
        logH: r('#messages').height, sendH: r('#send').height};
"#;
    for (file, w, h, mobile, dark) in [
        ("chat-desktop.png", 1280, 900, false, false),
        ("chat-phone.png", 390, 844, true, false),
        ("chat-phone-dark.png", 390, 844, true, true),
    ] {
        s.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": w, "height": h, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
        s.cdp(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": if dark { "dark" } else { "light" }}]}),
        )
        .await;
        s.execute(
            "document.getElementById('messages').scrollTop = 1e6",
            json!([]),
        )
        .await;
        // A typing notice lasts 5 s: renew it for each shot.
        post_typing(&app, &token(), "lobby", "alice").await;
        wait_text(&s, "alice typing", "typing", "alice is typing…").await;
        let v = s
            .wait_js(&format!("the {w}x{h} layout"), BW, layout, json!([]))
            .await;
        assert_eq!(v["vw"], w, "viewport width emulated");
        assert!(
            v["scrollW"].as_u64() <= v["vw"].as_u64(),
            "{file}: nothing overflows sideways: {v}"
        );
        assert!(
            v["listScrollW"].as_u64() <= v["listW"].as_u64(),
            "{file}: long words wrap inside the log: {v}"
        );
        for part in [
            "text", "send", "status", "who", "typing", "link", "day", "marker",
        ] {
            assert_eq!(v[part], true, "{file}: {part} in view: {v}");
        }
        assert!(
            v["logH"].as_f64().unwrap() > h as f64 * 0.35,
            "{file}: the log gets most of the height: {v}"
        );
        assert!(
            v["sendH"].as_f64().unwrap() >= 40.0,
            "{file}: the send button is a comfortable touch target: {v}"
        );
        let png = s.screenshot().await;
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(shots.join(file), png).unwrap();
    }
    eprintln!("screenshots in {}", shots.display());
    let seen = watched(&s).await;
    assert_eq!(seen["csp"], json!([]), "no CSP violation: {seen}");
    assert_eq!(seen["errors"], json!([]), "no uncaught error: {seen}");
    let foreign = s
        .execute(
            "return performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation'))
               .map(e => e.name).filter(n => new URL(n).origin !== location.origin);",
            json!([]),
        )
        .await;
    assert_eq!(foreign, json!([]), "no request leaves for another host");
    s.quit().await;
    other.quit().await;
}

/// The bytes a first visit downloads, on the wire: the page (with 50
/// messages of history) and every static file it links to.
#[tokio::test]
async fn browser_first_load_is_under_20_kb_on_the_wire() {
    let app = spawn_app().await;
    for i in 0..50 {
        app.post_json(
            None,
            json!({"room": "fl", "name": format!("user{}", i % 7),
                   "text": format!("message {i}: a line of ordinary chat, about this long")}),
        )
        .await;
    }
    let get = |path: String, accept: &'static str| {
        let http = app.http.clone();
        let url = app.url(&path);
        async move {
            let res = http
                .get(url)
                .header("accept-encoding", accept)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{path}");
            let enc = res
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_owned());
            (enc, res.bytes().await.unwrap().to_vec())
        }
    };
    let (_, page) = get("/chat?room=fl".into(), "identity").await;
    let page = String::from_utf8(page).unwrap();
    let mut links = Vec::new();
    for attr in ["href=\"", "src=\""] {
        for (at, _) in page.match_indices(attr) {
            let rest = &page[at + attr.len()..];
            let url = &rest[..rest.find('"').unwrap()];
            if url.starts_with("/static/") {
                links.push(url.to_owned());
            }
        }
    }
    for (accept, name) in [("gzip", "gzip"), ("gzip, deflate, br", "brotli")] {
        let mut total = 0;
        let mut parts = Vec::new();
        for path in std::iter::once("/chat?room=fl".to_owned()).chain(links.iter().cloned()) {
            let (enc, body) = get(path.clone(), accept).await;
            if path.starts_with("/chat") {
                assert_eq!(enc.as_deref(), Some("gzip"), "the page is gzipped");
                let mut html = String::new();
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_string(&mut html)
                    .unwrap();
                assert!(html.contains("message 49"), "the history is in the page");
            }
            parts.push(format!(
                "{} {}",
                path.rsplit('/').next().unwrap(),
                body.len()
            ));
            total += body.len();
        }
        eprintln!("first load ({name}): {total} bytes: {}", parts.join(", "));
        assert!(
            total < 20 * 1024,
            "first load with {name} under 20 KB, is {total} ({parts:?})"
        );
    }
}
