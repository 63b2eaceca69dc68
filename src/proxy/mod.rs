//! The request path, in the order it runs: `route` -> `key` -> store lookup -> single
//! flight -> `origin` -> policy -> store -> `respond`.

pub mod key;
pub mod origin;
pub mod refresh;
pub mod respond;
pub mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderName};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use http_cache_semantics::{AfterResponse, CachePolicy};

use crate::app::AppState;
use crate::cache::entry::{vary_values, Freshness};
use crate::cache::lock::{Lock, WaitError};
use crate::cache::policy::{self, Exchange, RequestDirectives, Reuse, Storability};
use crate::cache::purge::{Mode, Selector};
use crate::cache::{CacheEntry, CacheStatus, Detail, Fwd};
use crate::config::Route;
use crate::error::ProxyError;
use origin::BodyRead;

/// What a fetch leader hands to the requests that waited for it.
#[derive(Clone, Debug)]
pub enum Shared {
    /// A storable response: every waiter answers from it.
    Entry(Arc<CacheEntry>, StatusCode),
    /// Not storable (private, too large, ...): waiters go to the origin themselves.
    Uncacheable,
    /// The origin failed. Waiters serve their stale copy if they may; otherwise they
    /// retry the origin when it answered (a 5xx) or return the error when it did not.
    Failed {
        fwd_status: Option<StatusCode>,
        error: ProxyError,
    },
}

/// The request, as the cache path needs it after the body is gone.
pub struct Inbound {
    pub parts: Parts,
    pub client: Option<SocketAddr>,
}

/// The axum handler for every proxied request.
pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let client = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if parts.method.as_str() == "PURGE" {
        return purge_url(&state, &parts).await;
    }
    let Some(matched) = state.routes.find(parts.uri.path()) else {
        return ProxyError::NoRoute.into_response();
    };
    let route = &state.config.routes[matched.route];
    let inbound = Inbound { parts, client };
    let (resp, status) = if !route.cache {
        forward(
            &state,
            route,
            inbound,
            body,
            CacheStatus::forward(Fwd::Bypass),
        )
        .await
    } else if inbound.parts.method == Method::GET || inbound.parts.method == Method::HEAD {
        let key = key::cache_key(
            &route.template,
            &matched.params,
            inbound.parts.uri.query(),
            &route.key,
        );
        lookup_or_fetch(&state, route, &key, inbound).await
    } else {
        unsafe_method(&state, route, &matched.params, inbound, body).await
    };
    let mut resp = resp;
    for field in policy::targeted_fields(&route.policy.targets) {
        resp.headers_mut().remove(field.as_str());
    }
    resp.headers_mut().remove("surrogate-control");
    crate::telemetry::record_request(&route.template, &status, resp.status(), started.elapsed());
    resp
}

/// `PURGE /path?query` with the admin token: every variant of that URL's entry;
/// `Purge-Mode: soft` marks it stale instead of removing it.
async fn purge_url(state: &AppState, parts: &Parts) -> Response {
    if let Err(e) = state.admin_token_ok(crate::admin::bearer(&parts.headers)) {
        return e.into_response();
    }
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let Some(key) = state.key_for(target) else {
        return ProxyError::NoRoute.into_response();
    };
    let soft = parts
        .headers
        .get("purge-mode")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"soft"));
    let mode = if soft { Mode::Soft } else { Mode::Hard };
    crate::admin::purge_response(state, &Selector::Key(key), mode).await
}

