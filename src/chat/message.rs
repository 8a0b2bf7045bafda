//! Messages and the SSE frames made from them.
//!
//! A live event is encoded once and the bytes are shared by every
//! subscriber: the hot path per subscriber is an `Arc` clone, never a
//! serialisation. A message has four possible renderings (JSON or text,
//! sender or not); the common one (JSON, not the sender) is made eagerly,
//! the others the first time a subscriber needs them.

use std::sync::OnceLock;

use bytes::Bytes;
use serde::Serialize;

use super::types::{ClientId, DisplayName, EventId, RoomName};
use crate::sse::{self, Frame};

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: EventId,
    pub room: RoomName,
    pub name: DisplayName,
    pub text: String,
    /// Milliseconds since the Unix epoch, taken when the message was stored.
    pub ts: i64,
    pub sender: ClientId,
}

/// The JSON form of a message as clients see it.
#[derive(Debug, Serialize)]
pub struct MessageJson<'a> {
    pub id: String,
    pub room: &'a RoomName,
    pub name: &'a DisplayName,
    pub text: &'a str,
    pub ts: i64,
    pub me: bool,
}

impl Message {
    pub fn to_json(&self, me: bool) -> MessageJson<'_> {
        MessageJson {
            id: self.id.to_string(),
            room: &self.room,
            name: &self.name,
            text: &self.text,
            ts: self.ts,
            me,
        }
    }

    /// The SSE event for one viewer.
    pub fn frame(&self, format: Format, me: bool) -> Bytes {
        let id = self.id.to_string();
        let frame = Frame::new().event("message").id(&id);
        match format {
            Format::Json => {
                let json =
                    serde_json::to_string(&self.to_json(me)).expect("a message always serialises");
                frame.data(&sse::json_data(json)).finish()
            }
            Format::Text => {
                let who = if me { "me" } else { self.name.as_str() };
                frame.data(&format!("{who}: {}", self.text)).finish()
            }
        }
    }
}

/// How a stream wants its events: JSON (default) or human text (`format=text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

/// What travels through a room's broadcast channel.
#[derive(Debug)]
pub enum Event {
    /// Messages of one room, in id order, published together.
    Messages(Vec<MessageFrames>),
    /// A join or leave: the same bytes for everyone in each format. Not
    /// shown to the client it is about (its own streams know it is here).
    Presence {
        json: Bytes,
        text: Bytes,
        about: ClientId,
    },
    /// Time for a keep-alive comment (one shared tick for all streams, so
    /// an idle stream costs no timer of its own).
    Keepalive,
    /// The server is shutting down: end the stream now.
    Shutdown,
}

/// The messages of `list` newer than `after`: ids increase within a batch,
/// so what a reader already has (from replay, or from reading the store)
/// is a prefix.
pub fn messages_after(list: &[MessageFrames], after: Option<EventId>) -> &[MessageFrames] {
    &list[list.partition_point(|m| after.is_some_and(|a| m.message.id <= a))..]
}

/// A message and its lazily built renderings.
#[derive(Debug)]
pub struct MessageFrames {
    pub message: Message,
    json_other: Bytes,
    json_me: OnceLock<Bytes>,
    text_other: OnceLock<Bytes>,
    text_me: OnceLock<Bytes>,
}

impl MessageFrames {
    pub fn new(message: Message) -> Self {
        MessageFrames {
            json_other: message.frame(Format::Json, false),
            message,
            json_me: OnceLock::new(),
            text_other: OnceLock::new(),
            text_me: OnceLock::new(),
        }
    }

    /// Length of the rendering most viewers get.
    pub fn common_len(&self) -> usize {
        self.json_other.len()
    }

