//! A stored response with its soft and hard deadlines. The only module that defines
//! stored bytes (see `encode`/`decode`).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, ETAG, LAST_MODIFIED};
use http::{HeaderMap, HeaderName, StatusCode};
use http_cache_semantics::CachePolicy;

use super::policy::Lifetimes;

/// How long past its soft TTL an entry with validators is kept for revalidation.
pub const REVALIDATION_TAIL: Duration = Duration::from_secs(600);

/// One stored variant of a cache key.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub status: StatusCode,
    /// Response headers as they go downstream (hop-by-hop fields already removed).
    pub headers: HeaderMap,
    pub body: Bytes,
    /// RFC 9111 state of the exchange: age, validators, 304 merging.
    pub policy: CachePolicy,
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
        policy: CachePolicy,
        now: SystemTime,
        lifetimes: Lifetimes,
        vary: Vec<(HeaderName, Option<String>)>,
    ) -> Self {
        let tags = tags(&headers);
        let fresh_until = now + lifetimes.fresh;
        CacheEntry {
            status,
            headers,
            body,
            policy,
            stored_at: now,
            fresh_until,
            stale_until: fresh_until + lifetimes.stale,
            error_until: fresh_until + lifetimes.stale_if_error,
            vary,
            tags,
        }
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

    /// The `Age` to send: upstream age plus residence here (RFC 9111 §4.2.3).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.policy.age(now)
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

    /// Approximate bytes held, for size-bounded stores.
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        self.body.len() + headers * 2 + 256
    }
}

/// The request's value for `name`, normalised so equivalent requests share a variant:
/// repeated lines comma-joined, whitespace around elements dropped, `Accept-Encoding`
/// reduced to the codings cachegate would pick from, `Accept-Language` to its ranges in
/// order of preference.
pub fn normalized(request: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = request.get_all(name).iter().peekable();
    values.peek()?;
    let joined = values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    if name == ACCEPT_ENCODING {
        return Some(accepted_codings(&joined));
    }
    if name.as_str() == "accept-language" {
        return Some(language_preferences(&joined));
    }
    Some(joined)
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
        .map(|n| (n.clone(), normalized(request, n)))
        .collect()
}

fn tags(headers: &HeaderMap) -> Vec<String> {
    let mut tags = Vec::new();
    for name in ["surrogate-key", "cache-tag"] {
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
pub const FORMAT_VERSION: u8 = 1;

/// Everything but the body, in postcard. The body follows raw: it is most of the bytes
/// and needs no framing beyond "the rest".
#[derive(serde::Serialize)]
struct WireHead<'a> {
    status: u16,
    headers: Vec<(&'a str, &'a [u8])>,
    policy: &'a CachePolicy,
    /// Times as (seconds, nanoseconds) since the epoch: full precision, so "stored after"
    /// comparisons between replicas see the same order as in memory.
    stored_at: (u64, u32),
    fresh_until: (u64, u32),
    stale_until: (u64, u32),
    error_until: (u64, u32),
    vary: Vec<(&'a str, Option<&'a str>)>,
    tags: &'a [String],
    /// Lets `decode` tell a truncated value from a short body.
    body_len: u64,
}

#[derive(serde::Deserialize)]
struct WireHeadOwned {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    policy: CachePolicy,
    stored_at: (u64, u32),
    fresh_until: (u64, u32),
    stale_until: (u64, u32),
    error_until: (u64, u32),
    vary: Vec<(String, Option<String>)>,
    tags: Vec<String>,
    body_len: u64,
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
        policy: &entry.policy,
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
    Some(CacheEntry {
        status: StatusCode::from_u16(head.status).ok()?,
        headers,
        body: Bytes::copy_from_slice(body),
        policy: head.policy,
        stored_at: from_wire_time(head.stored_at)?,
        fresh_until: from_wire_time(head.fresh_until)?,
        stale_until: from_wire_time(head.stale_until)?,
        error_until: from_wire_time(head.error_until)?,
        vary,
        tags: head.tags,
    })
}

#[cfg(test)]
mod encoding_tests {
    use super::*;

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
            policy,
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
        assert_eq!(d.policy.age(now), e.policy.age(now));
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
