//! Strict `application/x-www-form-urlencoded` decoding, for query strings
//! and form bodies.
//!
//! The usual decoders (`form_urlencoded`, `serde_urlencoded`) are lenient:
//! they pass broken `%` escapes through and replace invalid UTF-8 with U+FFFD,
//! which would store something other than what the client sent. Here both
//! are errors, and a field given twice is an error when it is read.

use crate::chat::types::{EventId, Invalid};

#[derive(Debug, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    pub fn parse(input: &[u8]) -> Result<Fields, Invalid> {
        let mut pairs = Vec::new();
        for part in input.split(|&b| b == b'&') {
            if part.is_empty() {
                continue;
            }
            let (k, v) = match part.iter().position(|&b| b == b'=') {
                Some(i) => (&part[..i], &part[i + 1..]),
                None => (part, &b""[..]),
            };
            pairs.push((decode(k)?, decode(v)?));
        }
        Ok(Fields(pairs))
    }

    /// The field's value, if given once; an error if given more than once.
    pub fn take(&mut self, key: &str) -> Result<Option<String>, Invalid> {
        let mut found = None;
        let mut i = 0;
        while i < self.0.len() {
            if self.0[i].0 == key {
                let (_, v) = self.0.remove(i);
                if found.replace(v).is_some() {
                    return Err(Invalid(format!("field '{key}' is given more than once")));
                }
            } else {
                i += 1;
            }
        }
        Ok(found)
    }
}

impl Fields {
    /// An optional event id (`since`): empty means absent, malformed is an error.
    pub fn take_event_id(&mut self, key: &str) -> Result<Option<EventId>, Invalid> {
        match self.take(key)? {
            Some(s) => EventId::parse_optional(&s, key),
            None => Ok(None),
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode(raw: &[u8]) -> Result<String, Invalid> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let byte = raw
                    .get(i + 1)
                    .and_then(|&h| hex(h))
                    .zip(raw.get(i + 2).and_then(|&l| hex(l)))
                    .map(|(h, l)| h << 4 | l)
                    .ok_or_else(|| Invalid("invalid percent-encoding".into()))?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| Invalid("invalid UTF-8 in form data".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_plus_and_percent() {
        let mut f = Fields::parse(b"text=a+b%20c%0A%F0%9F%98%80&room=x").unwrap();
        assert_eq!(f.take("text").unwrap().unwrap(), "a b c\n😀");
        assert_eq!(f.take("room").unwrap().unwrap(), "x");
        assert_eq!(f.take("name").unwrap(), None);
    }

    #[test]
    fn refuses_broken_escapes_and_bad_utf8() {
        assert!(Fields::parse(b"text=%zz").is_err());
        assert!(Fields::parse(b"text=%4").is_err());
        assert!(Fields::parse(b"text=%FF").is_err());
        assert!(Fields::parse(b"text=\xff").is_err());
    }

    #[test]
    fn duplicates_are_an_error_when_read() {
        let mut f = Fields::parse(b"text=a&text=b&x=1&&y").unwrap();
        assert!(f.take("text").is_err());
        assert_eq!(f.take("y").unwrap().unwrap(), "");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(mut f) = Fields::parse(&bytes) {
                let _ = f.take("text");
            }
        }

        #[test]
        fn decodes_what_a_browser_encodes(key in "[a-z_]{1,8}", value in any::<String>()) {
            let encoded = serde_urlencoded::to_string([(key.as_str(), value.as_str())]).unwrap();
            let mut f = Fields::parse(encoded.as_bytes()).unwrap();
            prop_assert_eq!(f.take(&key).unwrap(), Some(value));
        }
    }
}
