//! SQLite history: nothing acknowledged is lost, across `kill -9` and
//! restarts; clear refusals for unusable database files.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::helpers::{all_messages, binary_fails, events_at, spawn_binary, token, WAIT};

fn id_of(m: &Value) -> u64 {
    m["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn every_acknowledged_message_survives_kill_9() {
    crash_test("full").await;
}

#[tokio::test]
async fn with_db_sync_normal_acknowledged_messages_survive_kill_9_too() {
    crash_test("normal").await;
}

async fn crash_test(sync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let db = db.to_str().unwrap();
    let args = [
        "--db",
        db,
        "--post-rate",
        "0",
        "--history",
        "100000",
        "--db-sync",
        sync,
    ];
    let mut server = spawn_binary(&args);
    let http = reqwest::Client::new();
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut posters = Vec::new();
    for p in 0..8 {
        let (http, url, acked) = (http.clone(), server.url("/chat/messages"), acked.clone());
        posters.push(tokio::spawn(async move {
            let t = token();
            for i in 0..1000 {
                let text = format!("p{p}-{i}");
                let res = http
                    .post(&url)
                    .header("x-chat-client", &t)
                    .json(&json!({"room":"crash","text":text}))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 201 => {
                        let v: Value = r.json().await.unwrap();
                        acked.lock().unwrap().insert(text, id_of(&v));
                    }
                    _ => return, // the server died under us
                }
            }
        }));
    }
    // Kill once a few hundred are acknowledged, with posts still in flight.
    let a = acked.clone();
    crate::helpers::eventually("300 acknowledged posts", || a.lock().unwrap().len() >= 300).await;
    server.kill9();
    for p in posters {
        tokio::time::timeout(WAIT, p)
            .await
            .expect("posters notice the crash")
            .unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);

    let server = spawn_binary(&args);
    let stored = all_messages(&server.base, "crash").await;
    let ids: Vec<u64> = stored.iter().map(id_of).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "stored in strictly increasing id order"
    );
    let by_text: HashMap<String, u64> = stored
        .iter()
        .map(|m| (m["text"].as_str().unwrap().to_owned(), id_of(m)))
        .collect();
    assert_eq!(by_text.len(), stored.len(), "no message stored twice");
    for (text, id) in &acked {
        assert_eq!(
            by_text.get(text),
            Some(id),
            "acknowledged {text} kept with its id"
        );
    }
    // Per poster, order is kept: each poster waits for its answer before
    // the next post, so in id order its messages are p{p}-0, p{p}-1, ...
    // with no gap, and at most the one in flight at the kill is stored
    // without having been acknowledged.
    for p in 0..8 {
        let prefix = format!("p{p}-");
        let seq: Vec<usize> = stored
            .iter()
            .filter_map(|m| m["text"].as_str().unwrap().strip_prefix(&prefix))
            .map(|i| i.parse().unwrap())
            .collect();
        let expected: Vec<usize> = (0..seq.len()).collect();
        assert_eq!(seq, expected, "poster {p}'s messages in the order sent");
        let acked_p = acked.keys().filter(|t| t.starts_with(&prefix)).count();
        assert!(
            seq.len() == acked_p || seq.len() == acked_p + 1,
            "poster {p}: {} stored, {acked_p} acknowledged",
            seq.len()
        );
    }
    let max_before = *ids.last().unwrap();
    let res = http
        .post(server.url("/chat/messages"))
        .json(&json!({"room":"crash","text":"after restart"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    assert!(
        id_of(&v) > max_before,
        "ids keep increasing across the crash"
    );
}

#[tokio::test]
async fn last_event_id_replay_and_idempotency_work_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let args = ["--db", db.to_str().unwrap(), "--post-rate", "0"];
    let http = reqwest::Client::new();
    let t = token();
    let post = |base: String, text: &'static str, key: &'static str| {
        let (http, t) = (http.clone(), t.clone());
        async move {
            let r = http
                .post(format!("{base}/chat/messages"))
                .header("x-chat-client", &t)
                .json(&json!({"room":"rs","text":text,"client_msg_id":key}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, id_of(&r.json::<Value>().await.unwrap()))
        }
    };
    let mut first = spawn_binary(&args);
    let (s1, id1) = post(first.base.clone(), "one", "k1").await;
    let (_, id2) = post(first.base.clone(), "two", "k2").await;
    assert_eq!(s1, 201);
    assert_eq!(first.terminate(), Some(0), "clean exit on SIGTERM");

    let second = spawn_binary(&args);
    let (again, same) = post(second.base.clone(), "one", "k1").await;
    assert_eq!(
        (again, same),
        (200, id1),
        "the retry after restart is recognised"
    );
    let (_, id3) = post(second.base.clone(), "three", "k3").await;
    assert!(id3 > id2);
    let mut s = events_at(
        &http,
        &second.url("/chat/events?room=rs"),
        &[("last-event-id", &id1.to_string())],
    )
    .await;
    s.expect("hello").await;
    let got: Vec<String> = vec![
        s.expect("message").await.last_event_id,
        s.expect("message").await.last_event_id,
    ];
    assert_eq!(got, [id2.to_string(), id3.to_string()]);
    // And the page renders from the store.
    let html = http
        .get(second.url("/chat?room=rs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("one") && html.contains("two") && html.contains("three"));
}

#[tokio::test]
async fn retention_keeps_exactly_the_newest_n_per_room() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let db = db.to_str().unwrap();
    let http = reqwest::Client::new();
    let mut server = spawn_binary(&["--db", db, "--post-rate", "0", "--history", "1000"]);
    for room in ["r1", "r2"] {
        for i in 0..12 {
            http.post(server.url("/chat/messages"))
                .json(&json!({"room":room,"text":format!("{i}")}))
                .send()
                .await
                .unwrap();
        }
    }
    server.terminate();
    // Restarted with a smaller history: pruning runs in the background.
    let server = spawn_binary(&["--db", db, "--history", "5"]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r1 = all_messages(&server.base, "r1").await;
        let r2 = all_messages(&server.base, "r2").await;
        if r1.len() == 5 && r2.len() == 5 {
            let texts: Vec<&str> = r1.iter().map(|m| m["text"].as_str().unwrap()).collect();
            assert_eq!(texts, ["7", "8", "9", "10", "11"]);
            break;
        }
        assert!(
            r1.len() >= 5 && r2.len() >= 5,
            "never fewer than the newest 5"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "pruning did not happen in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[test]
fn unusable_database_files_fail_the_start_clearly() {
    let dir = tempfile::tempdir().unwrap();

    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
    let (code, err) = binary_fails(&["--db", junk.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("corrupt or not an SQLite database"), "{err}");

    let newer = dir.path().join("newer.db");
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 7;")
        .unwrap();
    let (code, err) = binary_fails(&["--db", newer.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("schema version 7, newer"), "{err}");

    // Root ignores file modes, so use a path no one can create a file in.
    let (code, err) = binary_fails(&["--db", "/proc/ssechat-cannot-exist/chat.db"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot be opened for writing"), "{err}");

    let used = dir.path().join("used.db");
    let _running = spawn_binary(&["--db", used.to_str().unwrap()]);
    let (code, err) = binary_fails(&["--db", used.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("locked by another process"), "{err}");

    // Locked by another program holding a write transaction.
    let other = dir.path().join("other.db");
    let holder = rusqlite::Connection::open(&other).unwrap();
    holder
        .execute_batch("CREATE TABLE t(x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
        .unwrap();
    let (code, err) = binary_fails(&["--db", other.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("locked"), "{err}");
}

/// A small tmpfs, unmounted on drop: a disk that can really fill up.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(kib: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_turns_posts_into_503_and_recovers() {
    let Some(disk) = SmallDisk::mount(2048) else {
        crate::helpers::skip(
            "a_full_disk_turns_posts_into_503_and_recovers",
            "cannot mount a tmpfs (run as root)",
        );
        return;
    };
    let db = disk.dir.path().join("chat.db");
    let server = spawn_binary(&["--db", db.to_str().unwrap(), "--post-rate", "0"]);
    let http = reqwest::Client::new();
    let post = |text: String| {
        let http = http.clone();
        let url = server.url("/chat/messages");
        async move {
            http.post(url)
                .json(&json!({"room":"full","text":text}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(post("before".into()).await.status(), 201);
    // Fill the disk, leaving almost nothing.
    let filler = disk.dir.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 4 * 1024 * 1024]);
    let mut refused = None;
    for i in 0..200 {
        let res = post(format!("{i}{}", "x".repeat(1900))).await;
        if res.status() != 201 {
            refused = Some(res);
            break;
        }
    }
    let res = refused.expect("a full disk refuses writes");
    assert_eq!(res.status(), 503);
    let v: Value = res.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("storage"), "{v}");
    let health = http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the server stays up");
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        post("after".into()).await.status(),
        201,
        "recovers when the disk does"
    );
    let all = all_messages(&server.base, "full").await;
    assert_eq!(all.first().unwrap()["text"], "before");
    assert_eq!(all.last().unwrap()["text"], "after");
}
