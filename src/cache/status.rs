//! Cache states as closed enums: one value feeds the `Cache-Status` header (RFC 9211),
//! the log field and the metric label, so they never disagree.

use std::fmt::{self, Write};

/// Why the request went forward (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// Not cached, or cached but not reusable for this request's route.
    Bypass,
    /// Nothing usable was stored.
    Miss,
    /// A stored response was too old to serve without asking the origin.
    Stale,
    /// The client asked for a fresh copy (`no-cache`).
    Request,
}

impl Fwd {
    pub fn as_str(self) -> &'static str {
        match self {
            Fwd::Bypass => "bypass",
            Fwd::Miss => "miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
        }
    }
}

/// Why a response was served the way it was, or not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    StaleWhileRevalidate,
    StaleIfError,
    Bypass,
    Method,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    VaryNotAllowed,
    UncacheableStatus,
    Partial,
    TooLarge,
    Incomplete,
    NoFreshness,
    HitForMiss,
    StoreError,
    NotModified,
    /// Not sent: the upstream's `max_concurrency` stayed full for `queue_timeout`.
    OriginBusy,
    /// Not sent: the upstream's `rate_limit` had no token in time.
    RateLimited,
    /// Not sent: the upstream's breaker is open.
    BreakerOpen,
}

impl Detail {
    pub fn as_str(self) -> &'static str {
        match self {
            Detail::StaleWhileRevalidate => "stale-while-revalidate",
            Detail::StaleIfError => "stale-if-error",
            Detail::Bypass => "bypass",
            Detail::Method => "method",
            Detail::NoStore => "no-store",
            Detail::Private => "private",
            Detail::Authorization => "authorization",
            Detail::SetCookie => "set-cookie",
            Detail::VaryStar => "vary-star",
            Detail::VaryNotAllowed => "vary-not-allowed",
            Detail::UncacheableStatus => "uncacheable-status",
            Detail::Partial => "partial-content",
            Detail::TooLarge => "too-large",
            Detail::Incomplete => "incomplete",
            Detail::NoFreshness => "no-freshness",
            Detail::HitForMiss => "hit-for-miss",
            Detail::StoreError => "store-error",
            Detail::NotModified => "revalidated",
            Detail::OriginBusy => "origin-busy",
            Detail::RateLimited => "rate-limited",
            Detail::BreakerOpen => "breaker-open",
        }
    }
}

/// One `Cache-Status` member for this cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStatus {
    pub hit: bool,
    pub fwd: Option<Fwd>,
    pub fwd_status: Option<u16>,
    pub stored: bool,
    pub collapsed: bool,
    /// Remaining freshness in seconds; negative once stale.
    pub ttl: Option<i64>,
    pub key: Option<String>,
    pub detail: Option<Detail>,
    /// The origin exchange this request made, up to its response headers (for the access
    /// log; not part of the header).
    pub origin_time: Option<std::time::Duration>,
}

impl CacheStatus {
    pub fn hit(ttl: i64) -> Self {
        CacheStatus {
            hit: true,
            ttl: Some(ttl),
            ..Default::default()
        }
    }

    pub fn forward(fwd: Fwd) -> Self {
        CacheStatus {
            fwd: Some(fwd),
            ..Default::default()
        }
    }

    pub fn with_detail(mut self, detail: Detail) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The label used for metrics and logs: `hit`, `stale`, `miss`, `bypass`, ...
    /// Spelled as Prometheus labels are (`stale_if_error`); the header's `detail=`
    /// keeps RFC 9111's `stale-if-error`.
    pub fn outcome(&self) -> &'static str {
        match (self.hit, self.fwd, self.detail) {
            (true, _, Some(Detail::StaleWhileRevalidate)) => "stale",
            (true, _, _) if self.collapsed => "collapsed",
            (true, _, _) => "hit",
            (false, _, Some(Detail::StaleIfError)) => "stale_if_error",
            // Waited for another request's fetch of the key: one origin request served it.
            (false, Some(_), _) if self.collapsed => "collapsed",
            (false, Some(f), _) => f.as_str(),
            (false, None, _) => "none",
        }
    }

    /// How a background refresh ended, for its metric.
    pub fn outcome_of_refresh(&self) -> &'static str {
        match (self.stored, self.detail) {
            (true, Some(Detail::NotModified)) => "revalidated",
            (true, _) => "stored",
            (false, Some(Detail::StaleIfError)) => "origin-error",
            (false, _) if self.fwd_status.is_none() => "origin-error",
            (false, _) => "not-stored",
        }
    }

    /// Renders the header value, e.g. `cachegate; fwd=miss; fwd-status=200; stored`.
    pub fn header_value(&self, cache_name: &str) -> String {
        let mut out = String::with_capacity(64);
        out.push_str(cache_name);
        if self.hit {
            out.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            let _ = write!(out, "; fwd={}", fwd.as_str());
        }
        if let Some(s) = self.fwd_status {
            let _ = write!(out, "; fwd-status={s}");
        }
        if self.stored {
            out.push_str("; stored");
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(out, "; ttl={ttl}");
        }
        if let Some(key) = &self.key {
            let _ = write!(out, "; key=\"{}\"", key.replace(['"', '\\'], "_"));
        }
        if let Some(d) = self.detail {
            let _ = write!(out, "; detail={}", d.as_str());
        }
        out
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header_value("cachegate"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc9211_members() {
        let check = |s: CacheStatus, want: &str| assert_eq!(s.header_value("cachegate"), want);
        check(CacheStatus::hit(12), "cachegate; hit; ttl=12");
        check(
            CacheStatus {
                fwd: Some(Fwd::Miss),
                fwd_status: Some(200),
                stored: true,
                ..Default::default()
            },
            "cachegate; fwd=miss; fwd-status=200; stored",
        );
        check(
            CacheStatus::hit(-3).with_detail(Detail::StaleWhileRevalidate),
            "cachegate; hit; ttl=-3; detail=stale-while-revalidate",
        );
        check(
            CacheStatus {
                fwd: Some(Fwd::Stale),
                fwd_status: Some(503),
                detail: Some(Detail::StaleIfError),
                ..Default::default()
            },
            "cachegate; fwd=stale; fwd-status=503; detail=stale-if-error",
        );
        check(CacheStatus::forward(Fwd::Bypass), "cachegate; fwd=bypass");
    }

    #[test]
    fn outcomes_name_the_metric_label() {
        let check = |s: CacheStatus, want: &str| assert_eq!(s.outcome(), want, "{s}");
        check(CacheStatus::hit(12), "hit");
        check(
            CacheStatus::hit(-3).with_detail(Detail::StaleWhileRevalidate),
            "stale",
        );
        let stale_if_error = CacheStatus {
            fwd: Some(Fwd::Stale),
            fwd_status: Some(503),
            detail: Some(Detail::StaleIfError),
            ..Default::default()
        };
        // The label is stale_if_error; the header keeps the directive's spelling.
        assert!(stale_if_error
            .to_string()
            .ends_with("detail=stale-if-error"));
        check(stale_if_error, "stale_if_error");
        check(CacheStatus::forward(Fwd::Miss), "miss");
        check(
            CacheStatus {
                fwd: Some(Fwd::Miss),
                collapsed: true,
                ..Default::default()
            },
            "collapsed",
        );
        check(CacheStatus::forward(Fwd::Request), "request");
        check(CacheStatus::forward(Fwd::Bypass), "bypass");
        check(CacheStatus::default(), "none");
    }
}
