//! `/static/*`: the page's modules, style and icon, compiled into the
//! binary (one file to deploy) and compressed once, at build time, by
//! `build.rs`: each request only picks the bytes its `Accept-Encoding`
//! allows (brotli, else gzip, else identity).
//!
//! Two ways to ask for a file:
//! - `/static/<VERSION>/<name>`: what the pages link to. `VERSION` hashes
//!   the whole of `static/`, so the answer never changes:
//!   `Cache-Control: public, max-age=31536000, immutable`.
//! - `/static/<name>`: the same bytes for old links and scripts, revalidated
//!   on every use (`no-cache` with an `ETag`).
//!
//! Why one hash for the directory rather than one per file: the page's
//! ES modules import each other by relative URL (`./view.js`), and a
//! module lives at the URL its importer names. Under one hashed directory
//! those imports resolve to hashed URLs with no rewriting of JavaScript
//! and no import map (an import map is inline script, which our CSP
//! forbids). The cost is that a change to any file refreshes all of them,
//! about 20 KB on the wire.

use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;

use super::error::ApiError;

/// One file of `static/` as `build.rs` prepared it.
pub struct Prepared {
    pub name: &'static str,
    /// Hash of this file's content (its `ETag`).
    pub tag: &'static str,
    pub identity: &'static [u8],
    /// Absent when compressing did not make it smaller.
    pub gzip: Option<&'static [u8]>,
    pub brotli: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";
/// The page's entry module; every other `.js` file is one it imports.
pub const ENTRY: &str = "chat.js";

/// The modules the entry module imports, for `<link rel="modulepreload">`
/// (the browser fetches them at once instead of after the entry module).
pub fn modules() -> impl Iterator<Item = &'static str> {
    PREPARED
        .iter()
        .map(|p| p.name)
        .filter(|n| n.ends_with(".js") && *n != ENTRY)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Brotli,
    Gzip,
    Identity,
}

impl Encoding {
    fn token(self) -> Option<&'static str> {
        match self {
            Encoding::Brotli => Some("br"),
            Encoding::Gzip => Some("gzip"),
            Encoding::Identity => None,
        }
    }
}

/// The quality (0..=1000) `Accept-Encoding` gives `coding`: its own entry,
/// else `*`, else 0. A malformed `q` counts as 1 (the header is advisory).
fn quality(accept: &str, coding: &str) -> u16 {
    let mut star = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or_default().trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .next()
            .map_or(1000, |v| {
                v.trim()
                    .parse::<f32>()
                    .map_or(1000, |f| (f.clamp(0.0, 1.0) * 1000.0) as u16)
            });
        if name.eq_ignore_ascii_case(coding) {
            return q;
        }
        if name == "*" {
            star = Some(q);
        }
    }
    star.unwrap_or(0)
}

/// The best encoding the client accepts among those we have: brotli wins a
/// tie (smaller), identity when nothing else is acceptable.
pub fn choose(accept: Option<&str>, have_br: bool, have_gzip: bool) -> Encoding {
    let Some(accept) = accept else {
        return Encoding::Identity;
    };
    let br = if have_br { quality(accept, "br") } else { 0 };
    let gz = if have_gzip {
        quality(accept, "gzip")
    } else {
        0
    };
    match (br, gz) {
        (0, 0) => Encoding::Identity,
        (b, g) if b >= g => Encoding::Brotli,
        _ => Encoding::Gzip,
    }
}

/// Serves `/static/<tail>`.
pub fn serve(tail: &str, headers: &HeaderMap) -> Response {
    let (name, cache) = match tail.split_once('/') {
        Some((v, name)) if v == VERSION => (name, IMMUTABLE),
        Some(_) => return ApiError::NotFound.into_response(),
        None => (tail, REVALIDATE),
    };
    let Some(file) = PREPARED.iter().find(|p| p.name == name) else {
        return ApiError::NotFound.into_response();
    };
    let accept = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let encoding = choose(accept, file.brotli.is_some(), file.gzip.is_some());
    let (body, etag) = match encoding {
        Encoding::Brotli => (file.brotli, format!("\"{}-br\"", file.tag)),
        Encoding::Gzip => (file.gzip, format!("\"{}-gz\"", file.tag)),
        Encoding::Identity => (None, format!("\"{}\"", file.tag)),
    };
    let body = body.unwrap_or(file.identity);
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*");
    let mut res = if fresh {
        let mut r = Response::new(Default::default());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(body.into())
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is ASCII"),
    );
    if let Some(token) = encoding.token() {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(token));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::{choose, Encoding::*};

    #[test]
    fn picks_the_best_accepted_encoding() {
        assert_eq!(choose(None, true, true), Identity);
        assert_eq!(choose(Some("gzip, deflate, br, zstd"), true, true), Brotli);
        assert_eq!(choose(Some("gzip"), true, true), Gzip);
        assert_eq!(choose(Some("br;q=0, gzip"), true, true), Gzip);
        assert_eq!(choose(Some("gzip;q=0.5, br;q=0.8"), true, true), Brotli);
        assert_eq!(choose(Some("gzip;q=0.9, br;q=0.1"), true, true), Gzip);
        assert_eq!(choose(Some("identity"), true, true), Identity);
        assert_eq!(choose(Some("*"), true, true), Brotli);
        assert_eq!(choose(Some("*;q=0"), true, true), Identity);
        assert_eq!(choose(Some("BR"), true, true), Brotli);
        assert_eq!(choose(Some("br"), false, true), Identity);
        assert_eq!(choose(Some("gzip, br"), false, true), Gzip);
        assert_eq!(choose(Some(""), true, true), Identity);
    }

    #[test]
    fn every_static_file_is_prepared_and_the_entry_module_is_there() {
        let names: Vec<_> = super::PREPARED.iter().map(|p| p.name).collect();
        assert!(names.contains(&super::ENTRY) && names.contains(&"chat.css"));
        assert!(super::DIR.ends_with(super::VERSION) && super::VERSION.len() == 12);
        for p in super::PREPARED.iter().filter(|p| !p.name.ends_with(".svg")) {
            assert!(
                p.gzip.is_some() && p.brotli.is_some(),
                "{} compresses",
                p.name
            );
        }
    }
}
