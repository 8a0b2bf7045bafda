//! The HTML pages, rendered by Askama (escaping on): the welcome page and
//! the chat page with the room's latest messages. Every page carries a
//! Content-Security-Policy that allows nothing inline and nothing from
//! another origin: the templates hold no script or style of their own.

use askama::Template;
use std::io::Write as _;

use flate2::write::GzEncoder;
use flate2::Compression;
use warp::http::{header, HeaderMap, HeaderValue};
use warp::reply::Response;

use super::assets;
use super::error::ApiError;
use super::form::Fields;
use super::{identity, AppState, Ctx};
use crate::chat::types::{DisplayName, RoomName};

/// Messages rendered into the chat page.
const PAGE_MESSAGES: usize = 50;

/// Scripts, styles, pictures and requests from this origin only; no inline
/// script or style; never framed; forms post here only.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
    form-action 'self'";

pub struct RoomSummary {
    pub name: String,
    pub online: usize,
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    static_dir: &'static str,
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
    static_dir: &'static str,
    /// The modules the page's script imports, preloaded.
    modules: Vec<&'static str>,
    room: String,
    name: String,
    last_id: String,
    /// `None`: no limit (`--max-message-chars 0`), so no `maxlength`.
    max_chars: Option<usize>,
    messages: Vec<MessageView>,
}

/// Pages smaller than this go out as they are: gzip would not pay.
const GZIP_FROM_BYTES: usize = 1024;

/// The page gzipped when the client takes gzip. Pages differ per request
/// (history, the viewer's own messages), so this is the one place we
/// compress per request; at level 6 a 50-message page takes well under a
/// millisecond. Nothing secret is in a page body (the client token is an
/// HttpOnly cookie), so compression cannot leak one (BREACH).
fn compressed(body: String, headers: &HeaderMap) -> (Vec<u8>, bool) {
    let accept = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok());
    if body.len() < GZIP_FROM_BYTES || assets::choose(accept, false, true) != assets::Encoding::Gzip
    {
        return (body.into_bytes(), false);
    }
    let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 3), Compression::default());
    match gz.write_all(body.as_bytes()).and_then(|()| gz.finish()) {
        Ok(bytes) => (bytes, true),
        Err(e) => {
            tracing::warn!(error = %e, "gzip of a page failed; sending it as is");
            (body.into_bytes(), false)
        }
    }
}

fn html(body: String, headers: &HeaderMap) -> Response {
    let (body, gzipped) = compressed(body, headers);
    let mut res = Response::new(body.into());
    let h = res.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzipped {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Pages hold the viewer's own messages and may set a new client
    // cookie: no cache keeps them.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

fn render(t: &impl Template, headers: &HeaderMap) -> Result<Response, ApiError> {
    t.render().map(|b| html(b, headers)).map_err(|e| {
        tracing::error!(error = %e, "template rendering failed");
        ApiError::Internal
    })
}

/// `HH:MM` (UTC) of a millisecond timestamp; the page's script shows local time.
fn hh_mm(ts: i64) -> String {
    let minutes = ts.div_euclid(60_000).rem_euclid(24 * 60);
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

pub async fn index(state: AppState, ctx: Ctx) -> Response {
    let result = async {
        let rooms = (state.chat.room_list().await?)
            .into_iter()
            .map(|(room, online)| RoomSummary {
                name: room.to_string(),
                online,
            })
            .collect();
        render(
            &IndexPage {
                static_dir: assets::DIR,
                rooms,
            },
            &ctx.headers,
        )
    }
    .await;
    result.unwrap_or_else(|e| e.respond(&state.metrics))
}

pub async fn chat(state: AppState, ctx: Ctx) -> Response {
    let result = async {
        let mut q = Fields::parse(ctx.query.as_bytes())?;
        let room = RoomName::parse_or_default(q.take("room")?.as_deref())?;
        let name = q
            .take("name")?
            .map(|n| DisplayName::parse(&n))
            .transpose()?;
        let who = identity::resolve(&ctx.headers, None)?;
        let viewer = who.token.id();
        // A bookmark (`/chat?room=R&name=N`) sets the name like any request
        // with the client's token; a link from another site does not.
        // A link on another site may show our page, but changes nothing.
        let chosen = name.filter(|_| !identity::is_cross_site(&ctx.headers));
        let messages = state.chat.latest(&room, PAGE_MESSAGES).await?;
        let page = ChatPage {
            static_dir: assets::DIR,
            modules: assets::modules().collect(),
            room: room.to_string(),
            name: state.chat.name_for(viewer, chosen.as_ref()).to_string(),
            last_id: messages
                .last()
                .map(|m| m.id.to_string())
                .unwrap_or_default(),
            max_chars: Some(state.config.max_message_chars).filter(|&n| n > 0),
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
        let mut res = render(&page, &ctx.headers)?;
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
