//! `POST /chat/messages` (send) and `GET /chat/messages` (history and
//! long-poll).

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tracing::field;
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;

use super::error::ApiError;
use super::form::Fields;
use super::lines::Line;
use super::{identity, json_response, AppState, Ctx};
use crate::chat::history::NewMessage;
use crate::chat::message::MessageJson;
use crate::chat::types::{ClientMsgId, DisplayName, Invalid, MessageText, RoomName};
use crate::chat::{Accepted, Newer};
use crate::metrics::Held;
use warp::Reply;

/// The fields of a POST, whatever the body's content type.
#[derive(Debug, Default, Deserialize)]
struct PostFields {
    text: Option<String>,
    room: Option<String>,
    name: Option<String>,
    client_msg_id: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyKind {
    Form,
    Json,
    Text,
}

pub(super) fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-www-form-urlencoded" => Ok(BodyKind::Form),
        "application/json" => Ok(BodyKind::Json),
        "text/plain" => Ok(BodyKind::Text),
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

/// Reads the body up to `limit` bytes (0 = no limit), whether or not it
/// declares a `Content-Length`: a chunked body is cut off at the limit too.
/// All of it must come within `--body-timeout` (`408`): the head came in
/// time (hyper's timeout), and a client must not hold the connection for
/// ever with a few bytes of body.
pub(super) async fn read_body<S, B>(
    state: &AppState,
    headers: &HeaderMap,
    body: S,
    limit: usize,
) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let body = read_all(headers, body, limit);
    match state.config.body_timeout {
        0 => body.await,
        secs => tokio::time::timeout(Duration::from_secs(secs), body)
            .await
            .map_err(|_| ApiError::RequestTimeout(secs))?,
    }
}

async fn read_all<S: Stream<Item = Result<B, warp::Error>> + Unpin, B: Buf>(
    headers: &HeaderMap,
    mut body: S,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if limit > 0 {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::PayloadTooLarge(limit));
        }
    }
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|_| ApiError::BadRequest("the request body could not be read".into()))?;
        if limit > 0 && buf.len() + chunk.remaining() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(buf))
}

/// The body's fields. Text bodies carry only the text; their other fields
/// come from the query string, already parsed by the caller (who also reads
/// `client` from it).
fn parse_fields(kind: BodyKind, body: &[u8], query: &mut Fields) -> Result<PostFields, ApiError> {
    match kind {
        BodyKind::Form | BodyKind::Json => {
            let mut f = if kind == BodyKind::Form {
                let mut f = Fields::parse(body)?;
                let text = f.take("text")?;
                with_meta(text, &mut f)?
            } else {
                let s = std::str::from_utf8(body)
                    .map_err(|_| ApiError::BadRequest("invalid UTF-8 in JSON body".into()))?;
                serde_json::from_str::<PostFields>(s)
                    .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?
            };
            // Every endpoint takes `room` from the query too
            // (`POST /chat/messages?room=R`); the body's wins.
            let from_query = query.take("room")?;
            f.room = f.room.or(from_query);
            Ok(f)
        }
        BodyKind::Text => {
            let text = String::from_utf8(body.to_vec())
                .map_err(|_| ApiError::BadRequest("invalid UTF-8 in text body".into()))?;
            Ok(with_meta(Some(text), query)?)
        }
    }
}

/// `text` with the fields every body kind shares, taken from `f`.
fn with_meta(text: Option<String>, f: &mut Fields) -> Result<PostFields, Invalid> {
    Ok(PostFields {
        text,
        room: f.take("room")?,
        name: f.take("name")?,
        client_msg_id: f.take("client_msg_id")?,
    })
}

#[derive(Serialize)]
struct Posted<'a> {
    id: String,
    room: &'a RoomName,
}

/// Whether the client asked for HTML (a browser's form submit).
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.to_ascii_lowercase().contains("text/html"))
}

/// Refuses a browser POST made from another site (CSRF): `Sec-Fetch-Site:
/// cross-site`, or an `Origin` whose host is not the one the request was
/// sent to. Ports are not compared (cookies are not isolated by port
/// either, and a reverse proxy on another port is the same site). Scripts
/// send no `Origin` and are not affected.
pub(super) fn check_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if get("sec-fetch-site") == Some("cross-site") {
        return Err(ApiError::ForbiddenOrigin);
    }
    let Some(origin) = get("origin") else {
        return Ok(());
    };
    let host_of = |authority: &str| -> String {
        let a = authority.trim().to_ascii_lowercase();
        match a.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or("").to_owned(),
            None => a.split(':').next().unwrap_or("").to_owned(),
        }
    };
    let origin_host = match origin.split_once("://") {
        Some((_, rest)) => host_of(rest.split('/').next().unwrap_or("")),
        None => return Err(ApiError::ForbiddenOrigin), // "null" or garbage
    };
    let ok = ["x-forwarded-host", "host"]
        .iter()
        .filter_map(|h| get(h))
        .flat_map(|v| v.split(','))
        .any(|authority| host_of(authority) == origin_host);
    if ok {
        Ok(())
    } else {
        Err(ApiError::ForbiddenOrigin)
    }
}

