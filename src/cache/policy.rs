//! Pure storage and freshness decisions: a function of the route, the exchange and
//! `now`, so table tests cover them without I/O or sleeping. RFC 9111 parsing and
//! freshness come from `http-cache-semantics`; this adds what it lacks: the soft/hard
//! windows of a route, stale-while-revalidate and stale-if-error (RFC 5861).

use std::time::{Duration, SystemTime};

use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, DATE, ETAG, EXPIRES, LAST_MODIFIED, SET_COOKIE, VARY,
};
use http::{HeaderMap, HeaderName, StatusCode};
use http_cache_semantics::{CacheOptions, CachePolicy};

pub use super::entry::Lifetimes;
use super::status::Detail;

/// What a route says about caching, validated from `routes.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    /// Soft TTL when the origin gives no freshness. Zero: the route adds none.
    pub ttl: Duration,
    /// Soft TTL of a 404 or 410 when the origin gives no freshness (instead of `ttl`), so
    /// a missing id is not remembered as long as a found one. Zero: not stored unless the
    /// origin gives freshness.
    pub negative_ttl: Duration,
    /// XFetch's beta (`early_refresh: { beta }`): a hit on a fresh entry refreshes it once
    /// it is within a random horizon of its expiry (`refresh_early`). None: off.
    pub early_refresh: Option<f64>,
    /// Window after the soft TTL in which a stale copy is served while one refresh runs.
    pub stale: Duration,
    /// Window after the soft TTL in which a stale copy answers an origin failure.
    pub stale_if_error: Duration,
    /// Spread of soft TTLs (0.1 = ±10%).
    pub jitter: f64,
    /// Use `ttl` even when the origin gives freshness.
    pub override_origin: bool,
    /// Store responses carrying `Set-Cookie` (the cookie is stored with them).
    pub cache_set_cookie: bool,
    /// Larger bodies pass through uncached.
    pub max_body: usize,
    /// What a client's `no-cache` does.
    pub client_no_cache: ClientNoCache,
    /// Request headers the route honours in `Vary`; a response varying on another is
    /// not stored (instead of exploding the key space). `None`: any.
    pub vary_allow: Option<Vec<HeaderName>>,
    /// Names this cache answers to in targeted fields (RFC 9213).
    pub targets: Targets,
}

/// The names this cache answers to in targeted fields (RFC 9213): `NAME-Cache-Control`
/// and `Surrogate-Control` directives suffixed `;NAME`. Built once at config load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    names: Vec<String>,
    /// `NAME-Cache-Control` for each name, then `CDN-Cache-Control`: most specific first.
    fields: Vec<HeaderName>,
}

impl Targets {
    pub fn new(names: &[String]) -> Result<Self, String> {
        let mut fields = Vec::new();
        for name in names {
            let field = format!("{}-cache-control", name.to_ascii_lowercase());
            fields.push(
                HeaderName::try_from(field)
                    .map_err(|_| format!("{name:?} cannot name a header field"))?,
            );
        }
        fields.push(HeaderName::from_static("cdn-cache-control"));
        Ok(Targets {
            names: names.to_vec(),
            fields,
        })
    }

    /// The targeted fields, most specific first.
    pub fn fields(&self) -> &[HeaderName] {
        &self.fields
    }

    /// The `NAME-Cache-Control` fields addressed to this cache alone: consumed here,
    /// never sent downstream. `CDN-Cache-Control` is not among them, since another CDN may
    /// sit in front of cachegate and read it too.
    pub fn own_fields(&self) -> &[HeaderName] {
        &self.fields[..self.fields.len() - 1]
    }
}

impl Default for Targets {
    fn default() -> Self {
        Targets::new(&["cachegate".to_string()]).expect("a valid default name")
    }
}

impl Default for RoutePolicy {
    fn default() -> Self {
        RoutePolicy {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            early_refresh: None,
            stale: Duration::from_secs(300),
            stale_if_error: Duration::from_secs(3600),
            jitter: 0.1,
            override_origin: false,
            cache_set_cookie: false,
            max_body: 8 << 20,
            client_no_cache: ClientNoCache::Revalidate,
            vary_allow: None,
            targets: Targets::default(),
        }
    }
}

/// The response headers as this cache must read them: the most specific targeted field
/// (RFC 9213) that parses, or `Surrogate-Control` directives for this cache, replaces
/// `Cache-Control`. Downstream still gets the original `Cache-Control`.
pub fn effective_headers<'a>(
    headers: &'a HeaderMap,
    targets: &Targets,
) -> std::borrow::Cow<'a, HeaderMap> {
    use std::borrow::Cow;
    for field in &targets.fields {
        if !headers.contains_key(field) {
            continue;
        }
        // A field that is not a valid Dictionary is ignored as a whole (RFC 9213 §2.1):
        // the next, less specific one applies, and in the end `Cache-Control`.
        let Some(value) = targeted_cache_control(headers.get_all(field)) else {
            continue;
        };
        let mut h = headers.clone();
        h.remove(CACHE_CONTROL);
        h.remove(EXPIRES);
        if !value.is_empty() {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                h.insert(CACHE_CONTROL, v);
            }
        }
        return Cow::Owned(h);
    }
    let surrogate: Vec<String> = directives(headers.get_all("surrogate-control"))
        .into_iter()
        .filter_map(|(name, arg)| {
            // `max-age=60;cachegate` targets one cache; no suffix targets all.
            let joined = match arg {
                Some(a) => format!("{name}={a}"),
                None => name,
            };
            match joined.split_once(';') {
                Some((d, target)) => targets
                    .names
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(target.trim()))
                    .then(|| d.to_string()),
                None => Some(joined),
            }
        })
        .collect();
    if surrogate.is_empty() {
        return Cow::Borrowed(headers);
    }
    let mut h = headers.clone();
    h.remove(CACHE_CONTROL);
    h.remove(EXPIRES);
    if let Ok(v) = http::HeaderValue::from_str(&surrogate.join(", ")) {
        h.insert(CACHE_CONTROL, v);
    }
    Cow::Owned(h)
}

