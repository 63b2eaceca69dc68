//! A self-contained origin for `cachegate demo`, load tests and integration tests: tunable
//! latency, size and `Cache-Control`, plus `/__stats` counters showing what got past the cache.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::serve::ListenerExt;
use axum::Router;

/// Paths tracked one by one (request counters and ETag generations); past this only totals are
/// kept, so a miss-heavy load test cannot grow the origin's memory without bound.
const MAX_TRACKED_PATHS: usize = 10_000;
/// Caps on per-request overrides: a typo in a query string must not pin a connection for hours
/// or allocate gigabytes.
const MAX_DELAY: Duration = Duration::from_secs(60);
const MAX_BODY_SIZE: usize = 64 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct OriginOptions {
    /// Time spent "computing" each response before answering.
    pub delay: Duration,
    /// Response body size in bytes; 0 = the bare JSON document.
    pub body_size: usize,
    /// `Cache-Control` sent with resources; `None` = no header.
    pub cache_control: Option<String>,
}

impl Default for OriginOptions {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            body_size: 0,
            cache_control: Some("max-age=5".to_owned()),
        }
    }
}

/// Serves until `shutdown` resolves.
///
/// Any GET/HEAD path outside `/__` answers a JSON document with `ETag`, `Last-Modified` and
/// `Cache-Control`, and 304 to a matching `If-None-Match`; query parameters `delay`, `size`,
/// `cc` and `status` override the options per request. POST/PUT/PATCH/DELETE change the
/// path's ETag. `GET /__stats`, `POST /__reset` and `POST /__bump` (change all ETags) are the
/// control endpoints.
///
/// Fails early with `InvalidInput` if `opts.cache_control` is not a valid header value.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opts: OriginOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let cache_control = match &opts.cache_control {
        Some(value) => Some(HeaderValue::from_str(value).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid Cache-Control value {value:?}"),
            )
        })?),
        None => None,
    };
    let shared = Arc::new(Shared::new(opts, cache_control));
    let app = Router::new().fallback(handle).with_state(shared);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "dev origin listening");
    }
    // Without TCP_NODELAY, Nagle + delayed ACK can add ~40 ms to small responses on keep-alive
    // connections, which would show up as bogus latency in load tests.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::trace!(%err, "failed to set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

struct Shared {
    delay: Duration,
    body_size: usize,
    cache_control: Option<HeaderValue>,
    inner: Mutex<Inner>,
}

/// One lock for counters and versions: every critical section is a few map operations, and
/// keeping them together makes `/__stats` a consistent snapshot.
struct Inner {
    requests: u64,
    not_modified: u64,
    in_flight: u64,
    max_in_flight: u64,
    per_path: HashMap<String, PathCounters>,
    /// Bumped by `/__bump` (and by writes to untracked paths): part of every ETag.
    generation: u64,
    generation_changed: SystemTime,
    /// Per-path generations, bumped by writes. Kept apart from counters so `/__reset` never
    /// moves an ETag back to a value a cache may already hold for older content.
    versions: HashMap<String, Version>,
}

#[derive(Default)]
struct PathCounters {
    requests: u64,
    in_flight: u64,
    max_in_flight: u64,
}

struct Version {
    generation: u64,
    changed: SystemTime,
}