pub async fn post<S, B>(state: AppState, ctx: Ctx, body: S) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let started = Instant::now();
    let metrics = state.metrics.clone();
    let res = match handle_post(&state, &ctx, body).await {
        Ok(res) => res,
        Err(e) => {
            tracing::debug!(error = %e, peer = ctx.peer.map(field::display), "POST refused");
            e.respond(&metrics)
        }
    };
    metrics
        .post_latency_seconds
        .observe(started.elapsed().as_secs_f64());
    res
}

async fn handle_post<S, B>(state: &AppState, ctx: &Ctx, body: S) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    if state.chat.is_shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    check_origin(&ctx.headers)?;
    let kind = body_kind(&ctx.headers)?;
    // The head came in time (hyper's timeout); the body must too, or a
    // client could hold the connection for ever with a few bytes.
    let body = read_body(state, &ctx.headers, body, state.config.max_body_bytes).await?;
    let mut query = Fields::parse(ctx.query.as_bytes())?;
    let f = parse_fields(kind, &body, &mut query)?;
    let text = f
        .text
        .ok_or_else(|| ApiError::BadRequest("text is required".into()))?;
    let text = MessageText::parse(text, state.config.max_message_chars)?;
    let room = RoomName::parse_or_default(f.room.as_deref())?;
    let name = f.name.as_deref().map(DisplayName::parse).transpose()?;
    let client_msg_id = f
        .client_msg_id
        .as_deref()
        .map(ClientMsgId::parse)
        .transpose()?;
    let client_q = query.take("client")?;
    let who = identity::resolve(&ctx.headers, client_q.as_deref())?;
    let sender = who.token.id();
    // The store keeps `client_msg_id` per sender. A request without a token
    // is a new client each time, so a retried one would be stored twice:
    // key it on its address instead.
    let store_sender = match (&client_msg_id, who.minted, ctx.client) {
        (Some(_), true, Some(ip)) => identity::anonymous_sender(ip),
        _ => sender,
    };

    state.limits.check_post(sender, ctx.client)?;

    let name = state.chat.name_for(sender, name.as_ref());
    let chars = text.as_str().chars().count();
    let outcome = state
        .chat
        .post(NewMessage {
            room: room.clone(),
            name: name.clone(),
            text,
            sender: store_sender,
            client_msg_id,
        })
        .await?;
    let Accepted { id, room, new } = outcome;
    let status = if new {
        if state.lines.admit(Line::Message) {
            tracing::info!(room = %room, id = %id, name = %name, chars, "message");
        }
        StatusCode::CREATED
    } else {
        if state.lines.admit(Line::Duplicate) {
            tracing::info!(room = %room, id = %id, name = %name, "duplicate message ignored (client_msg_id)");
        }
        StatusCode::OK
    };
    let mut res = if kind == BodyKind::Form && wants_html(&ctx.headers) {
        let mut res = Response::new(Default::default());
        *res.status_mut() = StatusCode::SEE_OTHER;
        res.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_str(&format!("/chat?room={room}")).expect("room names are URL-safe"),
        );
        res
    } else {
        json_response(
            status,
            &Posted {
                id: id.to_string(),
                room: &room,
            },
        )
    };
    if who.minted {
        res.headers_mut().insert(
            header::SET_COOKIE,
            identity::set_cookie(&who.token, ctx.https),
        );
    }
    Ok(res)
}

#[derive(Serialize)]
struct History<'a> {
    room: &'a RoomName,
    messages: Vec<MessageJson<'a>>,
    last_id: Option<String>,
}

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;
const MAX_WAIT_SECS: f64 = 30.0;

pub async fn history(state: AppState, ctx: Ctx) -> Response {
    match handle_history(&state, &ctx).await {
        Ok(res) => res,
        Err(e) => e.respond(&state.metrics),
    }
}