/// GET and HEAD: serve from the store when possible, else fetch once for everyone.
async fn lookup_or_fetch(
    state: &Arc<AppState>,
    route: &Route,
    key: &str,
    inbound: Inbound,
) -> (Response, CacheStatus) {
    let now = SystemTime::now();
    let client_cc = RequestDirectives::parse(&inbound.parts.headers);
    let found = state.lookup(key, &inbound.parts.headers).await;

    if let Some(entry) = &found {
        let show = |s: CacheStatus| with_key(s, route, key);
        let reuse = match policy::reuse(entry, &client_cc, &route.policy, now) {
            // A flood of revalidating clients shares one fresh confirmation.
            Reuse::Revalidate if just_validated(entry, now) => Reuse::Fresh,
            other => other,
        };
        match reuse {
            Reuse::Fresh => {
                let status = show(CacheStatus::hit(entry.ttl_secs(now)));
                return (respond_entry(entry, &inbound, now, &status), status);
            }
            Reuse::Stale => {
                refresh::spawn(state, route, key, entry.clone(), &inbound);
                let status = show(
                    CacheStatus::hit(entry.ttl_secs(now)).with_detail(Detail::StaleWhileRevalidate),
                );
                return (respond_entry(entry, &inbound, now, &status), status);
            }
            Reuse::Revalidate => {}
        }
    }
    if client_cc.only_if_cached {
        let status = CacheStatus::forward(Fwd::Miss);
        return (error_response(ProxyError::NotCached, &status), status);
    }
    let fwd = match &found {
        Some(entry) if entry.freshness(now) == Freshness::Fresh => Fwd::Request,
        Some(_) => Fwd::Stale,
        None => Fwd::Miss,
    };
    if state.hit_for_miss.contains_key(key) {
        let status = CacheStatus::forward(fwd).with_detail(Detail::HitForMiss);
        return forward(state, route, inbound, Body::empty(), status).await;
    }

    // Bounded: a follower whose leader gave up competes again, at most a few times.
    for _ in 0..3 {
        match state.locks.lock(key) {
            Lock::Leader(permit) => {
                let upstream_timeout = state.origins.upstream(route.upstream).timeout;
                let lease = state.acquire_lease(key, upstream_timeout).await;
                if lease.is_none() {
                    // Another replica is fetching: its entry will appear in the store.
                    let newer_than = found.as_ref().map(|e| e.stored_at);
                    let deadline = upstream_timeout + Duration::from_secs(1);
                    if let Some(entry) = state
                        .wait_for_entry(key, &inbound.parts.headers, newer_than, deadline)
                        .await
                    {
                        let now = SystemTime::now();
                        let status = with_key(
                            CacheStatus {
                                fwd: Some(fwd),
                                collapsed: true,
                                ttl: Some(entry.ttl_secs(now)),
                                ..Default::default()
                            },
                            route,
                            key,
                        );
                        let response = respond_entry(&entry, &inbound, now, &status);
                        permit.release(Shared::Entry(entry.clone(), entry.status));
                        return (response, status);
                    }
                }
                let fetched = fetch(state, route, key, &inbound, found.clone(), fwd).await;
                if let Some(Some(token)) = lease {
                    state.release_lease(key, &token).await;
                }
                permit.release(fetched.shared);
                return (fetched.response, fetched.status);
            }
            Lock::Follower(waiter) => {
                let wait = state.origins.upstream(route.upstream).timeout + Duration::from_secs(1);
                match waiter.wait(wait).await {
                    Ok(shared) => {
                        return follow(state, route, key, inbound, found, fwd, shared).await
                    }
                    Err(WaitError::Abandoned) => continue,
                    Err(WaitError::TimedOut) => break,
                }
            }
        }
    }
    forward(
        state,
        route,
        inbound,
        Body::empty(),
        CacheStatus::forward(fwd),
    )
    .await
}

/// A waiter's answer from its leader's outcome.
async fn follow(
    state: &Arc<AppState>,
    route: &Route,
    key: &str,
    inbound: Inbound,
    found: Option<Arc<CacheEntry>>,
    fwd: Fwd,
    shared: Shared,
) -> (Response, CacheStatus) {
    let now = SystemTime::now();
    match shared {
        Shared::Entry(entry, fwd_status) => {
            let status = with_key(
                CacheStatus {
                    fwd: Some(fwd),
                    fwd_status: Some(fwd_status.as_u16()),
                    collapsed: true,
                    ttl: Some(entry.ttl_secs(now)),
                    ..Default::default()
                },
                route,
                key,
            );
            (respond_entry(&entry, &inbound, now, &status), status)
        }
        Shared::Failed { fwd_status, error } => {
            if let Some(stale) = found.filter(|e| usable_on_error(e, now)) {
                return serve_stale_on_error(&stale, &inbound, now, fwd_status, true);
            }
            match fwd_status {
                Some(_) => {
                    forward(
                        state,
                        route,
                        inbound,
                        Body::empty(),
                        CacheStatus::forward(fwd),
                    )
                    .await
                }
                None => {
                    let status = CacheStatus {
                        fwd: Some(fwd),
                        collapsed: true,
                        ..Default::default()
                    };
                    (error_response(error, &status), status)
                }
            }
        }
        Shared::Uncacheable => {
            forward(
                state,
                route,
                inbound,
                Body::empty(),
                CacheStatus::forward(fwd),
            )
            .await
        }
    }
}

/// The result of one origin fetch made on behalf of the cache.
pub struct Fetched {
    pub response: Response,
    pub status: CacheStatus,
    pub shared: Shared,
}

