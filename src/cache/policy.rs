//! Pure storage and freshness decisions: a function of the route, the exchange and
//! `now`, so table tests cover them without I/O or sleeping. RFC 9111 parsing and
//! freshness come from `http-cache-semantics`; this adds what it lacks: the soft/hard
//! windows of a route, stale-while-revalidate and stale-if-error (RFC 5861).

use std::time::{Duration, SystemTime};

use http::header::{AUTHORIZATION, CACHE_CONTROL, ETAG, EXPIRES, LAST_MODIFIED, SET_COOKIE, VARY};
use http::{HeaderMap, StatusCode};
use http_cache_semantics::{CacheOptions, CachePolicy};

use super::status::Detail;

/// What a route says about caching, validated from `routes.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    /// Soft TTL when the origin gives no freshness. Zero: the route adds none.
    pub ttl: Duration,
    /// Window after the soft TTL in which a stale copy is served while one refresh runs.
    pub stale: Duration,
    /// Window after the soft TTL in which a stale copy answers an origin failure.
    pub stale_if_error: Duration,
    /// Spread of soft TTLs (0.1 = ±10%).
    pub jitter: f64,
    /// Use `ttl` even when the origin gives freshness.
    pub override_origin: bool,
    /// Store responses carrying `Set-Cookie` (the cookie is stored with them).
    pub cache_set_cookie: bool,
    /// Larger bodies pass through uncached.
    pub max_body: usize,
}

/// The Cache-Control directives a shared cache acts on. Only what the
/// `http-cache-semantics` crate does not expose is read here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub max_age: bool,
    pub s_maxage: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl Directives {
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut d = Directives::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for part in value.split(',') {
                let (name, arg) = match part.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (part.trim(), None),
                };
                let secs = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    // `no-cache="field"` only strips fields; handled with storage.
                    "no-cache" => d.no_cache |= arg.is_none(),
                    "private" => d.private |= arg.is_none(),
                    "public" => d.public = true,
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "max-age" => d.max_age = true,
                    "s-maxage" => d.s_maxage = true,
                    "stale-while-revalidate" => d.stale_while_revalidate = secs(),
                    "stale-if-error" => d.stale_if_error = secs(),
                    _ => {}
                }
            }
        }
        d
    }

    /// Stale copies must not be served at all (RFC 9111 §5.2.2.2, §5.2.2.8).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.no_cache
    }
}

/// How long a stored response may be used, measured from `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Served as a hit without asking the origin.
    pub fresh: Duration,
    /// After `fresh`: served stale at once while one background refresh runs.
    pub stale: Duration,
    /// After `fresh`: served stale when the origin fails.
    pub stale_if_error: Duration,
}

impl Lifetimes {
    /// How long the store must keep the entry.
    pub fn keep(&self) -> Duration {
        self.fresh + self.stale.max(self.stale_if_error)
    }
}

/// The decision on one origin response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storability {
    Store(Lifetimes),
    DoNotStore(Detail),
}

/// The inputs of one decision, borrowed from the exchange.
pub struct Exchange<'a> {
    pub request_headers: &'a HeaderMap,
    pub status: StatusCode,
    pub response_headers: &'a HeaderMap,
}

/// Options for the `http-cache-semantics` policy: a shared cache.
pub fn cache_options() -> CacheOptions {
    CacheOptions {
        shared: true,
        ..CacheOptions::default()
    }
}

