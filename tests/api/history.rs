//! `GET /chat/messages`: paging, `last_id`, long-poll.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{spawn_app, token, TestApp};
use tokio::task::JoinHandle;

fn ids(v: &Value) -> Vec<String> {
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn latest_and_paging_forward_with_last_id() {
    let app = spawn_app().await;
    let empty = app.history("room=pg").await;
    assert_eq!(empty["last_id"], Value::Null);
    assert_eq!(empty["messages"], serde_json::json!([]));
    let mut sent = Vec::new();
    for i in 0..7 {
        sent.push(app.send(None, "pg", &format!("{i}")).await);
    }
    let latest = app.history("room=pg&limit=3").await;
    assert_eq!(ids(&latest), sent[4..]);
    assert_eq!(latest["last_id"], sent[6].as_str());
    // Page forward from the start, 3 at a time.
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("room=pg&limit=3&since={c}"),
            None => "room=pg&limit=3&since=0".to_owned(),
        };
        let page = app.history(&q).await;
        let page_ids = ids(&page);
        if page_ids.is_empty() {
            assert_eq!(
                page["last_id"].as_str(),
                cursor.as_deref(),
                "empty page echoes since"
            );
            break;
        }
        got.extend(page_ids);
        cursor = Some(page["last_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, sent);
    // Messages carry `me` for the asking client.
    let t = token();
    app.send(Some(&t), "pg", "mine").await;
    let res = app
        .http
        .get(app.url("/chat/messages?room=pg&limit=2"))
        .header("x-chat-client", &t)
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    let me: Vec<bool> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["me"].as_bool().unwrap())
        .collect();
    assert_eq!(me, [false, true]);
}

#[tokio::test]
async fn bad_history_parameters_are_400() {
    let app = spawn_app().await;
    for q in [
        "limit=0",
        "limit=501",
        "limit=x",
        "wait=31",
        "wait=-1",
        "since=x",
        "room=%20",
    ] {
        let res = app.get(&format!("/chat/messages?{q}")).await;
        assert_eq!(res.status(), 400, "{q}");
        let v: Value = res.json().await.unwrap();
        assert!(v["error"].is_string());
    }
}

#[tokio::test]
async fn long_poll_is_released_by_the_next_message() {
    let app = spawn_app().await;
    let first = app.send(None, "lp", "before").await;
    let started = Instant::now();
    let poll = waiting_long_poll(&app, "lp", &first).await;
    let id = app.send(None, "lp", "after").await;
    let v = released(poll).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(ids(&v), vec![id.clone()]);
    assert_eq!(v["last_id"], id.as_str());
    assert_eq!(v["messages"][0]["text"], "after");
}

#[tokio::test]
async fn long_poll_ignores_the_late_fan_out_of_what_it_already_has() {
    // In a cluster a POST is answered before its fan-out reaches every
    // node, so a client can start a long-poll `since` its own message while
    // that message is still on its way. Its arrival must not end the poll,
    // empty.
    use ssechat::chat::message::Message;
    use ssechat::chat::types::{ClientId, DisplayName, EventId, RoomName};
    let app = spawn_app().await;
    let first = app.send(None, "late", "mine").await;
    let poll = waiting_long_poll(&app, "late", &first).await;
    // The late fan-out of the message the poll already knows.
    app.chat.inbox().messages(vec![Message {
        id: EventId::parse(&first).unwrap(),
        room: RoomName::parse("late").unwrap(),
        name: DisplayName::parse("someone").unwrap(),
        text: "mine".into(),
        ts: 0,
        sender: ClientId::random(),
    }]);
    let id = app.send(None, "late", "next").await;
    let v = released(poll).await;
    assert_eq!(ids(&v), vec![id], "{v}");
}

#[tokio::test]
async fn long_poll_times_out_empty_with_since_as_last_id() {
    let app = spawn_app().await;
    let first = app.send(None, "lt", "x").await;
    let v = app.history(&format!("room=lt&since={first}&wait=1")).await;
    assert_eq!(ids(&v), Vec::<String>::new());
    assert_eq!(v["last_id"], first.as_str());
}

#[tokio::test]
async fn shutdown_answers_waiting_long_polls_at_once() {
    let app = spawn_app().await;
    let first = app.send(None, "ls", "x").await;
    let poll = waiting_long_poll(&app, "ls", &first).await;
    let started = Instant::now();
    app.stop().await;
    let v = released(poll).await;
    assert_eq!(v["messages"], serde_json::json!([]));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Starts a long-poll (up to 20 s) for what comes after `since` in `room`,
/// and returns once the server holds it. The handle gives the answer's
/// JSON, after checking it is a 200.
async fn waiting_long_poll(app: &TestApp, room: &str, since: &str) -> JoinHandle<Value> {
    let url = app.url(&format!("/chat/messages?room={room}&since={since}&wait=20"));
    let http = app.http.clone();
    let poll = tokio::spawn(async move {
        let res = http.get(url).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.json::<Value>().await.unwrap()
    });
    let m = app.metrics.clone();
    crate::helpers::eventually("the long-poll is waiting", || m.long_polls.get() == 1).await;
    poll
}

/// The long-poll's answer, which must come within 5 s.
async fn released(poll: JoinHandle<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the long-poll was answered")
        .unwrap()
}
