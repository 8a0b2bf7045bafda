//! `GET /chat/online?room=R`: who is here, as JSON
//! `{"room", "online", "names"}` (the first 100 names, alphabetical; in
//! cluster mode from Redis, one round trip, a sorted sample of 100).

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;

use super::form::Fields;
use super::{json_response, AppState, Ctx};
use crate::chat::types::{DisplayName, RoomName};

/// Names listed at most; the count says how many more there are.
pub const NAMES: usize = 100;

#[derive(Serialize)]
struct Online<'a> {
    room: &'a RoomName,
    online: usize,
    names: Vec<DisplayName>,
}

pub async fn online(state: AppState, ctx: Ctx) -> Response {
    let room = Fields::parse(ctx.query.as_bytes())
        .and_then(|mut q| q.take("room"))
        .and_then(|r| RoomName::parse_or_default(r.as_deref()));
    let room = match room {
        Ok(room) => room,
        Err(e) => return super::error::ApiError::from(e).respond(&state.metrics),
    };
    let (online, names) = state.chat.online_names(&room, NAMES).await;
    json_response(
        StatusCode::OK,
        &Online {
            room: &room,
            online,
            names,
        },
    )
}
