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

/// One change of a room's presence: a client's first stream opened, or
/// its last one closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: PresenceKind,
    pub name: DisplayName,
    pub about: ClientId,
}

/// How many joins and leaves a room has seen, ever: monotonic, so the
/// difference of two tallies is what changed between them, and a stream
/// needs only the tally it last told its client about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub joined: u64,
    pub left: u64,
}

impl Tally {
    /// The position in the room's sequence of changes.
    pub fn seq(self) -> u64 {
        self.joined + self.left
    }

    pub fn count(&mut self, kind: PresenceKind) {
        match kind {
            PresenceKind::Join => self.joined += 1,
            PresenceKind::Leave => self.left += 1,
        }
    }
}

/// Names listed in a `presence` summary, per list.
pub const SUMMARY_NAMES: usize = 10;

/// The presence event telling a viewer who saw the room at `from` what
/// changed up to `to`, `online` people now. `changes` are the known
/// changes just before `to`, in arrival order (the last ones of the
/// span; earlier ones may be unknown). One change gives the familiar
/// `join`/`leave`; more give one `presence` summary. `None` if nothing
/// changed. Returns the JSON and the text rendering.
pub fn presence_frames(
    from: Tally,
    to: Tally,
    changes: &[Change],
    online: usize,
) -> Option<(Bytes, Bytes)> {
    let joined = to.joined.saturating_sub(from.joined);
    let left = to.left.saturating_sub(from.left);
    // Only the changes inside the span (the viewer may know some already).
    let span = (joined + left) as usize;
    let changes = &changes[changes.len().saturating_sub(span)..];
    match (joined + left, changes) {
        (0, _) => None,
        (1, [one]) => Some(single_frames(one, online)),
        _ => Some(summary_frames(joined, left, changes, online)),
    }
}

fn single_frames(change: &Change, online: usize) -> (Bytes, Bytes) {
    #[derive(Serialize)]
    struct Presence<'a> {
        name: &'a DisplayName,
        online: usize,
    }
    let name = &change.name;
    let (event, verb) = match change.kind {
        PresenceKind::Join => ("join", "joined"),
        PresenceKind::Leave => ("leave", "left"),
    };
    let json = serde_json::to_string(&Presence { name, online }).expect("serialises");
    (
        Frame::new().event(event).data(&json).finish(),
        Frame::new()
            .event(event)
            .data(&format!(">> {name} {verb} ({online} online)"))
            .finish(),
    )
}

