//! Who is asking: the client token from `X-Chat-Client`, `client=` or the
//! `ssechat_client` cookie (in that order), and the cookie to set when a
//! browser has none.

use warp::http::{header, HeaderMap, HeaderValue};

use super::error::ApiError;
use crate::chat::types::ClientToken;

pub const COOKIE: &str = "ssechat_client";
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

fn cookie_token(headers: &HeaderMap) -> Option<ClientToken> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .and_then(|(_, v)| ClientToken::parse(v.trim_matches('"')).ok())
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
/// HTTPS also Secure (never sent in the clear).
pub fn set_cookie(token: &ClientToken, https: bool) -> HeaderValue {
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000{secure}",
        token.expose()
    ))
    .expect("tokens are URL-safe ASCII")
}