/// A targeted field (`CDN-Cache-Control`, `NAME-Cache-Control`) read as the RFC 8941
/// Dictionary it is (RFC 9213 §2.1) and written back as the `Cache-Control` value it
/// stands for. `None` when the field fails to parse, is empty, or gives a directive this
/// cache knows a value of the wrong type (`max-age="60"`, `max-age=1.5`, `no-store=5`):
/// then the whole field is ignored. Parameters are ignored; unknown directives dropped.
fn targeted_cache_control<'a>(
    values: impl IntoIterator<Item = &'a http::HeaderValue>,
) -> Option<String> {
    use sfv::{BareItem, ListEntry};
    let mut lines = Vec::new();
    for v in values {
        lines.push(v.to_str().ok()?);
    }
    let dict: sfv::Dictionary = sfv::Parser::new(&lines.join(", "))
        .with_version(sfv::Version::Rfc8941)
        .parse()
        .ok()?;
    if dict.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(dict.len());
    for (key, member) in &dict {
        let name = key.as_str();
        let bare = match member {
            ListEntry::Item(item) => Some(&item.bare_item),
            ListEntry::InnerList(_) => None,
        };
        match name {
            "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error" => {
                let secs = bare
                    .and_then(BareItem::as_integer)
                    .and_then(|n| u64::try_from(n).ok())?;
                out.push(format!("{name}={secs}"));
            }
            "no-cache" | "private" => match member {
                ListEntry::Item(item) => match &item.bare_item {
                    BareItem::Boolean(true) => out.push(name.to_string()),
                    BareItem::String(fields) => out.push(format!("{name}=\"{}\"", fields.as_str())),
                    _ => return None,
                },
                // `private=("set-cookie" "x-user")`: the fields a list names.
                ListEntry::InnerList(list) => {
                    let mut fields = Vec::with_capacity(list.items.len());
                    for item in &list.items {
                        match &item.bare_item {
                            BareItem::String(f) => fields.push(f.as_str().to_string()),
                            BareItem::Token(f) => fields.push(f.as_str().to_string()),
                            _ => return None,
                        }
                    }
                    out.push(format!("{name}=\"{}\"", fields.join(", ")));
                }
            },
            "no-store" | "must-revalidate" | "proxy-revalidate" | "public" | "immutable"
            | "no-transform" | "must-understand" => {
                if bare.and_then(BareItem::as_boolean) != Some(true) {
                    return None;
                }
                out.push(name.to_string());
            }
            _ => {}
        }
    }
    Some(out.join(", "))
}

/// The Cache-Control directives a shared cache acts on. Only what the
/// `http-cache-semantics` crate does not expose is read here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// Fields named by `private="..."` and `no-cache="..."`: stored without them.
    pub strip_fields: Vec<String>,
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub max_age: bool,
    pub s_maxage: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl Directives {
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut d = Directives::default();
        for (name, arg) in each_directive(headers.get_all(CACHE_CONTROL)) {
            let secs = || arg.and_then(|a| a.parse::<u64>().ok());
            let fields = |d: &mut Directives| {
                if let Some(list) = arg {
                    d.strip_fields.extend(
                        list.split(',')
                            .map(|f| f.trim().to_ascii_lowercase())
                            .filter(|f| !f.is_empty()),
                    );
                }
            };
            match &*lower(name) {
                "no-store" => d.no_store = true,
                // The qualified forms only strip the named fields (RFC 9111 §5.2.2.4, §5.2.2.7).
                "no-cache" if arg.is_some() => fields(&mut d),
                "no-cache" => d.no_cache = true,
                "private" if arg.is_some() => fields(&mut d),
                "private" => d.private = true,
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "max-age" => d.max_age = true,
                "s-maxage" => d.s_maxage = true,
                "stale-while-revalidate" => d.stale_while_revalidate = secs(),
                "stale-if-error" => d.stale_if_error = secs(),
                _ => {}
            }
        }
        d
    }

    /// Stale copies must not be served at all (RFC 9111 §5.2.2.2, §5.2.2.8).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.no_cache
    }

    /// Only the origin's own `stale-while-revalidate` / `stale-if-error` may let a stale
    /// copy be served; the route's windows and a client's `max-stale` may not. Also true
    /// for `s-maxage`, which carries `proxy-revalidate` for a shared cache (§5.2.2.10).
    pub fn stale_needs_origin_consent(&self) -> bool {
        self.forbids_stale() || self.s_maxage
    }
}

/// Cache-Control directives as (lower-cased name, unquoted argument), splitting on commas
/// outside quoted strings (`private="a, b"` is one directive).
pub fn directives<'a>(
    values: impl IntoIterator<Item = &'a http::HeaderValue>,
) -> Vec<(String, Option<String>)> {
    each_directive(values)
        .map(|(name, arg)| (name.to_ascii_lowercase(), arg.map(str::to_string)))
        .collect()
}