async fn handle_history(state: &AppState, ctx: &Ctx) -> Result<Response, ApiError> {
    let mut q = Fields::parse(ctx.query.as_bytes())?;
    let room = RoomName::parse_or_default(q.take("room")?.as_deref())?;
    let since = q.take_event_id("since")?;
    let limit = match q.take("limit")? {
        None => DEFAULT_LIMIT,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit must be a number from 1 to {MAX_LIMIT}"))
            })?,
    };
    let wait = match q.take("wait")? {
        None => 0.0,
        Some(s) => s
            .parse::<f64>()
            .ok()
            .filter(|w| (0.0..=MAX_WAIT_SECS).contains(w))
            .ok_or_else(|| {
                ApiError::BadRequest("wait must be a number of seconds from 0 to 30".into())
            })?,
    };
    let client_q = q.take("client")?;
    let viewer = identity::presented(&ctx.headers, client_q.as_deref())?.map(|(t, _)| t.id());

    let chat = &state.chat;
    let mut messages = if wait > 0.0 {
        match chat.newer(&room, since, limit).await? {
            Newer::Now(messages) => messages,
            Newer::Later(waiting) => {
                // Both given back however this ends, the client hanging up
                // (this future dropped mid-wait) included.
                let _permit = state.limits.acquire_long_poll(ctx.client)?;
                let _waiting = Held::new(&state.metrics.long_polls);
                let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(wait);
                waiting.until(deadline).await?
            }
        }
    } else {
        chat.messages(&room, since, limit).await?
    };
    let last_id = match messages.last() {
        Some(m) => Some(m.id),
        // Nothing newer: `since` itself, unless it is beyond the room's
        // newest id (history reset or restored), then that newest id, so
        // the client's next `since` finds what comes next.
        None => match since {
            Some(s) => chat.clamped(&room, s).await?,
            None => chat.last_id(&room).await?,
        },
    };
    messages.truncate(limit);
    // Up to 500 messages wait in memory for a client that may not read
    // them: an address may have only so many such answers in flight.
    let permit = state.limits.acquire_read(ctx.client)?;
    let body = History {
        room: &room,
        messages: messages
            .iter()
            .map(|m| m.to_json(viewer == Some(m.sender)))
            .collect(),
        last_id: last_id.map(|id| id.to_string()),
    };
    Ok(held_json(&body, permit))
}

/// A JSON answer whose body holds `guard` until it has been written (or
/// the client is gone). The body goes out in pieces: hyper asks for the
/// next one only when the socket took the last, so the guard stays held
/// while a client that does not read keeps the answer waiting.
fn held_json<T: Serialize>(body: &T, guard: impl Send + Sync + 'static) -> Response {
    const PIECE: usize = 16 * 1024;
    let bytes = Bytes::from(serde_json::to_vec(body).expect("history serialises"));
    let pieces: Vec<Bytes> = (0..bytes.len())
        .step_by(PIECE)
        .map(|at| bytes.slice(at..bytes.len().min(at + PIECE)))
        .collect();
    let stream = futures_util::stream::iter(pieces).map(move |piece| {
        let _held = &guard;
        Ok::<_, std::convert::Infallible>(piece)
    });
    let mut res = warp::reply::stream(stream).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_headers as headers;

    #[test]
    fn same_host_origins_pass_foreign_ones_do_not() {
        assert!(check_origin(&headers(&[("host", "127.0.0.1:3000")])).is_ok());
        assert!(check_origin(&headers(&[
            ("host", "127.0.0.1:3000"),
            ("origin", "http://127.0.0.1:8080")
        ]))
        .is_ok());
        assert!(check_origin(&headers(&[
            ("host", "[::1]:3000"),
            ("origin", "http://[::1]:3000")
        ]))
        .is_ok());
        assert!(check_origin(&headers(&[
            ("host", "chat.example:3000"),
            ("origin", "https://evil.example")
        ]))
        .is_err());
        assert!(check_origin(&headers(&[("host", "a"), ("origin", "null")])).is_err());
        assert!(
            check_origin(&headers(&[("host", "a"), ("sec-fetch-site", "cross-site")])).is_err()
        );
    }

    #[test]
    fn content_types_are_matched_by_essence() {
        let kind = |ct: &str| body_kind(&headers(&[("content-type", ct)])).ok();
        assert!(kind("application/json; charset=utf-8") == Some(BodyKind::Json));
        assert!(kind("Application/X-WWW-Form-Urlencoded") == Some(BodyKind::Form));
        assert!(kind("text/plain;charset=UTF-8") == Some(BodyKind::Text));
        assert!(kind("multipart/form-data").is_none());
        assert!(body_kind(&HeaderMap::new()).is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn body_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), q in ".{0,32}") {
            for kind in [BodyKind::Form, BodyKind::Json, BodyKind::Text] {
                if let Ok(mut query) = Fields::parse(q.as_bytes()) {
                    let _ = parse_fields(kind, &bytes, &mut query);
                }
            }
        }

        #[test]
        fn json_bodies_round_trip(text in any::<String>(), room in "[a-z]{1,8}") {
            let body = serde_json::to_vec(&serde_json::json!({"text": text, "room": room})).unwrap();
            let f = parse_fields(BodyKind::Json, &body, &mut Fields::default()).unwrap();
            prop_assert_eq!(f.text, Some(text));
            prop_assert_eq!(f.room, Some(room));
        }
    }
}
