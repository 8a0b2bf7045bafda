//! Who is asking: the client token from `X-Chat-Client`, `client=` or the
//! `ssechat_client` cookie (in that order), and the cookie to set when a
//! browser has none.

use std::net::IpAddr;

use warp::http::{header, HeaderMap, HeaderValue};

use super::error::ApiError;
use crate::chat::types::{ClientId, ClientToken};
use crate::limits::address_key;

pub const COOKIE: &str = "ssechat_client";
/// The cookie's name over HTTPS: a browser accepts a `__Host-` cookie only
/// from a secure origin, for this exact host and path `/`, so no sibling
/// subdomain or plain-HTTP page can plant one of its own.
pub const SECURE_COOKIE: &str = "__Host-ssechat_client";
const HEADER: &str = "x-chat-client";

/// A resolved client.
pub struct Identity {
    pub token: ClientToken,
    /// Minted for this request: the client did not present one.
    pub minted: bool,
    /// The token came from the cookie (a browser).
    pub from_cookie: bool,
}

/// The token the request presents, if any. A malformed header or query
/// token is an error (a script's bug); a malformed cookie is ignored and
/// replaced (a browser cannot fix it by itself).
pub fn presented(
    headers: &HeaderMap,
    query_client: Option<&str>,
) -> Result<Option<(ClientToken, bool)>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    if let Some(v) = values.next() {
        if values.next().is_some() {
            return Err(ApiError::BadRequest(
                "X-Chat-Client is given more than once".into(),
            ));
        }
        let s = v
            .to_str()
            .map_err(|_| ApiError::BadRequest("X-Chat-Client must be printable ASCII".into()))?;
        return Ok(Some((ClientToken::parse(s.trim())?, false)));
    }
    if let Some(q) = query_client {
        return Ok(Some((ClientToken::parse(q)?, false)));
    }
    Ok(cookie_token(headers).map(|t| (t, true)))
}

/// The token in the `__Host-` cookie, else in the plain one (set over
/// HTTP, or before the prefix was used).
fn cookie_token(headers: &HeaderMap) -> Option<ClientToken> {
    let pairs = || {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
    };
    [SECURE_COOKIE, COOKIE].iter().find_map(|name| {
        pairs()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| ClientToken::parse(v.trim_matches('"')).ok())
    })
}

/// The presented identity, or a new one.
pub fn resolve(headers: &HeaderMap, query_client: Option<&str>) -> Result<Identity, ApiError> {
    Ok(match presented(headers, query_client)? {
        Some((token, from_cookie)) => Identity {
            token,
            minted: false,
            from_cookie,
        },
        None => Identity {
            token: ClientToken::mint(),
            minted: true,
            from_cookie: false,
        },
    })
}

/// `Set-Cookie` for a minted token: HttpOnly (scripts on the page cannot
/// read it), SameSite=Lax (not sent on cross-site POSTs), one year; over
/// HTTPS also Secure (never sent in the clear) and `__Host-` prefixed.
pub fn set_cookie(token: &ClientToken, https: bool) -> HeaderValue {
    let (name, secure) = if https {
        (SECURE_COOKIE, "; Secure")
    } else {
        (COOKIE, "")
    };
    HeaderValue::from_str(&format!(
        "{name}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000{secure}",
        token.expose()
    ))
    .expect("tokens are URL-safe ASCII")
}

/// The sender a token-less request is stored as when it carries a
/// `client_msg_id`: one per client address (an IPv6 /64), so a retry from
/// the same place is recognised. No token hashes to it, so it is never
/// anyone's `me`.
pub fn anonymous_sender(ip: IpAddr) -> ClientId {
    ClientId::hashed(format!("ssechat anonymous sender at {}", address_key(ip)).as_bytes())
}

/// A request made from another site (`Sec-Fetch-Site: cross-site`): a
/// link or form elsewhere that the browser follows with our cookie. Such
/// a `GET` must change nothing.
pub fn is_cross_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn the_host_prefixed_cookie_wins_and_the_plain_one_still_counts() {
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        let both = with_cookie(&format!("{COOKIE}={a}; {SECURE_COOKIE}={b}"));
        assert_eq!(cookie_token(&both).unwrap().expose(), b);
        let plain = with_cookie(&format!("x=1; {COOKIE}={a}"));
        assert_eq!(cookie_token(&plain).unwrap().expose(), a);
        let weak = with_cookie(&format!("{COOKIE}=abc"));
        assert!(cookie_token(&weak).is_none(), "replaced, not refused");
    }

    #[test]
    fn the_cookie_is_secure_over_https_only() {
        let t = ClientToken::mint();
        let plain = set_cookie(&t, false);
        let plain = plain.to_str().unwrap();
        assert!(plain.starts_with("ssechat_client=") && !plain.contains("Secure"));
        let secure = set_cookie(&t, true);
        let secure = secure.to_str().unwrap();
        assert!(secure.starts_with("__Host-ssechat_client=") && secure.ends_with("; Secure"));
        assert!(secure.contains("; Path=/;") && !secure.contains("Domain"));
    }
}
