//! The HTTP error type: every refusal is a status code and a JSON body
//! `{"error": "human readable reason"}`. Internal causes are logged, never
//! shown to the client.

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;

use crate::chat::types::Invalid;
use crate::chat::ChatError;
use crate::metrics::{Metrics, Reason};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body did not arrive within {0} s")]
    RequestTimeout(u64),
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("unsupported content type: send application/x-www-form-urlencoded, application/json or text/plain")]
    UnsupportedMediaType,
    #[error("too many messages: slow down and retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("{0}")]
    TooManyStreamsFromIp(String),
    #[error("{0}")]
    ServerFull(String),
    #[error("too many long-polls waiting from your address; retry later")]
    TooManyLongPollsFromIp,
    #[error("too many history reads in flight from your address; read the answers, then retry")]
    TooManyReadsFromIp,
    #[error("too many streams opened from your address: slow down and retry in {retry_after} s")]
    OpeningTooFast { retry_after: u64 },
    #[error("cross-site request refused: this origin may not post to this chat")]
    ForbiddenOrigin,
    #[error("the server is shutting down; retry in a moment")]
    ShuttingDown,
    #[error("storage is unavailable right now; the message was not stored, retry later")]
    StorageUnavailable,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::BadRequest(e.0)
    }
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::ShuttingDown => ApiError::ShuttingDown,
            ChatError::History(e) => {
                tracing::error!(error = %e, "storage error");
                ApiError::StorageUnavailable
            }
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. }
            | ApiError::TooManyStreamsFromIp(_)
            | ApiError::TooManyLongPollsFromIp
            | ApiError::TooManyReadsFromIp
            | ApiError::OpeningTooFast { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ServerFull(_) | ApiError::ShuttingDown | ApiError::StorageUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::ForbiddenOrigin => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn reason(&self) -> Reason {
        match self {
            ApiError::BadRequest(_) | ApiError::MethodNotAllowed => Reason::bad_request,
            ApiError::PayloadTooLarge(_) => Reason::body_too_large,
            ApiError::RequestTimeout(_) => Reason::body_timeout,
            ApiError::UnsupportedMediaType => Reason::unsupported_media_type,
            ApiError::RateLimited { .. } | ApiError::OpeningTooFast { .. } => Reason::rate_limited,
            ApiError::TooManyLongPollsFromIp => Reason::too_many_long_polls,
            ApiError::TooManyReadsFromIp => Reason::too_many_reads,
            ApiError::TooManyStreamsFromIp(_) | ApiError::ServerFull(_) => Reason::too_many_streams,
            ApiError::ForbiddenOrigin => Reason::forbidden_origin,
            ApiError::ShuttingDown => Reason::shutting_down,
            ApiError::StorageUnavailable => Reason::storage_unavailable,
            ApiError::NotFound => Reason::not_found,
        }
    }

    /// The response, counted in `ssechat_requests_rejected_total`.
    pub fn respond(self, metrics: &Metrics) -> Response {
        metrics.rejected(self.reason());
        self.into_response()
    }

    pub fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() }).to_string();
        let mut res = Response::new(body.into());
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            ApiError::RateLimited { retry_after } | ApiError::OpeningTooFast { retry_after } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
            }
            ApiError::ShuttingDown | ApiError::StorageUnavailable | ApiError::ServerFull(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            // The rest of the body may still come: this connection is done.
            ApiError::RequestTimeout(_) => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ApiError::MethodNotAllowed => {}
            _ => {}
        }
        res
    }
}
