//! The SSE encoder against the EventSource-rules parser: whatever text,
//! name, room or id goes into a frame (the raw `Frame` builder, or the
//! product's message, hello and presence frames), the parser gives back
//! exactly the events that were encoded, one for one, however the bytes are
//! chunked: no content can split, merge or forge an event. And on any bytes
//! at all, the parser's answer does not depend on the chunking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ssechat::chat::message::{
    hello_frame, presence_frames, Change, Format, Message, PresenceKind, Tally,
};
use ssechat::chat::types::{ClientId, DisplayName, EventId, RoomName};
use ssechat::sse::{self, Frame, Item, ParsedEvent, Parser};

enum Piece {
    Raw {
        event: Option<String>,
        id: Option<String>,
        data: String,
    },
    Comment(String),
    Retry(u64),
    Message {
        id: u64,
        room: String,
        name: String,
        text: String,
        me: bool,
        text_format: bool,
    },
    Hello {
        room: String,
        name: String,
        online: usize,
        client: Option<String>,
    },
    Presence {
        join: bool,
        name: String,
        online: usize,
        text_format: bool,
    },
}

struct Input {
    pieces: Vec<Piece>,
    /// Chunk lengths to feed the parser with (cycled).
    chunks: Vec<u8>,
    /// Anything at all, for the chunking-independence check.
    garbage: Vec<u8>,
}

/// The input format: records separated by 0x1E, each a kind byte and
/// fields separated by 0x1F (text is taken as UTF-8, lossily):
/// `D data` (a frame with data only), `E event data`, `I id data`,
/// `F event id data`, `C comment`, `R ms`, `M id room name text flags`
/// (flags: `m` sent by the viewer, `t` text format), `H room name online
/// [client]`, `P name online flags` (`j` join, `t` text format), `K chunk
/// lengths` (bytes), `G garbage` (bytes for the parser alone).
fn parse_input(data: &[u8]) -> Input {
    let mut input = Input {
        pieces: Vec::new(),
        chunks: Vec::new(),
        garbage: Vec::new(),
    };
    for record in data.split(|&b| b == 0x1e) {
        let Some((&kind, rest)) = record.split_first() else {
            continue;
        };
        let raw: Vec<&[u8]> = rest.split(|&b| b == 0x1f).collect();
        let f: Vec<String> = raw
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let text = |i: usize| f.get(i).cloned().unwrap_or_default();
        let num = |i: usize| {
            f.get(i)
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let flag = |i: usize, c: char| f.get(i).is_some_and(|s| s.contains(c));
        input.pieces.push(match kind {
            b'D' => Piece::Raw {
                event: None,
                id: None,
                data: text(0),
            },
            b'E' => Piece::Raw {
                event: Some(text(0)),
                id: None,
                data: text(1),
            },
            b'I' => Piece::Raw {
                event: None,
                id: Some(text(0)),
                data: text(1),
            },
            b'F' => Piece::Raw {
                event: Some(text(0)),
                id: Some(text(1)),
                data: text(2),
            },
            b'C' => Piece::Comment(text(0)),
            b'R' => Piece::Retry(num(0)),
            b'M' => Piece::Message {
                id: num(0),
                room: text(1),
                name: text(2),
                text: text(3),
                me: flag(4, 'm'),
                text_format: flag(4, 't'),
            },
            b'H' => Piece::Hello {
                room: text(0),
                name: text(1),
                online: num(2) as usize,
                client: f.get(3).cloned(),
            },
            b'P' => Piece::Presence {
                name: text(0),
                online: num(1) as usize,
                join: flag(2, 'j'),
                text_format: flag(2, 't'),
            },
            b'K' => {
                input.chunks.extend_from_slice(rest);
                continue;
            }
            b'G' => {
                input.garbage.extend_from_slice(rest);
                continue;
            }
            _ => continue,
        });
    }
    input
}

fn single_line(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '\r' | '\n' | '\0'))
        .collect()
}

fn room(s: &str) -> RoomName {
    RoomName::parse(s).unwrap_or_else(|_| RoomName::lobby())
}

fn name(s: &str) -> DisplayName {
    DisplayName::parse(s).unwrap_or_else(|_| DisplayName::parse("guest").unwrap())
}

/// What a JSON event must decode to, checked after parsing.
enum Want {
    Exact(Item),
    /// A JSON event: the name, the id in force, and the JSON value.
    Json {
        event: &'static str,
        id: String,
        has_id: bool,
        value: serde_json::Value,
    },
}

