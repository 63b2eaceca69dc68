//! The downstream side: responses from entries (`Age`, `Cache-Status`, 304s, HEAD) and
//! pass-through responses with header hygiene.

use std::time::SystemTime;

use axum::body::Body;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};

use super::origin::{append_via, strip_hop_by_hop};
use crate::cache::{CacheEntry, CacheStatus};

/// The name of this cache in `Cache-Status`.
pub const CACHE_NAME: &str = "cachegate";

/// Answers a request from a stored entry.
pub fn from_entry(
    entry: &CacheEntry,
    method: &Method,
    request: &HeaderMap,
    now: SystemTime,
    status: &CacheStatus,
) -> Response<Body> {
    let not_modified = entry.status == StatusCode::OK && is_not_modified(entry, request);
    let mut resp = Response::new(Body::empty());
    if not_modified {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        // RFC 9110 §15.4.5: the fields a 200 would have carried that describe the
        // representation's metadata, no content.
        for name in [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::LAST_MODIFIED,
            header::VARY,
        ] {
            for v in entry.headers.get_all(&name) {
                resp.headers_mut().append(name.clone(), v.clone());
            }
        }
    } else {
        *resp.status_mut() = entry.status;
        *resp.headers_mut() = entry.headers.clone();
        if method != Method::HEAD {
            *resp.body_mut() = Body::from(entry.body.clone());
        }
    }
    let age = entry.age(now).as_secs();
    resp.headers_mut()
        .insert(header::AGE, HeaderValue::from(age));
    finish(resp.headers_mut(), status);
    resp
}

/// RFC 9110 §13.1.2/§13.1.3 evaluated against the stored response.
fn is_not_modified(entry: &CacheEntry, request: &HeaderMap) -> bool {
    if let Some(inm) = request.get(header::IF_NONE_MATCH) {
        let Some(etag) = entry.etag() else {
            return false;
        };
        let Ok(inm) = inm.to_str() else { return false };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
        return inm
            .split(',')
            .any(|t| t.trim() == "*" || weak(t) == weak(etag));
    }
    if let Some(ims) = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    {
        return entry.last_modified().is_some_and(|lm| lm <= ims);
    }
    false
}

/// Passes an origin response downstream: hop-by-hop fields removed, `Via` and
/// `Cache-Status` added; HEAD requests get no body.
pub fn passthrough(
    mut resp: Response<Body>,
    method: &Method,
    status: &CacheStatus,
) -> Response<Body> {
    strip_hop_by_hop(resp.headers_mut());
    if method == Method::HEAD {
        *resp.body_mut() = Body::empty();
    }
    finish(resp.headers_mut(), status);
    resp
}

/// Adds this cache's `Cache-Status` member after any from caches closer to the origin,
/// and `Via`.
pub fn finish(headers: &mut HeaderMap, status: &CacheStatus) {
    let ours = status.header_value(CACHE_NAME);
    let value = match headers.get("cache-status").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ours}"),
        None => ours,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert("cache-status", v);
    }
    append_via(headers);
}