fn summary_frames(joined: u64, left: u64, changes: &[Change], online: usize) -> (Bytes, Bytes) {
    #[derive(Serialize)]
    struct Summary<'a> {
        online: usize,
        joined: u64,
        left: u64,
        names_joined: Vec<&'a DisplayName>,
        names_left: Vec<&'a DisplayName>,
    }
    let names = |kind| {
        changes
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| &c.name)
            .take(SUMMARY_NAMES)
            .collect()
    };
    let json = serde_json::to_string(&Summary {
        online,
        joined,
        left,
        names_joined: names(PresenceKind::Join),
        names_left: names(PresenceKind::Leave),
    })
    .expect("serialises");
    let mut parts = Vec::with_capacity(2);
    if joined > 0 {
        parts.push(format!("{} joined", thousands(joined)));
    }
    if left > 0 {
        parts.push(format!("{} left", thousands(left)));
    }
    let text = format!(
        ">> {} ({} online)",
        parts.join(", "),
        thousands(online as u64)
    );
    (
        Frame::new().event("presence").data(&json).finish(),
        Frame::new().event("presence").data(&text).finish(),
    )
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// `event: typing` with `{"name"}`: JSON streams only.
pub fn typing_frame(name: &DisplayName) -> Bytes {
    #[derive(Serialize)]
    struct Typing<'a> {
        name: &'a DisplayName,
    }
    let json = serde_json::to_string(&Typing { name }).expect("serialises");
    Frame::new().event("typing").data(&json).finish()
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
            id: EventId::assigned(42),
            room: RoomName::lobby(),
            name: DisplayName::parse("alice").unwrap(),
            text: text.to_owned(),
            ts: 1_700_000_000_000,
            sender: ClientId::test(7),
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
        let e = parse_one(frames.frame_for(Some(ClientId::test(7)), Format::Json));
        assert_eq!(e.event, "message");
        assert_eq!(e.last_event_id, "42");
        let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["text"], text);
        assert_eq!(v["me"], true);
        assert_eq!(v["id"], "42");
        let other = parse_one(frames.frame_for(Some(ClientId::test(8)), Format::Json));
        let v: serde_json::Value = serde_json::from_str(&other.data).unwrap();
        assert_eq!(v["me"], false);
    }

    #[test]
    fn text_frames_say_me_or_the_name() {
        let frames = MessageFrames::new(sample("one\r\ntwo"));
        let mine = parse_one(frames.frame_for(Some(ClientId::test(7)), Format::Text));
        assert_eq!(mine.data, "me: one\ntwo");
        let theirs = parse_one(frames.frame_for(None, Format::Text));
        assert_eq!(theirs.data, "alice: one\ntwo");
    }

    #[test]
    fn frames_are_shared_not_rebuilt() {
        let frames = MessageFrames::new(sample("x"));
        let a = frames.frame_for(None, Format::Text).as_ptr();
        let b = frames
            .frame_for(Some(ClientId::test(9)), Format::Text)
            .as_ptr();
        assert_eq!(a, b);
    }

    fn change(kind: PresenceKind, name: &str, about: u128) -> Change {
        Change {
            kind,
            name: DisplayName::parse(name).unwrap(),
            about: ClientId::test(about),
        }
    }

    fn tally(joined: u64, left: u64) -> Tally {
        Tally { joined, left }
    }

    #[test]
    fn one_change_is_the_familiar_join_or_leave() {
        let bob = [change(PresenceKind::Join, "bob", 1)];
        let (json, text) = presence_frames(tally(4, 3), tally(5, 3), &bob, 2).unwrap();
        assert_eq!(parse_one(&text).data, ">> bob joined (2 online)");
        let j = parse_one(&json);
        assert_eq!(j.event, "join");
        assert_eq!(j.data, r#"{"name":"bob","online":2}"#);
        assert!(!j.has_id, "presence events carry no id");
        let gone = [change(PresenceKind::Leave, "bob", 1)];
        let (json, text) = presence_frames(tally(5, 3), tally(5, 4), &gone, 1).unwrap();
        assert_eq!(parse_one(&json).event, "leave");
        assert_eq!(parse_one(&text).data, ">> bob left (1 online)");
        assert!(presence_frames(tally(5, 3), tally(5, 3), &gone, 1).is_none());
    }

    #[test]
    fn more_changes_are_one_summary_with_at_most_ten_names_each() {
        let mut changes: Vec<Change> = (0..1500)
            .map(|i| change(PresenceKind::Join, &format!("p{i}"), i))
            .collect();
        changes.insert(3, change(PresenceKind::Leave, "early", 9999));
        changes.push(change(PresenceKind::Leave, "x", 10000));
        changes.push(change(PresenceKind::Leave, "y", 10001));
        let (json, text) = presence_frames(tally(0, 0), tally(1500, 3), &changes, 1501).unwrap();
        let t = parse_one(&text);
        assert_eq!(t.event, "presence");
        assert_eq!(t.data, ">> 1,500 joined, 3 left (1,501 online)");
        let v: serde_json::Value = serde_json::from_str(&parse_one(&json).data).unwrap();
        assert_eq!(v["online"], 1501);
        assert_eq!(v["joined"], 1500);
        assert_eq!(v["left"], 3);
        let joined: Vec<&str> = v["names_joined"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert_eq!(joined, (0..10).map(|i| format!("p{i}")).collect::<Vec<_>>());
        assert_eq!(v["names_left"], serde_json::json!(["early", "x", "y"]));
    }

    #[test]
    fn a_span_takes_only_its_own_changes_and_reads_without_zero_parts() {
        let changes = [
            change(PresenceKind::Join, "a", 1),
            change(PresenceKind::Join, "b", 2),
            change(PresenceKind::Join, "c", 3),
        ];
        // The viewer knew of a already: b and c are news.
        let (json, text) = presence_frames(tally(1, 0), tally(3, 0), &changes, 3).unwrap();
        assert_eq!(parse_one(&text).data, ">> 2 joined (3 online)");
        let v: serde_json::Value = serde_json::from_str(&parse_one(&json).data).unwrap();
        assert_eq!(v["names_joined"], serde_json::json!(["b", "c"]));
        // Only c is news: the familiar join.
        let (json, _) = presence_frames(tally(2, 0), tally(3, 0), &changes, 3).unwrap();
        assert_eq!(parse_one(&json).data, r#"{"name":"c","online":3}"#);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn typing_is_json_with_the_name() {
        let e = parse_one(&typing_frame(&DisplayName::parse("al\"x").unwrap()));
        assert_eq!(e.event, "typing");
        assert_eq!(e.data, r#"{"name":"al\"x"}"#);
    }
}