/// `directives` without allocating: (name as written, unquoted argument). Names are
/// case-insensitive (RFC 9111 §5.2); `lower` spells one for a `match`.
pub fn each_directive<'a>(
    values: impl IntoIterator<Item = &'a http::HeaderValue>,
) -> impl Iterator<Item = (&'a str, Option<&'a str>)> {
    values
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|value| Members { rest: Some(value) })
        .filter_map(|part| {
            let part = part.trim();
            if part.is_empty() {
                return None;
            }
            Some(match part.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (part, None),
            })
        })
}

/// The comma-separated members of one field value, commas inside quotes included in
/// their member.
struct Members<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Members<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let value = self.rest?;
        let mut quoted = false;
        for (i, b) in value.bytes().enumerate() {
            match b {
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    self.rest = Some(&value[i + 1..]);
                    return Some(&value[..i]);
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(value)
    }
}

/// `name` lower-cased, borrowed unless it had upper-case letters.
fn lower(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// Request directives cachegate acts on (RFC 9111 §5.2.1), with `Pragma: no-cache`
/// standing in for `no-cache` when there is no Cache-Control (§5.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    pub no_cache: bool,
    pub no_store: bool,
    pub only_if_cached: bool,
    pub max_age: Option<u64>,
    /// `max-stale` without a value accepts any staleness: `u64::MAX`.
    pub max_stale: Option<u64>,
    pub min_fresh: Option<u64>,
}

impl RequestDirectives {
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut d = RequestDirectives::default();
        let mut list = each_directive(headers.get_all(CACHE_CONTROL)).peekable();
        if list.peek().is_none() {
            d.no_cache = headers.get_all(http::header::PRAGMA).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.to_ascii_lowercase().contains("no-cache"))
            });
        }
        for (name, arg) in list {
            let secs = arg.and_then(|a| a.parse::<u64>().ok());
            match &*lower(name) {
                "no-cache" => d.no_cache = true,
                "no-store" => d.no_store = true,
                "only-if-cached" => d.only_if_cached = true,
                // An invalid value is treated as 0: the strictest reading.
                "max-age" => d.max_age = Some(secs.unwrap_or(0)),
                "max-stale" => {
                    d.max_stale = Some(if arg.is_none() {
                        u64::MAX
                    } else {
                        secs.unwrap_or(0)
                    })
                }
                "min-fresh" => d.min_fresh = Some(secs.unwrap_or(0)),
                _ => {}
            }
        }
        d
    }
}

/// What a client's `no-cache` does on a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientNoCache {
    /// Revalidate through the coalesced path: one origin request however many clients ask.
    #[default]
    Revalidate,
    /// Answer from the cache as if the client had not asked.
    Ignore,
}

/// How a stored response may answer one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Serve it.
    Fresh,
    /// Serve it stale at once; a background refresh brings a new one.
    Stale,
    /// Ask the origin first (through the single flight).
    Revalidate,
}

/// Decides whether `entry` may answer a request with directives `req`, at `now`.
pub fn reuse(
    entry: &super::CacheEntry,
    req: &RequestDirectives,
    route: &RoutePolicy,
    now: SystemTime,
) -> Reuse {
    use super::entry::Freshness;
    let honour = route.client_no_cache == ClientNoCache::Revalidate;
    if honour && req.no_cache {
        return Reuse::Revalidate;
    }
    // Age is parsed only when the request bounds it: a plain hit computes it once, for
    // the response.
    let ttl = entry.ttl_secs(now);
    if honour
        && req
            .max_age
            .is_some_and(|max| entry.age(now).as_secs() > max)
    {
        return Reuse::Revalidate;
    }
    if req.min_fresh.is_some_and(|min| ttl < min as i64) {
        return Reuse::Revalidate;
    }
    match entry.freshness(now) {
        Freshness::Fresh => Reuse::Fresh,
        Freshness::Stale => Reuse::Stale,
        Freshness::ErrorOnly | Freshness::Expired => {
            // A client that accepts this much staleness may have it, unless the origin
            // forbade serving stale.
            let staleness = (-ttl).max(0) as u64;
            let accepted = req.max_stale.is_some_and(|max| staleness <= max);
            if accepted
                && !Directives::parse(&effective_headers(&entry.headers, &route.targets))
                    .stale_needs_origin_consent()
            {
                Reuse::Stale
            } else {
                Reuse::Revalidate
            }
        }
    }
}

/// The decision on one origin response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storability {
    Store(Lifetimes),
    DoNotStore(Detail),
}

/// The inputs of one decision, borrowed from the exchange.
pub struct Exchange<'a> {
    pub request_headers: &'a HeaderMap,
    pub status: StatusCode,
    pub response_headers: &'a HeaderMap,
}

/// Options for the `http-cache-semantics` policy: a shared cache.
pub fn cache_options() -> CacheOptions {
    CacheOptions {
        shared: true,
        ..CacheOptions::default()
    }
}