    /// The bytes for a viewer: shared, never re-encoded.
    pub fn frame_for(&self, viewer: Option<ClientId>, format: Format) -> &Bytes {
        let me = viewer == Some(self.message.sender);
        let m = &self.message;
        match (format, me) {
            (Format::Json, false) => &self.json_other,
            (Format::Json, true) => self.json_me.get_or_init(|| m.frame(Format::Json, true)),
            (Format::Text, false) => self.text_other.get_or_init(|| m.frame(Format::Text, false)),
            (Format::Text, true) => self.text_me.get_or_init(|| m.frame(Format::Text, true)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceKind {
    Join,
    Leave,
}

impl Event {
    pub fn presence(
        kind: PresenceKind,
        name: &DisplayName,
        online: usize,
        about: ClientId,
    ) -> Event {
        #[derive(Serialize)]
        struct Presence<'a> {
            name: &'a DisplayName,
            online: usize,
        }
        let (event, verb) = match kind {
            PresenceKind::Join => ("join", "joined"),
            PresenceKind::Leave => ("leave", "left"),
        };
        let json = serde_json::to_string(&Presence { name, online }).expect("serialises");
        Event::Presence {
            json: Frame::new().event(event).data(&json).finish(),
            text: Frame::new()
                .event(event)
                .data(&format!(">> {name} {verb} ({online} online)"))
                .finish(),
            about,
        }
    }
}

/// The first event of every stream.
pub fn hello_frame(
    room: &RoomName,
    name: &DisplayName,
    online: usize,
    client: Option<&str>,
) -> Bytes {
    #[derive(Serialize)]
    struct Hello<'a> {
        room: &'a RoomName,
        name: &'a DisplayName,
        online: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        client: Option<&'a str>,
    }
    let json = serde_json::to_string(&Hello {
        room,
        name,
        online,
        client,
    })
    .expect("serialises");
    Frame::new().event("hello").data(&json).finish()
}

/// Shared static frames.
pub fn keepalive_frame() -> Bytes {
    Bytes::from_static(b": keep-alive\n\n")
}

pub fn shutdown_frame(retry_ms: u64) -> Bytes {
    let mut b = sse::comment("server shutting down; reconnect to continue").to_vec();
    b.extend_from_slice(&sse::retry(retry_ms));
    Bytes::from(b)
}

pub fn lagged_frame(missed: u64) -> Bytes {
    sse::comment(&format!(
        "disconnected: this stream fell {missed} events behind; reconnect with Last-Event-ID to catch up"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::{Item, Parser};

    fn sample(text: &str) -> Message {
        Message {
            id: EventId(42),
            room: RoomName::lobby(),
            name: DisplayName::parse("alice").unwrap(),
            text: text.to_owned(),
            ts: 1_700_000_000_000,
            sender: ClientId(7),
        }
    }

    fn parse_one(b: &Bytes) -> crate::sse::ParsedEvent {
        match Parser::new().feed(b).as_slice() {
            [Item::Event(e)] => e.clone(),
            other => panic!("expected one event: {other:?}"),
        }
    }

    #[test]
    fn json_frame_round_trips_any_text() {
        let text = "<b>hi</b>\r\n\n\r\"quoted\"\u{0}\u{2028}\t end";
        let frames = MessageFrames::new(sample(text));
        let e = parse_one(frames.frame_for(Some(ClientId(7)), Format::Json));
        assert_eq!(e.event, "message");
        assert_eq!(e.last_event_id, "42");
        let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["text"], text);
        assert_eq!(v["me"], true);
        assert_eq!(v["id"], "42");
        let other = parse_one(frames.frame_for(Some(ClientId(8)), Format::Json));
        let v: serde_json::Value = serde_json::from_str(&other.data).unwrap();
        assert_eq!(v["me"], false);
    }

    #[test]
    fn text_frames_say_me_or_the_name() {
        let frames = MessageFrames::new(sample("one\r\ntwo"));
        let mine = parse_one(frames.frame_for(Some(ClientId(7)), Format::Text));
        assert_eq!(mine.data, "me: one\ntwo");
        let theirs = parse_one(frames.frame_for(None, Format::Text));
        assert_eq!(theirs.data, "alice: one\ntwo");
    }

    #[test]
    fn frames_are_shared_not_rebuilt() {
        let frames = MessageFrames::new(sample("x"));
        let a = frames.frame_for(None, Format::Text).as_ptr();
        let b = frames.frame_for(Some(ClientId(9)), Format::Text).as_ptr();
        assert_eq!(a, b);
    }

    #[test]
    fn presence_text_reads_naturally() {
        let name = DisplayName::parse("bob").unwrap();
        let Event::Presence { json, text, .. } =
            Event::presence(PresenceKind::Join, &name, 2, ClientId(1))
        else {
            unreachable!()
        };
        assert_eq!(parse_one(&text).data, ">> bob joined (2 online)");
        let j = parse_one(&json);
        assert_eq!(j.event, "join");
        assert_eq!(j.data, r#"{"name":"bob","online":2}"#);
        assert!(!j.has_id, "presence events carry no id");
    }
}
