//! Server-Sent Events on the wire: an encoder that is exact and cannot be
//! forged, and a parser that follows the WHATWG EventSource rules (used by
//! the tests, the load generator and the fuzz/property tests to check the
//! encoder against what a browser would see).
//!
//! The EventSource format ends a line at CR, LF or CRLF and ends an event at
//! an empty line. So the only way user content could split or forge events is
//! through those characters; the encoder writes every line break inside
//! `data` as a new `data:` line (which a parser joins back with LF) and keeps
//! single-line fields (`event`, `id`, comments) free of CR, LF and NUL.

use bytes::Bytes;

/// Builds one SSE event. Fields are written in the order they are added.
#[derive(Debug, Default)]
pub struct Frame {
    buf: Vec<u8>,
}

impl Frame {
    pub fn new() -> Self {
        Frame {
            buf: Vec::with_capacity(128),
        }
    }

    /// `event: NAME`. CR, LF and NUL are dropped: they cannot be represented.
    pub fn event(mut self, name: &str) -> Self {
        self.single_line_field(b"event: ", name);
        self
    }

    /// `id: ID`. CR, LF and NUL are dropped (a NUL makes browsers ignore the id).
    pub fn id(mut self, id: &str) -> Self {
        self.single_line_field(b"id: ", id);
        self
    }

    /// `data: ...`, one line per line of `data` (CR, LF and CRLF all break a
    /// line), so the parser reassembles `data` with every break as LF.
    pub fn data(mut self, data: &str) -> Self {
        for line in split_lines(data) {
            self.buf.extend_from_slice(b"data: ");
            self.buf.extend_from_slice(line.as_bytes());
            self.buf.push(b'\n');
        }
        self
    }

    /// Ends the event (the empty line) and returns its bytes.
    pub fn finish(mut self) -> Bytes {
        self.buf.push(b'\n');
        Bytes::from(self.buf)
    }

    fn single_line_field(&mut self, prefix: &[u8], value: &str) {
        self.buf.extend_from_slice(prefix);
        self.buf.extend(
            value
                .bytes()
                .filter(|b| !matches!(b, b'\r' | b'\n' | b'\0')),
        );
        self.buf.push(b'\n');
    }
}

/// A comment block (`: text`), ignored by EventSource; keeps proxies from
/// timing out an idle stream and tells a human with `curl -N` what happens.
pub fn comment(text: &str) -> Bytes {
    let mut buf = Vec::with_capacity(text.len() + 4);
    for line in split_lines(text) {
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
    }
    buf.push(b'\n');
    Bytes::from(buf)
}

