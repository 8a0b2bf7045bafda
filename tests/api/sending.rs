//! `POST /chat/messages`: bodies, answers, idempotency, and every refusal
//! leaving the chat unchanged.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, token, SseClient, TestApp};

#[tokio::test]
async fn json_form_and_text_bodies_are_all_accepted() {
    let app = spawn_app().await;
    let t = token();
    let res = app
        .post_raw(
            "/chat/messages",
            Some("application/json"),
            r#"{"text":"j","room":"b","name":"jay"}"#,
            &[("x-chat-client", &t)],
        )
        .await;
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["room"], "b");
    assert!(v["id"].is_string());

    let res = app
        .post_raw(
            "/chat/messages",
            Some("application/x-www-form-urlencoded"),
            "text=f+1%0A2&room=b&name=eff",
            &[],
        )
        .await;
    assert_eq!(res.status(), 201, "curl -d (Accept: */*) gets JSON");
    assert_eq!(res.headers()["content-type"], "application/json");

    let res = app
        .post_raw(
            "/chat/messages?room=b&name=tee",
            Some("text/plain; charset=utf-8"),
            "plain\ntext",
            &[],
        )
        .await;
    assert_eq!(res.status(), 201);

    let v = app.history("room=b").await;
    let got: Vec<(String, String)> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().into(),
                m["text"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("jay".into(), "j".into()),
            ("eff".into(), "f 1\n2".into()),
            ("tee".into(), "plain\ntext".into())
        ]
    );
}

#[tokio::test]
async fn absent_room_means_lobby() {
    let app = spawn_app().await;
    let res = app
        .post_raw(
            "/chat/messages",
            Some("application/x-www-form-urlencoded"),
            "text=hi",
            &[],
        )
        .await;
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["room"], "lobby");
    assert_eq!(app.texts("lobby").await, ["hi"]);
}

#[tokio::test]
async fn browser_form_submit_gets_303_back_to_the_page() {
    let app = spawn_app().await;
    let res = app
        .post_raw(
            "/chat/messages",
            Some("application/x-www-form-urlencoded"),
            "text=from+a+form&room=web",
            &[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")],
        )
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/chat?room=web");
    assert!(res.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .starts_with("ssechat_client="));
    assert_eq!(app.texts("web").await, ["from a form"]);
}

#[tokio::test]
async fn client_msg_id_makes_a_retry_harmless() {
    let app = spawn_app().await;
    let t = token();
    let mut s = app.subscribe("i", &t, "mine").await;
    let body = json!({"room":"i","text":"once","client_msg_id":"k-1"});
    let first = app.post_json(Some(&t), body.clone()).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = app.post_json(Some(&t), body.clone()).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again, "same id and room");
    // Another client may use the same key for its own message.
    let other = app.post_json(Some(&token()), body).await;
    assert_eq!(other.status(), 201);
    let marker = app.send(Some(&t), "i", "marker").await;
    assert_eq!(s.expect_json("message").await["id"], first["id"]);
    assert_eq!(
        s.expect_json("message").await["text"],
        "once",
        "the other client's"
    );
    assert_eq!(
        s.expect_json("message").await["id"],
        marker.as_str(),
        "the retry broadcast nothing"
    );
    assert_eq!(app.texts("i").await, ["once", "once", "marker"]);
}

/// Watches every room a batch of refused posts could have touched, from
/// before the first of them is sent: [`Watch::assert_refused_changed_nothing`]
/// then checks that none stored or broadcast anything.
struct Watch<'a> {
    app: &'a TestApp,
    streams: Vec<(&'static str, SseClient)>,
    stored_before: u64,
}

impl<'a> Watch<'a> {
    /// Subscribes to each of `rooms` (include the lobby when a post names
    /// no room) before anything is sent.
    async fn start(app: &'a TestApp, rooms: &[&'static str]) -> Watch<'a> {
        let mut streams = Vec::new();
        for room in rooms {
            streams.push((*room, app.subscribe(room, &token(), "watcher").await));
        }
        let stored_before = app.metrics.messages_total.get();
        Watch {
            app,
            streams,
            stored_before,
        }
    }

    /// Each case must be refused with its status and a readable JSON
    /// reason; then a marker posted to each watched room must be the next
    /// event there (nothing was broadcast), each room must hold only its
    /// marker, and the server must have stored nothing else anywhere.
    async fn assert_refused_changed_nothing(self, cases: Vec<(u16, reqwest::Response, &str)>) {
        for (status, res, what) in cases {
            assert_eq!(res.status().as_u16(), status, "{what}");
            assert_eq!(res.headers()["content-type"], "application/json", "{what}");
            let v: Value = res.json().await.unwrap();
            let msg = v["error"].as_str().unwrap_or_else(|| panic!("{what}: {v}"));
            assert!(!msg.is_empty(), "{what}: a readable reason");
        }
        let markers = self.streams.len() as u64;
        for (room, mut s) in self.streams {
            let marker = self.app.send(None, room, "marker").await;
            assert_eq!(
                s.expect_json("message").await["id"],
                marker.as_str(),
                "nothing was broadcast in {room}"
            );
            assert_eq!(
                self.app.texts(room).await,
                ["marker"],
                "nothing was stored in {room}"
            );
        }
        let stored = self.app.metrics.messages_total.get() - self.stored_before;
        assert_eq!(
            stored, markers,
            "stored nothing but the markers, in any room"
        );
    }
}