/// Fetches `key` from the origin as the flight's leader (or a background refresh),
/// stores what may be stored and answers the client.
pub async fn fetch(
    state: &Arc<AppState>,
    route: &Route,
    key: &str,
    inbound: &Inbound,
    stale: Option<Arc<CacheEntry>>,
    fwd: Fwd,
) -> Fetched {
    let upstream = state.origins.upstream(route.upstream);
    let sent = send_for_cache(state, route, inbound, stale.as_deref()).await;
    let now = SystemTime::now();
    let mut status = with_key(CacheStatus::forward(fwd), route, key);

    let resp = match sent {
        Ok(resp) => resp,
        Err(error) => {
            if let Some(entry) = stale.as_ref().filter(|e| usable_on_error(e, now)) {
                let (response, status) = serve_stale_on_error(entry, inbound, now, None, false);
                return Fetched {
                    response,
                    status,
                    shared: Shared::Failed {
                        fwd_status: None,
                        error,
                    },
                };
            }
            tracing::warn!(route = %route.template, %error, "origin request failed");
            return Fetched {
                response: error_response(error.clone(), &status),
                status,
                shared: Shared::Failed {
                    fwd_status: None,
                    error,
                },
            };
        }
    };
    status.fwd_status = Some(resp.status().as_u16());

    if resp.status().is_server_error() {
        if let Some(entry) = stale.as_ref().filter(|e| usable_on_error(e, now)) {
            let (response, status) =
                serve_stale_on_error(entry, inbound, now, Some(resp.status()), false);
            return Fetched {
                response,
                status,
                shared: Shared::Failed {
                    fwd_status: Some(resp.status()),
                    error: ProxyError::Upstream(format!("status {}", resp.status())),
                },
            };
        }
    }

    let (mut parts, mut body) = resp.into_parts();
    origin::strip_hop_by_hop(&mut parts.headers);
    let request_parts = cache_request(&inbound.parts);

    if parts.status == StatusCode::NOT_MODIFIED {
        if let Some(old) = &stale {
            if let Some(renewed) = renew(route, old, &request_parts, &parts, now) {
                let renewed = Arc::new(renewed);
                status.stored = state.store_entry(key, renewed.clone()).await;
                status.ttl = Some(renewed.ttl_secs(now));
                status.detail = Some(Detail::NotModified);
                let response = respond_entry(&renewed, inbound, now, &status);
                return Fetched {
                    response,
                    status,
                    shared: Shared::Entry(renewed, StatusCode::NOT_MODIFIED),
                };
            }
            // A 304 for another validator cannot be applied (RFC 9111 §4.3.4), and this
            // client sent no conditional: ask again, unconditionally.
            match send_for_cache(state, route, inbound, None).await {
                Ok(resp) => {
                    status.fwd_status = Some(resp.status().as_u16());
                    (parts, body) = resp.into_parts();
                    origin::strip_hop_by_hop(&mut parts.headers);
                }
                Err(error) => {
                    return Fetched {
                        response: error_response(error.clone(), &status),
                        status,
                        shared: Shared::Failed {
                            fwd_status: None,
                            error,
                        },
                    };
                }
            }
        }
    }

    let (policy, storability) = evaluate(route, &request_parts, parts.status, &parts.headers, now);
    let lifetimes = match storability {
        Storability::Store(l) => l,
        Storability::DoNotStore(reason) => {
            status.detail = Some(reason);
            if !parts.status.is_server_error() {
                state.hit_for_miss.insert(key.to_string(), ());
            }
            let response = respond::passthrough(
                Response::from_parts(parts, Body::new(body)),
                &inbound.parts.method,
                &status,
            );
            return Fetched {
                response,
                status,
                shared: Shared::Uncacheable,
            };
        }
    };

    let read_timeout = upstream.timeout;
    let body = match origin::read_body(body, route.policy.max_body, read_timeout).await {
        Ok(BodyRead::Complete(bytes)) => bytes,
        Ok(BodyRead::TooLarge(prefix, rest)) => {
            status.detail = Some(Detail::TooLarge);
            state.hit_for_miss.insert(key.to_string(), ());
            let body = origin::chain_body(prefix, rest);
            let response = respond::passthrough(
                Response::from_parts(parts, body),
                &inbound.parts.method,
                &status,
            );
            return Fetched {
                response,
                status,
                shared: Shared::Uncacheable,
            };
        }
        Err(error) => {
            tracing::warn!(route = %route.template, %error, "origin response body failed");
            status.detail = Some(Detail::Incomplete);
            return Fetched {
                response: error_response(error.clone(), &status),
                status,
                shared: Shared::Failed {
                    fwd_status: Some(parts.status),
                    error,
                },
            };
        }
    };

    let vary = variant_names(route, &parts.headers);
    parts.headers.remove(header::AGE);
    // `private="f"` / `no-cache="f"`: f is for this client only, never stored.
    let mut withheld = HeaderMap::new();
    let effective = policy::effective_headers(&parts.headers, &route.policy.targets);
    for field in policy::Directives::parse(&effective).strip_fields {
        if let Ok(name) = HeaderName::try_from(field) {
            for v in parts.headers.get_all(&name) {
                withheld.append(name.clone(), v.clone());
            }
            parts.headers.remove(&name);
        }
    }
    let entry = Arc::new(CacheEntry::new(
        parts.status,
        parts.headers,
        body,
        policy,
        now,
        lifetimes,
        vary_values(&inbound.parts.headers, &vary),
    ));
    status.stored = state.store_entry(key, entry.clone()).await;
    if !status.stored {
        status.detail = Some(Detail::StoreError);
    }
    state.hit_for_miss.invalidate(key);
    status.ttl = Some(entry.ttl_secs(now));
    let mut response = respond_entry(&entry, inbound, now, &status);
    for (name, value) in &withheld {
        response.headers_mut().append(name, value.clone());
    }
    let fwd_status = entry.status;
    Fetched {
        response,
        status,
        shared: Shared::Entry(entry, fwd_status),
    }
}

