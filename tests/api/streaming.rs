//! `GET /chat/events`: hello, me-tagging, presence, replay, format=text,
//! keep-alive, exact delivery.

use std::time::Duration;

use serde_json::Value;
use ssechat::sse::Item;

use crate::helpers::{eventually, spawn_app, spawn_app_with, token};

#[tokio::test]
async fn stream_starts_with_retry_then_hello_and_spec_headers() {
    let app = spawn_app().await;
    let mut s = app.events("room=r1").await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    let cc = s.headers["cache-control"].to_str().unwrap();
    assert!(cc.contains("no-cache"), "{cc}");
    assert_eq!(s.headers["x-accel-buffering"], "no");
    assert!(matches!(s.next_item().await, Some(Item::Retry(_))));
    let hello = s.expect_json("hello").await;
    assert_eq!(hello["room"], "r1");
    assert_eq!(hello["online"], 1);
    assert!(hello["name"].as_str().unwrap().starts_with("guest-"));
    let minted = hello["client"].as_str().expect("a new client gets a token");
    assert!(minted.len() >= 32, "at least 128 bits");
    let cookie = s.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with(&format!("ssechat_client={minted}")));
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));

    // The minted token lets the script post as itself: its own message is `me`.
    app.send(Some(minted), "r1", "mine").await;
    let m = s.expect_json("message").await;
    assert_eq!(m["me"], true);
}

#[tokio::test]
async fn hello_has_no_client_when_one_was_presented() {
    let app = spawn_app().await;
    let t = token();
    let mut s = app
        .events_with("room=r", &[("Cookie", &format!("ssechat_client={t}"))])
        .await;
    let hello = s.expect_json("hello").await;
    assert!(hello.get("client").is_none(), "{hello}");
    assert!(!s.headers.contains_key("set-cookie"));
}

#[tokio::test]
async fn the_same_message_is_me_for_its_sender_only() {
    let app = spawn_app().await;
    let (alice, bob) = (token(), token());
    let mut a = app.subscribe("r", &alice, "alice").await;
    let mut b = app.subscribe("r", &bob, "bob").await;
    a.expect("join").await; // bob joined
    let id = app.send(Some(&alice), "r", "hello").await;
    let ma = a.expect_json("message").await;
    let mb = b.expect_json("message").await;
    assert_eq!(
        (ma["me"].clone(), mb["me"].clone()),
        (Value::Bool(true), Value::Bool(false))
    );
    for m in [&ma, &mb] {
        assert_eq!(m["id"], id.as_str());
        assert_eq!(m["name"], "alice");
        assert_eq!(m["text"], "hello");
        assert_eq!(m["room"], "r");
        assert!(
            m["ts"].as_i64().unwrap() > 1_600_000_000_000,
            "ts is ms since epoch"
        );
    }
    // Another client using alice's *name* is still not alice.
    let mallory = token();
    app.post_json(
        Some(&mallory),
        serde_json::json!({"room":"r","text":"fake","name":"alice"}),
    )
    .await;
    let fake = a.expect_json("message").await;
    assert_eq!(fake["me"], false);
    assert_eq!(fake["name"], "alice");
}

#[tokio::test]
async fn join_and_leave_carry_names_and_online_counts() {
    let app = spawn_app().await;
    let (alice, bob) = (token(), token());
    let mut a = app.subscribe("p", &alice, "alice").await;
    let b = app.subscribe("p", &bob, "bob").await;
    let join = a.expect_json("join").await;
    assert_eq!(join, serde_json::json!({"name": "bob", "online": 2}));
    // A second stream of bob is not a second person: no join, count stays.
    let mut b2 = app.events(&format!("room=p&client={bob}")).await;
    assert_eq!(b2.expect_json("hello").await["online"], 2);
    drop(b2);
    drop(b);
    let leave = a.expect_json("leave").await;
    assert_eq!(leave, serde_json::json!({"name": "bob", "online": 1}));
    drop(a);
    let chat = app.chat.clone();
    eventually("room machinery freed", || chat.live_rooms() == 0).await;
}

