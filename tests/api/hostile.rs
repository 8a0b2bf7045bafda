//! Hostile clients: what one client can make the server hold is bounded,
//! one address cannot starve the others, and no one can pass for someone
//! else (SPEC "Hostile clients: every resource bounded").

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{events_at, metric_value, rss_kib, spawn_app_with, token, TestApp, WAIT};

/// An HTTP client whose connections come from `local` (127.0.0.2, ...).
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<IpAddr>().unwrap())
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// A raw connection to `app` from the loopback address `local`.
async fn connect_from(app_addr: std::net::SocketAddr, local: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(app_addr).await.unwrap()
}

/// Reads until the peer closes (or `WAIT` passes): what it sent.
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

async fn status_and_error(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let v: Value = res.json().await.unwrap_or(Value::Null);
    (status, v["error"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn names_that_pass_for_someone_else_and_weak_tokens_are_refused() {
    let app = spawn_app_with(&[]).await;
    for name in [
        "me",
        "ME",
        "Me",
        "ali\u{202E}ce",
        "al\u{200B}ice",
        "\u{FEFF}bob",
        "x\u{2066}y",
    ] {
        let res = app
            .post_json(
                Some(&token()),
                json!({"room": "s", "text": "hi", "name": name}),
            )
            .await;
        let (status, error) = status_and_error(res).await;
        assert_eq!(status, 400, "name {name:?} accepted");
        assert!(error.contains("name"), "{error}");
        let q = serde_urlencoded::to_string([("room", "s"), ("name", name)]).unwrap();
        let s = app.events(&q).await;
        assert_eq!(s.status, 400, "stream name {name:?} accepted");
    }
    for weak in ["a", "0123456789abcdef", &"f".repeat(31)] {
        let res = app
            .post_json(Some(weak), json!({"room": "s", "text": "hi"}))
            .await;
        let (status, error) = status_and_error(res).await;
        assert_eq!(status, 400, "token {weak:?} accepted");
        assert!(error.contains("128 random bits"), "{error}");
        assert_eq!(
            app.events(&format!("room=s&client={weak}")).await.status,
            400
        );
    }
    assert!(app.texts("s").await.is_empty(), "nothing was stored");
    // 32 hex digits are enough.
    let res = app
        .post_json(
            Some(&"ab".repeat(16)),
            json!({"room": "s", "text": "ok", "name": "meg"}),
        )
        .await;
    assert_eq!(res.status(), 201);
}

#[tokio::test]
async fn a_cross_site_stream_does_not_rename_its_client() {
    let app = spawn_app_with(&[]).await;
    let t = token();
    let cookie = format!("ssechat_client={t}");
    let mut s = app
        .events_with(
            "room=x&name=mallory",
            &[("Cookie", &cookie), ("Sec-Fetch-Site", "cross-site")],
        )
        .await;
    assert_eq!(s.status, 200, "the stream itself is served");
    let hello = s.expect_json("hello").await;
    assert!(
        hello["name"].as_str().unwrap().starts_with("guest-"),
        "{hello}"
    );
    // The same request from our own page does set it.
    let mut s = app
        .events_with(
            "room=x&name=alice",
            &[("Cookie", &cookie), ("Sec-Fetch-Site", "same-origin")],
        )
        .await;
    assert_eq!(s.expect_json("hello").await["name"], "alice");
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    // 127.0.0.2 is our proxy; 127.0.0.3 is a client pretending to be one.
    let app = spawn_app_with(&[
        "--trusted-proxies",
        "127.0.0.2",
        "--max-streams-per-ip",
        "1",
    ])
    .await;
    let url = app.url("/chat/events?room=f");
    let proxy = client_from("127.0.0.2");
    let open = |http: &reqwest::Client, xff: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move { events_at(&http, &url, &[("X-Forwarded-For", xff)]).await }
    };
    // Through the proxy: two users, one stream each; the second stream of
    // one of them is over its own cap, not the other's.
    let a = open(&proxy, "198.51.100.1").await;
    let b = open(&proxy, "203.0.113.5, 198.51.100.2").await;
    assert_eq!((a.status, b.status), (200, 200), "one address per user");
    let again = open(&proxy, "198.51.100.1").await;
    assert_eq!(again.status, 429, "the user's own cap");
    // A client that is no proxy cannot pick its address: all its streams
    // count as its own, whatever it claims.
    let direct = client_from("127.0.0.3");
    let c = open(&direct, "192.0.2.1").await;
    assert_eq!(c.status, 200);
    assert_eq!(open(&direct, "192.0.2.2").await.status, 429);
}

#[tokio::test]
async fn a_proxy_saying_https_makes_the_cookie_secure_only_when_trusted() {
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.2"]).await;
    let cookie = |http: reqwest::Client| {
        let url = app.url("/chat?room=c");
        async move {
            let res = http
                .get(url)
                .header("X-Forwarded-Proto", "https")
                .send()
                .await
                .unwrap();
            res.headers()["set-cookie"].to_str().unwrap().to_owned()
        }
    };
    let trusted = cookie(client_from("127.0.0.2")).await;
    assert!(trusted.contains("; Secure"), "{trusted}");
    assert!(trusted.starts_with("__Host-ssechat_client="), "{trusted}");
    let untrusted = cookie(client_from("127.0.0.3")).await;
    assert!(!untrusted.contains("Secure"), "{untrusted}");
    assert!(untrusted.starts_with("ssechat_client="), "{untrusted}");
}

#[tokio::test]
async fn a_token_less_retry_with_the_same_client_msg_id_is_not_doubled() {
    let app = spawn_app_with(&[]).await;
    let body = json!({"room": "d", "text": "once", "client_msg_id": "m-1"});
    let first = app.post_json(None, body.clone()).await;
    assert_eq!(first.status(), 201);
    let id = first.json::<Value>().await.unwrap()["id"].clone();
    let again = app.post_json(None, body.clone()).await;
    assert_eq!(again.status(), 200, "recognised as the same message");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], id);
    assert_eq!(app.texts("d").await, ["once"]);
    // Another address is another client.
    let other = client_from("127.0.0.2")
        .post(app.url("/chat/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 201);
    assert_eq!(app.texts("d").await, ["once", "once"]);
}

/// Sends a POST head promising `len` bytes and only two of them; returns
/// what the server answered and how long it took to cut the connection.
async fn stalled_post(app: &TestApp, len: usize) -> (String, Duration) {
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /chat/messages HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\n\r\nhi"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut s).await;
    (answer, started.elapsed())
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_with_408() {
    let app = spawn_app_with(&["--body-timeout", "1"]).await;
    let (answer, took) = stalled_post(&app, 1000).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "cut after {took:?}"
    );
    assert!(app.texts("lobby").await.is_empty(), "nothing stored");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric_value(
            &metrics,
            "ssechat_requests_rejected_total{reason=\"body_timeout\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn post_takes_the_room_from_the_query_when_the_body_has_none() {
    let app = spawn_app_with(&[]).await;
    let form = app
        .post_raw(
            "/chat/messages?room=q1",
            Some("application/x-www-form-urlencoded"),
            "text=by+form",
            &[],
        )
        .await;
    assert_eq!(form.status(), 201);
    assert_eq!(form.json::<Value>().await.unwrap()["room"], "q1");
    let json = app
        .post_raw(
            "/chat/messages?room=q1",
            Some("application/json"),
            r#"{"text":"by json"}"#,
            &[],
        )
        .await;
    assert_eq!(json.status(), 201);
    // The body's own room wins.
    let both = app
        .post_raw(
            "/chat/messages?room=q1",
            Some("application/json"),
            r#"{"text":"elsewhere","room":"q2"}"#,
            &[],
        )
        .await;
    assert_eq!(both.json::<Value>().await.unwrap()["room"], "q2");
    assert_eq!(app.texts("q1").await, ["by form", "by json"]);
    assert!(app.texts("lobby").await.is_empty());
}

#[tokio::test]
async fn line_separators_in_event_json_are_escaped() {
    let app = spawn_app_with(&[]).await;
    let mut s = app.events("room=e").await;
    s.expect("hello").await;
    let text = "one\u{2028}two\u{2029}three\u{85}four";
    app.send(None, "e", text).await;
    let e = s.expect_json("message").await;
    assert_eq!(e["text"], text, "delivered exactly as sent");
    let raw = String::from_utf8(s.raw.clone()).unwrap();
    for c in ['\u{2028}', '\u{2029}', '\u{85}'] {
        assert!(!raw.contains(c), "{c:?} on the wire: {raw:?}");
    }
    assert!(raw.contains(r"one\u2028two\u2029three\u0085four"), "{raw}");
}

#[tokio::test]
async fn a_stream_that_carries_a_new_token_is_not_stored_by_caches() {
    let app = spawn_app_with(&[]).await;
    let minted = app.events("room=n").await;
    let cc = minted.headers["cache-control"].to_str().unwrap();
    assert!(cc.contains("no-store") && cc.contains("no-cache"), "{cc}");
    let known = app.events(&format!("room=n&client={}", token())).await;
    assert_eq!(known.headers["cache-control"], "no-cache");
}

#[tokio::test]
async fn messages_total_counts_a_message_before_its_post_is_answered() {
    let app = spawn_app_with(&[]).await;
    for n in 1..=20 {
        app.send(None, "m", "x").await;
        let text = app.get("/metrics").await.text().await.unwrap();
        assert_eq!(metric_value(&text, "ssechat_messages_total"), f64::from(n));
    }
}

#[tokio::test]
async fn one_address_holding_its_connections_does_not_lock_out_another() {
    let app = spawn_app_with(&["--max-connections-per-ip", "4"]).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(app.addr, "127.0.0.3").await);
    }
    // Each is served (a request on the last one still gets its answer).
    let last = held.last_mut().unwrap();
    last.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, last.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // One more from the same address is closed at once, unanswered.
    let mut over = connect_from(app.addr, "127.0.0.3").await;
    let _ = over
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(
        read_to_close(&mut over).await,
        "",
        "closed without an answer"
    );
    // Another address is served meanwhile.
    let res = client_from("127.0.0.2")
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metric_value(
            &metrics,
            "ssechat_requests_rejected_total{reason=\"too_many_connections\"}"
        ) >= 1.0
    );
    // A closed connection gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let mut again = connect_from(app.addr, "127.0.0.3").await;
        again
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        if read_to_close(&mut again).await.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the place never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_long_poll_whose_client_hangs_up_gives_back_its_place_and_gauge() {
    let app = spawn_app_with(&["--max-long-polls", "1"]).await;
    let first = app.send(None, "lp", "x").await;
    let path = format!("/chat/messages?room=lp&since={first}&wait=30");
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    crate::helpers::wait_metric(&app.base, "ssechat_long_polls", 1.0).await;
    drop(s);
    // The gauge gives its place back.
    crate::helpers::wait_metric_where(&app.base, "ssechat_long_polls", "== 0", |v| v == 0.0).await;
    // Its place is free again: the next long-poll waits instead of a 503.
    let res = app
        .get(&format!("/chat/messages?room=lp&since={first}&wait=0.2"))
        .await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn one_address_gets_a_share_of_long_polls() {
    let app = spawn_app_with(&["--max-long-polls-per-ip", "1"]).await;
    let first = app.send(None, "lp", "x").await;
    let url = app.url(&format!("/chat/messages?room=lp&since={first}&wait=20"));
    let waiting = {
        let (http, url) = (client_from("127.0.0.3"), url.clone());
        tokio::spawn(async move { http.get(url).send().await.unwrap().status() })
    };
    crate::helpers::wait_metric(&app.base, "ssechat_long_polls", 1.0).await;
    let res = client_from("127.0.0.3").get(&url).send().await.unwrap();
    let (status, error) = status_and_error(res).await;
    assert_eq!(status, 429, "{error}");
    assert!(error.contains("your address"), "{error}");
    // Another address still gets its place.
    let other = tokio::spawn({
        let (http, url) = (client_from("127.0.0.2"), url.clone());
        async move { http.get(url).send().await.unwrap().status() }
    });
    crate::helpers::wait_metric(&app.base, "ssechat_long_polls", 2.0).await;
    app.send(None, "lp", "wake").await;
    assert_eq!(waiting.await.unwrap(), 200);
    assert_eq!(other.await.unwrap(), 200);
}

#[tokio::test]
async fn opening_streams_is_rate_limited_per_address() {
    let app = spawn_app_with(&["--post-rate", "1", "--post-burst", "2"]).await;
    let mut opened = Vec::new();
    let mut refused = None;
    for _ in 0..20 {
        let s = app.events("room=o").await;
        if s.status != 200 {
            refused = Some(s);
            break;
        }
        opened.push(s);
    }
    assert_eq!(opened.len(), 8, "the address's burst: 2 x 4");
    let refused = refused.expect("refused past the burst");
    assert_eq!(refused.status, 429);
    assert!(refused.headers.contains_key("retry-after"));
    let other = events_at(
        &client_from("127.0.0.2"),
        &app.url("/chat/events?room=o"),
        &[],
    )
    .await;
    assert_eq!(other.status, 200, "another address has its own bucket");
}

/// For a NAT with many people behind one address: the opening rate is set
/// on its own, and stays on when posting is unlimited.
#[tokio::test]
async fn the_stream_opening_rate_has_flags_of_its_own() {
    let app = spawn_app_with(&[
        "--post-rate",
        "0",
        "--stream-open-rate",
        "0.01",
        "--stream-open-burst",
        "3",
    ])
    .await;
    let mut statuses = Vec::new();
    let mut open = Vec::new();
    for _ in 0..5 {
        let s = app.events("room=nat").await;
        statuses.push(s.status);
        open.push(s);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert!(open[3].headers.contains_key("retry-after"));
}

#[tokio::test]
async fn streams_that_do_not_read_a_long_replay_hold_a_page_each_not_the_history() {
    let server = crate::helpers::spawn_binary(&[
        "--db",
        ":memory:",
        "--post-rate",
        "0",
        "--max-streams-per-ip",
        "0",
        "--history",
        "1000",
    ]);
    let pid = server.child.id();
    // 1,000 large messages (2,000 two-byte characters each: 4 kB).
    let http = reqwest::Client::new();
    let text = "é".repeat(2000);
    let posters: Vec<_> = (0..4)
        .map(|_| {
            let (http, url, text) = (http.clone(), server.url("/chat/messages"), text.clone());
            tokio::spawn(async move {
                for _ in 0..250 {
                    let r = http
                        .post(&url)
                        .json(&json!({"room": "big", "text": text}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 201);
                }
            })
        })
        .collect();
    for p in posters {
        p.await.unwrap();
    }
    let before = rss_kib(pid);
    // 30 clients ask for all of it and read nothing.
    let mut sloths = Vec::new();
    for _ in 0..30 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(server.addr).await.unwrap();
        s.write_all(b"GET /chat/events?room=big HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 0\r\n\r\n")
            .await
            .unwrap();
        sloths.push(s);
    }
    crate::helpers::wait_metric(&server.base, "ssechat_sse_streams", 30.0).await;
    // A client that reads gets every message once, in order, then live.
    let mut reader = events_at(&http, &server.url("/chat/events?room=big&since=0"), &[]).await;
    reader.expect("hello").await;
    let mut last = 0u64;
    for _ in 0..1000 {
        let e = reader.expect("message").await;
        let id: u64 = e.last_event_id.parse().unwrap();
        assert!(id > last, "in order, once");
        last = id;
    }
    let live = server.send("big", "live").await;
    let e = reader.expect("message").await;
    assert_eq!(e.last_event_id, live, "then live, nothing twice");
    let grown = rss_kib(pid).saturating_sub(before);
    eprintln!("RSS {before} KiB before, +{grown} KiB with 30 non-reading replaying streams");
    // Before: the whole 4 MB history encoded per stream (17-20 MB each in
    // release). Now: a page (64 x 4 kB) each, plus allocator slack.
    assert!(
        grown < 30 * 1024,
        "30 non-reading streams grew the server by {grown} KiB"
    );
    drop(sloths);
}

#[tokio::test]
async fn an_id_from_the_future_hides_nothing() {
    let app = spawn_app_with(&["--db", ":memory:"]).await;
    let newest = app.send(None, "fut", "old").await;
    let future = "9000000000000000000";
    // A stream resuming from it still gets what comes next.
    let mut s = app
        .events_with("room=fut", &[("Last-Event-ID", future)])
        .await;
    s.expect("hello").await;
    let next = app.send(None, "fut", "new").await;
    let e = s.expect_json("message").await;
    assert_eq!(
        (e["id"].as_str().unwrap(), e["text"].as_str().unwrap()),
        (next.as_str(), "new")
    );
    // History answers as if `since` were the newest id.
    let h = app.history(&format!("room=fut&since={future}")).await;
    assert_eq!(h["messages"], json!([]));
    assert_eq!(h["last_id"], next.as_str());
    assert_ne!(newest, next);
    // And a long-poll from it is released by the next message.
    let url = app.url(&format!("/chat/messages?room=fut&since={future}&wait=20"));
    let http = app.http.clone();
    let poll = tokio::spawn(async move {
        http.get(url)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    crate::helpers::wait_metric(&app.base, "ssechat_long_polls", 1.0).await;
    let third = app.send(None, "fut", "third").await;
    let got = tokio::time::timeout(WAIT, poll).await.unwrap().unwrap();
    assert_eq!(got["messages"][0]["text"], "third");
    assert_eq!(got["last_id"], third.as_str());
}

/// The rooms the welcome page links to, in order.
async fn listed_rooms(app: &TestApp) -> Vec<String> {
    let html = app.get("/").await.text().await.unwrap();
    html.split("href=\"/chat?room=")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_owned())
        .collect()
}

async fn welcome_page_lists_the_50_busiest(app: &TestApp) {
    for i in 0..120 {
        app.send(None, &format!("r{i:03}"), "x").await;
    }
    // People in two old rooms and one without history.
    let _a = app.subscribe("r005", &token(), "a").await;
    let _b = app.subscribe("r005", &token(), "b").await;
    let _c = app.subscribe("quiet", &token(), "c").await;
    let rooms = listed_rooms(app).await;
    assert_eq!(rooms.len(), 50, "{rooms:?}");
    assert_eq!(&rooms[..2], ["r005", "quiet"], "the most people first");
    // Then the most recently active.
    assert_eq!(&rooms[2..5], ["r119", "r118", "r117"]);
    assert!(
        !rooms.contains(&"r000".to_owned()),
        "old and empty: not listed"
    );
}

#[tokio::test]
async fn the_welcome_page_lists_at_most_the_50_busiest_rooms() {
    welcome_page_lists_the_50_busiest(&spawn_app_with(&[]).await).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.db");
    welcome_page_lists_the_50_busiest(&spawn_app_with(&["--db", db.to_str().unwrap()]).await).await;
}
