//! Holding up under abuse: connection caps, slow consumers, shutdown under
//! load.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ssechat::sse::{Item, Parser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    events_at, eventually, rss_kib, spawn_app_with, spawn_binary, token, wait_metric, TestApp, WAIT,
};

async fn error_of(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let v: Value = res.json().await.unwrap();
    (status, v["error"].as_str().unwrap().to_owned())
}

/// GETs `path` and returns the status and the JSON error's text.
async fn refused_get(app: &TestApp, path: &str) -> (u16, String) {
    error_of(app.get(path).await).await
}

#[tokio::test]
async fn stream_caps_answer_503_in_total_and_429_per_ip() {
    let app = spawn_app_with(&["--max-streams", "2"]).await;
    let _a = app.events("room=c").await;
    let _b = app.events("room=c").await;
    let (status, msg) = refused_get(&app, "/chat/events?room=c").await;
    assert_eq!(status, 503);
    assert!(msg.contains("too many open streams"), "{msg}");
    let app2 = spawn_app_with(&["--max-streams-per-ip", "1"]).await;
    let _c = app2.events("room=c").await;
    let (status, msg) = refused_get(&app2, "/chat/events?room=c").await;
    assert_eq!(status, 429);
    assert!(msg.contains("from your address"), "{msg}");
    // The place comes back when the stream ends.
    drop(_c);
    let m = app2.metrics.clone();
    eventually("the stream is closed", || m.sse_streams.get() == 0).await;
    assert_eq!(app2.events("room=c").await.status, 200);
}

#[tokio::test]
async fn long_poll_cap_answers_503() {
    let app = spawn_app_with(&["--max-long-polls", "1"]).await;
    let first = app.send(None, "lp", "x").await;
    let url = app.url(&format!("/chat/messages?room=lp&since={first}&wait=20"));
    let http = app.http.clone();
    let waiting = tokio::spawn(async move { http.get(url).send().await.unwrap().status() });
    let m = app.metrics.clone();
    eventually("one long-poll waiting", || m.long_polls.get() == 1).await;
    let (status, msg) = refused_get(
        &app,
        &format!("/chat/messages?room=lp&since={first}&wait=20"),
    )
    .await;
    assert_eq!(status, 503);
    assert!(msg.contains("long-polls"), "{msg}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        crate::helpers::metric_value(
            &metrics,
            "ssechat_requests_rejected_total{reason=\"too_many_long_polls\"}"
        ),
        1.0,
        "counted as a long-poll refusal"
    );
    app.send(None, "lp", "release").await;
    assert_eq!(waiting.await.unwrap(), 200);
}

