//! The strict form/query decoder (`http::form::Fields`) against a second,
//! independent decoder written from the spec: on any bytes both agree on
//! whether the input is valid and on every field's value; a field given
//! twice is an error when it is read, never a silent pick. And what a
//! browser encodes (serde_urlencoded) decodes back to exactly what was sent.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use ssechat::chat::types::EventId;
use ssechat::http::form::Fields;

/// application/x-www-form-urlencoded, strictly: `+` is a space, `%XX` a
/// byte, a broken escape or invalid UTF-8 is an error.
fn reference(input: &[u8]) -> Option<Vec<(String, String)>> {
    fn decode(s: &[u8]) -> Option<String> {
        let mut out = Vec::new();
        let mut it = s.iter().copied();
        while let Some(b) = it.next() {
            out.push(match b {
                b'+' => b' ',
                b'%' => {
                    let h = (it.next()? as char).to_digit(16)?;
                    let l = (it.next()? as char).to_digit(16)?;
                    (h * 16 + l) as u8
                }
                b => b,
            });
        }
        String::from_utf8(out).ok()
    }
    input
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut kv = p.splitn(2, |&b| b == b'=');
            let k = decode(kv.next().unwrap_or(b""))?;
            let v = decode(kv.next().unwrap_or(b""))?;
            Some((k, v))
        })
        .collect()
}

fn check(input: &[u8], want: Option<Vec<(String, String)>>) {
    let got = Fields::parse(input);
    let Some(pairs) = want else {
        assert!(
            got.is_err(),
            "accepted what is not valid form data: {input:?}"
        );
        return;
    };
    let mut fields = got.unwrap_or_else(|e| panic!("refused valid form data {input:?}: {e}"));
    let mut keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let values: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        let taken = fields.take(key);
        if values.len() == 1 {
            assert_eq!(taken.unwrap().as_deref(), Some(values[0]), "field {key:?}");
            assert_eq!(fields.take(key).unwrap(), None, "a field is taken once");
        } else {
            // After the error the request is refused; what is left of the
            // field does not matter.
            assert!(
                taken.is_err(),
                "field {key:?} given {} times was read as one",
                values.len()
            );
        }
    }
    // A name the input does not hold reads as absent (the fuzzer finds the
    // probe's own name in time, so it is checked only when it is absent).
    const ABSENT: &str = "\u{0}absent";
    if !pairs.iter().any(|(k, _)| k == ABSENT) {
        assert_eq!(fields.take(ABSENT).unwrap(), None);
    }
    // The event-id reader on every value: empty is absent, digits an id,
    // anything else an error; never a panic.
    for (k, v) in &pairs {
        if let Ok(mut f) = Fields::parse(format!("{}={}", enc(k), enc(v)).as_bytes()) {
            match f.take_event_id(k) {
                Ok(None) => assert!(v.trim().is_empty()),
                Ok(Some(id)) => assert_eq!(id, EventId::parse(v.trim()).unwrap()),
                Err(_) => assert!(EventId::parse(v.trim()).is_err()),
            }
        }
    }
}

fn enc(s: &str) -> String {
    serde_urlencoded::to_string([("x", s)]).unwrap()[2..].to_owned()
}

// An input is a query string or form body as sent, except one that starts
// with `ENCODE:`: the rest then makes (arbitrarily) field names and values
// that are encoded the way a browser does before decoding.
fuzz_target!(|data: &[u8]| match data.strip_prefix(b"ENCODE:") {
    None => check(data, reference(data)),
    Some(rest) => {
        let Ok(pairs) = Vec::<(String, String)>::arbitrary_take_rest(Unstructured::new(rest))
        else {
            return;
        };
        let pairs: Vec<(String, String)> = pairs.into_iter().take(16).collect();
        let encoded = serde_urlencoded::to_string(&pairs).unwrap();
        check(encoded.as_bytes(), Some(pairs));
    }
});