#[tokio::test]
async fn format_text_is_human_and_keeps_ids() {
    let app = spawn_app().await;
    let (alice, bob) = (token(), token());
    let mut a = app
        .events(&format!("room=t&client={alice}&name=alice&format=text"))
        .await;
    a.expect("hello").await;
    let mut b = app
        .events(&format!("room=t&client={bob}&name=bob&format=text"))
        .await;
    let hello = b.expect_json("hello").await; // hello stays JSON
    assert_eq!(hello["name"], "bob");
    assert_eq!(a.expect("join").await.data, ">> bob joined (2 online)");
    let id = app.send(Some(&alice), "t", "hi\r\nthere\rnow").await;
    let mine = a.expect("message").await;
    assert_eq!(mine.data, "me: hi\nthere\nnow");
    assert_eq!(mine.last_event_id, id);
    assert_eq!(b.expect("message").await.data, "alice: hi\nthere\nnow");
    drop(b);
    assert_eq!(a.expect("leave").await.data, ">> bob left (1 online)");
}

#[tokio::test]
async fn any_text_round_trips_exactly_as_one_event() {
    let app = spawn_app().await;
    let alice = token();
    let mut s = app.subscribe("x", &alice, "alice").await;
    let mut t = app
        .events(&format!("room=x&client={alice}&format=text"))
        .await;
    t.expect("hello").await;
    let mut nasty: String = (1u32..0x20).filter_map(char::from_u32).collect();
    nasty.push_str("\r\n\r\n\n\nevent: join\ndata: forged\nid: 999\n\n: c\r\u{7f}\u{85}\u{2028}\u{2029}\u{feff}<b>&amp;</b>\"'\\ é 😀");
    let nasty_with_nul = format!("\0{nasty}");
    for text in [
        nasty.as_str(),
        nasty_with_nul.as_str(),
        "\n",
        " ",
        "trailing\n",
    ] {
        let id = app.send(Some(&alice), "x", text).await;
        let e = s.expect("message").await;
        assert_eq!(e.last_event_id, id);
        let m: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(m["text"], text, "JSON delivers text exactly as sent");
        let te = t.expect("message").await;
        assert_eq!(te.last_event_id, id);
        assert_eq!(
            te.data,
            format!("me: {}", ssechat::sse::normalize_newlines(text))
        );
    }
    let marker = app.send(Some(&alice), "x", "marker").await;
    assert_eq!(
        s.expect("message").await.last_event_id,
        marker,
        "no extra events"
    );
}

#[tokio::test]
async fn replay_after_since_or_last_event_id_and_the_header_wins() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.send(None, "h", &format!("m{i}")).await);
    }
    let mut s = app.events(&format!("room=h&since={}", ids[1])).await;
    s.expect("hello").await;
    for id in &ids[2..] {
        assert_eq!(&s.expect("message").await.last_event_id, id);
    }
    let mut h = app
        .events_with(
            &format!("room=h&since={}", ids[0]),
            &[("Last-Event-ID", ids[3].as_str())],
        )
        .await;
    h.expect("hello").await;
    assert_eq!(
        h.until("message").await.last_event_id,
        ids[4],
        "header wins over since"
    );
    // Without either, nothing is replayed: the next event is live.
    let mut live = app.events("room=h").await;
    live.expect("hello").await;
    let new = app.send(None, "h", "live").await;
    assert_eq!(live.until("message").await.last_event_id, new);
    assert_eq!(s.until("message").await.last_event_id, new);
}

