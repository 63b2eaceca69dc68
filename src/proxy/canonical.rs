//! The canonical request, computed once per request: the one source of both the cache
//! key and the request sent upstream, so the two cannot disagree.
//!
//! The rule it enforces: two requests share a cache entry only if the origin would
//! receive the same request. Everything forwarded on the cache path is part of the key
//! (path, selected query, key headers, the negotiation headers a `Vary` can select),
//! set by cachegate (`X-Forwarded-*`, `Via`, validators), or removed. Pure: no I/O.
//!
//! Its parts: `uri` (path and query) and `edge` (host, scheme, forwarding).

use std::borrow::Cow;

use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;

use crate::cache::entry::normalized;
use crate::config::Route;
use crate::error::ProxyError;

pub use super::edge::{
    forwarding, normalize_host, EdgePolicy, Forwarding, Peer, FORWARDING_HEADERS, OVERRIDE_HEADERS,
};
pub use super::uri::{path, query, query_name};

// === the cache path ===

/// The request line and end-to-end headers the origin receives (cachegate adds
/// `X-Forwarded-For`, `Via`, trace context and, for the cache, validators). On the cache
/// path it is the canonical request the key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    pub path_and_query: String,
    pub headers: HeaderMap,
}

/// The key and the upstream request of a GET or HEAD on a cached route, from one
/// canonical form: `path` is `canonical::path`'s, `params` the route's match of it.
/// Whatever the client sent beyond what this returns never reaches the origin.
pub fn cache_request(
    route: &Route,
    params: &[(String, String)],
    path: String,
    raw_query: Option<&str>,
    client: &HeaderMap,
    fwd: &Forwarding,
) -> Result<(String, UpstreamRequest), ProxyError> {
    let query = query(raw_query, &route.key.query, &route.key.query_ignore)?;
    let key = super::key::cache_key(&route.template, params, query.as_deref());
    let path_and_query = match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let headers = cache_headers(client, route, fwd);
    Ok((
        key,
        UpstreamRequest {
            path_and_query,
            headers,
        },
    ))
}

// === headers ===

/// Negotiation headers forwarded on the cache path when the route does not list the
/// headers it honours in `Vary`: the origin may vary on them, and `Vary` then keys them.
pub const NEGOTIATION_HEADERS: &[HeaderName] = &[
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
];

/// Variant dimensions every entry records: set by cachegate from the validated request,
/// different for different clients, so part of the key (RFC 9111 secondary key).
pub static FORWARDED_VARIANT: [HeaderName; 2] = [
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
];

/// The request headers a route honours in `Vary`, and so forwards on the cache path: its
/// `vary:` list, or the negotiation headers.
pub fn honoured_vary(route: &Route) -> &[HeaderName] {
    route
        .policy
        .vary_allow
        .as_deref()
        .unwrap_or(NEGOTIATION_HEADERS)
}

/// The end-to-end request headers the origin sees on the cache path (GET and HEAD of a
/// cached route), before cachegate adds `X-Forwarded-For`, `Via`, trace context and
/// validators. Only what can select a variant is here, each value normalised as variant
/// matching normalises it; `Authorization` is forwarded and makes a response shareable
/// only when the origin says so (RFC 9111 §3.5). Everything else the client sent
/// (cookies, `User-Agent`, client `Cache-Control`, bodies' fields, ...) is removed.
pub fn cache_headers(client: &HeaderMap, route: &Route, fwd: &Forwarding) -> HeaderMap {
    let mut out = HeaderMap::new();
    let mut put = |name: &HeaderName| {
        if out.contains_key(name) {
            return;
        }
        let value = match normalized(client, name) {
            // Nothing to normalise: the client's value itself (no copy).
            Some(Cow::Borrowed(_)) => client.get(name).cloned(),
            Some(Cow::Owned(v)) => HeaderValue::try_from(v).ok(),
            None => None,
        };
        if let Some(v) = value {
            out.insert(name.clone(), v);
        }
    };
    honoured_vary(route).iter().for_each(&mut put);
    route.key.headers.iter().for_each(&mut put);
    if let Some(auth) = client.get(header::AUTHORIZATION) {
        out.insert(header::AUTHORIZATION, auth.clone());
    }
    set_forwarded_variant(&mut out, fwd);
    out
}

fn set_forwarded_variant(headers: &mut HeaderMap, fwd: &Forwarding) {
    if let Some(v) = fwd
        .host
        .as_deref()
        .and_then(|h| HeaderValue::try_from(h).ok())
    {
        headers.insert(FORWARDED_VARIANT[0].clone(), v);
    }
    headers.insert(
        FORWARDED_VARIANT[1].clone(),
        HeaderValue::from_static(fwd.proto),
    );
}

/// The client's headers for a pass-through (a `cache: false` route, or an unsafe method):
/// forwarding headers a client sent are removed (cachegate sets its own), and on cached
/// routes the override headers and the route's `strip_headers` too.
pub fn pass_headers(mut client: HeaderMap, route: &Route) -> HeaderMap {
    for name in FORWARDING_HEADERS {
        client.remove(*name);
    }
    if route.cache {
        for name in OVERRIDE_HEADERS {
            if !route.key.headers.iter().any(|k| k == name) {
                client.remove(*name);
            }
        }
    }
    for name in &route.strip_headers {
        client.remove(name);
    }
    client
}