impl Shared {
    fn new(opts: OriginOptions, cache_control: Option<HeaderValue>) -> Self {
        Self {
            delay: opts.delay,
            body_size: opts.body_size,
            cache_control,
            inner: Mutex::new(Inner {
                requests: 0,
                not_modified: 0,
                in_flight: 0,
                max_in_flight: 0,
                per_path: HashMap::new(),
                generation: 0,
                generation_changed: SystemTime::now(),
                versions: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock can only leave counters slightly off; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Counts a request as in flight until dropped, so requests cancelled by the client (the
/// handler future is dropped mid-delay) still leave the in-flight gauges correct.
struct InFlight {
    shared: Arc<Shared>,
    /// `None` when the path did not fit in the per-path table.
    path: Option<String>,
}

impl InFlight {
    /// Registers a request; returns the guard and the request's sequence number `n`
    /// (per path when tracked, origin-wide otherwise).
    fn begin(shared: &Arc<Shared>, path: &str) -> (Self, u64) {
        let mut inner = shared.lock();
        inner.requests += 1;
        inner.in_flight += 1;
        inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
        let mut n = inner.requests;
        let tracked = inner.per_path.contains_key(path) || inner.per_path.len() < MAX_TRACKED_PATHS;
        if tracked {
            let counters = inner.per_path.entry(path.to_owned()).or_default();
            counters.requests += 1;
            counters.in_flight += 1;
            counters.max_in_flight = counters.max_in_flight.max(counters.in_flight);
            n = counters.requests;
        }
        drop(inner);
        let guard = Self {
            shared: Arc::clone(shared),
            path: tracked.then(|| path.to_owned()),
        };
        (guard, n)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
        if let Some(counters) = self.path.as_ref().and_then(|p| inner.per_path.get_mut(p)) {
            counters.in_flight = counters.in_flight.saturating_sub(1);
        }
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if path.starts_with("/__") {
        return control(&shared, &method, &path);
    }

    let (_in_flight, n) = InFlight::begin(&shared, &path);
    let overrides = match Overrides::parse(req.uri().query()) {
        Ok(overrides) => overrides,
        Err(msg) => return plain(StatusCode::BAD_REQUEST, msg),
    };
    let delay = overrides.delay.unwrap_or(shared.delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let response = match method {
        Method::GET | Method::HEAD => resource(&shared, &path, n, &overrides, req.headers()),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE => {
            write(&shared, &path, &overrides)
        }
        _ => method_not_allowed("GET, HEAD, POST, PUT, PATCH, DELETE"),
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "dev origin request");
    response
}

/// The `/__` namespace: introspection for demos and load tests, never counted as traffic.
fn control(shared: &Shared, method: &Method, path: &str) -> Response {
    let allowed = match path {
        "/__stats" => "GET, HEAD",
        "/__reset" | "/__bump" => "POST",
        _ => {
            return plain(
                StatusCode::NOT_FOUND,
                format!("unknown control path {path}\n"),
            )
        }
    };
    match (path, method) {
        ("/__stats", &Method::GET | &Method::HEAD) => {
            json(StatusCode::OK, stats_json(&shared.lock()))
        }
        ("/__reset", &Method::POST) => {
            let mut inner = shared.lock();
            inner.requests = 0;
            inner.not_modified = 0;
            inner.max_in_flight = inner.in_flight;
            // Requests still in flight keep their entries so their guards can decrement them.
            inner.per_path.retain(|_, counters| counters.in_flight > 0);
            for counters in inner.per_path.values_mut() {
                counters.requests = 0;
                counters.max_in_flight = counters.in_flight;
            }
            json(StatusCode::OK, r#"{"ok":true}"#.to_owned())
        }
        ("/__bump", &Method::POST) => {
            let mut inner = shared.lock();
            inner.generation += 1;
            inner.generation_changed = SystemTime::now();
            json(
                StatusCode::OK,
                format!(r#"{{"ok":true,"generation":{}}}"#, inner.generation),
            )
        }
        _ => method_not_allowed(allowed),
    }
}

fn stats_json(inner: &Inner) -> String {
    // Sorted so that two snapshots diff cleanly by eye.
    let mut paths: Vec<(&String, &PathCounters)> = inner.per_path.iter().collect();
    paths.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = format!(
        r#"{{"requests":{},"not_modified":{},"in_flight":{},"max_in_flight":{},"per_path":{{"#,
        inner.requests, inner.not_modified, inner.in_flight, inner.max_in_flight
    );
    for (i, (path, counters)) in paths.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(out, "{sep}\"{}\":{}", json_escape(path), counters.requests);
    }
    out.push_str(r#"},"max_in_flight_per_path":{"#);
    for (i, (path, counters)) in paths.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(
            out,
            "{sep}\"{}\":{}",
            json_escape(path),
            counters.max_in_flight
        );
    }
    out.push_str("}}");
    out
}

fn resource(
    shared: &Shared,
    path: &str,
    n: u64,
    overrides: &Overrides,
    req_headers: &HeaderMap,
) -> Response {
    let status = overrides.status.unwrap_or(StatusCode::OK);
    let cache_control = match &overrides.cache_control {
        Some(cc) => cc.clone(),
        None => shared.cache_control.clone(),
    };
    let now = SystemTime::now();

    let mut headers = HeaderMap::new();
    headers.insert(header::DATE, http_date(now));
    if let Some(cc) = cache_control {
        headers.insert(header::CACHE_CONTROL, cc);
    }

    // Validators only on success: an origin that is failing cannot vouch for a cached copy.
    if status.is_success() {
        let (etag, last_modified) = {
            let inner = shared.lock();
            let (path_generation, path_changed) = inner
                .versions
                .get(path)
                .map_or((0, SystemTime::UNIX_EPOCH), |v| (v.generation, v.changed));
            let etag = etag_for(path, inner.generation, path_generation);
            (etag, inner.generation_changed.max(path_changed))
        };
        if let Ok(value) = HeaderValue::from_str(&etag) {
            headers.insert(header::ETAG, value);
        }
        headers.insert(header::LAST_MODIFIED, http_date(last_modified));

        if is_not_modified(req_headers, &etag, last_modified) {
            shared.lock().not_modified += 1;
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            *resp.headers_mut() = headers;
            return resp;
        }
    }

    let size = overrides.size.unwrap_or(shared.body_size);
    let body = document(path, n, &httpdate::fmt_http_date(now), status, size);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

fn write(shared: &Shared, path: &str, overrides: &Overrides) -> Response {
    let status = overrides.status.unwrap_or(StatusCode::OK);
    // A failed write changes nothing, so caches may keep what they have.
    if status.is_success() {
        let mut inner = shared.lock();
        let now = SystemTime::now();
        if inner.versions.contains_key(path) || inner.versions.len() < MAX_TRACKED_PATHS {
            let version = inner.versions.entry(path.to_owned()).or_insert(Version {
                generation: 0,
                changed: now,
            });
            version.generation += 1;
            version.changed = now;
        } else {
            // Untracked path: changing every ETag is coarse, but never leaves a stale validator.
            inner.generation += 1;
            inner.generation_changed = now;
        }
    }
    let body = if status.is_success() {
        r#"{"ok":true}"#.to_owned()
    } else {
        format!(r#"{{"ok":false,"status":{}}}"#, status.as_u16())
    };
    let mut resp = json(status, body);
    resp.headers_mut()
        .insert(header::DATE, http_date(SystemTime::now()));
    resp
}

/// `If-None-Match` wins over `If-Modified-Since` (RFC 9110 §13.2.2); the ETag compares weakly,
/// as RFC 9110 requires for `If-None-Match`.
fn is_not_modified(req_headers: &HeaderMap, etag: &str, last_modified: SystemTime) -> bool {
    if let Some(inm) = req_headers.get(header::IF_NONE_MATCH) {
        let Ok(inm) = inm.to_str() else { return false };
        return inm.split(',').map(str::trim).any(|candidate| {
            candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
        });
    }
    let Some(since) = req_headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    // HTTP dates have one-second resolution; compare at that resolution.
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    secs(last_modified) <= secs(since)
}

/// The ETag names the version of the resource (path + generations), not the exact bytes: `n` and
/// `generated_at` change on every response, which is what lets a demo show when the origin was hit.
fn etag_for(path: &str, global_generation: u64, path_generation: u64) -> String {
    // FNV-1a: stable across processes and Rust versions (unlike `DefaultHasher`), so ETags
    // survive an origin restart.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let (global, own) = (
        global_generation.to_le_bytes(),
        path_generation.to_le_bytes(),
    );
    for &byte in path
        .as_bytes()
        .iter()
        .chain(&[0])
        .chain(&global)
        .chain(&own)
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{hash:016x}\"")
}

/// `{"path":..,"n":..,"generated_at":..}`, padded to exactly `size` bytes when `size` is
/// larger than the bare document.
fn document(path: &str, n: u64, generated_at: &str, status: StatusCode, size: usize) -> String {
    let mut doc = format!(
        r#"{{"path":"{}","n":{n},"generated_at":"{generated_at}""#,
        json_escape(path)
    );
    if status != StatusCode::OK {
        let _ = write!(doc, r#","status":{}"#, status.as_u16());
    }
    const PAD_FIELD: &str = r#","pad":"""#;
    let closed_len = doc.len() + 1;
    if size >= closed_len + PAD_FIELD.len() {
        doc.reserve(size - doc.len());
        doc.push_str(r#","pad":""#);
        doc.extend(std::iter::repeat_n(
            'x',
            size - closed_len - PAD_FIELD.len(),
        ));
        doc.push('"');
    } else if size > closed_len {
        // Too little room for a field; whitespace keeps the JSON valid and the size exact.
        doc.extend(std::iter::repeat_n(' ', size - closed_len));
    }
    doc.push('}');
    doc
}

/// Per-request overrides taken from the query string; unknown parameters are ignored so that
/// cache-busting parameters pass through.
#[derive(Debug, Default, PartialEq)]
struct Overrides {
    delay: Option<Duration>,
    size: Option<usize>,
    /// `Some(None)` = send no `Cache-Control` (`cc=none`).
    cache_control: Option<Option<HeaderValue>>,
    status: Option<StatusCode>,
}

impl Overrides {
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut overrides = Self::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode_component(value)?;
            match decode_component(key)?.as_str() {
                "delay" => overrides.delay = Some(parse_duration(&value)?),
                "size" => {
                    let size = value
                        .parse::<usize>()
                        .ok()
                        .filter(|s| *s <= MAX_BODY_SIZE)
                        .ok_or_else(|| {
                            format!("size must be 0..={MAX_BODY_SIZE} bytes, got {value:?}\n")
                        })?;
                    overrides.size = Some(size);
                }
                "cc" => {
                    overrides.cache_control = Some(if value == "none" {
                        None
                    } else {
                        Some(
                            HeaderValue::from_str(&value)
                                .map_err(|_| format!("invalid cc value {value:?}\n"))?,
                        )
                    });
                }
                "status" => {
                    // 1xx are not final responses and >599 are not real statuses.
                    let status = value
                        .parse::<u16>()
                        .ok()
                        .filter(|s| (200..=599).contains(s))
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .ok_or_else(|| format!("status must be 200..=599, got {value:?}\n"))?;
                    overrides.status = Some(status);
                }
                _ => {}
            }
        }
        Ok(overrides)
    }
}

fn decode_component(raw: &str) -> Result<String, String> {
    // Form encoding writes spaces as '+'; browsers and curl --data-urlencode both produce it.
    let raw = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("query parameter {raw:?} is not valid UTF-8 once decoded\n"))
}

/// `200ms`, `1.5s`, or a bare number of milliseconds; at most [`MAX_DELAY`].
fn parse_duration(value: &str) -> Result<Duration, String> {
    let err = || {
        format!(
            "delay must look like 200ms or 1.5s (max {}s), got {value:?}\n",
            MAX_DELAY.as_secs()
        )
    };
    // "ms" first: "s" is also its suffix.
    let (number, unit_secs) = if let Some(n) = value.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1.0)
    } else {
        (value, 0.001)
    };
    let number: f64 = number.parse().map_err(|_| err())?;
    // `f64::from_str` also accepts "inf" and "NaN"; a negative duration makes no sense.
    if !number.is_finite() || number < 0.0 {
        return Err(err());
    }
    let duration = Duration::try_from_secs_f64(number * unit_secs).map_err(|_| err())?;
    if duration > MAX_DELAY {
        return Err(err());
    }
    Ok(duration)
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

fn http_date(t: SystemTime) -> HeaderValue {
    // An HTTP date is plain ASCII, so this cannot fail; fall back to the epoch just in case.
    HeaderValue::from_str(&httpdate::fmt_http_date(t))
        .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

fn json(status: StatusCode, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut resp = plain(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed\n".to_owned(),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn plain(status: StatusCode, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_units() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.5ms"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        // A bare number is milliseconds.
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("60s"), Ok(MAX_DELAY));
    }

    #[test]
    fn duration_rejects_garbage() {
        for bad in [
            "", "ms", "s", "abc", "10m", "1h", "-5ms", "inf", "NaN", "infs", "1e400ms", "61s",
            " 5ms", "5 ms",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn overrides_from_query() {
        let o = Overrides::parse(Some(
            "delay=200ms&size=1024&cc=max-age%3D1&status=503&other=x",
        ))
        .unwrap();
        assert_eq!(o.delay, Some(Duration::from_millis(200)));
        assert_eq!(o.size, Some(1024));
        assert_eq!(
            o.cache_control,
            Some(Some(HeaderValue::from_static("max-age=1")))
        );
        assert_eq!(o.status, Some(StatusCode::SERVICE_UNAVAILABLE));

        let o = Overrides::parse(Some("cc=none")).unwrap();
        assert_eq!(o.cache_control, Some(None));
        let o = Overrides::parse(Some("cc=public,+max-age%3D60")).unwrap();
        assert_eq!(
            o.cache_control,
            Some(Some(HeaderValue::from_static("public, max-age=60")))
        );
        assert_eq!(Overrides::parse(None).unwrap(), Overrides::default());

        for bad in [
            "delay=soon",
            "size=-1",
            "size=99999999999",
            "status=99",
            "status=600",
            "cc=a%0Ab",
            "delay=%FF",
        ] {
            assert!(
                Overrides::parse(Some(bad)).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn document_is_padded_exactly() {
        const AT: &str = "Thu, 01 Jan 1970 00:00:00 GMT";
        let bare = document("/a", 1, AT, StatusCode::OK, 0);
        for size in [
            0,
            bare.len(),
            bare.len() + 1,
            bare.len() + 9,
            bare.len() + 10,
            4096,
        ] {
            let doc = document("/a", 1, AT, StatusCode::OK, size);
            assert_eq!(doc.len(), size.max(bare.len()), "size {size}: {doc}");
            assert!(doc.starts_with('{') && doc.ends_with('}'));
        }
        let escaped = document("/q\"\\", 1, "x", StatusCode::OK, 0);
        assert!(escaped.contains(r#""path":"/q\"\\""#), "{escaped}");
    }

    #[test]
    fn etag_changes_with_generations_only() {
        let e = etag_for("/a", 0, 0);
        assert_eq!(e, etag_for("/a", 0, 0));
        assert_ne!(e, etag_for("/a", 1, 0));
        assert_ne!(e, etag_for("/a", 0, 1));
        assert_ne!(e, etag_for("/b", 0, 0));
        assert!(e.starts_with('"') && e.ends_with('"'));
    }

    #[test]
    fn conditional_requests() {
        let lm = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let etag = etag_for("/a", 0, 0);
        let with = |name, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_str(value).unwrap());
            h
        };
        assert!(is_not_modified(
            &with(header::IF_NONE_MATCH, &etag),
            &etag,
            lm
        ));
        assert!(is_not_modified(
            &with(header::IF_NONE_MATCH, &format!("\"x\", W/{etag}")),
            &etag,
            lm
        ));
        assert!(is_not_modified(
            &with(header::IF_NONE_MATCH, "*"),
            &etag,
            lm
        ));
        assert!(!is_not_modified(
            &with(header::IF_NONE_MATCH, "\"other\""),
            &etag,
            lm
        ));
        assert!(!is_not_modified(&HeaderMap::new(), &etag, lm));
        let same_second = httpdate::fmt_http_date(lm + Duration::from_millis(300));
        assert!(is_not_modified(
            &with(header::IF_MODIFIED_SINCE, &same_second),
            &etag,
            lm
        ));
        let earlier = httpdate::fmt_http_date(lm - Duration::from_secs(1));
        assert!(!is_not_modified(
            &with(header::IF_MODIFIED_SINCE, &earlier),
            &etag,
            lm
        ));
    }

    /// Minimal HTTP/1.1 exchange over a fresh connection; enough to check the server end to end
    /// without pulling in an HTTP client.
    async fn request(
        addr: std::net::SocketAddr,
        method: &str,
        target: &str,
        extra: &str,
    ) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    fn header_value<'a>(head: &'a str, name: &str) -> &'a str {
        head.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
            .unwrap_or_else(|| panic!("no {name} in {head}"))
    }

    #[tokio::test]
    async fn serves_counts_and_revalidates() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, OriginOptions::default(), async {
            let _ = stopped.await;
        }));

        let (status, head, body) = request(addr, "GET", "/users/1?size=300", "").await;
        assert_eq!(status, 200);
        assert_eq!(body.len(), 300);
        assert!(body.starts_with(r#"{"path":"/users/1","n":1,"#), "{body}");
        assert_eq!(header_value(&head, "cache-control"), "max-age=5");
        for name in ["date", "last-modified", "content-type"] {
            header_value(&head, name);
        }
        let etag = header_value(&head, "etag").to_owned();

        let (status, _, _) = request(
            addr,
            "GET",
            "/users/1",
            &format!("If-None-Match: {etag}\r\n"),
        )
        .await;
        assert_eq!(status, 304);
        let (_, head, _) = request(addr, "GET", "/users/1?cc=none", "").await;
        assert!(!head.contains("cache-control"));
        assert_eq!(request(addr, "GET", "/users/1?delay=soon", "").await.0, 400);
        assert_eq!(request(addr, "GET", "/x?status=503", "").await.0, 503);

        // A write changes that path's ETag; /__bump changes every ETag.
        let (status, head, _) = request(addr, "POST", "/users/1", "Content-Length: 0\r\n").await;
        assert_eq!(
            (status, header_value(&head, "cache-control")),
            (200, "no-store")
        );
        let (_, head, _) = request(addr, "GET", "/users/1", "").await;
        let etag2 = header_value(&head, "etag").to_owned();
        assert_ne!(etag, etag2);
        let (_, head, _) = request(addr, "GET", "/x", "").await;
        let x_etag = header_value(&head, "etag").to_owned();
        assert_eq!(
            request(addr, "POST", "/__bump", "Content-Length: 0\r\n")
                .await
                .0,
            200
        );
        let (_, head, _) = request(addr, "GET", "/x", "").await;
        assert_ne!(x_etag, header_value(&head, "etag"));

        let (_, _, stats) = request(addr, "GET", "/__stats", "").await;
        assert!(
            stats.starts_with(r#"{"requests":9,"not_modified":1,"in_flight":0,"max_in_flight":1,"per_path":{"/users/1":6,"/x":3},"#),
            "{stats}"
        );
        assert_eq!(request(addr, "GET", "/__nope", "").await.0, 404);
        assert_eq!(request(addr, "GET", "/__reset", "").await.0, 405);

        // Concurrent slow requests on one path show up in max_in_flight_per_path.
        assert_eq!(
            request(addr, "POST", "/__reset", "Content-Length: 0\r\n")
                .await
                .0,
            200
        );
        let slow: Vec<_> = (0..3)
            .map(|_| tokio::spawn(request(addr, "GET", "/slow?delay=300ms", "")))
            .collect();
        for task in slow {
            assert_eq!(task.await.unwrap().0, 200);
        }
        let (_, _, stats) = request(addr, "GET", "/__stats", "").await;
        assert_eq!(
            stats,
            r#"{"requests":3,"not_modified":0,"in_flight":0,"max_in_flight":3,"per_path":{"/slow":3},"max_in_flight_per_path":{"/slow":3}}"#
        );

        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
