//! Validated newtypes of the chat domain.
//!
//! Every value that comes from a client passes through one `parse` here, so
//! the rest of the crate can hold a `RoomName` or a `MessageText` and know it
//! is valid. Errors are human-readable: they go back to the client verbatim.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Why a value from a client was refused; the text is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

/// A room name: `^[A-Za-z0-9_-]{1,64}$`. Cheap to clone (shared string).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomName(Arc<str>);

impl RoomName {
    pub const DEFAULT: &'static str = "lobby";

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(RoomName(Arc::from(s)))
        } else {
            Err(invalid(
                "room must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'",
            ))
        }
    }

    /// `room` from a request: absent means the lobby.
    pub fn parse_or_default(s: Option<&str>) -> Result<Self, Invalid> {
        Self::parse(s.unwrap_or(Self::DEFAULT))
    }

    pub fn lobby() -> Self {
        RoomName(Arc::from(Self::DEFAULT))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Characters a display name may not contain: C0/C1 controls, and the
/// Unicode line and paragraph separators (they break lines in some clients).
fn is_forbidden_in_name(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Characters that would let a name pass for another: bidirectional
/// embeddings, overrides and isolates (they reorder what follows, so
/// `alice\u{202E}ecila` reads as someone else) and zero-width characters
/// (`al\u{200B}ice` looks like `alice`).
fn is_spoofing_in_name(c: char) -> bool {
    matches!(c,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')
}

/// A public display name: 1-32 characters, no control characters, no
/// bidirectional controls or zero-width characters, and not `me` in any
/// case (the text format shows a client's own messages as `me: ...`).
/// Surrounding whitespace is trimmed first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct DisplayName(Arc<str>);

impl DisplayName {
    pub const MAX_CHARS: usize = 32;

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let s = s.trim();
        let n = s.chars().count();
        if n == 0 {
            return Err(invalid("name must not be empty"));
        }
        if n > Self::MAX_CHARS {
            return Err(invalid(format!(
                "name must be at most {} characters (got {n})",
                Self::MAX_CHARS
            )));
        }
        if s.chars().any(is_forbidden_in_name) {
            return Err(invalid("name must not contain control characters"));
        }
        if s.chars().any(is_spoofing_in_name) {
            return Err(invalid(
                "name must not contain bidirectional controls or zero-width characters",
            ));
        }
        if s.eq_ignore_ascii_case("me") {
            return Err(invalid(
                "the name 'me' is reserved (it marks a client's own messages)",
            ));
        }
        Ok(DisplayName(Arc::from(s)))
    }

    /// The name of a client that never chose one: `guest-XXXX`, stable per token.
    pub fn guest(client: ClientId) -> Self {
        DisplayName(Arc::from(format!("guest-{:04x}", (client.0 >> 112) as u16)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text of a message: 1..=max Unicode scalar values, anything allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText(String);

impl MessageText {
    pub fn parse(s: String, max_chars: usize) -> Result<Self, Invalid> {
        if s.is_empty() {
            return Err(invalid("text must not be empty"));
        }
        if max_chars > 0 {
            // Count lazily: stop as soon as the limit is passed.
            let n = s.chars().take(max_chars + 1).count();
            if n > max_chars {
                return Err(invalid(format!(
                    "text must be at most {max_chars} characters"
                )));
            }
        }
        Ok(MessageText(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// An event id: strictly increasing per room in delivery order. On the wire
/// it is an opaque decimal string; clients only echo it back. Outside this
/// crate one comes only from [`EventId::parse`]; inside, the histories
/// assign them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct EventId(u64);

impl EventId {
    /// An id a history assigned, or read back from its storage. Clients'
    /// ids come from [`EventId::parse`].
    pub const fn assigned(n: u64) -> Self {
        EventId(n)
    }

    /// The number, for a history to store and compare.
    pub const fn get(self) -> u64 {
        self.0
    }

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| s.parse::<u64>().ok())
            .flatten()
            .map(EventId)
            .ok_or_else(|| invalid("malformed event id: expected an id from this server"))
    }
}

impl EventId {
    /// An id a client may leave empty (`since=`, `Last-Event-ID:`): empty
    /// means none; anything else must parse. `what` names the field in the
    /// error.
    pub fn parse_optional(s: &str, what: &str) -> Result<Option<Self>, Invalid> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        EventId::parse(s)
            .map(Some)
            .map_err(|e| invalid(format!("{what}: {e}")))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The secret a client proves itself with. Never logged, never shown to
/// other clients: `Debug` is redacted, and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientToken(String);

impl fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientToken(<redacted>)")
    }
}

impl ClientToken {
    /// At least 128 bits written in hex: anything shorter could be guessed
    /// (or chosen by someone else: `a` is a token many scripts would pick).
    pub const MIN_LEN: usize = 32;
    pub const MAX_LEN: usize = 128;

    /// Tokens are URL-safe so they fit in a cookie, a header and a query.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = (Self::MIN_LEN..=Self::MAX_LEN).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
        if ok {
            Ok(ClientToken(s.to_owned()))
        } else {
            Err(invalid(format!(
                "client token must be {}-{} URL-safe characters (A-Z a-z 0-9 - _ . ~): \
                 at least 128 random bits, e.g. 32 hex digits",
                Self::MIN_LEN,
                Self::MAX_LEN
            )))
        }
    }

    /// A fresh token: 160 random bits, hex encoded.
    pub fn mint() -> Self {
        ClientToken(random_hex(20))
    }

    /// The value to put in a cookie or a `hello` event for this client alone.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The public identity derived from the token (a one-way hash), which is
    /// what gets stored with messages and compared for `me`.
    pub fn id(&self) -> ClientId {
        ClientId::hashed(self.0.as_bytes())
    }
}

/// `bytes` random bytes from the operating system, hex encoded.
pub fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).expect("the operating system's random source failed");
    hex(&raw)
}

/// Lowercase hex, two digits a byte, in one allocation (a token is minted
/// for every request without one: `format!` per byte was 20 of them).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// One-way identity of a client (first 128 bits of SHA-256 of its token).
/// Outside this crate one comes only from a token ([`ClientToken::id`]),
/// or [`ClientId::random`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(u128);

impl ClientId {
    /// The first 128 bits of the SHA-256 of `secret`.
    pub fn hashed(secret: &[u8]) -> Self {
        let digest = Sha256::digest(secret);
        let mut b = [0u8; 16];
        b.copy_from_slice(&digest[..16]);
        ClientId(u128::from_be_bytes(b))
    }

    /// As stored in a history (big-endian).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The inverse of [`ClientId::to_bytes`].
    pub fn from_bytes(b: [u8; 16]) -> Self {
        ClientId(u128::from_be_bytes(b))
    }

    /// A small identity for unit tests.
    #[cfg(test)]
    pub(crate) const fn test(n: u128) -> Self {
        ClientId(n)
    }

    /// An identity no token maps to in practice: for anonymous senders.
    pub fn random() -> Self {
        ClientToken::mint().id()
    }

    /// 32 hex digits, as stored outside the process (Redis).
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }

    /// The inverse of `to_hex`; garbage reads as the zero identity, which
    /// is no one's (so it is never `me`).
    pub fn from_hex(s: &str) -> Self {
        ClientId(u128::from_str_radix(s, 16).unwrap_or(0))
    }
}

/// Idempotency key of a POST: 1-64 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let n = s.chars().count();
        if !(1..=64).contains(&n) || s.chars().any(char::is_control) {
            return Err(invalid(
                "client_msg_id must be 1-64 characters without control characters",
            ));
        }
        Ok(ClientMsgId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_follow_the_pattern() {
        assert!(RoomName::parse("lobby").is_ok());
        assert!(RoomName::parse("a-b_C9").is_ok());
        assert!(RoomName::parse(&"x".repeat(64)).is_ok());
        for bad in ["", "a b", "é", "a/b", "a\n", &"x".repeat(65)] {
            assert!(RoomName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(RoomName::parse_or_default(None).unwrap().as_str(), "lobby");
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(DisplayName::parse("  alice ").unwrap().as_str(), "alice");
        assert!(DisplayName::parse(&"é".repeat(32)).is_ok());
        assert!(DisplayName::parse(&"é".repeat(33)).is_err());
        for bad in [
            "",
            "   ",
            "a\nb",
            "a\rb",
            "a\u{0}b",
            "a\u{85}b",
            "a\u{2028}b",
        ] {
            assert!(DisplayName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_that_pass_for_someone_else_are_refused() {
        for bad in [
            "me",
            "ME",
            " Me ",
            "mE",
            "alice\u{202E}ecila",
            "\u{202A}x",
            "x\u{2066}",
            "x\u{2069}",
            "al\u{200B}ice",
            "al\u{200C}ice",
            "al\u{200D}ice",
            "al\u{2060}ice",
            "\u{FEFF}alice",
        ] {
            assert!(DisplayName::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["meg", "me2", "mé", "alice", "\u{05D0}\u{05D1}"] {
            assert!(DisplayName::parse(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn guest_names_are_stable_per_token() {
        let t = ClientToken::parse("some-token-of-thirty-two-chars-xx").unwrap();
        let a = DisplayName::guest(t.id());
        assert_eq!(a, DisplayName::guest(t.id()));
        assert!(a.as_str().starts_with("guest-") && a.as_str().len() == 10);
    }

    #[test]
    fn text_length_counts_unicode_scalars() {
        assert!(MessageText::parse("ééé".into(), 3).is_ok());
        assert!(MessageText::parse("éééé".into(), 3).is_err());
        assert!(MessageText::parse(String::new(), 3).is_err());
        assert!(MessageText::parse("\n".into(), 3).is_ok());
        assert!(
            MessageText::parse("x".repeat(10_000), 0).is_ok(),
            "0 is off"
        );
    }

    #[test]
    fn event_ids_are_decimal() {
        assert_eq!(EventId::parse("42").unwrap(), EventId(42));
        assert_eq!(EventId::parse("0").unwrap(), EventId(0));
        for bad in [
            "",
            "-1",
            "+1",
            "1.0",
            "abc",
            " 1",
            "99999999999999999999999",
        ] {
            assert!(EventId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tokens_are_url_safe_and_hidden() {
        let t = ClientToken::mint();
        assert_eq!(t.expose().len(), 40);
        assert!(ClientToken::parse(t.expose()).is_ok());
        assert_ne!(t, ClientToken::mint());
        assert!(!format!("{t:?}").contains(t.expose()));
        for bad in [
            "",
            "a",
            &"a".repeat(31),
            &"a b".repeat(11),
            &"a;b".repeat(11),
            "a\nb",
            &"a".repeat(129),
        ] {
            assert!(ClientToken::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            ClientToken::parse(&"0f".repeat(16)).is_ok(),
            "128 bits in hex"
        );
        assert_ne!(t.id(), ClientToken::mint().id());
    }

    #[test]
    fn client_msg_ids_are_bounded() {
        assert!(ClientMsgId::parse("abc-123").is_ok());
        assert!(ClientMsgId::parse(&"x".repeat(64)).is_ok());
        assert!(ClientMsgId::parse(&"x".repeat(65)).is_err());
        assert!(ClientMsgId::parse("").is_err());
        assert!(ClientMsgId::parse("a\u{7}").is_err());
    }
}
