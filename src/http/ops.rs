//! Operations endpoints: `/healthz` and `/metrics`.

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;

use super::AppState;

pub fn healthz(state: AppState) -> Response {
    let (status, body) = if state.chat.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if !state.chat.healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "redis unavailable")
    } else {
        (StatusCode::OK, "ok")
    };
    let mut res = Response::new(body.into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

pub fn metrics(state: AppState) -> Response {
    let mut res = Response::new(state.metrics.render().into());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}
