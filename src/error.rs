//! Errors that become responses: typed, classified by side, one `IntoResponse` that
//! shows no internals.

use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("no route matches this path")]
    NoRoute,
    #[error("this proxy does not serve that host")]
    MisdirectedRequest,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("not cached (only-if-cached)")]
    NotCached,
    #[error("origin unreachable: {0}")]
    UpstreamConnect(String),
    #[error("origin did not answer in time")]
    UpstreamTimeout,
    #[error("origin failed: {0}")]
    Upstream(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("purge is disabled")]
    PurgeDisabled,
    #[error("store failed: {0}")]
    Store(String),
}

/// Who caused a failure, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NotCached => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamConnect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::PurgeDisabled => StatusCode::FORBIDDEN,
            ProxyError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamTimeout
            | ProxyError::Upstream(_) => Side::Upstream,
            _ => Side::Downstream,
        }
    }

    /// The short reason shown to clients: no addresses, no internals.
    fn public_reason(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no route matches this path",
            ProxyError::MisdirectedRequest => "this proxy does not serve that host",
            ProxyError::BadRequest(r) => r,
            ProxyError::PayloadTooLarge => "request body too large",
            ProxyError::NotCached => "not cached (only-if-cached)",
            ProxyError::UpstreamConnect(_) => "origin unreachable",
            ProxyError::UpstreamTimeout => "origin did not answer in time",
            ProxyError::Upstream(_) => "origin failed",
            ProxyError::Unauthorized => "a valid admin token is required",
            ProxyError::PurgeDisabled => {
                "purge is disabled: set admin.token or CACHEGATE_ADMIN_TOKEN"
            }
            ProxyError::Store(_) => "the store could not apply the purge; try again",
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), format!("{}\n", self.public_reason())).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        resp
    }
}
