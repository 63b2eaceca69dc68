//! A stored response with its soft and hard deadlines. The only module that defines
//! stored bytes (see `encode`/`decode`).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, ETAG, LAST_MODIFIED};
use http::{HeaderMap, HeaderName, StatusCode};
use http_cache_semantics::CachePolicy;

use super::policy::Lifetimes;

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

    /// When the store may drop the entry: nothing can use it after this.
    pub fn keep_until(&self) -> SystemTime {
        self.stale_until.max(self.error_until).max(self.fresh_until)
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
/// repeated lines comma-joined, whitespace around elements dropped, and
/// `Accept-Encoding` reduced to the one coding cachegate would pick.
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
    Some(joined)
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
