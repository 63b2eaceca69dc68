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
    /// cachegate did not send the request: the upstream is at its limit or its breaker
    /// is open (`proxy::upstream_guard`).
    #[error("origin request not sent: {}", reason.as_str())]
    OriginBusy {
        reason: RejectReason,
        /// Whole seconds, at least 1: the `Retry-After` value.
        retry_after: u64,
    },
}

/// Why an origin request was not sent (`proxy::upstream_guard`); also the `reason`
/// label of `cachegate_origin_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// `max_concurrency` requests were in flight for all of `queue_timeout`.
    QueueTimeout,
    /// The token bucket had no token within `queue_timeout`.
    RateLimit,
    /// The breaker is open (or half-open with its probe out).
    BreakerOpen,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::QueueTimeout => "queue_timeout",
            RejectReason::RateLimit => "rate_limit",
            RejectReason::BreakerOpen => "breaker_open",
        }
    }
}

impl ProxyError {
    /// A rejection, with `retry_after` rounded up to whole seconds (at least 1).
    pub fn origin_busy(reason: RejectReason, retry_after: std::time::Duration) -> Self {
        let mut secs = retry_after.as_secs();
        if retry_after.subsec_nanos() > 0 || secs == 0 {
            secs += 1;
        }
        ProxyError::OriginBusy {
            reason,
            retry_after: secs,
        }
    }
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
            ProxyError::Store(_) | ProxyError::OriginBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamTimeout
            | ProxyError::Upstream(_)
            | ProxyError::OriginBusy { .. } => Side::Upstream,
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
            ProxyError::OriginBusy { reason, .. } => match reason {
                RejectReason::BreakerOpen => "origin unavailable (circuit open); retry later",
                RejectReason::QueueTimeout | RejectReason::RateLimit => "origin busy; retry later",
            },
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), format!("{}\n", self.public_reason())).into_response();
        if let ProxyError::OriginBusy { retry_after, .. } = &self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(*retry_after));
        }
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
