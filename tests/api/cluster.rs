//! Cluster mode: several nodes of the built binary on one `redis-server`
//! that the test starts itself on a free loopback port.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::external::free_port;
use crate::helpers::{
    all_messages, events_at, spawn_binary, token, wait_metric, BinApp, SseClient, WAIT,
};

/// A `redis-server` of our own; stopped on drop.
pub struct Redis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    persistent: bool,
}

impl Redis {
    /// `None` (after a loud SKIPPED) when redis-server is not installed.
    pub fn start(persistent: bool) -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            crate::helpers::skip(
                "cluster",
                "redis-server not found (install it, e.g. `apt-get install redis-server`)",
            );
            return None;
        }
        // The port was free a moment ago; if it was taken meanwhile, the
        // server exits at once: try another.
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let child = Self::spawn(dir.path(), port, persistent);
            let mut r = Redis {
                child,
                port,
                dir,
                persistent,
            };
            if r.wait_ready() {
                return Some(r);
            }
        }
        panic!("redis-server did not start on any of three free ports");
    }

    fn spawn(dir: &Path, port: u16, persistent: bool) -> Child {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir);
        if persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts")
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Waits (bounded) until it answers PING: `false` if it exited first
    /// (its port was taken).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(c) = redis::Client::open(self.url()) {
                if let Ok(mut conn) = c.get_connection_with_timeout(Duration::from_millis(200)) {
                    if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                        return true;
                    }
                }
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(self.dir.path(), self.port, self.persistent);
        assert!(self.wait_ready(), "redis-server restarted on its port");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn node(redis: &Redis, extra: &[&str]) -> BinApp {
    let url = redis.url();
    let mut args = vec![
        "--redis",
        url.as_str(),
        "--post-rate",
        "0",
        "--max-streams-per-ip",
        "0",
    ];
    args.extend_from_slice(extra);
    spawn_binary(&args)
}

async fn subscribe(n: &BinApp, query: &str) -> (SseClient, Value) {
    let url = n.url(&format!("/chat/events?{query}"));
    let mut s = events_at(&reqwest::Client::new(), &url, &[]).await;
    let hello = s.expect_json("hello").await;
    (s, hello)
}

