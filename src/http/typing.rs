//! `POST /chat/typing`: "NAME is typing" to the room's other streams.
//!
//! Ephemeral like presence: never stored, no id, gathered per window, and
//! only JSON streams get it. One per client per 2 s (429 with
//! `Retry-After` beyond), and a few per address, so a script minting a
//! token per notice is held back too.

use bytes::Buf;
use futures_util::Stream;
use serde::Deserialize;
use tracing::field;
use warp::http::{header, StatusCode};
use warp::reply::Response;

use super::error::ApiError;
use super::form::Fields;
use super::messages::{body_kind, check_origin, read_body, BodyKind};
use super::{identity, AppState, Ctx};
use crate::chat::types::{DisplayName, RoomName};

/// A typing notice needs a room and a name at most: its body stays small
/// whatever `--max-body-bytes` says.
const MAX_BODY: usize = 4096;

#[derive(Debug, Default, Deserialize)]
struct TypingFields {
    room: Option<String>,
    name: Option<String>,
}

pub async fn typing<S, B>(state: AppState, ctx: Ctx, body: S) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    match handle(&state, &ctx, body).await {
        Ok(res) => res,
        Err(e) => {
            tracing::debug!(error = %e, peer = ctx.peer.map(field::display), "typing refused");
            e.respond(&state.metrics)
        }
    }
}

async fn handle<S, B>(state: &AppState, ctx: &Ctx, body: S) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let chat = &state.chat;
    if chat.is_shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    check_origin(&ctx.headers)?;
    // No body at all (`curl -X POST '/chat/typing?room=R'`) needs no
    // content type; a body must say what it is.
    let kind = match ctx.headers.contains_key(header::CONTENT_TYPE) {
        true => Some(body_kind(&ctx.headers)?),
        false => None,
    };
    let body = read_body(state, &ctx.headers, body, MAX_BODY).await?;
    let f = match kind {
        _ if body.is_empty() => TypingFields::default(),
        None | Some(BodyKind::Text) => return Err(ApiError::UnsupportedMediaType),
        Some(BodyKind::Form) => {
            let mut f = Fields::parse(&body)?;
            TypingFields {
                room: f.take("room")?,
                name: f.take("name")?,
            }
        }
        Some(BodyKind::Json) => serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?,
    };
    // Like every endpoint: `room` (and `name`) from the body or the query.
    let mut query = Fields::parse(ctx.query.as_bytes())?;
    let room_q = query.take("room")?;
    let name_q = query.take("name")?;
    let room = RoomName::parse_or_default(f.room.or(room_q).as_deref())?;
    let name = f
        .name
        .or(name_q)
        .as_deref()
        .map(DisplayName::parse)
        .transpose()?;
    let client_q = query.take("client")?;
    let who = identity::resolve(&ctx.headers, client_q.as_deref())?;
    let client = who.token.id();
    let name = chat.name_for(client, name.as_ref());
    chat.typing(&room, client, &name, ctx.client)?;
    let mut res = Response::new(Default::default());
    *res.status_mut() = StatusCode::NO_CONTENT;
    if who.minted {
        res.headers_mut().insert(
            header::SET_COOKIE,
            identity::set_cookie(&who.token, ctx.https),
        );
    }
    Ok(res)
}