#[tokio::test]
async fn invalid_posts_get_400_and_change_nothing() {
    let app = spawn_app_with(&["--max-message-chars", "10"]).await;
    // Posts without a room would land in the lobby.
    let watch = Watch::start(&app, &["z", "lobby"]).await;
    let form = Some("application/x-www-form-urlencoded");
    let json = Some("application/json");
    let p = |ct, body: &'static [u8]| app.post_raw("/chat/messages", ct, body, &[]);
    let cases = vec![
        (400, p(form, b"text=&room=z").await, "empty text"),
        (400, p(form, b"room=z").await, "missing text"),
        (400, p(form, b"text=12345678901&room=z").await, "11 chars over 10"),
        (400, p(form, b"text=%FF&room=z").await, "invalid UTF-8 after decoding"),
        (400, p(form, b"text=%zz&room=z").await, "broken percent-encoding"),
        (400, p(form, b"text=a&text=b&room=z").await, "duplicate field"),
        (400, p(form, b"text=hi&room=bad%20room").await, "bad room"),
        (400, p(form, b"text=hi&room=z&name=").await, "empty name"),
        (400, p(form, b"text=hi&room=z&name=a%0Ab").await, "control char in name"),
        (400, p(form, b"text=hi&room=z&name=123456789012345678901234567890123").await, "33-char name"),
        (400, p(json, b"{\"text\":").await, "malformed JSON"),
        (400, p(json, b"{\"text\":5,\"room\":\"z\"}").await, "text not a string"),
        (400, p(json, b"{\"text\":\"a\",\"text\":\"b\",\"room\":\"z\"}").await, "duplicate JSON key"),
        (400, p(json, b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]").await, "deep nesting"),
        (400, p(json, b"{\"text\":\"\xff\",\"room\":\"z\"}").await, "invalid UTF-8 JSON"),
        (400, p(Some("text/plain"), b"\xff\xfe").await, "invalid UTF-8 text"),
        (400, p(json, b"{\"text\":\"hi\",\"room\":\"z\",\"client_msg_id\":\"\"}").await, "empty client_msg_id"),
        (415, p(Some("application/xml"), b"<text>hi</text>").await, "xml"),
        (415, p(None, b"text=hi").await, "no content type"),
    ];
    watch.assert_refused_changed_nothing(cases).await;
}

#[tokio::test]
async fn bodies_over_the_byte_limit_get_413_with_or_without_content_length() {
    let app = spawn_app_with(&["--max-body-bytes", "100"]).await;
    let watch = Watch::start(&app, &["z"]).await;
    let big = format!("text={}&room=z", "a".repeat(200));
    let declared = app
        .post_raw(
            "/chat/messages",
            Some("application/x-www-form-urlencoded"),
            big.clone(),
            &[],
        )
        .await;
    // A chunked body declares no length and must be cut off at the limit too.
    let chunks: Vec<Result<String, std::io::Error>> =
        vec![Ok(big[..60].into()), Ok(big[60..].into())];
    let chunked = app
        .post_raw(
            "/chat/messages",
            Some("application/x-www-form-urlencoded"),
            reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
            &[],
        )
        .await;
    watch
        .assert_refused_changed_nothing(vec![
            (413, declared, "declared length"),
            (413, chunked, "chunked"),
        ])
        .await;
}

#[tokio::test]
async fn a_bad_client_token_is_refused() {
    let app = spawn_app().await;
    let watch = Watch::start(&app, &["z"]).await;
    let res = app
        .post_raw(
            "/chat/messages",
            Some("application/x-www-form-urlencoded"),
            "text=hi&room=z",
            &[("x-chat-client", "has space")],
        )
        .await;
    watch
        .assert_refused_changed_nothing(vec![(400, res, "token with a space")])
        .await;
}

#[tokio::test]
async fn cross_site_browser_posts_are_refused() {
    let app = spawn_app().await;
    let t = token();
    let cookie = format!("ssechat_client={t}");
    let same = app
        .post_raw(
            "/chat/messages",
            Some("application/x-www-form-urlencoded"),
            "text=fine&room=same",
            &[("origin", &app.base), ("cookie", &cookie)],
        )
        .await;
    assert_eq!(same.status(), 201, "same-origin posts work");
    let watch = Watch::start(&app, &["z"]).await;
    let foreign = app
        .post_raw(
            "/chat/messages",
            Some("application/x-www-form-urlencoded"),
            "text=csrf&room=z",
            &[("origin", "https://evil.example"), ("cookie", &cookie)],
        )
        .await;
    watch
        .assert_refused_changed_nothing(vec![(403, foreign, "foreign origin")])
        .await;
}

#[tokio::test]
async fn posting_too_fast_gets_429_with_retry_after() {
    let app = spawn_app_with(&["--post-rate", "1", "--post-burst", "2"]).await;
    let t = token();
    for _ in 0..2 {
        assert_eq!(
            app.post_json(Some(&t), json!({"room":"rl","text":"x"}))
                .await
                .status(),
            201
        );
    }
    let res = app
        .post_json(Some(&t), json!({"room":"rl","text":"x"}))
        .await;
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry));
    assert_eq!(
        app.post_json(Some(&token()), json!({"room":"rl","text":"y"}))
            .await
            .status(),
        201
    );
    assert_eq!(app.texts("rl").await, ["x", "x", "y"]);
}

#[tokio::test]
async fn posts_during_shutdown_are_refused_cleanly() {
    let app = spawn_app().await;
    app.chat.shutdown();
    let res = app.post_json(None, json!({"text":"late"})).await;
    assert_eq!(res.status(), 503);
    let v: Value = res.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("shutting down"));
}
