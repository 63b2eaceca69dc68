//! A stored response with its soft and hard deadlines. The only module that defines
//! stored bytes (see `encode`/`decode`).

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, ETAG, LAST_MODIFIED};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// How long past its soft TTL an entry with validators is kept for revalidation.
pub const REVALIDATION_TAIL: Duration = Duration::from_secs(600);

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

/// One stored variant of a cache key.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub status: StatusCode,
    /// Response headers as they go downstream (hop-by-hop fields already removed).
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The `Age` the response arrived with (RFC 9111 §4.2.3); residence here is added
    /// from `stored_at`. All the entry keeps of the exchange's `CachePolicy`: every other
    /// decision is made once, when it is fetched or renewed.
    pub initial_age: Duration,
    pub stored_at: SystemTime,
    /// Soft TTL: fresh until then.
    pub fresh_until: SystemTime,
    /// Hard TTL: may be served stale (while one refresh runs) until then.
    pub stale_until: SystemTime,
    /// May answer an origin failure until then.
    pub error_until: SystemTime,
    /// The request header values this variant was stored for (route key headers and `Vary`).
    pub vary: Vec<(HeaderName, Option<String>)>,
    /// Surrogate keys (`Surrogate-Key`, `Cache-Tag`) for purges by tag.
    pub tags: Vec<String>,
    /// What the origin exchange that produced it took (request to last body byte): the
    /// `delta` of early refresh (`policy::refresh_early`). Zero when not measured.
    pub fetch_time: Duration,
    /// Heap bytes held (see `weight`), measured once when the entry is built. Private, so
    /// every entry comes from `new` or `decode`, which own compact copies of their parts.
    heap: usize,
}

/// Where an entry stands at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Past the soft TTL, within the stale-while-revalidate window.
    Stale,
    /// Past the hard TTL, still usable if the origin fails.
    ErrorOnly,
    Expired,
}

impl CacheEntry {
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        initial_age: Duration,
        now: SystemTime,
        lifetimes: Lifetimes,
        vary: Vec<(HeaderName, Option<String>)>,
    ) -> Self {
        // What hyper hands us shares larger buffers: header values are slices of the
        // connection's read buffer, and a body read in pieces has spare capacity. Kept as
        // they are, each entry would pin those buffers (BENCHMARKS.md, "Memory"); so the
        // entry keeps exact-size copies.
        let headers = compact_headers(&headers);
        let body = Bytes::copy_from_slice(&body);
        let vary = vary
            .into_iter()
            .map(|(name, value)| (name, value.map(|v| v.into_boxed_str().into_string())))
            .collect();
        let fresh_until = now + lifetimes.fresh;
        CacheEntry {
            status,
            headers,
            body,
            initial_age,
            stored_at: now,
            fresh_until,
            stale_until: fresh_until + lifetimes.stale,
            error_until: fresh_until + lifetimes.stale_if_error,
            vary,
            tags: Vec::new(),
            fetch_time: Duration::ZERO,
            heap: 0,
        }
        .measured()
    }

    /// The entry with the measured cost of the exchange that produced it.
    pub fn with_fetch_time(mut self, took: Duration) -> Self {
        self.fetch_time = took;
        self
    }

    /// No later than the moment the origin request that produced it was sent: a purge
    /// made from then on may have been missed by the origin's answer.
    pub fn fetched_since(&self) -> SystemTime {
        self.stored_at
            .checked_sub(self.fetch_time)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// The entry with `extra` tags (a route's `tags:`) besides those from its headers.
    pub fn with_tags(mut self, extra: impl IntoIterator<Item = String>) -> Self {
        let before = self.tags.len();
        for tag in extra {
            if !self.tags.contains(&tag) {
                self.tags.push(tag);
            }
        }
        if self.tags.len() == before {
            return self;
        }
        self.tags.shrink_to_fit();
        self.heap = 0;
        self.measured()
    }

    pub fn freshness(&self, now: SystemTime) -> Freshness {
        if now < self.fresh_until {
            Freshness::Fresh
        } else if now < self.stale_until {
            Freshness::Stale
        } else if now < self.error_until {
            Freshness::ErrorOnly
        } else {
            Freshness::Expired
        }
    }

    /// Remaining freshness in whole seconds, negative once stale (Cache-Status `ttl`).
    pub fn ttl_secs(&self, now: SystemTime) -> i64 {
        match self.fresh_until.duration_since(now) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs_f64().ceil() as i64),
        }
    }

    /// The `Age` to send: upstream age plus residence here (RFC 9111 §4.2.3), as
    /// http-cache-semantics counts it (the `Age` field, not `Date`).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.stored_at).unwrap_or_default()
    }

    /// When the store may drop the entry: nothing can use it after this. An entry with
    /// validators stays a while longer so the next fetch can be a conditional request
    /// (a 304 renews it without re-sending the body; `no-cache` entries rely on this).
    pub fn keep_until(&self) -> SystemTime {
        let usable = self.stale_until.max(self.error_until).max(self.fresh_until);
        if self.headers.contains_key(ETAG) || self.headers.contains_key(LAST_MODIFIED) {
            usable.max(self.fresh_until + REVALIDATION_TAIL)
        } else {
            usable
        }
    }

    /// Whether `request` selects this variant.
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| normalized(request, name).as_deref() == value.as_deref())
    }

    pub fn etag(&self) -> Option<&str> {
        self.headers.get(ETAG).and_then(|v| v.to_str().ok())
    }

    pub fn last_modified(&self) -> Option<SystemTime> {
        self.headers
            .get(LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
    }

    /// Heap bytes this entry holds, `Arc` included: an upper bound on what the allocator
    /// keeps for it (see `footprint`), so a store bounded by weight bounds the process.
    pub fn weight(&self) -> usize {
        self.heap
    }

    fn measured(mut self) -> Self {
        self.heap = footprint(&self);
        self
    }
}

