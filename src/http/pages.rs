//! The HTML pages, rendered by Askama (escaping on): the welcome page and
//! the chat page with the room's latest messages.

use askama::Template;
use warp::http::{header, HeaderValue};
use warp::reply::Response;

use super::error::ApiError;
use super::form::Fields;
use super::{identity, AppState, Ctx};
use crate::chat::types::RoomName;

/// Messages rendered into the chat page.
const PAGE_MESSAGES: usize = 50;

pub struct RoomSummary {
    pub name: String,
    pub online: usize,
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    rooms: Vec<RoomSummary>,
}

pub struct MessageView {
    pub id: String,
    pub name: String,
    pub text: String,
    pub ts: i64,
    pub time: String,
    pub me: bool,
}

#[derive(Template)]
#[template(path = "chat.html")]
struct ChatPage {
    room: String,
    name: String,
    last_id: String,
    max_chars: usize,
    messages: Vec<MessageView>,
}

fn html(body: String) -> Response {
    let mut res = Response::new(body.into());
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn render(t: &impl Template) -> Result<Response, ApiError> {
    t.render().map(html).map_err(|e| {
        tracing::error!(error = %e, "template rendering failed");
        ApiError::Internal
    })
}

/// `HH:MM` (UTC) of a millisecond timestamp; the page's script shows local time.
fn hh_mm(ts: i64) -> String {
    let minutes = ts.div_euclid(60_000).rem_euclid(24 * 60);
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

pub async fn index(state: AppState, _ctx: Ctx) -> Response {
    let result = async {
        let rooms = (state.chat.room_list().await?)
            .into_iter()
            .map(|(room, online)| RoomSummary {
                name: room.to_string(),
                online,
            })
            .collect();
        render(&IndexPage { rooms })
    }
    .await;
    result.unwrap_or_else(|e| e.respond(&state.metrics))
}

pub async fn chat(state: AppState, ctx: Ctx) -> Response {
    let result = async {
        let mut q = Fields::parse(ctx.query.as_bytes())?;
        let room = RoomName::parse_or_default(q.take("room")?.as_deref())?;
        let who = identity::resolve(&ctx.headers, None)?;
        let viewer = who.token.id();
        let messages = state.chat.latest(&room, PAGE_MESSAGES).await?;
        let page = ChatPage {
            room: room.to_string(),
            name: state.chat.name_for(viewer, None).to_string(),
            last_id: messages
                .last()
                .map(|m| m.id.to_string())
                .unwrap_or_default(),
            max_chars: state.config.max_message_chars,
            messages: messages
                .into_iter()
                .map(|m| MessageView {
                    id: m.id.to_string(),
                    me: m.sender == viewer,
                    name: m.name.to_string(),
                    time: hh_mm(m.ts),
                    ts: m.ts,
                    text: m.text,
                })
                .collect(),
        };
        let mut res = render(&page)?;
        if who.minted {
            res.headers_mut().insert(
                header::SET_COOKIE,
                identity::set_cookie(&who.token, ctx.https),
            );
        }
        Ok::<_, ApiError>(res)
    }
    .await;
    result.unwrap_or_else(|e| e.respond(&state.metrics))
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_times() {
        assert_eq!(super::hh_mm(0), "00:00");
        assert_eq!(super::hh_mm(((13 * 60 + 5) * 60 + 59) * 1000), "13:05");
    }
}
