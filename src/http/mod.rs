//! The warp layer: one module per resource, composed here with `.or()`,
//! one `recover` at the top.

pub mod assets;
pub mod client_addr;
pub mod error;
pub mod events;
pub mod form;
pub mod identity;
pub mod lines;
pub mod messages;
pub mod online;
pub mod ops;
pub mod pages;
pub mod typing;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use warp::http::HeaderMap;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use self::error::ApiError;
use crate::chat::Chat;
use crate::config::Config;
use crate::limits::Limits;
use crate::metrics::Metrics;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub chat: Chat,
    pub config: Arc<Config>,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    /// Connect, disconnect and message log lines, counted in a storm.
    lines: Arc<lines::Lines>,
}

impl AppState {
    pub fn new(
        chat: Chat,
        config: Arc<Config>,
        limits: Arc<Limits>,
        metrics: Arc<Metrics>,
    ) -> Self {
        AppState {
            lines: Arc::new(lines::Lines::new(metrics.clone())),
            chat,
            config,
            limits,
            metrics,
        }
    }
}

/// The peer's address, put into each request's extensions by the server loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Put into a request's extensions by the server loop when the request came
/// over TLS.
#[derive(Debug, Clone, Copy)]
pub struct Https;

/// The parts of a request most handlers read.
pub struct Ctx {
    pub headers: HeaderMap,
    pub query: String,
    /// The connection's peer (a proxy, if there is one).
    pub peer: Option<SocketAddr>,
    /// The client's address, through trusted proxies: what per-address
    /// limits key on.
    pub client: Option<IpAddr>,
    /// The client reached us over HTTPS: over our own TLS, or a trusted
    /// proxy says so with `X-Forwarded-Proto`.
    pub https: bool,
}

/// Builds each request's `Ctx`, resolving the client through `trusted`
/// proxies.
fn ctx_with(trusted: Arc<[IpNet]>) -> impl Filter<Extract = (Ctx,), Error = Infallible> + Clone {
    warp::header::headers_cloned()
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::ext::optional::<Https>())
        .map(
            move |headers: HeaderMap, query, peer: Option<PeerAddr>, tls: Option<Https>| {
                let peer = peer.map(|p| p.0);
                let client = peer.map(|p| client_addr::resolve(p.ip(), &headers, &trusted));
                Ctx {
                    client: client.map(|c| c.ip),
                    https: tls.is_some() || client.is_some_and(|c| c.forwarded_https),
                    headers,
                    query,
                    peer,
                }
            },
        )
}

/// GET, or HEAD for the same answer without a body (hyper leaves the body
/// out): for pages, health checks, metrics and assets, not for streams.
fn get_or_head() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

fn with_state(state: AppState) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// A handler's future, boxed. hyper keeps one allocation per connection
/// the size of the whole route tree's future for as long as the connection
/// lives; boxing each handler keeps that to a few pointers instead of the
/// largest handler's state (measured: about 1.5 KiB less per idle SSE
/// connection).
type Handler = std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>;

/// All routes, with Strict-Transport-Security on HTTPS answers when
/// `--hsts` asks for it.
pub fn routes(state: AppState) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let hsts = state.config.hsts;
    warp::ext::optional::<Https>().and(resources(state)).map(
        move |https: Option<Https>, mut res: Response| {
            if hsts && https.is_some() {
                res.headers_mut().insert(
                    warp::http::header::STRICT_TRANSPORT_SECURITY,
                    warp::http::HeaderValue::from_static(HSTS),
                );
            }
            res
        },
    )
}

/// One year; browsers ignore the header over plain HTTP (RFC 6797), so it
/// is sent over HTTPS only.
const HSTS: &str = "max-age=31536000";

fn resources(state: AppState) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let s = with_state(state.clone());
    let trusted: Arc<[IpNet]> = state.config.trusted_proxies.clone().into();
    let ctx = move || ctx_with(trusted.clone());
    let index = warp::path::end()
        .and(get_or_head())
        .and(s.clone())
        .and(ctx())
        .then(|s, c| Box::pin(pages::index(s, c)) as Handler);
    let chat_page = warp::path!("chat")
        .and(get_or_head())
        .and(s.clone())
        .and(ctx())
        .then(|s, c| Box::pin(pages::chat(s, c)) as Handler);
    let post = warp::path!("chat" / "messages")
        .and(warp::post())
        .and(s.clone())
        .and(ctx())
        .and(warp::body::stream())
        .then(|s, c, body| Box::pin(messages::post(s, c, body)) as Handler);
    let history = warp::path!("chat" / "messages")
        .and(warp::get())
        .and(s.clone())
        .and(ctx())
        .then(|s, c| Box::pin(messages::history(s, c)) as Handler);
    let events = warp::path!("chat" / "events")
        .and(warp::get())
        .and(s.clone())
        .and(ctx())
        .then(|s, c| Box::pin(events::events(s, c)) as Handler);
    let typing = warp::path!("chat" / "typing")
        .and(warp::post())
        .and(s.clone())
        .and(ctx())
        .and(warp::body::stream())
        .then(|s, c, body| Box::pin(typing::typing(s, c, body)) as Handler);
    let online = warp::path!("chat" / "online")
        .and(get_or_head())
        .and(s.clone())
        .and(ctx())
        .then(|s, c| Box::pin(online::online(s, c)) as Handler);
    let healthz = warp::path!("healthz")
        .and(get_or_head())
        .and(s.clone())
        .map(ops::healthz);
    let metrics = warp::path!("metrics")
        .and(get_or_head())
        .and(s.clone())
        .map(ops::metrics);
    let assets = warp::path("static")
        .and(warp::path::tail())
        .and(get_or_head())
        .and(warp::header::headers_cloned())
        .map(|tail: warp::path::Tail, h: HeaderMap| assets::serve(tail.as_str(), &h));

    index
        .or(chat_page)
        .unify()
        .or(post)
        .unify()
        .or(history)
        .unify()
        .or(events)
        .unify()
        .or(typing)
        .unify()
        .or(online)
        .unify()
        .or(healthz)
        .unify()
        .or(metrics)
        .unify()
        .or(assets)
        .unify()
        .recover(move |r| recover(r, state.clone()))
        .unify()
}

/// Unmatched routes and warp's own rejections, as JSON errors.
async fn recover(r: Rejection, state: AppState) -> Result<Response, Infallible> {
    let err = if r.is_not_found() {
        ApiError::NotFound
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else {
        tracing::debug!(rejection = ?r, "request rejected");
        ApiError::BadRequest("malformed request".into())
    };
    Ok(err.respond(&state.metrics))
}

pub(crate) fn json_response<T: serde::Serialize>(
    status: warp::http::StatusCode,
    body: &T,
) -> Response {
    let mut res = warp::reply::json(body).into_response();
    *res.status_mut() = status;
    res.headers_mut().insert(
        warp::http::header::CACHE_CONTROL,
        warp::http::HeaderValue::from_static("no-store"),
    );
    res
}

/// A header map from `(name, value)` pairs, for unit tests.
#[cfg(test)]
pub(crate) fn test_headers(pairs: &[(&'static str, &str)]) -> warp::http::HeaderMap {
    let mut h = warp::http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, warp::http::HeaderValue::from_str(v).unwrap());
    }
    h
}