/// The response as `http-cache-semantics` should read it, correcting the places where
/// it reads a response otherwise than RFC 9111 for a shared cache:
/// - `private="f"` / `no-cache="f"` only strip fields (cachegate strips them), yet the
///   crate reads them as unqualified;
/// - `proxy-revalidate` forbids stale reuse but not fresh reuse (§5.2.2.8), yet the
///   crate gives it no freshness: read it as `must-revalidate`;
/// - directive names are case-insensitive (§5.2), yet the crate matches them exactly:
///   they are lower-cased;
/// - `Age` is the first member if it is a non-negative integer, and ignored otherwise
///   (§5.1; the crate would read `+5` as 5 and `10, 20` as nothing);
/// - `Expires`, `Date` and `Last-Modified` are one of the three formats of RFC 9110
///   §5.6.7 (the crate reads RFC 2822 instead, which admits other forms and refuses RFC
///   850 and asctime): valid ones are handed over as IMF-fixdate, an invalid `Expires`
///   as `0` (already expired, §5.3), an invalid `Date` or `Last-Modified` not at all;
/// - a status the crate does not know (e.g. 500, 403) with explicit freshness may be
///   stored (§3), yet the crate refuses: it reads it as a 200 for freshness only.
///
/// `cc` is `Directives::parse(effective)`, parsed once by the caller.
pub fn library_response<'a>(
    status: StatusCode,
    effective: &'a HeaderMap,
    cc: &Directives,
) -> LibraryView<'a> {
    let cc_lines = effective.get_all(CACHE_CONTROL);
    let cc_rewrite = cc_lines
        .iter()
        .any(|v| v.as_bytes().iter().any(u8::is_ascii_uppercase))
        || each_directive(cc_lines.iter()).any(|(name, arg)| {
            name == "proxy-revalidate"
                || (arg.is_some() && (name == "private" || name == "no-cache"))
        });
    let mut fixes: Vec<(HeaderName, Option<http::HeaderValue>)> = Vec::new();
    if let Some(age) = effective.get(AGE) {
        if let Some(fixed) = library_age(age) {
            fixes.push((AGE, fixed));
        }
    }
    for name in [EXPIRES, DATE, LAST_MODIFIED] {
        let Some(value) = effective.get(&name) else {
            continue;
        };
        let raw = value.to_str().unwrap_or("");
        match httpdate::parse_http_date(raw) {
            // Only IMF-fixdate is 29 characters long among the three formats.
            Ok(_) if raw.len() == 29 => {}
            Ok(t) => fixes.push((
                name,
                http::HeaderValue::from_str(&httpdate::fmt_http_date(t)).ok(),
            )),
            Err(_) if name == EXPIRES => {
                fixes.push((name, Some(http::HeaderValue::from_static("0"))))
            }
            Err(_) => fixes.push((name, None)),
        }
    }
    let headers = if cc_rewrite || !fixes.is_empty() {
        let mut headers = effective.clone();
        if cc_rewrite {
            let list = directives(cc_lines.iter());
            let rewritten: Vec<String> = list
                .iter()
                .filter(|(name, arg)| !(arg.is_some() && (name == "private" || name == "no-cache")))
                .map(|(name, arg)| match (name.as_str(), arg) {
                    ("proxy-revalidate", _) => "must-revalidate".to_string(),
                    (_, Some(a)) if a.bytes().all(is_tchar) => format!("{name}={a}"),
                    (_, Some(a)) => format!("{name}=\"{}\"", a.replace(['"', '\\'], "")),
                    (_, None) => name.clone(),
                })
                .collect();
            headers.remove(CACHE_CONTROL);
            if let Ok(v) = http::HeaderValue::from_str(&rewritten.join(", ")) {
                headers.insert(CACHE_CONTROL, v);
            }
        }
        for (name, value) in fixes {
            match value {
                Some(v) => headers.insert(name, v),
                None => headers.remove(name),
            };
        }
        std::borrow::Cow::Owned(headers)
    } else {
        std::borrow::Cow::Borrowed(effective)
    };
    let understood = matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 404 | 405 | 410 | 414 | 501
    );
    let status = if understood || status == StatusCode::PARTIAL_CONTENT {
        status
    } else {
        // The rewrite above changes neither `max-age`/`s-maxage` nor whether there is
        // an `Expires`.
        let explicit = cc.s_maxage || cc.max_age || headers.contains_key(EXPIRES);
        if explicit {
            StatusCode::OK
        } else {
            status
        }
    };
    LibraryView { status, headers }
}

/// The `Age` the crate should see, when it differs from `value`: `Some(None)` to drop an
/// invalid one. Ages past 2^31 s are capped there (RFC 9111 §1.2.2) rather than dropped.
fn library_age(value: &http::HeaderValue) -> Option<Option<http::HeaderValue>> {
    let raw = value.to_str().ok();
    let first = raw.and_then(|v| v.split(',').next()).map(str::trim);
    match first {
        Some(d) if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) => {
            if d.parse::<u64>().is_err() {
                Some(Some(http::HeaderValue::from_static("2147483648")))
            } else if Some(d) == raw {
                None
            } else {
                http::HeaderValue::from_str(d).ok().map(Some)
            }
        }
        _ => Some(None),
    }
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A response as handed to `http-cache-semantics`; borrows unless it had to be rewritten.
pub struct LibraryView<'a> {
    status: StatusCode,
    headers: std::borrow::Cow<'a, HeaderMap>,
}

impl http_cache_semantics::ResponseLike for LibraryView<'_> {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

/// One origin response read once for this cache.
#[derive(Debug)]
pub struct Evaluation {
    pub storability: Storability,
    /// The response's age when it arrived (RFC 9111 §4.2.3), what the entry keeps.
    pub initial_age: Duration,
    /// Fields named by `private="..."` and `no-cache="..."`: kept out of the stored copy.
    pub strip_fields: Vec<String>,
}