/// Sends the GET the cache needs: unconditional, or with `stale`'s validators so a 304
/// renews it. The client's own conditionals and ranges are answered from the result.
async fn send_for_cache(
    state: &AppState,
    route: &Route,
    inbound: &Inbound,
    stale: Option<&CacheEntry>,
) -> Result<hyper::Response<hyper::body::Incoming>, ProxyError> {
    let mut headers = inbound.parts.headers.clone();
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
    ] {
        headers.remove(name);
    }
    if let Some(entry) = stale {
        if let Some(etag) = entry.headers.get(header::ETAG) {
            headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = entry.headers.get(header::LAST_MODIFIED) {
            headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
    }
    let upstream = state.origins.upstream(route.upstream);
    let req = origin::outbound(
        upstream,
        Method::GET,
        &inbound.parts.uri,
        &headers,
        inbound.client,
        Body::empty(),
    );
    crate::telemetry::record_origin_request(&route.template, "fetch");
    state.origins.send(route.upstream, req).await
}

/// The route's key headers plus the response's `Vary` (already checked not to be `*`).
fn variant_names(route: &Route, response: &HeaderMap) -> Vec<HeaderName> {
    let mut names = route.key.headers.clone();
    for n in policy::vary_names(response).unwrap_or_default() {
        if let Ok(n) = HeaderName::try_from(n) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names
}

/// Applies a 304 to the stored entry (RFC 9111 §3.2, §4.3.4): the 304's fields replace
/// or join the stored ones, the body stays. A 304 whose validator does not match the
/// stored response is not applied.
fn renew(
    route: &Route,
    old: &CacheEntry,
    request: &Parts,
    not_modified: &http::response::Parts,
    now: SystemTime,
) -> Option<CacheEntry> {
    if !matches!(
        old.policy.after_response(request, not_modified, now),
        AfterResponse::NotModified(..)
    ) {
        return None;
    }
    let mut headers = old.headers.clone();
    for name in not_modified.headers.keys() {
        // Fields that describe the 304 message itself, not the stored representation.
        if matches!(
            name.as_str(),
            "content-length" | "content-encoding" | "content-range" | "age"
        ) {
            continue;
        }
        headers.remove(name);
        for value in not_modified.headers.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let (policy, storability) = evaluate(route, request, old.status, &headers, now);
    let Storability::Store(lifetimes) = storability else {
        return None;
    };
    Some(CacheEntry::new(
        old.status,
        headers,
        old.body.clone(),
        policy,
        now,
        lifetimes,
        old.vary.clone(),
    ))
}

/// Reads a response as this cache must (targeted fields first) and decides whether and
/// how long to keep it.
fn evaluate(
    route: &Route,
    request: &Parts,
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> (CachePolicy, Storability) {
    let effective = policy::effective_headers(headers, &route.policy.targets);
    let response = policy::library_response(status, &effective);
    let policy = CachePolicy::new_options(request, &response, now, policy::cache_options());
    let exchange = Exchange {
        request_headers: &request.headers,
        status,
        response_headers: &effective,
    };
    let jitter = rand::random::<f64>() * 2.0 - 1.0;
    let storability = policy::decide(&route.policy, &policy, &exchange, now, jitter);
    (policy, storability)
}

/// The request as the cache sees it: a GET for the same URL and headers.
pub(crate) fn cache_request(parts: &Parts) -> Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = parts.uri.clone();
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
}

/// A client's `no-cache` is satisfied by a response the origin confirmed this recently:
/// a flood of `no-cache` requests then costs one origin request per interval, not one
/// per client (a deliberate, documented reading of RFC 9111 §5.2.1.4).
const NO_CACHE_GRACE: Duration = Duration::from_secs(1);

fn just_validated(entry: &CacheEntry, now: SystemTime) -> bool {
    now.duration_since(entry.stored_at)
        .is_ok_and(|age| age < NO_CACHE_GRACE)
}

fn usable_on_error(entry: &CacheEntry, now: SystemTime) -> bool {
    !matches!(entry.freshness(now), Freshness::Expired)
}

fn serve_stale_on_error(
    entry: &CacheEntry,
    inbound: &Inbound,
    now: SystemTime,
    fwd_status: Option<StatusCode>,
    collapsed: bool,
) -> (Response, CacheStatus) {
    let status = CacheStatus {
        fwd: Some(Fwd::Stale),
        fwd_status: fwd_status.map(|s| s.as_u16()),
        collapsed,
        ttl: Some(entry.ttl_secs(now)),
        detail: Some(Detail::StaleIfError),
        ..Default::default()
    };
    (respond_entry(entry, inbound, now, &status), status)
}

fn respond_entry(
    entry: &CacheEntry,
    inbound: &Inbound,
    now: SystemTime,
    status: &CacheStatus,
) -> Response {
    respond::from_entry(
        entry,
        &inbound.parts.method,
        &inbound.parts.headers,
        now,
        status,
    )
}

fn error_response(error: ProxyError, status: &CacheStatus) -> Response {
    let mut resp = error.into_response();
    respond::finish(resp.headers_mut(), status);
    resp
}

fn with_key(mut status: CacheStatus, route: &Route, key: &str) -> CacheStatus {
    if route.show_key {
        status.key = Some(key.to_string());
    }
    status
}

/// Sends the request to the origin as it is and streams the answer back.
async fn forward(
    state: &Arc<AppState>,
    route: &Route,
    inbound: Inbound,
    body: Body,
    mut status: CacheStatus,
) -> (Response, CacheStatus) {
    let upstream = state.origins.upstream(route.upstream);
    let req = origin::outbound(
        upstream,
        inbound.parts.method.clone(),
        &inbound.parts.uri,
        &inbound.parts.headers,
        inbound.client,
        body,
    );
    crate::telemetry::record_origin_request(&route.template, "pass");
    match state.origins.send(route.upstream, req).await {
        Ok(resp) => {
            status.fwd_status = Some(resp.status().as_u16());
            let resp = resp.map(Body::new);
            (
                respond::passthrough(resp, &inbound.parts.method, &status),
                status,
            )
        }
        Err(error) => {
            tracing::warn!(route = %route.template, %error, "origin request failed");
            (error_response(error, &status), status)
        }
    }
}

/// POST, PUT, PATCH, DELETE, ...: forwarded; a success invalidates the stored
/// responses for the URL (RFC 9111 §4.4).
async fn unsafe_method(
    state: &Arc<AppState>,
    route: &Route,
    params: &[(String, String)],
    inbound: Inbound,
    body: Body,
) -> (Response, CacheStatus) {
    let key = key::cache_key(
        &route.template,
        params,
        inbound.parts.uri.query(),
        &route.key,
    );
    let safe = matches!(inbound.parts.method, Method::OPTIONS | Method::TRACE);
    let host = inbound
        .parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let status = CacheStatus::forward(Fwd::Bypass).with_detail(Detail::Method);
    let (resp, status) = forward(state, route, inbound, body, status).await;
    if !safe && (resp.status().is_success() || resp.status().is_redirection()) {
        state.invalidate(&key).await;
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(other) = resp.headers().get(name).and_then(|v| v.to_str().ok()) {
                state.invalidate_url(other, host.as_deref()).await;
            }
        }
    }
    (resp, status)
}