/// The request's value for `name`, normalised so equivalent requests share a variant:
/// repeated lines comma-joined, whitespace around elements dropped, `Accept-Encoding`
/// reduced to the codings cachegate would pick from, `Accept-Language` to its ranges in
/// order of preference.
///
/// Borrowed when there is nothing to normalise (one line, no list, no surrounding
/// whitespace, not one of the two negotiation fields rewritten): the usual case, which
/// then costs no allocation.
pub fn normalized<'a>(request: &'a HeaderMap, name: &HeaderName) -> Option<Cow<'a, str>> {
    let all = request.get_all(name);
    let mut values = all.iter();
    let first = values.next()?;
    let rewritten = name == ACCEPT_ENCODING || name.as_str() == "accept-language";
    if !rewritten && values.next().is_none() {
        if let Ok(v) = first.to_str() {
            if !v.contains(',') && v.trim() == v {
                return Some(Cow::Borrowed(v));
            }
        }
    }
    Some(Cow::Owned(normalized_slow(all.iter(), name)))
}

fn normalized_slow<'a>(values: impl Iterator<Item = &'a HeaderValue>, name: &HeaderName) -> String {
    let joined = values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    if name == ACCEPT_ENCODING {
        return accepted_codings(&joined);
    }
    if name.as_str() == "accept-language" {
        return language_preferences(&joined);
    }
    joined
}

/// `Accept-Language` as the origin reads it: ranges lower-cased (RFC 4647 §2: case does
/// not matter), whitespace dropped, q-values written one way (`q=0.50` is `q=0.5`, `q=1`
/// is no q) and ranges ordered by q, highest first. Ranges with equal q keep the client's
/// order: RFC 9110 §12.5.4 notes that servers may read that order as a preference, so
/// `fr, en` and `en, fr` may get different languages and stay different variants. A
/// list that does not parse is kept as it came (after whitespace), sharing with no other.
fn language_preferences(header: &str) -> String {
    // An RFC 9110 §12.4.2 qvalue in thousandths: `0`, `0.5`, `0.125`, `1`, `1.000`.
    fn qvalue(v: &str) -> Option<u16> {
        let (int, frac) = v.split_once('.').unwrap_or((v, ""));
        if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let thousandths = format!("{frac:0<3}").parse::<u16>().ok()?;
        match int {
            "0" => Some(thousandths),
            "1" if thousandths == 0 => Some(1000),
            _ => None,
        }
    }
    let mut ranges: Vec<(u16, String)> = Vec::new();
    for element in header.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut parts = element.split(';').map(str::trim);
        let range = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut q = 1000;
        for param in parts {
            let Some((k, v)) = param.split_once('=') else {
                return header.to_string();
            };
            if !k.trim().eq_ignore_ascii_case("q") {
                return header.to_string();
            }
            match qvalue(v.trim()) {
                Some(v) => q = v,
                None => return header.to_string(),
            }
        }
        ranges.push((q, range));
    }
    // Stable: equal q keeps the client's order.
    ranges.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out = String::with_capacity(header.len());
    for (q, range) in ranges {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&range);
        if q == 0 {
            out.push_str(";q=0");
        } else if q < 1000 {
            out.push_str(";q=0.");
            out.push_str(format!("{q:03}").trim_end_matches('0'));
        }
    }
    out
}

