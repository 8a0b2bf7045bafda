//! The HTTP error type: every refusal is a status code and a JSON body
//! `{"error": "human readable reason"}`. Internal causes are logged, never
//! shown to the client.

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;

use crate::chat::types::Invalid;
use crate::chat::{ChatError, TypingTooOften};
use crate::limits::Refused;
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
    /// A limit refused the request (rate, streams, long-polls).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Typing notices come too often from this client or address.
    #[error("typing notices: at most one every 2 s per client; retry later")]
    TypingTooOften { retry_after: u64 },
    #[error("cross-site request refused: this origin may not post to this chat")]
    ForbiddenOrigin,
    #[error("the server is shutting down; retry in a moment")]
    ShuttingDown,
    #[error("storage is unavailable right now; the message was not stored, retry later")]
    StorageUnavailable,
    /// A fault of ours (a page that would not render): logged where it
    /// happened, never detailed to the client.
    #[error("internal error; please retry")]
    Internal,
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

impl From<TypingTooOften> for ApiError {
    fn from(TypingTooOften(retry_after): TypingTooOften) -> Self {
        ApiError::TypingTooOften { retry_after }
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
            ApiError::Refused(
                Refused::Rate { .. }
                | Refused::TooManyStreamsFromIp
                | Refused::TooManyLongPollsFromIp
                | Refused::TooManyReadsFromIp
                | Refused::OpeningTooFast { .. },
            )
            | ApiError::TypingTooOften { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Refused(Refused::TooManyStreams | Refused::TooManyLongPolls)
            | ApiError::ShuttingDown
            | ApiError::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
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
            ApiError::Refused(Refused::Rate { .. } | Refused::OpeningTooFast { .. })
            | ApiError::TypingTooOften { .. } => Reason::rate_limited,
            ApiError::Refused(Refused::TooManyStreams | Refused::TooManyStreamsFromIp) => {
                Reason::too_many_streams
            }
            ApiError::Refused(Refused::TooManyLongPolls | Refused::TooManyLongPollsFromIp) => {
                Reason::too_many_long_polls
            }
            ApiError::Refused(Refused::TooManyReadsFromIp) => Reason::too_many_reads,
            ApiError::ForbiddenOrigin => Reason::forbidden_origin,
            ApiError::ShuttingDown => Reason::shutting_down,
            ApiError::StorageUnavailable => Reason::storage_unavailable,
            ApiError::Internal => Reason::internal,
            ApiError::NotFound => Reason::not_found,
        }
    }

    /// Seconds the client should wait before retrying, if it should.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Refused(
                Refused::Rate { retry_after } | Refused::OpeningTooFast { retry_after },
            )
            | ApiError::TypingTooOften { retry_after } => Some((*retry_after).max(1)),
            ApiError::Refused(Refused::TooManyStreams | Refused::TooManyLongPolls)
            | ApiError::ShuttingDown
            | ApiError::StorageUnavailable => Some(1),
            _ => None,
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
        if let Some(secs) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let ApiError::RequestTimeout(_) = self {
            // The rest of the body may still come: this connection is done.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_own_status_reason_and_retry_hint() {
        let cases = [
            (
                Refused::Rate { retry_after: 3 },
                429,
                Reason::rate_limited,
                Some(3),
            ),
            (
                Refused::TooManyStreams,
                503,
                Reason::too_many_streams,
                Some(1),
            ),
            (
                Refused::TooManyStreamsFromIp,
                429,
                Reason::too_many_streams,
                None,
            ),
            (
                Refused::TooManyLongPolls,
                503,
                Reason::too_many_long_polls,
                Some(1),
            ),
        ];
        for (refused, status, reason, retry) in cases {
            let e = ApiError::from(refused);
            assert_eq!(e.status().as_u16(), status, "{refused:?}");
            assert_eq!(e.reason(), reason, "{refused:?}");
            assert_eq!(e.retry_after(), retry, "{refused:?}");
            assert_eq!(e.to_string(), refused.to_string(), "the limit's own words");
            let res = e.into_response();
            assert_eq!(
                res.headers().get(header::RETRY_AFTER).map(|v| v
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()),
                retry
            );
        }
    }

    #[test]
    fn a_fault_of_ours_is_not_blamed_on_storage() {
        let e = ApiError::Internal;
        assert_eq!(e.status().as_u16(), 500);
        assert_eq!(e.reason(), Reason::internal);
        assert!(!e.to_string().contains("storage"));
    }
}