#[tokio::test]
async fn hostile_headers_get_clear_4xx_and_change_nothing() {
    let app = spawn_app_with(&[]).await;
    let long = "a".repeat(200);
    let huge = "b".repeat(100_000);
    let cases: Vec<(&str, &str, u16)> = vec![
        ("x-chat-client", &long, 400),
        ("x-chat-client", "tab\there", 400),
        ("last-event-id", &long, 400),
        ("cookie", &huge, 431),
    ];
    for (name, value, status) in cases {
        let res = app
            .http
            .get(app.url("/chat/events?room=h"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status().as_u16(),
            status,
            "{name}: {}",
            &value[..value.len().min(20)]
        );
    }
    // Control characters cannot even be sent by reqwest: use a raw socket.
    let mut raw = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    raw.write_all(b"GET /chat/events?room=h HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1\x01\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, raw.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let status_line = String::from_utf8_lossy(&answer[..answer.len().min(12)]).to_string();
    assert!(status_line.starts_with("HTTP/1.1 4"), "{status_line}");
    // An absurd cookie value is ignored (a new client is minted), not fatal.
    let res = app
        .http
        .get(app.url("/chat"))
        .header("cookie", format!("ssechat_client={long}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("set-cookie"));
    assert!(app.texts("h").await.is_empty());
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_dropped_and_recovers_by_replay() {
    let mut server = spawn_binary(&[
        "--db",
        ":memory:",
        "--post-rate",
        "0",
        "--history",
        "10000",
        "--write-timeout",
        "2",
        "--max-streams-per-ip",
        "0",
    ]);
    let pid = server.child.id();
    let http = reqwest::Client::new();
    let start = server.send("s", "start").await;
    // The sloth: asks for the stream, then never reads a byte.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut sloth = socket.connect(server.addr).await.unwrap();
    sloth
        .write_all(
            format!("GET /chat/events?room=s&since={start} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut normal = Vec::new();
    for _ in 0..20 {
        let mut s = events_at(
            &http,
            &server.url(&format!("/chat/events?room=s&since={start}")),
            &[],
        )
        .await;
        s.expect("hello").await;
        normal.push(s);
    }
    let rss_before = rss_kib(pid);
    let total = 3000;
    let payload = "x".repeat(1024);
    let mut posters = Vec::new();
    for p in 0..4 {
        let (http, url, payload) = (http.clone(), server.url("/chat/messages"), payload.clone());
        posters.push(tokio::spawn(async move {
            for i in 0..total / 4 {
                let r = http
                    .post(&url)
                    .json(&json!({"room":"s","text":format!("{p}-{i} {payload}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }
        }));
    }
    // Every normal subscriber gets every message, in order, in bounded time.
    let readers: Vec<_> = normal
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut last = 0u64;
                let mut n = 0;
                while n < total {
                    let e = s.next_event().await;
                    if e.event == "message" {
                        let id: u64 = e.last_event_id.parse().unwrap();
                        assert!(id > last, "in order, no duplicates");
                        last = id;
                        n += 1;
                    }
                }
                last
            })
        })
        .collect();
    // Generous bounds: on a loaded 2-core machine (the whole suite runs in
    // parallel, browsers included) this has taken over a minute; unloaded
    // it takes well under one.
    let bound = Duration::from_secs(180);
    for p in posters {
        tokio::time::timeout(bound, p)
            .await
            .expect("posts finish")
            .unwrap();
    }
    let mut last_ids = Vec::new();
    for r in readers {
        last_ids.push(
            tokio::time::timeout(bound, r)
                .await
                .expect("readers finish")
                .unwrap(),
        );
    }
    let newest = last_ids[0];
    assert!(last_ids.iter().all(|&l| l == newest));
    let rss_after = rss_kib(pid);
    eprintln!("server RSS before {rss_before} KiB, after {rss_after} KiB");
    assert!(
        rss_after < rss_before + 48 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );

    // The sloth is cut off once its socket stayed full for the write timeout.
    wait_metric(&server.base, "ssechat_subscribers_dropped_total", 1.0).await;
    // It now reads what reached it, then resumes from its last id.
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, sloth.read_to_end(&mut raw))
        .await
        .expect("closed")
        .ok();
    let body_start = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut parser = Parser::new();
    // The body is chunked (HTTP/1.1); the parser sees chunk-size lines as
    // unknown fields only if they look like "x:y", so de-chunk first.
    let body = dechunk(&raw[body_start..]);
    let mut seen = Vec::new();
    for item in parser.feed(&body) {
        if let Item::Event(e) = item {
            if e.event == "message" {
                seen.push(e.last_event_id.parse::<u64>().unwrap());
            }
        }
    }
    let resume = seen
        .last()
        .copied()
        .unwrap_or_else(|| start.parse().unwrap());
    assert!(resume < newest, "the sloth really missed messages");
    // The answer starts after the replay of up to 3,000 messages is read:
    // the same generous bound as the posts.
    let reopened = http
        .get(server.url("/chat/events?room=s"))
        .header("last-event-id", resume.to_string())
        .send();
    let mut again = crate::helpers::SseClient::new(
        tokio::time::timeout(bound, reopened)
            .await
            .expect("the stream reopens in time")
            .unwrap(),
    );
    again.expect("hello").await;
    let mut got = seen.clone();
    while *got.last().unwrap_or(&0) < newest {
        let e = again.expect("message").await;
        got.push(e.last_event_id.parse().unwrap());
    }
    assert_eq!(got.len(), total, "everything exactly once across the cut");
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(server.terminate(), Some(0));
}

/// Strips HTTP/1.1 chunked framing (stops at a truncated chunk).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let Ok(size) =
            usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap_or("x").trim(), 16)
        else {
            return out;
        };
        if size == 0 {
            return out;
        }
        let data = &b[eol + 2..];
        if data.len() < size {
            out.extend_from_slice(data);
            return out;
        }
        out.extend_from_slice(&data[..size]);
        b = data.get(size + 2..).unwrap_or(&[]);
    }
}

#[tokio::test]
async fn graceful_shutdown_with_many_streams_and_a_long_poll_exits_0_in_time() {
    let mut server = spawn_binary(&[
        "--db",
        ":memory:",
        "--max-streams-per-ip",
        "0",
        // 300 streams from one address at once: past its opening rate.
        "--post-rate",
        "0",
        "--shutdown-timeout",
        "20",
    ]);
    let log = server.log.clone();
    let first = server.send("g", "x").await;
    let mut streams = Vec::new();
    for i in 0..300 {
        // Separate clients so each is its own connection.
        let http = reqwest::Client::new();
        let url = server.url(&format!("/chat/events?room=g{}&client={}", i % 10, token()));
        let mut s = events_at(&http, &url, &[]).await;
        s.expect("hello").await;
        streams.push(s);
    }
    let poll_url = server.url(&format!("/chat/messages?room=g&since={first}&wait=30"));
    let poll = tokio::spawn(async move { reqwest::get(poll_url).await.unwrap() });
    wait_metric(&server.base, "ssechat_long_polls", 1.0).await;
    let started = Instant::now();
    let code = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("shutdown with 300 streams took {took:?}");
    assert_eq!(code, Some(0));
    // Ending the streams is what makes it quick, not the grace period
    // running out (20 s, generous for a loaded machine; the log says when
    // it runs out).
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let has = |what: &str| log.lock().unwrap().iter().any(|l| l.contains(what));
    // The log reader may lag the exit: wait for the last line first.
    eventually("the log's last line is read", || has("shutdown complete")).await;
    assert!(
        !has("shutdown timeout reached"),
        "every connection finished by itself"
    );
    let res = poll.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["messages"], json!([]));
    for s in &mut streams {
        let rest = s.rest().await;
        assert!(
            rest.iter().any(|i| matches!(i, Item::Retry(_))),
            "each stream got a retry hint"
        );
    }
}