/// Reads a response as this cache must (targeted fields first, RFC 9213), its
/// `Cache-Control` parsed once, and decides whether and how long to keep it. `request`
/// is the request as the cache sees it (the canonical request plus the client's cache
/// directives); `jitter_sample` is in `[-1, 1]`, drawn by the caller.
pub fn evaluate(
    route: &RoutePolicy,
    request: &http::request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
    jitter_sample: f64,
) -> Evaluation {
    let effective = effective_headers(headers, &route.targets);
    let cc = Directives::parse(&effective);
    let response = library_response(status, &effective, &cc);
    let policy = CachePolicy::new_options(request, &response, now, cache_options());
    let exchange = Exchange {
        request_headers: &request.headers,
        status,
        response_headers: &effective,
    };
    let storability = decide(route, &policy, &exchange, &cc, now, jitter_sample);
    Evaluation {
        storability,
        initial_age: policy.age(now),
        strip_fields: cc.strip_fields,
    }
}

/// Decides whether and for how long a response may be stored. `cc` is
/// `Directives::parse(ex.response_headers)`.
///
/// `jitter_sample` is a number in `[-1, 1]` drawn by the caller, so this stays pure.
pub fn decide(
    route: &RoutePolicy,
    policy: &CachePolicy,
    ex: &Exchange<'_>,
    cc: &Directives,
    now: SystemTime,
    jitter_sample: f64,
) -> Storability {
    use Storability::DoNotStore;
    let status = ex.status.as_u16();
    if status == 206 {
        return DoNotStore(Detail::Partial);
    }
    if cc.no_store || Directives::parse(ex.request_headers).no_store {
        return DoNotStore(Detail::NoStore);
    }
    if cc.private {
        return DoNotStore(Detail::Private);
    }
    if ex.request_headers.contains_key(AUTHORIZATION)
        && !(cc.public || cc.s_maxage || cc.must_revalidate)
    {
        return DoNotStore(Detail::Authorization);
    }
    if ex.response_headers.contains_key(SET_COOKIE) && !route.cache_set_cookie {
        return DoNotStore(Detail::SetCookie);
    }
    match vary_names(ex.response_headers) {
        None => return DoNotStore(Detail::VaryStar),
        Some(names) => {
            if let Some(allow) = &route.vary_allow {
                if names.iter().any(|n| !allow.iter().any(|a| a.as_str() == n)) {
                    return DoNotStore(Detail::VaryNotAllowed);
                }
            }
        }
    }
    let explicit = cc.s_maxage || cc.max_age || ex.response_headers.contains_key(EXPIRES);
    if !cacheable_by_default(status) && !explicit {
        return DoNotStore(Detail::UncacheableStatus);
    }
    if !policy.is_storable() {
        return DoNotStore(Detail::UncacheableStatus);
    }

    // Soft TTL: the origin's word when it gave one, the route's otherwise.
    let fresh = if cc.no_cache {
        Duration::ZERO
    } else if explicit && !route.override_origin {
        // Downward only: jitter never extends what the origin allowed.
        scale(
            policy.time_to_live(now),
            -route.jitter * jitter_sample.abs(),
        )
    } else if matches!(status, 404 | 410) {
        // A missing resource is remembered briefly: it may be created any moment.
        scale(route.negative_ttl, route.jitter * jitter_sample)
    } else if route.ttl > Duration::ZERO {
        scale(route.ttl, route.jitter * jitter_sample)
    } else {
        // `ttl: 0s`: only heuristic freshness the origin's headers allow (Last-Modified).
        policy.time_to_live(now)
    };

    let origin_swr = Duration::from_secs(cc.stale_while_revalidate.unwrap_or(0));
    let origin_sie = Duration::from_secs(cc.stale_if_error.unwrap_or(0));
    let (stale, stale_if_error) = if cc.forbids_stale() {
        (Duration::ZERO, Duration::ZERO)
    } else if fresh.is_zero() || cc.stale_needs_origin_consent() {
        // The route's windows extend freshness the entry had, never create it; and
        // `s-maxage` (proxy-revalidate) leaves stale reuse to the origin's own word.
        (origin_swr, origin_sie)
    } else {
        (
            route.stale.max(origin_swr),
            route.stale_if_error.max(origin_sie),
        )
    };

    let has_validators =
        ex.response_headers.contains_key(ETAG) || ex.response_headers.contains_key(LAST_MODIFIED);
    let lifetimes = Lifetimes {
        fresh,
        stale,
        stale_if_error,
    };
    if lifetimes.keep().is_zero() && !(cc.no_cache && has_validators) {
        return DoNotStore(Detail::NoFreshness);
    }
    Storability::Store(lifetimes)
}

/// XFetch (Vattani, Chierichetti and Lowenstein, "Optimal Probabilistic Cache Stampede
/// Prevention", VLDB 2015): whether a hit on a fresh entry refreshes it now. `delta` is
/// what fetching it cost, `left` its remaining freshness, `sample` uniform in (0, 1]
/// (drawn once per stored entry by the caller, so one entry is refreshed early once).
/// Refreshes when `delta * (1 + beta * -ln(sample)) >= left`: XFetch's random horizon
/// plus one fetch time, so the new copy lands before the old one goes stale even when
/// the horizon drawn is short; almost never while much time is left, and earlier for
/// entries that are slow to fetch.
pub fn refresh_early(delta: Duration, left: Duration, beta: f64, sample: f64) -> bool {
    if delta.is_zero() || beta <= 0.0 {
        return false;
    }
    let sample = sample.clamp(f64::MIN_POSITIVE, 1.0);
    delta.as_secs_f64() * (1.0 + beta * -sample.ln()) >= left.as_secs_f64()
}