/// The known content codings a client accepts, sorted: browsers that list the same
/// codings in another order or with other q-values share one variant, and a client never
/// gets a coding it did not accept.
fn accepted_codings(header: &str) -> String {
    let mut codings: Vec<&str> = Vec::new();
    for element in header.split(',') {
        let mut parts = element.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        let known = ["br", "deflate", "gzip", "zstd"]
            .into_iter()
            .find(|c| coding.eq_ignore_ascii_case(c));
        if let (Some(c), false) = (known, refused) {
            if !codings.contains(&c) {
                codings.push(c);
            }
        }
    }
    codings.sort_unstable();
    if codings.is_empty() {
        "identity".to_string()
    } else {
        codings.join(",")
    }
}

/// The vary record of a variant: each named header with the request's normalised value.
pub fn vary_values(request: &HeaderMap, names: &[HeaderName]) -> Vec<(HeaderName, Option<String>)> {
    names
        .iter()
        .map(|n| (n.clone(), normalized(request, n).map(Cow::into_owned)))
        .collect()
}

/// The tags a response's tag headers (`Surrogate-Key`, `Cache-Tag`, or the configured
/// `tag_headers`) give it: values split on spaces and commas, each once.
pub fn header_tags(headers: &HeaderMap, names: &[HeaderName]) -> Vec<String> {
    let mut tags = Vec::new();
    for name in names {
        for v in headers.get_all(name) {
            let Ok(v) = v.to_str() else { continue };
            for t in v.split([' ', ',']).map(str::trim).filter(|t| !t.is_empty()) {
                if !tags.iter().any(|x| x == t) {
                    tags.push(t.to_string());
                }
            }
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::try_from(*k).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn normalisation_ignores_whitespace_and_joins_lines() {
        let lang = HeaderName::from_static("accept-language");
        let a = headers(&[("accept-language", "en,  fr")]);
        let b = headers(&[("accept-language", "en"), ("accept-language", "fr")]);
        assert_eq!(normalized(&a, &lang), normalized(&b, &lang));
        assert_eq!(normalized(&headers(&[]), &lang), None);
    }

    #[test]
    fn accept_encoding_collapses_to_the_accepted_set() {
        let check = |v: &str, want: &str| {
            assert_eq!(
                normalized(&headers(&[("accept-encoding", v)]), &ACCEPT_ENCODING).as_deref(),
                Some(want),
                "{v}"
            );
        };
        check("gzip, deflate, br", "br,deflate,gzip");
        check("br,gzip;q=0.8,  deflate", "br,deflate,gzip");
        check("br;q=0, gzip", "gzip");
        check("x-custom", "identity");
    }
}

/// The stored-bytes format version. It is also part of the Redis key namespace
/// (`{prefix}v1:`), so a build with a new format never reads an old one's bytes.
pub const FORMAT_VERSION: u8 = 3;

/// Everything but the body, in postcard. The body follows raw: it is most of the bytes
/// and needs no framing beyond "the rest".
#[derive(serde::Serialize)]
struct WireHead<'a> {
    status: u16,
    headers: Vec<(&'a str, &'a [u8])>,
    initial_age_micros: u64,
    /// Times as (seconds, nanoseconds) since the epoch: full precision, so "stored after"
    /// comparisons between replicas see the same order as in memory.
    stored_at: (u64, u32),
    fresh_until: (u64, u32),
    stale_until: (u64, u32),
    error_until: (u64, u32),
    vary: Vec<(&'a str, Option<&'a str>)>,
    tags: &'a [String],
    fetch_micros: u64,
    /// Lets `decode` tell a truncated value from a short body.
    body_len: u64,
}

#[derive(serde::Deserialize)]
struct WireHeadOwned {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    initial_age_micros: u64,
    stored_at: (u64, u32),
    fresh_until: (u64, u32),
    stale_until: (u64, u32),
    error_until: (u64, u32),
    vary: Vec<(String, Option<String>)>,
    tags: Vec<String>,
    fetch_micros: u64,
    body_len: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn to_wire_time(t: SystemTime) -> (u64, u32) {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    (d.as_secs(), d.subsec_nanos())
}

fn from_wire_time((secs, nanos): (u64, u32)) -> Option<SystemTime> {
    if nanos >= 1_000_000_000 {
        return None;
    }
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// The entry as stored bytes: `[version][head length: u32 BE][postcard head][body]`.
pub fn encode(entry: &CacheEntry) -> Vec<u8> {
    let head = WireHead {
        status: entry.status.as_u16(),
        headers: entry
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect(),
        initial_age_micros: micros(entry.initial_age),
        stored_at: to_wire_time(entry.stored_at),
        fresh_until: to_wire_time(entry.fresh_until),
        stale_until: to_wire_time(entry.stale_until),
        error_until: to_wire_time(entry.error_until),
        vary: entry
            .vary
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect(),
        tags: &entry.tags,
        fetch_micros: micros(entry.fetch_time),
        body_len: entry.body.len() as u64,
    };
    // Serializing plain data into a Vec cannot fail; an empty head would decode as None.
    let head = postcard::to_allocvec(&head).unwrap_or_default();
    let mut out = Vec::with_capacity(5 + head.len() + entry.body.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&entry.body);
    out
}

/// The entry `encode` wrote; None for anything else (another version, truncated or
/// corrupt bytes), which callers read as a miss.
pub fn decode(bytes: &[u8]) -> Option<CacheEntry> {
    let (&version, rest) = bytes.split_first()?;
    if version != FORMAT_VERSION || rest.len() < 4 {
        return None;
    }
    let (len, rest) = rest.split_at(4);
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    if rest.len() < len {
        return None;
    }
    let (head, body) = rest.split_at(len);
    let head: WireHeadOwned = postcard::from_bytes(head).ok()?;
    if head.body_len != body.len() as u64 {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for (name, value) in head.headers {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            http::HeaderValue::from_bytes(&value).ok()?,
        );
    }
    let mut vary = Vec::with_capacity(head.vary.len());
    for (name, value) in head.vary {
        vary.push((HeaderName::from_bytes(name.as_bytes()).ok()?, value));
    }
    Some(
        CacheEntry {
            status: StatusCode::from_u16(head.status).ok()?,
            headers,
            body: Bytes::copy_from_slice(body),
            initial_age: Duration::from_micros(head.initial_age_micros),
            stored_at: from_wire_time(head.stored_at)?,
            fresh_until: from_wire_time(head.fresh_until)?,
            stale_until: from_wire_time(head.stale_until)?,
            error_until: from_wire_time(head.error_until)?,
            vary,
            tags: head.tags,
            fetch_time: Duration::from_micros(head.fetch_micros),
            heap: 0,
        }
        .measured(),
    )
}

#[cfg(test)]
mod encoding_tests {
    use super::*;
    use http_cache_semantics::CachePolicy;

    fn sample() -> CacheEntry {
        let mut req = http::Request::new(());
        *req.uri_mut() = "/users/1".parse().unwrap();
        req.headers_mut()
            .insert("accept-language", "en".parse().unwrap());
        let mut resp = http::Response::new(());
        resp.headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        resp.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
        resp.headers_mut()
            .insert("x-bin", http::HeaderValue::from_bytes(b"\xff ok").unwrap());
        resp.headers_mut()
            .insert("surrogate-key", "users user-1".parse().unwrap());
        let now = SystemTime::now();
        let policy = CachePolicy::new(&req.into_parts().0, &resp);
        CacheEntry::new(
            StatusCode::OK,
            resp.headers().clone(),
            Bytes::from_static(b"\x00body\xff"),
            policy.age(now) + Duration::from_secs(7),
            now,
            Lifetimes {
                fresh: Duration::from_secs(60),
                stale: Duration::from_secs(30),
                stale_if_error: Duration::from_secs(300),
            },
            vec![
                (
                    HeaderName::from_static("accept-language"),
                    Some("en".into()),
                ),
                (HeaderName::from_static("x-none"), None),
            ],
        )
    }

    #[test]
    fn round_trips_every_field() {
        let e = sample();
        let d = decode(&encode(&e)).expect("decodes");
        assert_eq!(d.status, e.status);
        assert_eq!(d.headers, e.headers);
        assert_eq!(d.body, e.body);
        assert_eq!(d.stored_at, e.stored_at);
        assert_eq!(d.fresh_until, e.fresh_until);
        assert_eq!(d.stale_until, e.stale_until);
        assert_eq!(d.error_until, e.error_until);
        assert_eq!(d.vary, e.vary);
        assert_eq!(d.tags, e.tags);
        assert_eq!(d.etag(), Some("\"v1\""));
        let now = SystemTime::now();
        assert_eq!(d.initial_age, Duration::from_secs(7));
        assert_eq!(d.age(now), e.age(now));
    }

    #[test]
    fn garbage_and_other_versions_read_as_none() {
        let bytes = encode(&sample());
        assert!(decode(&[]).is_none());
        assert!(decode(b"hello world").is_none());
        let mut other = bytes.clone();
        other[0] = FORMAT_VERSION + 1;
        assert!(decode(&other).is_none());
        for cut in [1, 3, 5, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
    }
}

// === footprint ===

/// Exact-size copies of `headers`' names and values, in a map sized for them.
fn compact_headers(headers: &HeaderMap) -> HeaderMap {
    // One spare slot: a map grows (doubles) on any insert or append made while it is
    // full, including the second value of its last name.
    let mut out = HeaderMap::with_capacity(headers.keys_len() + 1);
    for (name, value) in headers {
        let name =
            HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
        // A value that came out of a HeaderMap is valid; the fallback is never taken.
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        out.append(name, copy);
    }
    out
}

/// What the allocator sets aside for a request of `n` bytes: glibc's chunk (an 8-byte
/// header, 16-byte alignment, at least 32 bytes). The counting allocator in the tests
/// applies the same rule to every real allocation.
pub(crate) const fn alloc(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        let chunk = (n + 8).next_multiple_of(16);
        if chunk < 32 {
            32
        } else {
            chunk
        }
    }
}

/// The control block a `Bytes` (header value, header name, body) allocates the first time
/// it is cloned, which happens when it is served.
const SHARED: usize = alloc(3 * std::mem::size_of::<usize>());

/// One slot of a `HeaderMap` (http's private `Bucket`: hash, links, name, value).
const BUCKET: usize = std::mem::size_of::<(u16, Option<(usize, usize)>, HeaderName, HeaderValue)>();

/// A second or later value of one header name (http's private `ExtraValue`).
const EXTRA: usize = std::mem::size_of::<(HeaderValue, (usize, usize), (usize, usize))>();

/// A `HeaderMap` with room for `capacity` entries (`HeaderMap::capacity`): its index of
/// 4-byte positions and its entry slots.
fn map_heap(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    alloc((capacity * 4).div_ceil(3) * 4) + alloc(capacity * BUCKET)
}

/// Extra values live in a vector that doubles: room for at most twice as many, 4 at least.
fn extra_heap(extra: usize) -> usize {
    if extra == 0 {
        0
    } else {
        alloc(extra.max(2) * 2 * EXTRA)
    }
}

/// A string or byte run kept in its own allocation, with the `Bytes` control block it may
/// grow when shared.
fn owned(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        alloc(len) + SHARED
    }
}

fn headers_heap(headers: &HeaderMap) -> usize {
    let names: usize = headers.keys().map(|k| owned(k.as_str().len())).sum();
    let values: usize = headers.values().map(|v| owned(v.len())).sum();
    map_heap(headers.capacity()) + extra_heap(headers.len() - headers.keys_len()) + names + values
}

/// Heap bytes `entry` holds once it is behind an `Arc`: the counted parts as the
/// allocator rounds them, an upper bound (names of well-known headers cost nothing and
/// are counted anyway).
fn footprint(entry: &CacheEntry) -> usize {
    let vary = alloc(entry.vary.capacity() * std::mem::size_of::<(HeaderName, Option<String>)>())
        + entry
            .vary
            .iter()
            .map(|(name, value)| {
                owned(name.as_str().len()) + value.as_ref().map_or(0, |v| alloc(v.len()))
            })
            .sum::<usize>();
    let tags = alloc(entry.tags.capacity() * std::mem::size_of::<String>())
        + entry.tags.iter().map(|t| alloc(t.len())).sum::<usize>();
    alloc(2 * std::mem::size_of::<usize>() + std::mem::size_of::<CacheEntry>())
        + owned(entry.body.len())
        + headers_heap(&entry.headers)
        + vary
        + tags
}

#[cfg(test)]
pub(crate) mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    struct Counting;

    fn add(delta: isize) {
        // During thread teardown the counter may be gone; that thread measures nothing.
        let _ = LIVE.try_with(|live| live.set(live.get() + delta));
    }

    fn chunk(size: usize) -> isize {
        super::alloc(size) as isize
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                add(chunk(layout.size()));
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                add(chunk(layout.size()));
            }
            p
        }

        unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
            unsafe { System.dealloc(p, layout) };
            add(-chunk(layout.size()));
        }

        unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let q = unsafe { System.realloc(p, layout, new_size) };
            if !q.is_null() {
                add(chunk(new_size) - chunk(layout.size()));
            }
            q
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// Bytes this thread allocated and has not freed.
    pub fn live() -> isize {
        LIVE.with(Cell::get)
    }
}