/// Decides whether and for how long a response may be stored.
///
/// `jitter_sample` is a number in `[-1, 1]` drawn by the caller, so this stays pure.
pub fn decide(
    route: &RoutePolicy,
    policy: &CachePolicy,
    ex: &Exchange<'_>,
    now: SystemTime,
    jitter_sample: f64,
) -> Storability {
    use Storability::DoNotStore;
    let cc = Directives::parse(ex.response_headers);
    let status = ex.status.as_u16();
    if status == 206 {
        return DoNotStore(Detail::Partial);
    }
    if cc.no_store || Directives::parse(ex.request_headers).no_store {
        return DoNotStore(Detail::NoStore);
    }
    if cc.private {
        return DoNotStore(Detail::Private);
    }
    if ex.request_headers.contains_key(AUTHORIZATION)
        && !(cc.public || cc.s_maxage || cc.must_revalidate)
    {
        return DoNotStore(Detail::Authorization);
    }
    if ex.response_headers.contains_key(SET_COOKIE) && !route.cache_set_cookie {
        return DoNotStore(Detail::SetCookie);
    }
    if vary_names(ex.response_headers).is_none() {
        return DoNotStore(Detail::VaryStar);
    }
    let explicit = cc.s_maxage || cc.max_age || ex.response_headers.contains_key(EXPIRES);
    if !cacheable_by_default(status) && !explicit {
        return DoNotStore(Detail::UncacheableStatus);
    }
    if !policy.is_storable() {
        return DoNotStore(Detail::UncacheableStatus);
    }

    // Soft TTL: the origin's word when it gave one, the route's otherwise.
    let fresh = if cc.no_cache {
        Duration::ZERO
    } else if explicit && !route.override_origin {
        // Downward only: jitter never extends what the origin allowed.
        scale(
            policy.time_to_live(now),
            -route.jitter * jitter_sample.abs(),
        )
    } else if route.ttl > Duration::ZERO {
        scale(route.ttl, route.jitter * jitter_sample)
    } else {
        // `ttl: 0s`: only heuristic freshness the origin's headers allow (Last-Modified).
        policy.time_to_live(now)
    };

    let origin_swr = Duration::from_secs(cc.stale_while_revalidate.unwrap_or(0));
    let origin_sie = Duration::from_secs(cc.stale_if_error.unwrap_or(0));
    let (stale, stale_if_error) = if cc.forbids_stale() {
        (Duration::ZERO, Duration::ZERO)
    } else if fresh.is_zero() {
        // The route's windows extend freshness the entry had, never create it.
        (origin_swr, origin_sie)
    } else {
        (
            route.stale.max(origin_swr),
            route.stale_if_error.max(origin_sie),
        )
    };

    let has_validators =
        ex.response_headers.contains_key(ETAG) || ex.response_headers.contains_key(LAST_MODIFIED);
    let lifetimes = Lifetimes {
        fresh,
        stale,
        stale_if_error,
    };
    if lifetimes.keep().is_zero() && !(cc.no_cache && has_validators) {
        return DoNotStore(Detail::NoFreshness);
    }
    Storability::Store(lifetimes)
}

fn scale(d: Duration, by: f64) -> Duration {
    d.mul_f64((1.0 + by).max(0.0))
}