async fn post(n: &BinApp, client: &str, room: &str, text: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(n.url("/chat/messages"))
        .header("x-chat-client", client)
        .json(&json!({"room": room, "text": text}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn messages_cross_nodes_once_in_one_order_with_me_and_presence() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let nodes = [node(&redis, &[]), node(&redis, &[]), node(&redis, &[])];
    let alice = token();
    let (mut on_a, hello) =
        subscribe(&nodes[0], &format!("room=x&client={alice}&name=alice")).await;
    assert_eq!(hello["online"], 1);
    let (mut on_b, hello) = subscribe(&nodes[1], "room=x&name=bob").await;
    assert_eq!(hello["online"], 2, "online counts are cluster-wide");
    assert_eq!(
        on_a.expect_json("join").await,
        json!({"name": "bob", "online": 2})
    );
    let (mut on_c, _) = subscribe(&nodes[2], "room=x&name=carol").await;
    on_a.expect("join").await;
    on_b.expect("join").await;

    // Concurrent posters on every node.
    let per_node = 40;
    let mut posters = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let (url, t) = (
            n.url("/chat/messages"),
            if i == 0 { alice.clone() } else { token() },
        );
        posters.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for k in 0..per_node {
                let r = http
                    .post(&url)
                    .header("x-chat-client", &t)
                    .json(&json!({"room":"x","text":format!("n{i}-{k}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }
        }));
    }
    for p in posters {
        p.await.unwrap();
    }
    let total = per_node * 3;
    let mut orders = Vec::new();
    for s in [&mut on_a, &mut on_b, &mut on_c] {
        let mut got = Vec::new();
        let mut mine = 0;
        while got.len() < total {
            let e = s.next_event().await;
            if e.event == "message" {
                let m: Value = serde_json::from_str(&e.data).unwrap();
                if m["me"] == true {
                    mine += 1;
                    assert!(
                        m["text"].as_str().unwrap().starts_with("n0-"),
                        "me only for alice's"
                    );
                }
                got.push((
                    e.last_event_id.parse::<u64>().unwrap(),
                    m["text"].as_str().unwrap().to_owned(),
                ));
            }
        }
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "increasing ids");
        assert_eq!(
            got.iter().map(|g| &g.1).collect::<HashSet<_>>().len(),
            total,
            "each once"
        );
        orders.push((got, mine));
    }
    assert_eq!(orders[0].0, orders[1].0, "same order on every node");
    assert_eq!(orders[1].0, orders[2].0);
    assert_eq!(
        orders[0].1, per_node,
        "alice's stream tags her messages me, across nodes"
    );
    assert_eq!(orders[1].1, 0);
    // Long-poll on another node sees the history too.
    let v: Value = reqwest::get(nodes[2].url("/chat/messages?room=x&limit=500"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["messages"].as_array().unwrap().len(), total);
    drop(on_b);
    let leave = on_a.until("leave").await;
    let v: Value = serde_json::from_str(&leave.data).unwrap();
    assert_eq!(v, json!({"name":"bob","online":2}));
}

#[tokio::test]
async fn a_subscriber_fails_over_to_another_node_without_loss_or_duplicates() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let mut a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let t = token();
    let (mut s, _) = subscribe(&a, "room=f").await;
    let mut seen = Vec::new();
    for i in 0..10 {
        post(&b, &t, "f", &format!("m{i}")).await;
    }
    while seen.len() < 10 {
        seen.push(s.expect("message").await.last_event_id);
    }
    a.kill9();
    for i in 10..20 {
        assert_eq!(post(&b, &t, "f", &format!("m{i}")).await.status(), 201);
    }
    let mut s = events_at(
        &reqwest::Client::new(),
        &b.url("/chat/events?room=f"),
        &[("last-event-id", seen.last().unwrap().as_str())],
    )
    .await;
    s.expect("hello").await;
    let mut texts = Vec::new();
    while texts.len() < 10 {
        let m: Value = serde_json::from_str(&s.expect("message").await.data).unwrap();
        texts.push(m["text"].as_str().unwrap().to_owned());
    }
    assert_eq!(texts, (10..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let marker = post(&b, &t, "f", "marker")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        s.expect("message").await.last_event_id,
        marker["id"].as_str().unwrap(),
        "nothing doubled"
    );
}

#[tokio::test]
async fn online_counts_heal_after_a_node_is_killed() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let mut a = node(&redis, &["--node-ttl", "2"]);
    let b = node(&redis, &["--node-ttl", "2"]);
    let (_on_a, _) = subscribe(&a, "room=h&name=ghost").await;
    let (mut on_b, hello) = subscribe(&b, "room=h&name=watcher").await;
    assert_eq!(hello["online"], 2);
    a.kill9();
    // Within the TTL plus a heartbeat, b reaps a and says the ghost left.
    let leave = on_b.until("leave").await;
    let v: Value = serde_json::from_str(&leave.data).unwrap();
    assert_eq!(v, json!({"name":"ghost","online":1}));
    let (_again, hello) = subscribe(&b, "room=h&name=third").await;
    assert_eq!(hello["online"], 2);
}

#[tokio::test]
async fn redis_restarted_under_load_loses_nothing_acknowledged() {
    let Some(mut redis) = Redis::start(true) else {
        return;
    };
    let a = node(&redis, &["--history", "100000"]);
    let b = node(&redis, &["--history", "100000"]);
    let (mut s, _) = subscribe(&b, "room=r").await;
    let poster = {
        let url = a.url("/chat/messages");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let t = token();
            let (mut acked, mut refused) = (Vec::new(), 0);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(4) || acked.len() < 50 {
                let text = format!("k{}", acked.len() + refused);
                let r = http
                    .post(&url)
                    .header("x-chat-client", &t)
                    .json(&json!({"room":"r","text":text}))
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    201 => acked.push(
                        r.json::<Value>().await.unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    ),
                    503 => refused += 1,
                    other => panic!("unexpected status {other}"),
                }
                assert!(started.elapsed() < Duration::from_secs(30), "bounded");
            }
            (acked, refused)
        })
    };
    // Let some posts through, then bounce Redis in the middle of the load.
    let deadline = Instant::now() + WAIT;
    let mut live = Vec::new();
    while live.len() < 5 {
        assert!(Instant::now() < deadline);
        live.push(s.expect("message").await.last_event_id);
    }
    redis.restart();
    let (acked, refused) = poster.await.unwrap();
    eprintln!(
        "acknowledged {}, refused with 503 while Redis was away: {refused}",
        acked.len()
    );
    // Every acknowledged message is in the history...
    let stored: HashSet<String> = all_messages(&b.base, "r")
        .await
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    for id in &acked {
        assert!(stored.contains(id), "acknowledged {id} is stored");
    }
    // ...and the open stream, which stayed open, delivers all of them once.
    let mut got: Vec<String> = live;
    let want: HashSet<&String> = acked.iter().collect();
    while !want.iter().all(|id| got.contains(id)) {
        let e = s.next_event().await;
        if e.event == "message" {
            assert!(!got.contains(&e.last_event_id), "no duplicate");
            got.push(e.last_event_id);
        }
    }
    let health = reqwest::get(b.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[test]
fn a_node_without_redis_fails_to_start_clearly() {
    let port = free_port();
    let (code, err) =
        crate::helpers::binary_fails(&["--redis", &format!("redis://127.0.0.1:{port}/")]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach Redis"), "{err}");
}

#[tokio::test]
async fn a_long_poll_on_one_node_is_released_by_a_post_on_another() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let t = token();
    let first: Value = post(&a, &t, "lp", "first").await.json().await.unwrap();
    let since = first["id"].as_str().unwrap().to_owned();
    let url = b.url(&format!("/chat/messages?room=lp&since={since}&wait=20"));
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        reqwest::get(url)
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    // Post on A once B's long-poll is waiting.
    wait_metric(&b.base, "ssechat_long_polls", 1.0).await;
    let second: Value = post(&a, &t, "lp", "second").await.json().await.unwrap();
    let v = tokio::time::timeout(WAIT, poll)
        .await
        .expect("released")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(v["messages"][0]["text"], "second");
    assert_eq!(v["last_id"], second["id"]);
}

#[tokio::test]
async fn the_welcome_page_lists_the_50_busiest_rooms_across_nodes() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let t = token();
    for i in 0..80 {
        assert_eq!(post(&a, &t, &format!("w{i:02}"), "x").await.status(), 201);
    }
    // Two people in an old room, one on each node: the page counts both
    // (rooms crowded only on other nodes are listed once they are active).
    let (_s1, _) = subscribe(&a, &format!("room=w03&client={}", token())).await;
    let (_s2, _) = subscribe(&b, &format!("room=w03&client={}", token())).await;
    let html = reqwest::get(b.url("/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rooms: Vec<&str> = html
        .split("href=\"/chat?room=")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect();
    assert_eq!(rooms.len(), 50, "{rooms:?}");
    assert_eq!(&rooms[..3], ["w03", "w79", "w78"], "crowded, then recent");
    assert!(html.contains("2 online"), "counted cluster-wide");
    // Counted at commit on the appending node, before the 201.
    let metrics = crate::helpers::metrics_at(&a.base).await;
    assert_eq!(
        crate::helpers::metric_value(&metrics, "ssechat_messages_total"),
        80.0
    );
}

#[tokio::test]
async fn a_node_that_cannot_bind_leaves_nothing_behind() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let url = redis.url();
    let mut config = crate::helpers::test_config(&["--redis", &url]);
    config.port = port.parse().unwrap();
    let err = match ssechat::startup::Application::build(config).await {
        Ok(_) => panic!("the port is taken: the start must fail"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("cannot listen"), "{err}");
    // The node had registered and subscribed; failing, it stopped what it
    // started and left the cluster: no heartbeat entry and no subscriber.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_connection_with_timeout(WAIT).unwrap();
    let nodes: usize = redis::cmd("ZCARD")
        .arg("ssechat:nodes")
        .query(&mut conn)
        .unwrap();
    assert_eq!(nodes, 0, "the node left the cluster");
    // Redis notices the closed subscription when it reads its end: wait
    // (bounded) for that.
    let deadline = Instant::now() + WAIT;
    loop {
        let numsub: Vec<redis::Value> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("ssechat:events")
            .query(&mut conn)
            .unwrap();
        if numsub.get(1) == Some(&redis::Value::Int(0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "its subscriber stopped: {numsub:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Idempotency keys are remembered one by one, each with its own expiry:
/// a sender who keeps posting does not keep every key it ever used alive.
#[tokio::test]
async fn idempotency_keys_expire_one_by_one_and_retries_are_recognised_on_any_node() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let client = token();
    let send = |n: &BinApp, key: &str| {
        reqwest::Client::new()
            .post(n.url("/chat/messages"))
            .header("x-chat-client", client.as_str())
            .json(&json!({"room": "idem", "text": key, "client_msg_id": key}))
            .send()
    };
    let mut ids = Vec::new();
    for key in ["k1", "k2", "k3"] {
        let res = send(&a, key).await.unwrap();
        assert_eq!(res.status(), 201);
        ids.push(res.json::<Value>().await.unwrap()["id"].clone());
    }
    let again = send(&b, "k2").await.unwrap();
    assert_eq!(
        again.status(),
        200,
        "a retry on another node is a duplicate"
    );
    assert_eq!(again.json::<Value>().await.unwrap()["id"], ids[1]);

    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("ssechat:idem:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(keys.len(), 3, "one key per client_msg_id: {keys:?}");
    for k in &keys {
        let ttl: i64 = redis::cmd("TTL").arg(k).query(&mut conn).unwrap();
        assert!(
            ttl > 0 && ttl <= 24 * 3600,
            "{k} expires on its own (TTL {ttl})"
        );
    }
    assert_eq!(all_messages(&a.url(""), "idem").await.len(), 3);
}