/// `retry: MS`: how long the browser waits before reconnecting.
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// JSON for an event's `data`, with U+0085 (next line), U+2028 and U+2029
/// (line and paragraph separators) written as `\u` escapes. EventSource
/// does not break lines there, but some SSE client libraries do (they split
/// with their language's "lines" function), and would cut the JSON in two.
/// Outside strings JSON has no such characters, so escaping them all is
/// still the same JSON value.
pub fn json_data(json: String) -> String {
    const SEPARATORS: [char; 3] = ['\u{85}', '\u{2028}', '\u{2029}'];
    if !json.contains(SEPARATORS) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        match c {
            '\u{85}' => out.push_str("\\u0085"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Splits at CRLF, CR or LF, the way EventSource does. An empty string is
/// one empty line, so `data("")` still carries an (empty) data field.
fn split_lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

/// Normalises line breaks to LF, as the text format promises.
pub fn normalize_newlines(s: &str) -> String {
    split_lines(s).collect::<Vec<_>>().join("\n")
}

/// One event as an EventSource would dispatch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEvent {
    /// The event type (`message` when the stream gave none).
    pub event: String,
    pub data: String,
    /// The last event id in force when the event was dispatched.
    pub last_event_id: String,
    /// Whether this event block carried an `id:` field itself.
    pub has_id: bool,
}

/// Anything the parser reports, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Event(ParsedEvent),
    Comment(String),
    Retry(u64),
}

/// An incremental parser following the WHATWG "interpreting an event stream"
/// algorithm. Feed it bytes in chunks of any size.
#[derive(Debug, Default)]
pub struct Parser {
    pending: Vec<u8>,
    started: bool,
    /// The previous chunk ended in CR: a LF at the start of the next is its pair.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    last_event_id: String,
    has_id: bool,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes and returns what they complete.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Item> {
        let mut out = Vec::new();
        self.feed_into(chunk, &mut out);
        out
    }

    /// Feeds bytes and appends what they complete to `out`.
    pub fn feed_into(&mut self, chunk: &[u8], out: &mut Vec<Item>) {
        self.feed_with(chunk, |item| {
            out.push(match item {
                ItemRef::Event(e) => Item::Event(ParsedEvent {
                    event: e.event.to_owned(),
                    data: e.data.to_owned(),
                    last_event_id: e.last_event_id.to_owned(),
                    has_id: e.has_id,
                }),
                ItemRef::Comment(c) => Item::Comment(c.to_owned()),
                ItemRef::Retry(ms) => Item::Retry(ms),
            })
        });
    }

    /// Feeds bytes and hands each completed item, borrowed, to `on_item`:
    /// nothing is allocated per event (for clients that read a lot, like
    /// the load generator). Complete lines are read where they lie; only an
    /// unfinished last line is kept.
    pub fn feed_with(&mut self, mut chunk: &[u8], mut on_item: impl FnMut(ItemRef<'_>)) {
        if self.after_cr {
            self.after_cr = false;
            if chunk.first() == Some(&b'\n') {
                chunk = &chunk[1..];
            }
        }
        let mut pending = std::mem::take(&mut self.pending);
        let joined = !pending.is_empty();
        if joined {
            pending.extend_from_slice(chunk);
        }
        let buf: &[u8] = if joined { &pending } else { chunk };
        let mut start = 0;
        while let Some(end) = memchr::memchr2(b'\n', b'\r', &buf[start..]).map(|n| start + n) {
            let mut next = end + 1;
            if buf[end] == b'\r' {
                match buf.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.line(&buf[start..end], &mut on_item);
            start = next;
        }
        if joined {
            pending.drain(..start);
        } else {
            pending.extend_from_slice(&chunk[start..]);
        }
        self.pending = pending;
    }

    fn line(&mut self, mut raw: &[u8], on_item: &mut impl FnMut(ItemRef<'_>)) {
        if !self.started {
            self.started = true;
            raw = raw.strip_prefix("\u{feff}".as_bytes()).unwrap_or(raw);
        }
        if raw.is_empty() {
            self.dispatch(on_item);
            return;
        }
        // Borrowed unless the line holds invalid UTF-8 (checked the fast
        // way first: almost every line is valid).
        let line = match std::str::from_utf8(raw) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(raw),
        };
        if let Some(comment) = line.strip_prefix(':') {
            on_item(ItemRef::Comment(
                comment.strip_prefix(' ').unwrap_or(comment),
            ));
            return;
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&*line, ""),
        };
        match field {
            "event" => {
                self.event.clear();
                self.event.push_str(value);
            }
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => {
                self.last_event_id.clear();
                self.last_event_id.push_str(value);
                self.has_id = true;
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    on_item(ItemRef::Retry(ms));
                }
            }
            _ => {}
        }
    }

    /// A blank line: the event so far, if it has data. The buffers are
    /// cleared, not freed: the next event reuses them.
    fn dispatch(&mut self, on_item: &mut impl FnMut(ItemRef<'_>)) {
        let has_id = std::mem::replace(&mut self.has_id, false);
        if std::mem::replace(&mut self.has_data, false) {
            let data = &self.data[..self.data.len() - 1]; // the trailing LF
            on_item(ItemRef::Event(EventRef {
                event: if self.event.is_empty() {
                    "message"
                } else {
                    &self.event
                },
                data,
                last_event_id: &self.last_event_id,
                has_id,
            }));
        }
        self.event.clear();
        self.data.clear();
    }
}

/// An event as [`Parser::feed_with`] hands it over, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub event: &'a str,
    pub data: &'a str,
    pub last_event_id: &'a str,
    pub has_id: bool,
}

/// What [`Parser::feed_with`] reports, in stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemRef<'a> {
    Event(EventRef<'a>),
    Comment(&'a str),
    Retry(u64),
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_data_escapes_what_some_clients_split_lines_on() {
        let text = "a\u{85}b\u{2028}c\u{2029}d\\u2028";
        let json = super::json_data(serde_json::json!({ "text": text }).to_string());
        assert_eq!(json, r#"{"text":"a\u0085b\u2028c\u2029d\\u2028"}"#);
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["text"], text, "the same value");
    }

    use super::*;

    fn parse_all(bytes: &[u8]) -> Vec<Item> {
        Parser::new().feed(bytes)
    }

    fn one_event(bytes: &[u8]) -> ParsedEvent {
        let items = parse_all(bytes);
        assert_eq!(items.len(), 1, "expected one event, got {items:?}");
        match items.into_iter().next().unwrap() {
            Item::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn encodes_the_exact_bytes() {
        let f = Frame::new().event("message").id("7").data("hi").finish();
        assert_eq!(&f[..], b"event: message\nid: 7\ndata: hi\n\n");
        assert_eq!(&comment("keep-alive")[..], b": keep-alive\n\n");
        assert_eq!(&retry(2000)[..], b"retry: 2000\n\n");
    }

    #[test]
    fn every_line_break_becomes_a_data_line() {
        let f = Frame::new().data("a\nb\rc\r\nd").finish();
        assert_eq!(&f[..], b"data: a\ndata: b\ndata: c\ndata: d\n\n");
        let e = one_event(&f);
        assert_eq!(e.data, "a\nb\nc\nd");
    }

    #[test]
    fn empty_and_trailing_lines_survive() {
        for text in ["", "\n", "a\n", "\n\n", "a\n\nb", " lead", "  two", "x\r\n"] {
            let e = one_event(&Frame::new().data(text).finish());
            assert_eq!(e.data, normalize_newlines(text), "for {text:?}");
        }
    }

    #[test]
    fn content_cannot_forge_events() {
        let evil = "x\n\nevent: join\nid: 999\ndata: forged\n\nretry: 1\n: c";
        let bytes = Frame::new().event("message").id("1").data(evil).finish();
        let e = one_event(&bytes);
        assert_eq!(e.event, "message");
        assert_eq!(e.last_event_id, "1");
        assert_eq!(e.data, evil);
    }

    #[test]
    fn single_line_fields_drop_breaks_and_nul() {
        let f = Frame::new().event("a\nb").id("1\r2\0").data("d").finish();
        assert_eq!(&f[..], b"event: ab\nid: 12\ndata: d\n\n");
        assert_eq!(&comment("a\nb")[..], b": a\n: b\n\n");
    }

    #[test]
    fn control_characters_pass_through_data() {
        let text: String = (0u32..0x20)
            .chain([0x7f, 0x85, 0x2028, 0x2029, 0xfeff])
            .filter_map(char::from_u32)
            .filter(|c| *c != '\r' && *c != '\n')
            .collect();
        let e = one_event(&Frame::new().data(&text).finish());
        assert_eq!(e.data, text);
    }

    #[test]
    fn parser_handles_any_chunking() {
        let stream = b"retry: 10\n\n: hi\r\nevent: a\r\ndata: 1\r\rid: 5\ndata: 2\n\n";
        let whole = parse_all(stream);
        for split in 0..stream.len() {
            let mut p = Parser::new();
            let mut items = p.feed(&stream[..split]);
            items.extend(p.feed(&stream[split..]));
            assert_eq!(items, whole, "split at {split}");
        }
        assert_eq!(whole.len(), 4, "{whole:?}");
        let mut p = Parser::new();
        let mut bytewise = Vec::new();
        stream
            .iter()
            .for_each(|b| p.feed_into(&[*b], &mut bytewise));
        assert_eq!(bytewise, whole, "one byte at a time");
    }

    #[test]
    fn parser_follows_the_whatwg_rules() {
        // BOM stripped, no-space values, unknown fields ignored, id persists.
        let items = parse_all(b"\xEF\xBB\xBFid:3\nfoo: x\ndata:a\n\ndata: b\n\n");
        let events: Vec<_> = items
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(events[0].data, "a");
        assert_eq!(events[0].last_event_id, "3");
        assert_eq!(events[1].last_event_id, "3");
        assert!(!events[1].has_id);
        // An event without data is not dispatched.
        assert!(parse_all(b"event: x\n\n").is_empty());
    }
}

#[cfg(test)]
mod props {
    //! Property tests (the fuzzing of the encoder): whatever the text, the
    //! bytes decode to exactly the one event that was encoded, however the
    //! stream is chunked. `PROPTEST_CASES=N` runs longer.

    use super::*;
    use proptest::prelude::*;

    /// Text biased towards what can break SSE: line breaks, colons, NUL,
    /// other controls, BOM, spaces, non-ASCII.
    fn nasty_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("\r".to_owned()),
            Just("\n".to_owned()),
            Just("\r\n".to_owned()),
            Just(":".to_owned()),
            Just(" ".to_owned()),
            Just("\0".to_owned()),
            Just("\u{feff}".to_owned()),
            Just("data: x".to_owned()),
            Just("event: join".to_owned()),
            Just("id: 1".to_owned()),
            Just("retry: 1".to_owned()),
            any::<char>().prop_map(String::from),
            "[\\x00-\\x1f\\x7f]",
            ".{0,8}",
        ];
        prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn any_text_is_exactly_one_event(text in nasty_text(), id in 0u64.., split in any::<prop::sample::Index>()) {
            let bytes = Frame::new().event("message").id(&id.to_string()).data(&text).finish();
            let at = split.index(bytes.len() + 1);
            let mut p = Parser::new();
            let mut items = p.feed(&bytes[..at]);
            items.extend(p.feed(&bytes[at..]));
            prop_assert_eq!(items.len(), 1);
            let Item::Event(e) = &items[0] else { panic!("not an event: {items:?}") };
            prop_assert_eq!(&e.event, "message");
            prop_assert_eq!(&e.data, &normalize_newlines(&text));
            prop_assert_eq!(&e.last_event_id, &id.to_string());
        }

        #[test]
        fn json_events_carry_text_exactly(text in nasty_text()) {
            let json = serde_json::to_string(&serde_json::json!({"text": text})).unwrap();
            let bytes = Frame::new().event("message").data(&json).finish();
            let items = Parser::new().feed(&bytes);
            prop_assert_eq!(items.len(), 1);
            let Item::Event(e) = &items[0] else { panic!() };
            let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
            prop_assert_eq!(v["text"].as_str().unwrap(), text.as_str());
        }

        #[test]
        fn comments_and_single_line_fields_never_dispatch(text in nasty_text()) {
            let mut bytes = comment(&text).to_vec();
            bytes.extend_from_slice(&Frame::new().event(&text).id(&text).data("x").finish());
            let events: Vec<_> = Parser::new()
                .feed(&bytes)
                .into_iter()
                .filter(|i| matches!(i, Item::Event(_)))
                .collect();
            prop_assert_eq!(events.len(), 1);
        }

        #[test]
        fn a_sequence_of_frames_stays_a_sequence(texts in prop::collection::vec(nasty_text(), 1..6)) {
            let mut bytes = Vec::new();
            for (i, t) in texts.iter().enumerate() {
                bytes.extend_from_slice(&Frame::new().event("message").id(&i.to_string()).data(t).finish());
            }
            let got: Vec<String> = Parser::new()
                .feed(&bytes)
                .into_iter()
                .filter_map(|i| match i { Item::Event(e) => Some(e.data), _ => None })
                .collect();
            let want: Vec<String> = texts.iter().map(|t| normalize_newlines(t)).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn the_parser_never_panics_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = Parser::new().feed(&bytes);
        }
    }
}