#[cfg(test)]
mod footprint_tests {
    use super::counting::live;
    use super::*;
    use bytes::BytesMut;
    use http::Uri;

    /// A connection's read buffer, as hyper keeps it: parsed header values (and the
    /// request target) are slices of it.
    struct Connection {
        buf: Bytes,
        text: String,
    }

    impl Connection {
        fn new() -> Self {
            Connection {
                buf: Bytes::new(),
                text: String::new(),
            }
        }

        /// Writes `v` into the connection text; `slice` hands out the parts once it is frozen.
        fn put(&mut self, v: &str) -> std::ops::Range<usize> {
            let start = self.text.len();
            self.text.push_str(v);
            start..self.text.len()
        }

        fn freeze(&mut self, size: usize) {
            let mut buf = BytesMut::with_capacity(size.max(self.text.len()));
            buf.extend_from_slice(self.text.as_bytes());
            buf.resize(size.max(self.text.len()), b' ');
            self.buf = buf.freeze();
        }

        fn value(&self, at: &std::ops::Range<usize>) -> HeaderValue {
            HeaderValue::from_maybe_shared(self.buf.slice(at.clone())).unwrap()
        }
    }

    struct Shape {
        body: usize,
        /// Extra response headers (name length, value length), beyond the usual ones.
        headers: Vec<(usize, usize)>,
        repeated: usize,
        vary: usize,
        tags: usize,
    }