fn feed_chunked(bytes: &[u8], chunks: &[u8]) -> Vec<Item> {
    let mut p = Parser::new();
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let n = chunks
            .get(i % chunks.len().max(1))
            .map_or(bytes.len(), |&c| usize::from(c).max(1));
        let end = (at + n).min(bytes.len());
        p.feed_into(&bytes[at..end], &mut out);
        at = end;
        i += 1;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let input = parse_input(data);
    let mut bytes = Vec::new();
    let mut want = Vec::new();
    let mut last_id = String::new();
    for piece in input.pieces.iter().take(64) {
        match piece {
            Piece::Raw { event, id, data } => {
                let mut f = Frame::new();
                if let Some(e) = event {
                    f = f.event(e);
                }
                if let Some(i) = id {
                    f = f.id(i);
                    last_id = single_line(i);
                }
                bytes.extend_from_slice(&f.data(data).finish());
                let ev = event.as_deref().map(single_line).unwrap_or_default();
                want.push(Want::Exact(Item::Event(ParsedEvent {
                    event: if ev.is_empty() { "message".into() } else { ev },
                    data: sse::normalize_newlines(data),
                    last_event_id: last_id.clone(),
                    has_id: id.is_some(),
                })));
            }
            Piece::Comment(text) => {
                bytes.extend_from_slice(&sse::comment(text));
                for line in sse::normalize_newlines(text).split('\n') {
                    want.push(Want::Exact(Item::Comment(line.to_owned())));
                }
            }
            Piece::Retry(ms) => {
                bytes.extend_from_slice(&sse::retry(*ms));
                want.push(Want::Exact(Item::Retry(*ms)));
            }
            Piece::Message {
                id,
                room: r,
                name: n,
                text,
                me,
                text_format,
            } => {
                let m = Message {
                    id: EventId::parse(&id.to_string()).expect("a u64 is an id"),
                    room: room(r),
                    name: name(n),
                    text: text.clone(),
                    ts: 1_700_000_000_000,
                    sender: ClientId::random(),
                };
                let format = if *text_format {
                    Format::Text
                } else {
                    Format::Json
                };
                bytes.extend_from_slice(&m.frame(format, *me));
                last_id = id.to_string();
                if *text_format {
                    let who = if *me { "me" } else { m.name.as_str() };
                    want.push(Want::Exact(Item::Event(ParsedEvent {
                        event: "message".into(),
                        data: sse::normalize_newlines(&format!("{who}: {text}")),
                        last_event_id: last_id.clone(),
                        has_id: true,
                    })));
                } else {
                    want.push(Want::Json {
                        event: "message",
                        id: last_id.clone(),
                        has_id: true,
                        value: serde_json::json!({
                            "id": id.to_string(), "room": m.room.as_str(), "name": m.name.as_str(),
                            "text": text, "ts": m.ts, "me": me,
                        }),
                    });
                }
            }
            Piece::Hello {
                room: r,
                name: n,
                online,
                client,
            } => {
                let (r, n) = (room(r), name(n));
                bytes.extend_from_slice(&hello_frame(&r, &n, *online, client.as_deref()));
                let mut value =
                    serde_json::json!({"room": r.as_str(), "name": n.as_str(), "online": online});
                if let Some(c) = client {
                    value["client"] = c.as_str().into();
                }
                want.push(Want::Json {
                    event: "hello",
                    id: last_id.clone(),
                    has_id: false,
                    value,
                });
            }
            Piece::Presence {
                join,
                name: n,
                online,
                text_format,
            } => {
                let n = name(n);
                let kind = if *join {
                    PresenceKind::Join
                } else {
                    PresenceKind::Leave
                };
                let to = Tally {
                    joined: u64::from(*join),
                    left: u64::from(!*join),
                };
                let change = Change {
                    kind,
                    name: n.clone(),
                    about: ClientId::random(),
                };
                let (json, text) = presence_frames(Tally::default(), to, &[change], *online)
                    .expect("one change makes one event");
                let event = if *join { "join" } else { "leave" };
                if *text_format {
                    bytes.extend_from_slice(&text);
                    let verb = if *join { "joined" } else { "left" };
                    want.push(Want::Exact(Item::Event(ParsedEvent {
                        event: event.into(),
                        data: sse::normalize_newlines(&format!(">> {n} {verb} ({online} online)")),
                        last_event_id: last_id.clone(),
                        has_id: false,
                    })));
                } else {
                    bytes.extend_from_slice(&json);
                    want.push(Want::Json {
                        event,
                        id: last_id.clone(),
                        has_id: false,
                        value: serde_json::json!({"name": n.as_str(), "online": online}),
                    });
                }
            }
        }
    }

    let whole = Parser::new().feed(&bytes);
    let chunked = feed_chunked(&bytes, &input.chunks);
    assert_eq!(whole, chunked, "the chunking changed what was parsed");
    assert_eq!(
        whole.len(),
        want.len(),
        "events were split, merged or forged: {whole:#?}"
    );
    for (got, want) in whole.iter().zip(&want) {
        match want {
            Want::Exact(item) => assert_eq!(got, item),
            Want::Json {
                event,
                id,
                has_id,
                value,
            } => {
                let Item::Event(e) = got else {
                    panic!("expected an event, got {got:?}")
                };
                assert_eq!(&e.event, event);
                assert_eq!(&e.last_event_id, id);
                assert_eq!(e.has_id, *has_id);
                let v: serde_json::Value =
                    serde_json::from_str(&e.data).expect("event data is JSON");
                assert_eq!(&v, value);
                assert!(!e.data.contains('\n'), "JSON events are one line");
            }
        }
    }

    // Any bytes: the chunking never changes what the parser reports.
    let whole = Parser::new().feed(&input.garbage);
    assert_eq!(whole, feed_chunked(&input.garbage, &input.chunks));
});
