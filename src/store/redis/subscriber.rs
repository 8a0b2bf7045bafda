//! The node's one subscription to `ssechat:events`: parses what the Lua
//! scripts publish and hands it to the chat's inbox; reconnects with
//! back-off, and after a reconnect has the inbox catch up on what this
//! node's live rooms missed.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Conn, CHANNEL, IO_TIMEOUT};
use crate::chat::cluster::Inbox;
use crate::chat::cluster::PresenceBatch;
use crate::chat::message::{Change, Message, PresenceKind, Tally};
use crate::chat::types::{ClientId, DisplayName, EventId, RoomName};

/// First wait after losing Redis; doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A dead connection does not always end the message stream: it is pinged
/// this often, and taken for dead without an answer within `IO_TIMEOUT`.
const PING_EVERY: Duration = Duration::from_secs(1);

/// One published item, parsed.
#[derive(Debug)]
enum Published {
    Message(Message),
    /// A room's presence changes and typing, as one node's window made them.
    Presence(PresenceBatch),
}

fn parse_tally(s: &str) -> Option<Tally> {
    let (j, l) = s.split_once(' ')?;
    Some(Tally {
        joined: j.parse().ok()?,
        left: l.parse().ok()?,
    })
}

/// `b` payloads (see `leave_fn.lua`): room, online, tally before, tally
/// after, then one line per change (`j`/`l`) or typing notice (`t`):
/// `KIND CLIENT NAME` (names have no control characters).
fn parse_batch(batch: &str) -> Option<PresenceBatch> {
    let mut lines = batch.split('\n');
    let room = RoomName::parse(lines.next()?).ok()?;
    let online = lines.next()?.parse().ok()?;
    let from = parse_tally(lines.next()?)?;
    let to = parse_tally(lines.next()?)?;
    let (mut changes, mut typing) = (Vec::new(), Vec::new());
    for line in lines {
        let mut parts = line.splitn(3, ' ');
        let (kind, client, name) = (parts.next()?, parts.next()?, parts.next()?);
        let (about, name) = (ClientId::from_hex(client), DisplayName::parse(name).ok()?);
        let kind = match kind {
            "j" => PresenceKind::Join,
            "l" => PresenceKind::Leave,
            _ => {
                typing.push((about, name));
                continue;
            }
        };
        changes.push(Change { kind, name, about });
    }
    Some(PresenceBatch {
        room,
        from,
        to,
        online,
        changes,
        typing,
    })
}

fn parse_published(payload: &str) -> Option<Published> {
    if let Some(batch) = payload.strip_prefix("b\n") {
        return parse_batch(batch).map(Published::Presence);
    }
    let mut parts = payload.splitn(7, '\n');
    match parts.next()? {
        "m" => {
            let id = parts.next()?.parse().ok()?;
            let room = RoomName::parse(parts.next()?).ok()?;
            let ts = parts.next()?.parse().ok()?;
            let sender = ClientId::from_hex(parts.next()?);
            let name = DisplayName::parse(parts.next()?).ok()?;
            let text = parts.next()?.to_owned();
            Some(Published::Message(Message {
                id: EventId::assigned(id),
                room,
                name,
                text,
                ts,
                sender,
            }))
        }
        _ => None,
    }
}

/// Feeds `inbox` until cancelled. `ready` fires once the first
/// subscription is up.
pub async fn run(
    conn: Arc<Conn>,
    inbox: Inbox,
    cancel: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut last_seen = EventId::assigned(0);
    let mut ready = Some(ready);
    let mut backoff = MIN_BACKOFF;
    let mut was_down = false;
    loop {
        let connected = async {
            let mut pubsub = conn.client.get_async_pubsub().await?;
            pubsub.subscribe(CHANNEL).await?;
            redis::RedisResult::Ok(pubsub)
        };
        let pubsub = tokio::select! {
            () = cancel.cancelled() => return,
            r = connected => match r {
                Ok(p) => p,
                Err(e) => {
                    conn.set_healthy(false);
                    if !was_down {
                        tracing::error!(error = %e, "lost Redis; retrying");
                    }
                    was_down = true;
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        backoff = MIN_BACKOFF;
        conn.set_healthy(true);
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        if was_down {
            tracing::info!("Redis is back; catching up");
            inbox.catch_up(last_seen).await;
        }
        let (mut sink, mut messages) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        loop {
            let msg = tokio::select! {
                () = cancel.cancelled() => return,
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(IO_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if matches!(pong, Ok(Ok(_))) {
                        continue;
                    }
                    break;
                }
                m = messages.next() => m,
            };
            let Some(msg) = msg else { break };
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            match parse_published(&payload) {
                Some(Published::Message(m)) => {
                    last_seen = last_seen.max(m.id);
                    inbox.messages(vec![m]);
                }
                Some(Published::Presence(batch)) => inbox.presence(batch),
                None => tracing::warn!("ignored a malformed event from Redis"),
            }
        }
        drop((sink, messages));
        conn.set_healthy(false);
        tracing::error!("Redis subscription ended; reconnecting");
        was_down = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_payloads_parse_with_any_text() {
        let p = "m\n42\nlobby\n1700\n0000000000000000000000000000000a\nalice\nline1\nline2\n\nend";
        let Some(Published::Message(m)) = parse_published(p) else {
            panic!()
        };
        assert_eq!(m.id, EventId::assigned(42));
        assert_eq!(m.text, "line1\nline2\n\nend");
        assert_eq!(m.sender, ClientId::test(10));
        let Some(Published::Presence(b)) =
            parse_published("b\nlobby\n3\n4 1\n5 2\nj 0a bob smith\nl 0b al\nt 0c cy")
        else {
            panic!()
        };
        assert_eq!(b.room.as_str(), "lobby");
        assert_eq!(
            (b.online, b.from, b.to),
            (
                3,
                Tally { joined: 4, left: 1 },
                Tally { joined: 5, left: 2 }
            )
        );
        assert_eq!(b.changes.len(), 2);
        assert_eq!(b.changes[0].about, ClientId::test(10));
        assert_eq!(b.changes[0].name.as_str(), "bob smith");
        assert_eq!(b.changes[1].kind, PresenceKind::Leave);
        assert_eq!(
            b.typing,
            [(ClientId::test(12), DisplayName::parse("cy").unwrap())]
        );
        assert!(parse_published("x\n").is_none());
    }
}