#[tokio::test]
async fn an_id_older_than_history_replays_all_that_is_kept() {
    let app = spawn_app_with(&["--history", "3"]).await;
    let first = app.send(None, "k", "0").await;
    for i in 1..6 {
        app.send(None, "k", &i.to_string()).await;
    }
    let mut s = app.events(&format!("room=k&since={first}")).await;
    s.expect("hello").await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            s.expect_json("message").await["text"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(got, ["3", "4", "5"]);
}

#[tokio::test]
async fn malformed_ids_are_refused() {
    let app = spawn_app().await;
    for q in [
        "room=a&since=abc",
        "room=a&since=-1",
        "room=bad%20room",
        "room=a&format=xml",
    ] {
        let s = app.events(q).await;
        assert_eq!(s.status, 400, "{q}");
    }
    let s = app.events_with("room=a", &[("Last-Event-ID", "x1")]).await;
    assert_eq!(s.status, 400);
}

#[tokio::test]
async fn replay_and_live_have_no_gap_and_no_duplicate_under_concurrent_posts() {
    let app = spawn_app().await;
    let start = app.send(None, "race", "start").await;
    let total = 300;
    let posted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let poster = {
        let http = app.http.clone();
        let url = app.url("/chat/messages");
        let posted = posted.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..total {
                let res = http
                    .post(&url)
                    .json(&serde_json::json!({"room":"race","text":format!("n{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
                let v: Value = res.json().await.unwrap();
                ids.push(v["id"].as_str().unwrap().to_owned());
                posted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            ids
        })
    };
    // Open streams from the start id while posts are flowing: the k-th
    // once k/8 of them are acknowledged, so each opens mid-flow.
    let mut streams = Vec::new();
    for k in 0..8 {
        let p = posted.clone();
        crate::helpers::eventually("posts flowing", || {
            p.load(std::sync::atomic::Ordering::SeqCst) >= k * total / 8
        })
        .await;
        assert!(
            posted.load(std::sync::atomic::Ordering::SeqCst) < total,
            "stream {k} opened while posts were still flowing"
        );
        let mut s = app.events(&format!("room=race&since={start}")).await;
        s.expect("hello").await;
        streams.push(s);
        tokio::task::yield_now().await;
    }
    let ids = poster.await.unwrap();
    for s in &mut streams {
        let mut got = Vec::new();
        while got.len() < total {
            let e = s.next_event().await;
            if e.event == "message" {
                got.push(e.last_event_id);
            }
        }
        assert_eq!(got, ids, "every message exactly once, in id order");
    }
}

#[tokio::test]
async fn keepalive_comments_flow_on_idle_streams() {
    let app = spawn_app_with(&["--keepalive", "1"]).await;
    let mut s = app.events("room=idle").await;
    s.expect("hello").await;
    loop {
        match s.next_item_within(Duration::from_secs(5)).await {
            Ok(Some(Item::Comment(_))) => break,
            Ok(Some(_)) => continue,
            other => panic!("expected a keep-alive comment, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn rooms_are_independent() {
    let app = spawn_app().await;
    let mut a = app.events("room=one").await;
    a.expect("hello").await;
    app.send(None, "two", "elsewhere").await;
    let id = app.send(None, "one", "here").await;
    let e = a.expect_json("message").await;
    assert_eq!(
        (e["id"].as_str().unwrap(), e["text"].as_str().unwrap()),
        (id.as_str(), "here")
    );
}

#[tokio::test]
async fn names_come_from_the_latest_request() {
    let app = spawn_app().await;
    let t = token();
    app.post_json(Some(&t), serde_json::json!({"text":"x","name":"first"}))
        .await;
    let mut s = app.events(&format!("client={t}")).await;
    assert_eq!(s.expect_json("hello").await["name"], "first");
    app.post_json(Some(&t), serde_json::json!({"text":"y","name":"second"}))
        .await;
    assert_eq!(s.expect_json("message").await["name"], "second");
    let mut s2 = app.events(&format!("client={t}")).await;
    assert_eq!(s2.expect_json("hello").await["name"], "second");
}

#[tokio::test]
async fn shutdown_ends_streams_with_a_retry_hint() {
    let app = spawn_app().await;
    let mut s = app.events("room=bye").await;
    s.expect("hello").await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    app.stop().await;
    let rest = s.rest().await;
    assert!(rest.iter().any(|i| matches!(i, Item::Retry(_))), "{rest:?}");
    assert!(s.ended);
}
