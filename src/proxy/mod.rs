//! The request path, in the order it runs: `route` -> `key` -> store lookup -> single
//! flight -> `fetch` (origin -> policy -> store) -> `respond`.

pub mod canonical;
pub mod edge;
pub mod explain;
mod fetch;
pub mod key;
pub mod origin;
pub mod refresh;
pub mod respond;
pub mod route;
pub mod upstream_guard;
pub mod uri;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::header;
use http::request::Parts;
use http::{Method, StatusCode};
use http_body::Body as _;
use tracing::Instrument;

use crate::app::{AppState, Runtime};
use crate::cache::entry::Freshness;
use crate::cache::lock::{Lock, Permit, WaitError};
use crate::cache::policy::{self, RequestDirectives, Reuse};
use crate::cache::FetchRight;
use crate::cache::{CacheEntry, CacheStatus, Detail, Fwd};
use crate::config::Route;
use crate::error::ProxyError;
use crate::purge;
use canonical::{Forwarding, Peer, UpstreamRequest};

pub use crate::cache::Shared;

pub use fetch::{cache_request, fetch, Fetched};

/// A request on its way through the proxy: what the client sent (its conditionals,
/// ranges and `Cache-Control` are answered from it) and, computed once, what the origin
/// receives for it.
pub struct Inbound {
    /// The config this request started with; it finishes on it across a reload.
    pub rt: Arc<Runtime>,
    pub parts: Parts,
    pub fwd: Forwarding,
    pub upstream: UpstreamRequest,
}

/// The axum handler for every proxied request.
pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    if parts.method.as_str() == "PURGE" {
        return purge_url(&state, &parts).await;
    }
    let rt = state.runtime();
    let peer = peer_of(&parts);
    let path = match canonical::path(parts.uri.path()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let fwd = match canonical::forwarding(&parts.uri, &parts.headers, &peer, &rt.config.edge) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let Some(matched) = rt.routes.find(&path) else {
        return ProxyError::NoRoute.into_response();
    };
    let route = &rt.config.routes[matched.route];
    let span = crate::telemetry::request_span(&parts.method, &route.template, &parts.headers);
    let access = crate::telemetry::access_start(rt.config.log.access, &parts, peer.text);
    async {
        let (mut resp, status) =
            dispatch(&state, &rt, route, &matched.params, path, fwd, parts, body).await;
        // Targeted fields are for caches, not for clients (RFC 9213 §2).
        for field in route.policy.targets.own_fields() {
            resp.headers_mut().remove(field);
        }
        resp.headers_mut().remove(&SURROGATE_CONTROL);
        // Tags are for purges, not for clients (they may name internal ids).
        if !route.expose_tags {
            for name in &rt.config.tag_headers {
                resp.headers_mut().remove(name);
            }
        }
        let elapsed = started.elapsed();
        crate::telemetry::record_outcome(status.outcome(), resp.status());
        crate::telemetry::record_request(&route.template, &status, resp.status(), elapsed);
        crate::telemetry::access_log(access, &route.template, &status, &resp, elapsed);
        resp
    }
    .instrument(span)
    .await
}

/// Edge-Surrogate (`Surrogate-Control`, W3C): for caches, not for clients.
static SURROGATE_CONTROL: header::HeaderName = header::HeaderName::from_static("surrogate-control");

/// Where the request came from, as the connection tells it.
fn peer_of(parts: &Parts) -> Peer {
    match parts.extensions.get::<crate::conn::ConnectionInfo>() {
        // The scheme the client really used: from the listener, never from a header.
        Some(conn) => Peer {
            addr: Some(conn.peer),
            tls: conn.tls,
            text: Some(conn.text.clone()),
        },
        // An embedded router, not served by `server` (axum's `ConnectInfo`, if any).
        None => Peer::new(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
            false,
        ),
    }
}