    /// Builds an entry from parts that share 16 KiB connection buffers and a body with
    /// spare capacity, the way a fetch does, then drops everything but the entry.
    fn build(shape: &Shape) -> CacheEntry {
        let mut req_conn = Connection::new();
        let target = req_conn.put("/users/42?fields=name,email&page=3");
        let req_headers: Vec<_> = [
            ("host", "api.example.test"),
            (
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126",
            ),
            ("accept", "application/json, text/plain, */*"),
            ("accept-language", "en-GB,en;q=0.9,fr;q=0.8"),
            ("accept-encoding", "gzip, deflate, br"),
            ("x-request-id", "6f1c2a9e-4b7d-4e0a-9d1e-2b8f7c3a5d10"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-forwarded-for", "10.1.2.3"),
        ]
        .into_iter()
        .map(|(n, v)| (n, req_conn.put(v)))
        .collect();
        req_conn.freeze(16 << 10);

        let mut res_conn = Connection::new();
        let mut res_headers: Vec<(String, std::ops::Range<usize>)> = [
            ("content-type", "application/json"),
            (
                "cache-control",
                "public, max-age=60, stale-while-revalidate=30",
            ),
            ("etag", "\"33a64df551425fcc55e4d42a148795d9f25f89d4\""),
            ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
            ("date", "Tue, 01 Dec 2026 22:00:00 GMT"),
            ("server", "origin/1.0"),
            ("x-origin-region", "eu-west-1"),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), res_conn.put(v)))
        .collect();
        for (i, &(name, value)) in shape.headers.iter().enumerate() {
            let n = format!("x-h{i}-{}", "n".repeat(name));
            res_headers.push((n, res_conn.put(&"v".repeat(value))));
        }
        for i in 0..shape.repeated {
            res_headers.push((
                "link".into(),
                res_conn.put(&format!("</s/{i}.css>; rel=preload")),
            ));
        }
        let tags: Vec<String> = (0..shape.tags).map(|i| format!("tag-{i}")).collect();
        if !tags.is_empty() {
            res_headers.push(("surrogate-key".into(), res_conn.put(&tags.join(" "))));
        }
        let vary_names: Vec<String> = (0..shape.vary).map(|i| format!("x-vary-{i}")).collect();
        if !vary_names.is_empty() {
            res_headers.push(("vary".into(), res_conn.put(&vary_names.join(", "))));
        }
        res_conn.freeze(16 << 10);

