//! `GET /chat/events`: the SSE stream, and its connect and disconnect log
//! lines (one by one while they are few, counted in a storm: [`super::lines`]).

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::field;
use warp::http::{header, HeaderValue};
use warp::reply::Response;
use warp::Reply;

use super::error::ApiError;
use super::form::Fields;
use super::lines::{Line, Lines};
use super::{identity, AppState, Ctx};
use crate::chat::message::{self, Format};
use crate::chat::types::{DisplayName, EventId, RoomName};
use crate::sse;

pub async fn events(state: AppState, ctx: Ctx) -> Response {
    match open(&state, ctx).await {
        Ok(res) => res,
        Err(e) => e.respond(&state.metrics),
    }
}

/// Parses `Last-Event-ID`: absent or empty means none.
fn last_event_id(ctx: &Ctx) -> Result<Option<EventId>, ApiError> {
    let Some(v) = ctx.headers.get("last-event-id") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::BadRequest("malformed Last-Event-ID header".into()))?;
    Ok(EventId::parse_optional(s, "Last-Event-ID")?)
}

/// Logs the disconnect when the stream is dropped, whatever ended it.
struct DisconnectLog {
    room: RoomName,
    name: DisplayName,
    peer: Option<SocketAddr>,
    log: Arc<Lines>,
}

impl Drop for DisconnectLog {
    fn drop(&mut self) {
        if self.log.admit(Line::Disconnect) {
            tracing::info!(
                room = %self.room, name = %self.name,
                peer = self.peer.map(field::display), "disconnect"
            );
        }
    }
}

async fn open(state: &AppState, ctx: Ctx) -> Result<Response, ApiError> {
    let mut q = Fields::parse(ctx.query.as_bytes())?;
    let room = RoomName::parse_or_default(q.take("room")?.as_deref())?;
    let since = q.take_event_id("since")?;
    let format = match q.take("format")?.as_deref() {
        None | Some("json") => Format::Json,
        Some("text") => Format::Text,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "format must be 'json' or 'text'".into(),
            ))
        }
    };
    let name = q
        .take("name")?
        .map(|n| DisplayName::parse(&n))
        .transpose()?
        // A cross-site link to this stream must not rename whoever follows it.
        .filter(|_| !identity::is_cross_site(&ctx.headers));
    let client_q = q.take("client")?;
    // The header wins over `since`: it is what a reconnecting browser knows.
    let since = last_event_id(&ctx)?.or(since);
    let who = identity::resolve(&ctx.headers, client_q.as_deref())?;

    let chat = &state.chat;
    if chat.is_shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    // Every open reads history and counts a presence: rate-limited per
    // address, like posting.
    state.limits.check_stream_open(ctx.client)?;
    let permit = state.limits.acquire_stream(ctx.client)?;

    let client = who.token.id();
    let name = chat.name_for(client, name.as_ref());
    let stream = chat.open_stream(&room, client, &name, since).await?;
    let online = stream.online;
    let minted = who.minted.then(|| who.token.expose());
    let prelude = vec![
        sse::retry(state.config.retry_ms),
        message::hello_frame(&room, &name, online, minted),
    ];
    if state.lines.admit(Line::Connect) {
        tracing::info!(
            room = %room, name = %name, online,
            since = stream.since.map(field::display),
            peer = ctx.peer.map(field::display),
            client = ctx.client.map(field::display),
            "connect"
        );
    }
    let log = DisconnectLog {
        room: room.clone(),
        name: name.clone(),
        peer: ctx.peer,
        log: state.lines.clone(),
    };
    let body = stream.into_body(prelude, format, state.config.retry_ms, (permit, log));
    let mut res = warp::reply::stream(body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if who.minted {
        // It carries a new secret (cookie and hello): no cache may keep it.
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store"),
        );
        h.insert(
            header::SET_COOKIE,
            identity::set_cookie(&who.token, ctx.https),
        );
    } else {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    Ok(res)
}