/// Chooses the path for a matched request: bypass, the cache, or unsafe-method forwarding.
#[allow(clippy::too_many_arguments)]
async fn dispatch(
    state: &Arc<AppState>,
    rt: &Arc<Runtime>,
    route: &Arc<Route>,
    params: &[(String, String)],
    path: String,
    fwd: Forwarding,
    mut parts: Parts,
    body: Body,
) -> (Response, CacheStatus) {
    let cache_path = route.cache && (parts.method == Method::GET || parts.method == Method::HEAD);
    if !cache_path {
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let headers = canonical::pass_headers(std::mem::take(&mut parts.headers), route);
        let inbound = Inbound {
            rt: rt.clone(),
            parts,
            fwd,
            upstream: UpstreamRequest {
                path_and_query,
                headers,
            },
        };
        return if route.cache {
            // The stored responses for this URL, keyed as a GET for it would be.
            let query = canonical::query(
                parts_query(&inbound),
                &route.key.query,
                &route.key.query_ignore,
            )
            .ok()
            .flatten();
            let key = key::cache_key(&route.template, params, query.as_deref());
            Box::pin(unsafe_method(state, route, key, inbound, body)).await
        } else {
            let status = CacheStatus::forward(Fwd::Bypass);
            Box::pin(forward(route, inbound, body, status)).await
        };
    }
    // A body on a GET or HEAD ("fat GET") cannot reach the origin under a key that
    // ignores it, and must not be dropped under a Content-Length that announces it.
    if !body.is_end_stream()
        || parts.headers.contains_key(header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
    {
        let status = CacheStatus::forward(Fwd::Bypass).with_detail(Detail::Method);
        let error = ProxyError::BadRequest("a GET or HEAD request must not have a body");
        return (error_response(error, &status), status);
    }
    let (key, upstream) = match canonical::cache_request(
        route,
        params,
        path,
        parts.uri.query(),
        &parts.headers,
        &fwd,
    ) {
        Ok(c) => c,
        Err(e) => {
            let status = CacheStatus::forward(Fwd::Bypass);
            return (error_response(e, &status), status);
        }
    };
    let inbound = Inbound {
        rt: rt.clone(),
        parts,
        fwd,
        upstream,
    };
    lookup_or_fetch(state, route, &key, inbound).await
}

/// `PURGE /path?query` with the admin token: every variant of that URL's entry;
/// `Purge-Mode: soft` (or `Fastly-Soft-Purge: 1`) marks it stale instead of removing it.
async fn purge_url(state: &AppState, parts: &Parts) -> Response {
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let request = purge::PurgeRequest {
        urls: vec![target.to_string()],
        soft: purge::soft_requested(&parts.headers),
        ..Default::default()
    };
    purge::handle(state, &parts.headers, Ok(request)).await
}

/// GET and HEAD: serve from the store when possible, else fetch once for everyone.
async fn lookup_or_fetch(
    state: &Arc<AppState>,
    route: &Arc<Route>,
    key: &str,
    inbound: Inbound,
) -> (Response, CacheStatus) {
    let now = SystemTime::now();
    let client_cc = RequestDirectives::parse(&inbound.parts.headers);
    crate::telemetry::record_key(key);
    // Variants are selected by what the origin sees, not by what the client sent.
    let found = state.cache.lookup(key, &inbound.upstream.headers).await;

    if let Some(entry) = &found {
        let show = |s: CacheStatus| with_key(s, route, key);
        match policy::reuse(entry, &client_cc, &route.policy, now) {
            Reuse::Fresh => {
                refresh::maybe_early(state, route, key, entry, &inbound, now);
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
    if state.cache.hit_for_miss.contains_key(key) {
        let status = CacheStatus::forward(fwd).with_detail(Detail::HitForMiss);
        return Box::pin(forward(route, inbound, Body::empty(), status)).await;
    }

    // The paths past a hit are boxed: their state would otherwise sit inside every
    // request's future, hits included, and be moved with it (BENCHMARKS.md section 14).
    // Bounded: a follower whose leader gave up competes again, at most a few times.
    for _ in 0..3 {
        match state.cache.locks.lock(key) {
            Lock::Leader(permit) => {
                return Box::pin(lead(state, route, key, inbound, found, fwd, permit)).await
            }
            Lock::Follower(waiter) => {
                // The leader may queue for the upstream before its fetch.
                let upstream = inbound.rt.origins.upstream(route.upstream);
                let wait =
                    upstream.protection.queue_timeout + upstream.timeout + Duration::from_secs(1);
                match waiter
                    .wait(wait)
                    .instrument(crate::telemetry::lock_wait_span())
                    .await
                {
                    Ok(shared) => {
                        return Box::pin(follow(route, key, inbound, found, fwd, shared)).await
                    }
                    Err(WaitError::Abandoned) => continue,
                    Err(WaitError::TimedOut) => break,
                }
            }
        }
    }
    Box::pin(forward(
        route,
        inbound,
        Body::empty(),
        CacheStatus::forward(fwd),
    ))
    .await
}

/// The in-process leader: takes the fleet lease, then either answers from the entry
/// another replica stored, or fetches. Its waiters get the outcome either way.
async fn lead(
    state: &Arc<AppState>,
    route: &Arc<Route>,
    key: &str,
    inbound: Inbound,
    found: Option<Arc<CacheEntry>>,
    fwd: Fwd,
    permit: Permit<Shared>,
) -> (Response, CacheStatus) {
    let upstream = inbound.rt.origins.upstream(route.upstream);
    // The fetch may first queue for the upstream's guard: the lease outlasts both.
    let upstream_timeout = upstream.timeout + upstream.protection.queue_timeout;
    let newer_than = found.as_ref().map(|e| e.stored_at);
    let headers = &inbound.upstream.headers;
    let right = state.cache.fetch_right(key, upstream_timeout).await;
    let from_fleet = match &right {
        // Another replica is fetching: its entry will appear in the store.
        FetchRight::Elsewhere => {
            let wait = upstream_timeout + Duration::from_secs(1);
            state
                .cache
                .wait_for_entry(key, headers, newer_than, wait)
                .instrument(crate::telemetry::lease_wait_span())
                .await
        }
        // A flight that finished between our lookup and our lock (in this process or,
        // with a fleet lease, in another replica) stored a copy fetched or validated
        // after this request arrived: it answers even `no-cache` (RFC 9111 §5.2.1.4), and
        // a burst that straddles the end of a flight stays one origin request.
        FetchRight::Leased(_) | FetchRight::Local => {
            state.cache.newer_than(key, headers, newer_than).await
        }
    };
    if let Some(entry) = from_fleet {
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
        let entry_status = entry.status;
        permit.release(Shared::Entry(entry, entry_status));
        state.cache.give_back(key, right).await;
        return (response, status);
    }
    // The fetch runs in its own task: a client that goes away does not cancel the fetch
    // its waiters (and the cache) are counting on.
    let task = tokio::spawn({
        let (state, route, key) = (state.clone(), route.clone(), key.to_string());
        async move {
            let fetched = fetch(&state, &route, &key, &inbound, found, fwd, None).await;
            permit.release(fetched.shared);
            state.cache.give_back(&key, right).await;
            (fetched.response, fetched.status)
        }
        .in_current_span()
    });
    match task.await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::error!(error = %e, key, "fetch task failed");
            let status = CacheStatus::forward(fwd);
            (
                error_response(ProxyError::Upstream("fetch task failed".into()), &status),
                status,
            )
        }
    }
}

/// A waiter's answer from its leader's outcome.
async fn follow(
    route: &Route,
    key: &str,
    inbound: Inbound,
    found: Option<Arc<CacheEntry>>,
    fwd: Fwd,
    shared: Shared,
) -> (Response, CacheStatus) {
    crate::telemetry::record_coalesced(&route.template);
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
                Some(_) => forward(route, inbound, Body::empty(), CacheStatus::forward(fwd)).await,
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
            forward(route, inbound, Body::empty(), CacheStatus::forward(fwd)).await
        }
    }
}

