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
    let mut resp = Response::new(Body::empty());
    let ok = entry.status == StatusCode::OK;
    if ok && precondition_failed(entry, request) {
        *resp.status_mut() = StatusCode::PRECONDITION_FAILED;
    } else if ok && is_not_modified(entry, request) {
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
        let range = if ok && method == Method::GET {
            requested_range(entry, request)
        } else {
            None
        };
        let len = entry.body.len();
        let body = match range {
            None => entry.body.clone(),
            Some(ByteRange::Satisfiable(first, last)) => {
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                set(
                    resp.headers_mut(),
                    header::CONTENT_RANGE,
                    format!("bytes {first}-{last}/{len}"),
                );
                entry.body.slice(first..=last)
            }
            Some(ByteRange::Unsatisfiable) => {
                *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                set(
                    resp.headers_mut(),
                    header::CONTENT_RANGE,
                    format!("bytes */{len}"),
                );
                bytes::Bytes::new()
            }
        };
        if range.is_some() {
            set(
                resp.headers_mut(),
                header::CONTENT_LENGTH,
                body.len().to_string(),
            );
        }
        if method != Method::HEAD {
            *resp.body_mut() = Body::from(body);
        }
    }
    let age = entry.age(now).as_secs();
    resp.headers_mut()
        .insert(header::AGE, HeaderValue::from(age));
    finish(resp.headers_mut(), status);
    resp
}

fn set(headers: &mut HeaderMap, name: header::HeaderName, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(name, v);
    }
}

/// RFC 9110 §13.1.1/§13.1.4: `If-Match` (strong comparison) and `If-Unmodified-Since`
/// evaluated against the stored response.
fn precondition_failed(entry: &CacheEntry, request: &HeaderMap) -> bool {
    if let Some(im) = request.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        let strong = entry.etag().filter(|e| !e.starts_with("W/"));
        return !im
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || Some(t) == strong);
    }
    if let Some(ius) = request
        .get(header::IF_UNMODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    {
        return entry.last_modified().is_none_or(|lm| lm > ius);
    }
    false
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// Inclusive first and last byte.
    Satisfiable(usize, usize),
    Unsatisfiable,
}

/// A single byte range requested of a stored complete response (RFC 9110 §14). Multiple
/// ranges, other units and an `If-Range` that does not match are answered with the whole
/// response, which the RFC allows.
fn requested_range(entry: &CacheEntry, request: &HeaderMap) -> Option<ByteRange> {
    let spec = request.get(header::RANGE)?.to_str().ok()?.trim();
    if let Some(if_range) = request.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        let matches = if if_range.starts_with('"') {
            entry.etag() == Some(if_range)
        } else {
            httpdate::parse_http_date(if_range).is_ok_and(|d| entry.last_modified() == Some(d))
        };
        if !matches {
            return None;
        }
    }
    parse_range(spec, entry.body.len())
}

fn parse_range(spec: &str, len: usize) -> Option<ByteRange> {
    let set = spec.strip_prefix("bytes=")?;
    if set.contains(',') {
        return None;
    }
    let (first, last) = set.trim().split_once('-')?;
    let range = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let n: usize = suffix.parse().ok()?;
            if n == 0 || len == 0 {
                return Some(ByteRange::Unsatisfiable);
            }
            (len.saturating_sub(n), len - 1)
        }
        (first, last) => {
            let first: usize = first.parse().ok()?;
            let last: usize = if last.is_empty() {
                usize::MAX
            } else {
                last.parse().ok()?
            };
            if last < first {
                return None;
            }
            if first >= len {
                return Some(ByteRange::Unsatisfiable);
            }
            (first, last.min(len - 1))
        }
    };
    Some(ByteRange::Satisfiable(range.0, range.1))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        let check =
            |spec: &str, want: Option<ByteRange>| assert_eq!(parse_range(spec, 10), want, "{spec}");
        use ByteRange::*;
        check("bytes=0-3", Some(Satisfiable(0, 3)));
        check("bytes=5-", Some(Satisfiable(5, 9)));
        check("bytes=-4", Some(Satisfiable(6, 9)));
        check("bytes=8-100", Some(Satisfiable(8, 9)));
        check("bytes=10-12", Some(Unsatisfiable));
        check("bytes=-0", Some(Unsatisfiable));
        check("bytes=0-1,4-5", None);
        check("items=0-1", None);
        check("bytes=4-2", None);
    }
}