fn scale(d: Duration, by: f64) -> Duration {
    d.mul_f64((1.0 + by).max(0.0))
}

/// RFC 9110 §15.1: statuses heuristically cacheable (cacheable without explicit freshness).
pub fn cacheable_by_default(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Lower-cased field names listed in `Vary`, all lines combined; `None` for `Vary: *`.
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for value in headers.get_all(VARY) {
        let value = value.to_str().unwrap_or("*");
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            let name = name.to_ascii_lowercase();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};

    fn route() -> RoutePolicy {
        RoutePolicy {
            ttl: Duration::from_secs(30),
            stale: Duration::from_secs(120),
            stale_if_error: Duration::from_secs(3600),
            jitter: 0.0,
            ..RoutePolicy::default()
        }
    }

    /// Runs `decide` on a GET with `req` headers answered by `status` with `res` headers.
    fn check(
        route: &RoutePolicy,
        req: &[(&str, &str)],
        status: u16,
        res: &[(&str, &str)],
    ) -> Storability {
        check_jittered(route, req, status, res, 0.0)
    }

    fn check_jittered(
        route: &RoutePolicy,
        req: &[(&str, &str)],
        status: u16,
        res: &[(&str, &str)],
        jitter_sample: f64,
    ) -> Storability {
        let mut rq = Request::get("http://origin/x");
        for (k, v) in req {
            rq = rq.header(*k, *v);
        }
        let rq = rq.body(()).unwrap();
        let mut rs = Response::builder().status(status);
        for (k, v) in res {
            rs = rs.header(*k, *v);
        }
        let rs = rs.body(()).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (rq, _) = rq.into_parts();
        evaluate(route, &rq, rs.status(), rs.headers(), now, jitter_sample).storability
    }

    #[test]
    fn jitter_spreads_route_ttls_both_ways_and_only_shortens_origin_ttls() {
        let r = RoutePolicy {
            jitter: 0.1,
            ..route()
        };
        let fresh = |s: Storability| match s {
            Storability::Store(l) => l.fresh,
            other => panic!("{other:?}"),
        };
        let cc = [("cache-control", "max-age=100")];
        assert_eq!(
            fresh(check_jittered(&r, &[], 200, &[], 1.0)),
            Duration::from_secs(33)
        );
        assert_eq!(
            fresh(check_jittered(&r, &[], 200, &[], -1.0)),
            Duration::from_secs(27)
        );
        assert_eq!(
            fresh(check_jittered(&r, &[], 200, &cc, 1.0)),
            Duration::from_secs(90)
        );
        assert_eq!(
            fresh(check_jittered(&r, &[], 200, &cc, -1.0)),
            Duration::from_secs(90)
        );
        assert_eq!(
            fresh(check_jittered(&r, &[], 200, &cc, 0.0)),
            Duration::from_secs(100)
        );
    }

    fn store(fresh: u64, stale: u64, sie: u64) -> Storability {
        Storability::Store(Lifetimes {
            fresh: Duration::from_secs(fresh),
            stale: Duration::from_secs(stale),
            stale_if_error: Duration::from_secs(sie),
        })
    }

    #[test]
    fn refuses_what_must_not_be_shared() {
        let r = route();
        use Storability::DoNotStore;
        assert_eq!(
            check(&r, &[], 200, &[("cache-control", "no-store")]),
            DoNotStore(Detail::NoStore)
        );
        assert_eq!(
            check(&r, &[], 200, &[("cache-control", "private, max-age=60")]),
            DoNotStore(Detail::Private)
        );
        assert_eq!(
            check(&r, &[], 200, &[("set-cookie", "a=b")]),
            DoNotStore(Detail::SetCookie)
        );
        assert_eq!(
            check(&r, &[("authorization", "Bearer x")], 200, &[]),
            DoNotStore(Detail::Authorization)
        );
        assert_eq!(
            check(&r, &[], 200, &[("vary", "accept, *")]),
            DoNotStore(Detail::VaryStar)
        );
        assert_eq!(
            check(&r, &[], 500, &[]),
            DoNotStore(Detail::UncacheableStatus)
        );
        assert_eq!(
            check(&r, &[], 206, &[("cache-control", "max-age=60")]),
            DoNotStore(Detail::Partial)
        );
        assert_eq!(
            check(&r, &[("cache-control", "no-store")], 200, &[]),
            DoNotStore(Detail::NoStore)
        );
    }

    #[test]
    fn authorization_is_shared_only_when_the_origin_says_so() {
        let r = route();
        let auth = [("authorization", "Bearer x")];
        assert_eq!(
            check(&r, &auth, 200, &[("cache-control", "public, max-age=10")]),
            store(10, 120, 3600)
        );
        assert_eq!(
            check(&r, &auth, 200, &[("cache-control", "s-maxage=10")]),
            store(10, 0, 0)
        );
    }

    #[test]
    fn set_cookie_is_stored_when_the_route_allows() {
        let r = RoutePolicy {
            cache_set_cookie: true,
            ..route()
        };
        assert_eq!(
            check(&r, &[], 200, &[("set-cookie", "a=b")]),
            store(30, 120, 3600)
        );
    }

    #[test]
    fn origin_freshness_wins_over_route_ttl() {
        let r = route();
        assert_eq!(check(&r, &[], 200, &[]), store(30, 120, 3600));
        assert_eq!(
            check(&r, &[], 200, &[("cache-control", "max-age=5")]),
            store(5, 120, 3600)
        );
        assert_eq!(
            check(&r, &[], 200, &[("cache-control", "max-age=5, s-maxage=7")]),
            store(7, 0, 0),
            "s-maxage: no route stale windows (proxy-revalidate)"
        );
        assert_eq!(
            check(
                &r,
                &[],
                200,
                &[("cache-control", "max-age=50"), ("age", "20")]
            ),
            store(30, 120, 3600)
        );
        let over = RoutePolicy {
            override_origin: true,
            ..route()
        };
        assert_eq!(
            check(&over, &[], 200, &[("cache-control", "max-age=5")]),
            store(30, 120, 3600)
        );
    }

    #[test]
    fn origin_windows_widen_route_windows() {
        let r = route();
        assert_eq!(
            check(
                &r,
                &[],
                200,
                &[(
                    "cache-control",
                    "max-age=5, stale-while-revalidate=600, stale-if-error=7200"
                )]
            ),
            store(5, 600, 7200)
        );
    }

    #[test]
    fn must_revalidate_and_no_cache_forbid_stale() {
        let r = route();
        assert_eq!(
            check(
                &r,
                &[],
                200,
                &[("cache-control", "max-age=5, must-revalidate")]
            ),
            store(5, 0, 0)
        );
        assert_eq!(
            check(
                &r,
                &[],
                200,
                &[("cache-control", "max-age=5, proxy-revalidate")]
            ),
            store(5, 0, 0)
        );
        assert_eq!(
            check(
                &r,
                &[],
                200,
                &[("cache-control", "no-cache"), ("etag", "\"v1\"")]
            ),
            store(0, 0, 0)
        );
    }

    #[test]
    fn zero_route_ttl_adds_no_freshness() {
        let r = RoutePolicy {
            ttl: Duration::ZERO,
            ..route()
        };
        assert_eq!(
            check(&r, &[], 200, &[]),
            Storability::DoNotStore(Detail::NoFreshness)
        );
        assert_eq!(
            check(&r, &[], 200, &[("cache-control", "max-age=9")]),
            store(9, 120, 3600)
        );
    }

    #[test]
    fn uncacheable_status_needs_explicit_freshness() {
        let r = route();
        assert_eq!(
            check(&r, &[], 302, &[("cache-control", "max-age=9")]),
            store(9, 120, 3600)
        );
        // A 404 is heuristically cacheable; without freshness it gets `negative_ttl`.
        assert_eq!(check(&r, &[], 404, &[]), store(10, 120, 3600));
    }

    #[test]
    fn vary_lines_combine_and_star_never_matches() {
        let mut h = HeaderMap::new();
        h.append(VARY, "Accept-Encoding, accept".parse().unwrap());
        h.append(VARY, "X-Tenant".parse().unwrap());
        assert_eq!(
            vary_names(&h),
            Some(vec![
                "accept-encoding".into(),
                "accept".into(),
                "x-tenant".into()
            ])
        );
        h.append(VARY, "*".parse().unwrap());
        assert_eq!(vary_names(&h), None);
    }

    #[test]
    fn s_maxage_leaves_stale_reuse_to_the_origin_s_own_directives() {
        let r = route();
        let cc = |v: &'static str| [("cache-control", v)];
        assert_eq!(check(&r, &[], 200, &cc("s-maxage=5")), store(5, 0, 0));
        assert_eq!(
            check(&r, &[], 200, &cc("s-maxage=5, stale-while-revalidate=30")),
            store(5, 30, 0)
        );
        assert_eq!(
            check(&r, &[], 200, &cc("s-maxage=5, stale-if-error=90")),
            store(5, 0, 90)
        );
        assert_eq!(
            check(
                &r,
                &[],
                200,
                &cc("s-maxage=5, must-revalidate, stale-if-error=90")
            ),
            store(5, 0, 0)
        );
        assert_eq!(check(&r, &[], 200, &cc("max-age=5")), store(5, 120, 3600));
    }

    #[test]
    fn directives_split_outside_quotes_and_skip_empty_members() {
        let v = [
            http::HeaderValue::from_static(r#"private="Set-Cookie, X-User",, MAX-AGE = 5"#),
            http::HeaderValue::from_static(" no-store ,stale-if-error=\"60\""),
        ];
        let borrowed: Vec<_> = each_directive(v.iter()).collect();
        assert_eq!(
            borrowed,
            [
                ("private", Some("Set-Cookie, X-User")),
                ("MAX-AGE", Some("5")),
                ("no-store", None),
                ("stale-if-error", Some("60")),
            ]
        );
        let owned = directives(v.iter());
        assert_eq!(owned[1], ("max-age".to_string(), Some("5".to_string())));
        let mut h = HeaderMap::new();
        for value in v {
            h.append(CACHE_CONTROL, value);
        }
        let d = Directives::parse(&h);
        assert_eq!(d.strip_fields, ["set-cookie", "x-user"]);
        assert!(d.max_age && d.no_store && !d.private);
        assert_eq!(d.stale_if_error, Some(60));
    }

    #[test]
    fn directive_names_are_read_in_any_case() {
        let r = route();
        let cc = |v: &'static str| [("cache-control", v)];
        assert_eq!(check(&r, &[], 200, &cc("MAX-AGE=9")), store(9, 120, 3600));
        assert_eq!(
            check(&r, &[], 200, &cc("S-MaxAge=7, max-age=3")),
            store(7, 0, 0)
        );
        assert_eq!(
            check(&r, &[], 200, &cc("No-Store")),
            Storability::DoNotStore(Detail::NoStore)
        );
    }

    #[test]
    fn the_library_sees_valid_ages_and_dates_only() {
        let view = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(HeaderName::try_from(*k).unwrap(), v.parse().unwrap());
            }
            let lib = library_response(StatusCode::OK, &h, &Directives::parse(&h));
            let seen = |n: &str| {
                http_cache_semantics::ResponseLike::headers(&lib)
                    .get(n)
                    .map(|v| v.to_str().unwrap().to_string())
            };
            (
                seen("age"),
                seen("expires"),
                seen("date"),
                seen("cache-control"),
            )
        };
        let age = |a: &str| view(&[("age", a)]).0;
        assert_eq!(age("10"), Some("10".into()));
        assert_eq!(age("10, 20"), Some("10".into()));
        assert_eq!(age("99999999999999999999"), Some("2147483648".into()));
        for bad in ["10s", "1.5", "-1", "+5", ""] {
            assert_eq!(age(bad), None, "{bad:?}");
        }
        let imf = "Sun, 06 Nov 1994 08:49:37 GMT";
        for same in [
            imf,
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(view(&[("expires", same)]).1.as_deref(), Some(imf), "{same}");
            assert_eq!(view(&[("date", same)]).2.as_deref(), Some(imf), "{same}");
        }
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 +0000",
            "06 Nov 1994 08:49:37 GMT",
            "soon",
        ] {
            assert_eq!(view(&[("expires", bad)]).1.as_deref(), Some("0"), "{bad}");
            assert_eq!(view(&[("date", bad)]).2, None, "{bad}");
        }
        assert_eq!(
            view(&[("cache-control", "MAX-AGE=5, Foo=\"A, b\"")])
                .3
                .as_deref(),
            Some("max-age=5, foo=\"A, b\"")
        );
    }

    #[test]
    fn targeted_fields_are_dictionaries() {
        let read = |v: &str| {
            let h: http::HeaderValue = v.parse().unwrap();
            targeted_cache_control([&h])
        };
        let some = |v: &str| Some(v.to_string());
        assert_eq!(read("max-age=60"), some("max-age=60"));
        assert_eq!(
            read("max-age=60;x=1, no-store"),
            some("max-age=60, no-store")
        );
        assert_eq!(
            read("private=(\"a\" b), no-cache=\"c\""),
            some("private=\"a, b\", no-cache=\"c\"")
        );
        assert_eq!(read("x-ext=?0, must-revalidate"), some("must-revalidate"));
        for bad in [
            "",
            "max-age=\"60\"",
            "max-age=1.5",
            "max-age=-1",
            "max-age",
            "MAX-AGE=5",
            "no-store=?0",
            "no-store=1",
            "private=5",
            "max-age=60,",
            "max-age=(1)",
        ] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn not_found_and_gone_get_the_negative_ttl_when_the_origin_gives_none() {
        let r = RoutePolicy {
            negative_ttl: Duration::from_secs(10),
            ..route()
        };
        for status in [404, 410] {
            match check(&r, &[], status, &[]) {
                Storability::Store(l) => assert_eq!(l.fresh, Duration::from_secs(10), "{status}"),
                other => panic!("{status}: {other:?}"),
            }
            // The origin's own freshness wins, as for any status.
            match check(&r, &[], status, &[("cache-control", "max-age=100")]) {
                Storability::Store(l) => assert_eq!(l.fresh, Duration::from_secs(100), "{status}"),
                other => panic!("{status}: {other:?}"),
            }
        }
        // Other statuses keep the route's ttl.
        for status in [200, 301, 405] {
            match check(&r, &[], status, &[]) {
                Storability::Store(l) => assert_eq!(l.fresh, Duration::from_secs(30), "{status}"),
                other => panic!("{status}: {other:?}"),
            }
        }
        let off = RoutePolicy {
            negative_ttl: Duration::ZERO,
            stale: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            ..route()
        };
        assert!(matches!(
            check(&off, &[], 404, &[]),
            Storability::DoNotStore(_)
        ));
    }

    #[test]
    fn early_refresh_grows_likelier_as_expiry_nears() {
        let delta = Duration::from_millis(100);
        let rate = |left_ms: u64| {
            let n = 10_000;
            (1..=n)
                .filter(|i| {
                    let sample = *i as f64 / n as f64;
                    refresh_early(delta, Duration::from_millis(left_ms), 1.0, sample)
                })
                .count() as f64
                / n as f64
        };
        // Within one fetch time of expiry always; before that P = exp(-(left - delta) / (delta * beta)).
        for (left, want) in [
            (0, 1.0),
            (100, 1.0),
            (200, (-1.0f64).exp()),
            (400, (-3.0f64).exp()),
        ] {
            assert!(
                (rate(left) - want).abs() < 0.01,
                "{left}ms: {} vs {want}",
                rate(left)
            );
        }
        assert!(rate(2000) < 0.001);
        // Without a measured fetch time, or with beta 0, never early.
        assert!(!refresh_early(Duration::ZERO, Duration::ZERO, 1.0, 0.5));
        assert!(!refresh_early(delta, Duration::ZERO, 0.0, 0.5));
        // A sample of 0 (outside the open interval) is read as the smallest positive one.
        assert!(refresh_early(delta, Duration::from_secs(1), 1.0, 0.0));
    }
}
