//! The leader's fetch: one GET to the origin on behalf of the cache (conditional when a
//! stored copy has validators), the policy decision, the store write, and the answer
//! for the client that led. Background refreshes run the same function.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::response::Response;
use http::header::{self, HeaderName};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};

use super::canonical::FORWARDED_VARIANT;
use super::origin::{self, BodyRead};
use super::upstream_guard::{Held, OriginPermit, Outcome, RejectReason};
use super::{
    error_response, respond, respond_entry, serve_stale_on_error, usable_on_error, with_key,
    Inbound, Shared,
};
use crate::app::AppState;
use crate::cache::entry::vary_values;
use crate::cache::policy::{self, Lifetimes, Storability};
use crate::cache::{CacheEntry, CacheStatus, Detail, Fwd};
use crate::config::Route;
use crate::error::ProxyError;

/// The result of one origin fetch made on behalf of the cache.
pub struct Fetched {
    pub response: Response,
    pub status: CacheStatus,
    pub shared: Shared,
}

/// Fetches `key` from the origin as the flight's leader (or a background refresh),
/// stores what may be stored and answers the client. `permit`: the upstream's
/// admission, already taken (a refresh); `None` waits for one (a miss), and a rejection
/// is answered as an origin failure that never reached the origin.
pub async fn fetch(
    state: &Arc<AppState>,
    route: &Route,
    key: &str,
    inbound: &Inbound,
    stale: Option<Arc<CacheEntry>>,
    fwd: Fwd,
    permit: Option<OriginPermit>,
) -> Fetched {
    // A refresh comes with its admission already taken; a miss waits for one.
    let kind = if permit.is_some() { "refresh" } else { "fetch" };
    let upstream = inbound.rt.origins.upstream(route.upstream);
    let mut status = with_key(CacheStatus::forward(fwd), route, key);
    let mut permit = match permit {
        Some(p) => p,
        None => match inbound.rt.guard(route.upstream).admit().await {
            Ok(p) => p,
            Err(rejected) => {
                status.detail = Some(rejected_detail(rejected.reason));
                let now = SystemTime::now();
                let error = ProxyError::from(rejected);
                return origin_failed(route, inbound, stale.as_deref(), now, None, error, status);
            }
        },
    };
    // What this exchange costs the origin, stored with the entry for early refresh.
    let started = std::time::Instant::now();
    let sent = send_for_cache(route, inbound, stale.as_deref(), kind).await;
    status.origin_time = Some(started.elapsed());
    let now = SystemTime::now();

    let resp = match sent {
        Ok(resp) => resp,
        Err(error) => {
            permit.report(Outcome::Failure);
            return origin_failed(route, inbound, stale.as_deref(), now, None, error, status);
        }
    };
    permit.report_status(resp.status());
    status.fwd_status = Some(resp.status().as_u16());

    if resp.status().is_server_error() && stale.as_ref().is_some_and(|e| usable_on_error(e, now)) {
        let error = ProxyError::Upstream(format!("status {}", resp.status()));
        return origin_failed(
            route,
            inbound,
            stale.as_deref(),
            now,
            Some(resp.status()),
            error,
            status,
        );
    }

    let (mut parts, body) = resp.into_parts();
    origin::strip_hop_by_hop(&mut parts.headers);
    let request_parts = cache_request(inbound);

    if parts.status == StatusCode::NOT_MODIFIED {
        if let Some(old) = &stale {
            // One origin request per client request: whatever the 304 says is answered
            // from it and the stored copy, never by asking the origin again.
            if !selects(old, &parts.headers) {
                // A 304 for another representation (RFC 9111 §4.3.4): the stored one is
                // not current and this one's body is not here. Drop the copy so the next
                // request fetches in full; this one is an origin failure.
                state.cache.invalidate(key).await;
                let error = ProxyError::Upstream("304 names another validator".into());
                let fwd_status = Some(StatusCode::NOT_MODIFIED);
                return origin_failed(route, inbound, Some(old), now, fwd_status, error, status);
            }
            let (renewed, storability) = renew(route, old, &request_parts, &parts, now);
            let renewed = Arc::new(renewed.with_fetch_time(started.elapsed()));
            let shared = match storability {
                Storability::Store(_) => {
                    status.ttl = Some(renewed.ttl_secs(now));
                    status.stored = state.cache.store_entry(key, renewed.clone()).await;
                    status.detail = Some(Detail::NotModified);
                    Shared::Entry(renewed.clone(), StatusCode::NOT_MODIFIED)
                }
                // The 304 validated the body but its fields forbid keeping it (`no-store`,
                // `private`, ...): this client gets it, the stored copy goes.
                Storability::DoNotStore(reason) => {
                    status.detail = Some(reason);
                    state.cache.invalidate(key).await;
                    state.cache.hit_for_miss.insert(key.to_string(), ());
                    Shared::Uncacheable
                }
            };
            let response = respond_entry(&renewed, inbound, now, &status);
            return Fetched {
                response,
                status,
                shared,
            };
        }
    }

    let policy::Evaluation {
        storability,
        initial_age,
        strip_fields,
    } = evaluate(route, &request_parts, parts.status, &parts.headers, now);
    let lifetimes = match storability {
        Storability::Store(l) => l,
        Storability::DoNotStore(reason) => {
            status.detail = Some(reason);
            if !parts.status.is_server_error() {
                state.cache.hit_for_miss.insert(key.to_string(), ());
            }
            let body = Body::new(Held::new(body, permit));
            return not_stored(inbound, Response::from_parts(parts, body), status);
        }
    };

    let read_timeout = upstream.timeout;
    let body = match origin::read_body(body, route.policy.max_body, read_timeout).await {
        Ok(BodyRead::Complete(bytes)) => bytes,
        Ok(BodyRead::TooLarge(prefix, rest)) => {
            status.detail = Some(Detail::TooLarge);
            state.cache.hit_for_miss.insert(key.to_string(), ());
            let body = Body::new(Held::new(origin::chain_body(prefix, rest), permit));
            return not_stored(inbound, Response::from_parts(parts, body), status);
        }
        Err(error) => {
            // A body cut short is never stored; a stale copy may still answer.
            status.detail = Some(Detail::Incomplete);
            let fwd_status = Some(parts.status);
            let mut failed = origin_failed(
                route,
                inbound,
                stale.as_deref(),
                now,
                fwd_status,
                error.clone(),
                status,
            );
            // Not an answer the waiters could each ask for again (that would send one
            // origin request per waiter to an origin that is breaking bodies): they
            // share the failure, as when the origin did not answer at all.
            failed.shared = Shared::Failed {
                fwd_status: None,
                error,
            };
            return failed;
        }
    };

    let vary = variant_names(route, &parts.headers);
    let tags = entry_tags(route, key, &parts.headers, &inbound.rt.config.tag_headers);
    parts.headers.remove(header::AGE);
    // `private="f"` / `no-cache="f"`: f is for this client only, never stored.
    let mut withheld = HeaderMap::new();
    for field in strip_fields {
        if let Ok(name) = HeaderName::try_from(field) {
            for v in parts.headers.get_all(&name) {
                withheld.append(name.clone(), v.clone());
            }
            parts.headers.remove(&name);
        }
    }
    let entry = Arc::new(
        CacheEntry::new(
            parts.status,
            parts.headers,
            body,
            initial_age,
            now,
            lifetimes,
            vary_values(&inbound.upstream.headers, &vary),
        )
        .with_fetch_time(started.elapsed())
        .with_tags(tags),
    );
    status.stored = state.cache.store_entry(key, entry.clone()).await;
    if !status.stored {
        status.detail = Some(Detail::StoreError);
    }
    state.cache.hit_for_miss.invalidate(key);
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

/// The `Cache-Status` detail of a request the guard did not send.
pub(super) fn rejected_detail(reason: RejectReason) -> Detail {
    match reason {
        RejectReason::QueueTimeout => Detail::OriginBusy,
        RejectReason::RateLimit => Detail::RateLimited,
        RejectReason::BreakerOpen => Detail::BreakerOpen,
    }
}

/// A response that is not stored streams through to this client; waiters go to the
/// origin themselves (a private answer is never shared).
/// An entry's tags: from the origin's tag headers, then the route's `tags:`.
fn entry_tags(
    route: &Route,
    key: &str,
    response: &http::HeaderMap,
    tag_headers: &[HeaderName],
) -> Vec<String> {
    let mut tags = crate::cache::entry::header_tags(response, tag_headers);
    if !route.tags.is_empty() {
        let params = crate::proxy::key::params_of(key).unwrap_or_default();
        tags.extend(route.tags_for(&params));
    }
    tags
}

fn not_stored(inbound: &Inbound, response: Response, status: CacheStatus) -> Fetched {
    Fetched {
        response: respond::passthrough(response, &inbound.parts.method, &status),
        status,
        shared: Shared::Uncacheable,
    }
}

/// The origin failed (no answer, or a 5xx): the stale copy when it may answer errors
/// (stale-if-error), the error otherwise. Waiters are told either way.
fn origin_failed(
    route: &Route,
    inbound: &Inbound,
    stale: Option<&CacheEntry>,
    now: SystemTime,
    fwd_status: Option<StatusCode>,
    error: ProxyError,
    status: CacheStatus,
) -> Fetched {
    let shared = Shared::Failed {
        fwd_status,
        error: error.clone(),
    };
    if let Some(entry) = stale.filter(|e| usable_on_error(e, now)) {
        let (response, status) = serve_stale_on_error(entry, inbound, now, fwd_status, false);
        return Fetched {
            response,
            status,
            shared,
        };
    }
    if matches!(error, ProxyError::OriginBusy { .. }) {
        tracing::debug!(route = %route.template, %error, "origin request rejected");
    } else {
        tracing::warn!(route = %route.template, %error, "origin request failed");
    }
    Fetched {
        response: error_response(error, &status),
        status,
        shared,
    }
}

/// Sends the GET the cache needs: unconditional, or with `stale`'s validators so a 304
/// renews it. The client's own conditionals and ranges are answered from the result.
async fn send_for_cache(
    route: &Route,
    inbound: &Inbound,
    stale: Option<&CacheEntry>,
    kind: &'static str,
) -> Result<hyper::Response<hyper::body::Incoming>, ProxyError> {
    // The canonical request carries no client conditionals or ranges: the cache asks
    // for the whole representation, with its own validators.
    let mut headers = inbound.upstream.headers.clone();
    if let Some(entry) = stale {
        if let Some(etag) = entry.headers.get(header::ETAG) {
            headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = entry.headers.get(header::LAST_MODIFIED) {
            headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
    }
    let upstream = inbound.rt.origins.upstream(route.upstream);
    let req = origin::outbound(
        upstream,
        Method::GET,
        &inbound.upstream.path_and_query,
        headers,
        &inbound.fwd,
        Body::empty(),
    );
    crate::telemetry::record_origin_request(&upstream.name, &route.template, kind);
    use tracing::Instrument;
    inbound
        .rt
        .origins
        .send(route.upstream, req)
        .instrument(crate::telemetry::origin_span(&upstream.name, kind))
        .await
}

/// What selects a variant: the forwarding values cachegate sends (host, scheme), the
/// route's key headers and the response's `Vary` (already checked not to be `*`), all
/// read from the canonical request.
fn variant_names(route: &Route, response: &HeaderMap) -> Vec<HeaderName> {
    let mut names = FORWARDED_VARIANT.to_vec();
    names.extend(route.key.headers.iter().cloned());
    for n in policy::vary_names(response).unwrap_or_default() {
        if let Ok(n) = HeaderName::try_from(n) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names
}

/// Whether a 304 answering cachegate's conditional request selects `old`, the stored
/// response whose validators that request carried (RFC 9111 §4.3.4). Only a strong ETag
/// other than `old`'s says it is about another representation; a 304 without validators,
/// or with weak ones, is about the one cachegate asked for. Opaque tags are compared
/// (`W/"x"` stored, `"x"` in the 304 select): servers that weaken ETags when compressing
/// (nginx's gzip) do not weaken them on a 304.
fn selects(old: &CacheEntry, not_modified: &HeaderMap) -> bool {
    let Some(new) = not_modified
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    else {
        return true;
    };
    if new.starts_with("W/") {
        return true;
    }
    old.etag().map(|e| e.trim().trim_start_matches("W/")) == Some(new)
}

/// Applies a 304 to the stored entry (RFC 9111 §3.2, §4.3.4): the 304's fields replace
/// or join the stored ones, the body stays; the merged response is judged afresh. The
/// entry answers the client whether or not it may be stored (then with no lifetime).
fn renew(
    route: &Route,
    old: &CacheEntry,
    request: &Parts,
    not_modified: &http::response::Parts,
    now: SystemTime,
) -> (CacheEntry, Storability) {
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
    let policy::Evaluation {
        storability,
        initial_age,
        ..
    } = evaluate(route, request, old.status, &headers, now);
    let lifetimes = match &storability {
        Storability::Store(l) => *l,
        Storability::DoNotStore(_) => Lifetimes {
            fresh: Duration::ZERO,
            stale: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        },
    };
    let entry = CacheEntry::new(
        old.status,
        headers,
        old.body.clone(),
        initial_age,
        now,
        lifetimes,
        old.vary.clone(),
    )
    // The same representation: its tags (origin headers and the route's) stay.
    .with_tags(old.tags.iter().cloned());
    (entry, storability)
}

/// `policy::evaluate` with this route's policy and a fresh jitter sample.
fn evaluate(
    route: &Route,
    request: &Parts,
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> policy::Evaluation {
    let jitter = rand::random::<f64>() * 2.0 - 1.0;
    policy::evaluate(&route.policy, request, status, headers, now, jitter)
}

/// The request as the cache sees it: a GET of the canonical request, with the client's
/// own cache directives (a `no-store` request keeps the response out of the cache; they
/// are never forwarded).
pub fn cache_request(inbound: &Inbound) -> Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = inbound
        .upstream
        .path_and_query
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    let mut headers = inbound.upstream.headers.clone();
    for name in [header::CACHE_CONTROL, header::PRAGMA] {
        for v in inbound.parts.headers.get_all(&name) {
            headers.append(name.clone(), v.clone());
        }
    }
    *req.headers_mut() = headers;
    req.into_parts().0
}
