//! The server as the client sees it: one HTTP client (rustls with the
//! system's roots plus `--ca`, proxies from the environment like curl),
//! the base URL, and the identity every request carries. Plus what both
//! commands need to be polite about failures: reading an error reply,
//! `Retry-After`, and back-off.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Response, Url};

use super::args::Conn;
use ssechat::chat::types::random_hex;

/// Header a script uses to say who it is (a secret: never in a URL, where
/// proxies and server logs would keep it).
pub const CLIENT_HEADER: &str = "x-chat-client";

pub struct Remote {
    pub http: reqwest::Client,
    base: Url,
    pub room: String,
    pub token: String,
}

impl Remote {
    pub fn new(conn: &Conn) -> Result<Remote, String> {
        if !matches!(conn.url.scheme(), "http" | "https") {
            return Err(format!(
                "--url must be http:// or https://, not {}",
                conn.url
            ));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(concat!("ssechat/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &conn.ca {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read --ca {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("--ca {}: no PEM certificate in it", path.display()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot set up HTTP: {e}"))?;
        // A base URL without a trailing slash would lose its last segment
        // when joined (`https://host/chat` + `chat/messages`).
        let mut base = conn.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        base.set_query(None);
        base.set_fragment(None);
        Ok(Remote {
            http,
            base,
            room: conn.room.clone(),
            token: conn.client.clone().unwrap_or_else(mint_token),
        })
    }

    /// `path` (relative, e.g. `chat/messages`) under the base URL.
    pub fn endpoint(&self, path: &str) -> Url {
        self.base
            .join(path)
            .expect("a relative path joins any base URL")
    }

    pub fn base(&self) -> &Url {
        &self.base
    }
}

/// A fresh client token: 160 random bits as hex, made once per run so that
/// retries and reconnects stay one person.
pub fn mint_token() -> String {
    random_hex(20)
}

/// A random request id for `client_msg_id` (128 bits, hex).
pub fn random_id() -> String {
    random_hex(16)
}

/// The body of a response, refusing to hold more than `limit` bytes of it
/// whatever the server sends.
pub async fn body_bounded(res: Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut chunks = res.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| format!("reading the reply: {}", describe(&e)))?;
        if body.len() + chunk.len() > limit {
            return Err(format!("the reply is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What the server said when it refused: the `error` of its JSON, else
/// the status and the start of the body (a proxy's HTML page, say).
pub async fn refusal(res: Response) -> String {
    let status = res.status();
    let body = body_bounded(res, 64 * 1024).await.unwrap_or_default();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            return format!("{status}: {e}");
        }
    }
    let text = String::from_utf8_lossy(&body);
    let first: String = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if first.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {first}")
    }
}

/// `Retry-After` in seconds (the HTTP-date form is taken as absent: the
/// caller's own back-off applies).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// A reqwest error in one line, with its cause (reqwest's own text says
/// "error sending request" and hides why).
pub fn describe(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Exponential back-off with jitter, between `min` and `max`.
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The wait before the next attempt: doubles each time, and a random
    /// 0-25 % is added so that many clients cut off at once do not all
    /// come back in the same instant.
    pub fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let mut r = [0u8; 1];
        let _ = getrandom::fill(&mut r);
        base + base.mul_f64(f64::from(r[0]) / 1024.0)
    }

    /// Starts again from `min` (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// Starts again from `min`, which is now `base` (within bounds): the
    /// server's own `retry:` hint.
    pub fn reset_to(&mut self, base: Duration) {
        self.min = base.clamp(Duration::from_millis(100), self.max);
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_160_bit_hex_and_differ() {
        let a = mint_token();
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, mint_token());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<_> = (0..4).map(|_| b.next_wait()).collect();
        let in_range = |w: Duration, base: u64| {
            w >= Duration::from_millis(base) && w <= Duration::from_millis(base + base / 4)
        };
        assert!(in_range(waits[0], 100), "{waits:?}");
        assert!(in_range(waits[1], 200), "{waits:?}");
        assert!(in_range(waits[2], 350), "{waits:?}");
        assert!(in_range(waits[3], 350), "{waits:?}");
        b.reset();
        assert!(in_range(b.next_wait(), 100));
        b.reset_to(Duration::from_secs(3600));
        assert!(in_range(b.next_wait(), 350), "the hint is bounded");
    }

    #[test]
    fn retry_after_reads_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