/// RFC 9110 §15.1: statuses heuristically cacheable (cacheable without explicit freshness).
pub fn cacheable_by_default(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Lower-cased field names listed in `Vary`, all lines combined; `None` for `Vary: *`.
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for value in headers.get_all(VARY) {
        let value = value.to_str().unwrap_or("*");
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            let name = name.to_ascii_lowercase();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};

    fn route() -> RoutePolicy {
        RoutePolicy {
            ttl: Duration::from_secs(30),
            stale: Duration::from_secs(120),
            stale_if_error: Duration::from_secs(3600),
            jitter: 0.0,
            override_origin: false,
            cache_set_cookie: false,
            max_body: 1 << 20,
        }
    }

    /// Runs `decide` on a GET with `req` headers answered by `status` with `res` headers.
    fn check(
        route: &RoutePolicy,
        req: &[(&str, &str)],
        status: u16,
        res: &[(&str, &str)],
    ) -> Storability {
        let mut rq = Request::get("http://origin/x");
        for (k, v) in req {
            rq = rq.header(*k, *v);
        }
        let rq = rq.body(()).unwrap();
        let mut rs = Response::builder().status(status);
        for (k, v) in res {
            rs = rs.header(*k, *v);
        }
        let rs = rs.body(()).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let policy = CachePolicy::new_options(&rq, &rs, now, cache_options());
        let ex = Exchange {
            request_headers: rq.headers(),
            status: rs.status(),
            response_headers: rs.headers(),
        };
        decide(route, &policy, &ex, now, 0.0)
    }

    fn store(fresh: u64, stale: u64, sie: u64) -> Storability {
        Storability::Store(Lifetimes {
            fresh: Duration::from_secs(fresh),
            stale: Duration::from_secs(stale),
            stale_if_error: Duration::from_secs(sie),
        })
    }

    #[test]
    fn refuses_what_must_not_be_shared() {
        let r = route();
        use Storability::DoNotStore;
        assert_eq!(
            check(&r, &[], 200, &[("cache-control", "no-store")]),
            DoNotStore(Detail::NoStore)
        );
        assert_eq!(
            check(&r, &[], 200, &[("cache-control", "private, max-age=60")]),
            DoNotStore(Detail::Private)
        );
        assert_eq!(
            check(&r, &[], 200, &[("set-cookie", "a=b")]),
            DoNotStore(Detail::SetCookie)
        );
        assert_eq!(
            check(&r, &[("authorization", "Bearer x")], 200, &[]),
            DoNotStore(Detail::Authorization)
        );
        assert_eq!(
            check(&r, &[], 200, &[("vary", "accept, *")]),
            DoNotStore(Detail::VaryStar)
        );
        assert_eq!(
            check(&r, &[], 500, &[]),
            DoNotStore(Detail::UncacheableStatus)
        );
        assert_eq!(
            check(&r, &[], 206, &[("cache-control", "max-age=60")]),
            DoNotStore(Detail::Partial)
        );
        assert_eq!(
            check(&r, &[("cache-control", "no-store")], 200, &[]),
            DoNotStore(Detail::NoStore)
        );
    }

    #[test]
    fn authorization_is_shared_only_when_the_origin_says_so() {
        let r = route();
        let auth = [("authorization", "Bearer x")];
        assert_eq!(
            check(&r, &auth, 200, &[("cache-control", "public, max-age=10")]),
            store(10, 120, 3600)
        );
        assert_eq!(
            check(&r, &auth, 200, &[("cache-control", "s-maxage=10")]),
            store(10, 120, 3600)
        );
    }

    #[test]
    fn set_cookie_is_stored_when_the_route_allows() {
        let r = RoutePolicy {
            cache_set_cookie: true,
            ..route()
        };
        assert_eq!(
            check(&r, &[], 200, &[("set-cookie", "a=b")]),
            store(30, 120, 3600)
        );
    }

    #[test]
    fn origin_freshness_wins_over_route_ttl() {
        let r = route();
        assert_eq!(check(&r, &[], 200, &[]), store(30, 120, 3600));
        assert_eq!(
            check(&r, &[], 200, &[("cache-control", "max-age=5")]),
            store(5, 120, 3600)
        );
        assert_eq!(
            check(&r, &[], 200, &[("cache-control", "max-age=5, s-maxage=7")]),
            store(7, 120, 3600)
        );
        assert_eq!(
            check(
                &r,
                &[],
                200,
                &[("cache-control", "max-age=50"), ("age", "20")]
            ),
            store(30, 120, 3600)
        );
        let over = RoutePolicy {
            override_origin: true,
            ..route()
        };
        assert_eq!(
            check(&over, &[], 200, &[("cache-control", "max-age=5")]),
            store(30, 120, 3600)
        );
    }

    #[test]
    fn origin_windows_widen_route_windows() {
        let r = route();
        assert_eq!(
            check(
                &r,
                &[],
                200,
                &[(
                    "cache-control",
                    "max-age=5, stale-while-revalidate=600, stale-if-error=7200"
                )]
            ),
            store(5, 600, 7200)
        );
    }

    #[test]
    fn must_revalidate_and_no_cache_forbid_stale() {
        let r = route();
        assert_eq!(
            check(
                &r,
                &[],
                200,
                &[("cache-control", "max-age=5, must-revalidate")]
            ),
            store(5, 0, 0)
        );
        assert_eq!(
            check(
                &r,
                &[],
                200,
                &[("cache-control", "max-age=5, proxy-revalidate")]
            ),
            Storability::DoNotStore(Detail::NoFreshness)
        );
        assert_eq!(
            check(
                &r,
                &[],
                200,
                &[("cache-control", "no-cache"), ("etag", "\"v1\"")]
            ),
            store(0, 0, 0)
        );
    }

    #[test]
    fn zero_route_ttl_adds_no_freshness() {
        let r = RoutePolicy {
            ttl: Duration::ZERO,
            ..route()
        };
        assert_eq!(
            check(&r, &[], 200, &[]),
            Storability::DoNotStore(Detail::NoFreshness)
        );
        assert_eq!(
            check(&r, &[], 200, &[("cache-control", "max-age=9")]),
            store(9, 120, 3600)
        );
    }

    #[test]
    fn uncacheable_status_needs_explicit_freshness() {
        let r = route();
        assert_eq!(
            check(&r, &[], 302, &[("cache-control", "max-age=9")]),
            store(9, 120, 3600)
        );
        assert_eq!(check(&r, &[], 404, &[]), store(30, 120, 3600));
    }

    #[test]
    fn vary_lines_combine_and_star_never_matches() {
        let mut h = HeaderMap::new();
        h.append(VARY, "Accept-Encoding, accept".parse().unwrap());
        h.append(VARY, "X-Tenant".parse().unwrap());
        assert_eq!(
            vary_names(&h),
            Some(vec![
                "accept-encoding".into(),
                "accept".into(),
                "x-tenant".into()
            ])
        );
        h.append(VARY, "*".parse().unwrap());
        assert_eq!(vary_names(&h), None);
    }
}