        let mut req = http::Request::new(());
        *req.uri_mut() = Uri::from_maybe_shared(req_conn.buf.slice(target)).unwrap();
        for (name, at) in &req_headers {
            req.headers_mut().append(*name, req_conn.value(at));
        }
        for name in &vary_names {
            req.headers_mut().append(
                HeaderName::try_from(name.as_str()).unwrap(),
                HeaderValue::from_static("some-value"),
            );
        }
        let mut resp = http::Response::new(());
        for (name, at) in &res_headers {
            resp.headers_mut().append(
                HeaderName::try_from(name.as_str()).unwrap(),
                res_conn.value(at),
            );
        }
        let (req, _) = req.into_parts();

        // Read in 16 KiB frames into a growing buffer, as `origin::read_body` does.
        let mut body = BytesMut::new();
        let frame = vec![b'x'; 16 << 10];
        while body.len() < shape.body {
            let n = (shape.body - body.len()).min(frame.len());
            body.extend_from_slice(&frame[..n]);
        }
        let names: Vec<HeaderName> = vary_names
            .iter()
            .map(|n| HeaderName::try_from(n.as_str()).unwrap())
            .collect();
        CacheEntry::new(
            StatusCode::OK,
            resp.headers().clone(),
            body.freeze(),
            Duration::ZERO,
            SystemTime::now(),
            Lifetimes {
                fresh: Duration::from_secs(60),
                stale: Duration::from_secs(30),
                stale_if_error: Duration::from_secs(300),
            },
            vary_values(&req.headers, &names),
        )
    }

    /// (bytes the entry keeps alive, its weight), after it has been served twice (a
    /// served entry's `Bytes` grow their shared control blocks).
    fn measure(shape: &Shape) -> (usize, usize) {
        let before = live();
        let entry = std::sync::Arc::new(build(shape));
        for _ in 0..2 {
            let served = (entry.headers.clone(), entry.body.clone());
            drop(served);
        }
        let held = usize::try_from(live() - before).unwrap();
        (held, entry.weight())
    }

    #[test]
    fn the_weight_covers_the_real_heap_footprint_of_representative_entries() {
        let shapes = [
            (
                "100 B body",
                Shape {
                    body: 100,
                    headers: vec![],
                    repeated: 0,
                    vary: 0,
                    tags: 0,
                },
            ),
            (
                "1 KiB body",
                Shape {
                    body: 1024,
                    headers: vec![],
                    repeated: 0,
                    vary: 0,
                    tags: 0,
                },
            ),
            (
                "64 KiB body",
                Shape {
                    body: 64 << 10,
                    headers: vec![],
                    repeated: 0,
                    vary: 0,
                    tags: 0,
                },
            ),
            (
                "many headers",
                Shape {
                    body: 512,
                    headers: (0..40).map(|i| (i % 20, i * 7 % 90)).collect(),
                    repeated: 9,
                    vary: 0,
                    tags: 0,
                },
            ),
            (
                "variant with tags",
                Shape {
                    body: 2048,
                    headers: vec![(4, 12)],
                    repeated: 0,
                    vary: 3,
                    tags: 12,
                },
            ),
        ];
        for (name, shape) in &shapes {
            let (held, weight) = measure(shape);
            eprintln!("{name}: held {held} B, weight {weight} B");
            // Also proves nothing is pinned: the weight counts no connection buffer (16
            // KiB here) and no spare body capacity, so either would exceed it.
            assert!(
                weight >= held,
                "{name}: weight {weight} < {held} bytes really held"
            );
            // Not so pessimistic that a bound by weight would waste the memory it promises.
            assert!(
                weight <= held + held / 2 + 512,
                "{name}: weight {weight} for {held} held"
            );
        }
    }

    #[test]
    fn decoded_entries_are_weighed_like_built_ones() {
        let shape = Shape {
            body: 1024,
            headers: vec![(3, 20)],
            repeated: 2,
            vary: 1,
            tags: 2,
        };
        let entry = build(&shape);
        let before = live();
        let decoded = std::sync::Arc::new(decode(&encode(&entry)).unwrap());
        let served = (decoded.headers.clone(), decoded.body.clone());
        drop(served);
        let held = usize::try_from(live() - before).unwrap();
        assert!(decoded.weight() >= held, "{} < {held}", decoded.weight());
    }
}