pub(super) fn usable_on_error(entry: &CacheEntry, now: SystemTime) -> bool {
    !matches!(entry.freshness(now), Freshness::Expired)
}

pub(super) fn serve_stale_on_error(
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

pub(super) fn respond_entry(
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

pub(super) fn error_response(error: ProxyError, status: &CacheStatus) -> Response {
    let mut resp = error.into_response();
    respond::finish(resp.headers_mut(), status);
    resp
}

pub(super) fn with_key(mut status: CacheStatus, route: &Route, key: &str) -> CacheStatus {
    if route.show_key {
        status.key = Some(key.to_string());
    }
    status
}

/// Sends the request to the origin (as `inbound.upstream` describes it) and streams the
/// answer back, never storing it.
async fn forward(
    route: &Route,
    inbound: Inbound,
    body: Body,
    mut status: CacheStatus,
) -> (Response, CacheStatus) {
    let mut permit = match inbound.rt.guard(route.upstream).admit().await {
        Ok(p) => p,
        Err(rejected) => {
            status.detail = Some(fetch::rejected_detail(rejected.reason));
            return (error_response(rejected.into(), &status), status);
        }
    };
    let upstream = inbound.rt.origins.upstream(route.upstream);
    let Inbound {
        parts,
        fwd,
        upstream: to_origin,
        ..
    } = inbound;
    let req = origin::outbound(
        upstream,
        parts.method.clone(),
        &to_origin.path_and_query,
        to_origin.headers,
        &fwd,
        body,
    );
    crate::telemetry::record_origin_request(&upstream.name, &route.template, "pass");
    let span = crate::telemetry::origin_span(&upstream.name, "pass");
    let started = Instant::now();
    let sent = inbound
        .rt
        .origins
        .send(route.upstream, req)
        .instrument(span)
        .await;
    status.origin_time = Some(started.elapsed());
    match sent {
        Ok(resp) => {
            permit.report_status(resp.status());
            status.fwd_status = Some(resp.status().as_u16());
            // The slot stays taken while the origin's body streams through.
            let resp = resp.map(|b| Body::new(upstream_guard::Held::new(b, permit)));
            (respond::passthrough(resp, &parts.method, &status), status)
        }
        Err(error) => {
            permit.report(upstream_guard::Outcome::Failure);
            tracing::warn!(route = %route.template, %error, "origin request failed");
            (error_response(error, &status), status)
        }
    }
}

/// The query of the URL the client asked for, as it reaches the origin on a pass.
fn parts_query(inbound: &Inbound) -> Option<&str> {
    inbound
        .upstream
        .path_and_query
        .split_once('?')
        .map(|(_, q)| q)
}

/// POST, PUT, PATCH, DELETE, ...: forwarded; a success invalidates the stored
/// responses for the URL (RFC 9111 §4.4).
async fn unsafe_method(
    state: &Arc<AppState>,
    route: &Route,
    key: String,
    inbound: Inbound,
    body: Body,
) -> (Response, CacheStatus) {
    let safe = matches!(inbound.parts.method, Method::OPTIONS | Method::TRACE);
    let host = inbound.fwd.host.clone();
    let status = CacheStatus::forward(Fwd::Bypass).with_detail(Detail::Method);
    let (resp, status) = forward(route, inbound, body, status).await;
    if !safe && (resp.status().is_success() || resp.status().is_redirection()) {
        state.cache.invalidate(&key).await;
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(other) = resp.headers().get(name).and_then(|v| v.to_str().ok()) {
                state.invalidate_url(other, host.as_deref()).await;
            }
        }
    }
    (resp, status)
}
