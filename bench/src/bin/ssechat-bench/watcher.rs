//! `--watcher`: one stream opened before the crowd, reading as a fast
//! client would, through the join storm, the run and the leave storm. It
//! reports whether the server cut it off and how many presence events
//! (`join`, `leave`, `presence`) it was sent in each storm, and (ssechat)
//! how long after everybody left it was told the room is down to itself.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use ssechat::sse::{ItemRef, Parser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};

use crate::http::{read_head, Chunked, Target};
use crate::Mode;

/// Which storm presence events count towards: joining (0, from the
/// start), then leaving.
pub const LEAVING: u8 = 1;

#[derive(Default)]
pub struct Watcher {
    pub ready: AtomicBool,
    pub cut_off: AtomicBool,
    pub phase: AtomicU8,
    pub presence: [AtomicU64; 2],
    /// The online count of the latest presence event (u64::MAX: none yet).
    pub online: AtomicU64,
    pub changed: Notify,
    pub error: std::sync::Mutex<Option<String>>,
}

impl Watcher {
    pub fn new() -> Arc<Watcher> {
        let w = Watcher::default();
        w.online.store(u64::MAX, Relaxed);
        Arc::new(w)
    }

    fn fail(&self, e: String) {
        self.cut_off.store(true, Relaxed);
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        self.changed.notify_waiters();
    }

    /// Waits (bounded) until the latest presence event says `online`.
    pub async fn until_online(&self, online: u64, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            if self.online.load(Relaxed) == online {
                return true;
            }
            if self.cut_off.load(Relaxed) {
                return false;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }
}

/// Runs the watching stream until `stop`.
pub async fn watch_room(
    target: Target,
    mode: Mode,
    room: String,
    w: Arc<Watcher>,
    mut stop: watch::Receiver<bool>,
) {
    let path = match mode {
        Mode::Ssechat => format!("/chat/events?room={room}&name=watcher"),
        Mode::Reference => "/events".into(),
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", target.host);
    let mut scratch = vec![0u8; 16 * 1024];
    let mut buf = Vec::new();
    let opened = async {
        let mut s = target
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let head = read_head(&mut s, &mut buf, &mut scratch).await?;
        if head.status != 200 {
            return Err(format!("watcher: status {}", head.status));
        }
        Ok((s, head))
    };
    let (mut stream, head) = match opened.await {
        Ok(v) => v,
        Err(e) => return w.fail(e),
    };
    if mode == Mode::Reference {
        w.ready.store(true, Relaxed);
        w.changed.notify_waiters();
    }
    let mut chunked = head.chunked.then(Chunked::default);
    let mut parser = Parser::new();
    let mut pending = buf;
    loop {
        let mut cut = None;
        let mut on_item = |item: ItemRef<'_>| match item {
            ItemRef::Event(ev) => match ev.event {
                "hello" => w.ready.store(true, Relaxed),
                "join" | "leave" | "presence" => {
                    let phase = w.phase.load(Relaxed) as usize;
                    w.presence[phase.min(1)].fetch_add(1, Relaxed);
                    if let Some(n) = online_of(ev.data) {
                        w.online.store(n, Relaxed);
                    }
                }
                _ => {}
            },
            ItemRef::Comment(c) if c.contains("disconnected") => cut = Some(c.to_owned()),
            _ => {}
        };
        let ended = match &mut chunked {
            Some(dec) => match dec.feed(&pending, |d| parser.feed_with(d, &mut on_item)) {
                Ok(end) => end,
                Err(e) => return w.fail(e),
            },
            None => {
                parser.feed_with(&pending, &mut on_item);
                false
            }
        };
        pending.clear();
        w.changed.notify_waiters();
        if let Some(c) = cut {
            return w.fail(c);
        }
        if ended {
            return w.fail("the server ended the stream".into());
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            r = stream.read(&mut scratch) => match r {
                Ok(0) => return w.fail("the server closed the stream".into()),
                Ok(n) => pending.extend_from_slice(&scratch[..n]),
                Err(e) => return w.fail(format!("read: {e}")),
            },
        }
    }
}

/// `"online":N` in a presence event's JSON.
fn online_of(data: &str) -> Option<u64> {
    let rest = &data[data.find("\"online\":")? + 9..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn online_is_found_in_any_presence_json() {
        assert_eq!(super::online_of(r#"{"name":"a","online":12}"#), Some(12));
        assert_eq!(
            super::online_of(r#"{"online":1501,"joined":3}"#),
            Some(1501)
        );
        assert_eq!(super::online_of(r#"{"name":"x"}"#), None);
    }
}
