//! The canonical request, computed once per request: the one source of both the cache
//! key and the request sent upstream, so the two cannot disagree.
//!
//! The rule it enforces: two requests share a cache entry only if the origin would
//! receive the same request. Everything forwarded on the cache path is part of the key
//! (path, selected query, key headers, the negotiation headers a `Vary` can select),
//! set by cachegate (`X-Forwarded-*`, `Via`, validators), or removed. Pure: no I/O.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;

use crate::cache::entry::normalized;
use crate::config::Route;
use crate::error::ProxyError;

use super::key::{NamePattern, QuerySpec};

// === paths and queries ===

/// Where a byte may appear unencoded in a canonical component.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Component {
    Path,
    Query,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn allowed(b: u8, c: Component) -> bool {
    // RFC 3986 pchar (unreserved, sub-delims, ':' '@') plus '/'; a query also allows '?'.
    unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
        || (c == Component::Query && b == b'?')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One spelling per meaning: `%XX` of an unreserved character decoded, other escapes
/// with uppercase hex, bytes outside the component's set escaped. Reserved characters
/// (`%2F`, `%26`, `%3D`, `%5C`, `%00`, ...) are never decoded: they are data.
fn normalize_escapes(raw: &str, c: Component, out: &mut String) -> Result<(), ProxyError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(ProxyError::BadRequest(
                    "malformed percent-encoding in the URL",
                ));
            };
            let v = hi << 4 | lo;
            if unreserved(v) {
                out.push(v as char);
            } else {
                out.push('%');
                out.push(HEX[usize::from(hi)] as char);
                out.push(HEX[usize::from(lo)] as char);
            }
            i += 3;
        } else if allowed(b, c) {
            out.push(b as char);
            i += 1;
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
            i += 1;
        }
    }
    Ok(())
}

/// The canonical form of a request path, used for route matching, the key and the URL
/// sent upstream: escapes normalised, dot-segments removed (RFC 3986 §5.2.4; `..` above
/// the root is an error). Empty segments (`//`) are kept: they are not merged, and since
/// the key and the upstream URL both come from this form, they agree.
pub fn path(raw: &str) -> Result<String, ProxyError> {
    if !raw.starts_with('/') {
        // `OPTIONS *` and the like: no route matches them.
        return Ok(raw.to_string());
    }
    let mut escaped = String::with_capacity(raw.len());
    normalize_escapes(raw, Component::Path, &mut escaped)?;
    if !escaped.contains("/.") {
        return Ok(escaped);
    }
    let segments: Vec<&str> = escaped[1..].split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(ProxyError::BadRequest("the path climbs above the root"));
                }
            }
            s => {
                out.push(s);
                continue;
            }
        }
        // `/a/.` and `/a/b/..` name a directory: keep the trailing slash.
        if i == last {
            out.push("");
        }
    }
    Ok(format!("/{}", out.join("/")))
}

/// The query as the origin receives it on the cache path, and as the key holds it: the
/// pairs the route selects, each spelled canonically, sorted by name then value.
/// `None` when nothing is left. `;` is not a separator (the whole pair is data, so a
/// pair cannot hide another from the key), nor is `+` a space.
pub fn query(
    raw: Option<&str>,
    select: &QuerySpec,
    ignore: &[NamePattern],
) -> Result<Option<String>, ProxyError> {
    let Some(raw) = raw.filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    if matches!(select, QuerySpec::Only(names) if names.is_empty()) {
        return Ok(None);
    }
    let mut pairs: Vec<(String, Option<String>)> = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (n, v) = match pair.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (pair, None),
        };
        let mut name = String::with_capacity(n.len());
        normalize_escapes(n, Component::Query, &mut name)?;
        let keep = match select {
            QuerySpec::All => true,
            QuerySpec::Only(names) => names.binary_search(&name).is_ok(),
        } && !ignore.iter().any(|p| p.matches(&name));
        if !keep {
            continue;
        }
        let value = match v {
            Some(v) => {
                let mut value = String::with_capacity(v.len());
                normalize_escapes(v, Component::Query, &mut value)?;
                Some(value)
            }
            None => None,
        };
        pairs.push((name, value));
    }
    if pairs.is_empty() {
        return Ok(None);
    }
    pairs.sort();
    let mut out = String::with_capacity(raw.len());
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        if let Some(v) = value {
            out.push('=');
            out.push_str(v);
        }
    }
    Ok(Some(out))
}

/// A query parameter name as configured, in the spelling `query` compares against.
pub fn query_name(name: &str) -> Result<String, ProxyError> {
    let mut out = String::with_capacity(name.len());
    normalize_escapes(name, Component::Query, &mut out)?;
    Ok(out)
}

// === hosts and forwarding ===

/// Who asked, as the origin is told (`X-Forwarded-For`, `-Host`, `-Proto`). Computed from
/// the connection, and from a load balancer's headers only when it is a trusted proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarding {
    /// The validated, normalised host the client asked for (lowercase, default port
    /// dropped).
    pub host: Option<String>,
    /// The scheme the client used: `http` or `https`.
    pub proto: &'static str,
    /// The `X-Forwarded-For` value to send.
    pub for_chain: Option<String>,
}

/// What the proxy knows of where a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    /// The connection is TLS (the client really used https).
    pub tls: bool,
}

/// Which hosts this proxy answers for, and which peers may speak for clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgePolicy {
    /// `api.example.com` or `*.example.com` (any subdomain); empty: any host (each host
    /// then has its own entries).
    pub hosts: Vec<String>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl EdgePolicy {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    fn allows(&self, host: &str) -> bool {
        if self.hosts.is_empty() {
            return true;
        }
        let name = host_name(host);
        self.hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(suffix) => {
                name.len() > suffix.len() + 1
                    && name.ends_with(suffix)
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            }
            None => name == h,
        })
    }
}

/// The host without its port (`[::1]:8080` -> `[::1]`).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Request headers a client may send to speak for itself; replaced by the proxy's own.
pub const FORWARDING_HEADERS: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "front-end-https",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
];

/// Headers origin frameworks act on (rewriting the URL or the method) that no cache
/// keys; removed on cached routes unless the route names one in its key.
pub const OVERRIDE_HEADERS: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The last value of a (possibly repeated, comma-separated) header: what the nearest
/// proxy said.
fn last_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(name)
        .iter()
        .next_back()?
        .to_str()
        .ok()?
        .rsplit(',')
        .next()
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Validates and normalises the host a request names (its `:authority` or `Host`, or a
/// trusted proxy's `X-Forwarded-Host`) and computes the forwarding values. A host that
/// is not a valid authority is 400; one that `edge.hosts` does not list is 421.
pub fn forwarding(
    uri: &http::Uri,
    headers: &HeaderMap,
    peer: Peer,
    edge: &EdgePolicy,
) -> Result<Forwarding, ProxyError> {
    let trusted = peer.addr.is_some_and(|a| edge.trusts(a.ip()));
    let own_proto = if peer.tls { "https" } else { "http" };
    let proto = match trusted
        .then(|| last_value(headers, "x-forwarded-proto"))
        .flatten()
    {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        Some(p) if p.eq_ignore_ascii_case("http") => "http",
        _ => own_proto,
    };
    let forwarded_host = trusted
        .then(|| last_value(headers, "x-forwarded-host"))
        .flatten();
    let raw_host = match forwarded_host {
        Some(h) => Some(h),
        None => match uri.authority() {
            Some(a) => Some(a.as_str()),
            None => match headers.get(header::HOST) {
                Some(h) => Some(
                    h.to_str()
                        .map_err(|_| ProxyError::BadRequest("the Host header is not valid"))?,
                ),
                None => None,
            },
        },
    };
    let host = raw_host.map(|h| normalize_host(h, proto)).transpose()?;
    if !edge.hosts.is_empty() && !host.as_deref().is_some_and(|h| edge.allows(h)) {
        return Err(ProxyError::MisdirectedRequest);
    }
    let for_chain = peer.addr.map(|a| {
        let ip = a.ip().to_string();
        let previous: Vec<&str> = if trusted {
            headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        } else {
            Vec::new()
        };
        if previous.is_empty() {
            ip
        } else {
            format!("{}, {ip}", previous.join(", "))
        }
    });
    Ok(Forwarding {
        host,
        proto,
        for_chain,
    })
}

/// `API.Example.com:80` -> `api.example.com` (for http); no userinfo, a numeric port.
pub fn normalize_host(raw: &str, proto: &str) -> Result<String, ProxyError> {
    const BAD: ProxyError = ProxyError::BadRequest("the Host header is not a valid host");
    let authority: http::uri::Authority = raw.trim().parse().map_err(|_| BAD)?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(BAD);
    }
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty()
        || !host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':')
        })
    {
        return Err(BAD);
    }
    let default = if proto == "https" { 443 } else { 80 };
    // Read the port ourselves: `Authority` accepts (and `port()` hides) a non-numeric one.
    let text = authority.as_str();
    let after_host = &text[text.rfind(']').map_or(0, |i| i + 1)..];
    match after_host.rsplit_once(':').map(|(_, p)| p) {
        None | Some("") => Ok(host),
        Some(port) => match port.parse::<u16>() {
            Ok(p) if p == default => Ok(host),
            Ok(p) => Ok(format!("{host}:{p}")),
            Err(_) => Err(BAD),
        },
    }
}

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
pub fn honoured_vary(route: &Route) -> Vec<HeaderName> {
    match &route.policy.vary_allow {
        Some(names) => names
            .iter()
            .filter_map(|n| HeaderName::try_from(n.as_str()).ok())
            .collect(),
        None => NEGOTIATION_HEADERS.to_vec(),
    }
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
        if let Some(v) = normalized(client, name).and_then(|v| HeaderValue::try_from(v).ok()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let check = |raw: &str, want: Result<&str, ()>| {
            assert_eq!(path(raw).map_err(|_| ()), want.map(str::to_string), "{raw}")
        };
        check("/", Ok("/"));
        check("/a/b", Ok("/a/b"));
        check("/a/./b", Ok("/a/b"));
        check("/a/x/../b", Ok("/a/b"));
        check("/a/b/.", Ok("/a/b/"));
        check("/a/b/..", Ok("/a/"));
        check("/..", Err(()));
        check("/a/../..", Err(()));
        check("/a/%2e%2E/b", Ok("/b"));
        check("/files/a%2fb", Ok("/files/a%2Fb"));
        check("/files/a%2Fb", Ok("/files/a%2Fb"));
        check("/files/a%5cb%00", Ok("/files/a%5Cb%00"));
        check("/%7Euser/%41", Ok("/~user/A"));
        check("/a//b", Ok("/a//b"));
        check("/a|b{c}", Ok("/a%7Cb%7Bc%7D"));
        check("/bad%zz", Err(()));
        check("/bad%4", Err(()));
        check("*", Ok("*"));
    }

    #[test]
    fn queries() {
        let all = QuerySpec::All;
        let check = |raw: Option<&str>, sel: &QuerySpec, ignore: &[&str], want: Option<&str>| {
            let ignore: Vec<NamePattern> = ignore.iter().map(|p| NamePattern::new(p)).collect();
            assert_eq!(
                query(raw, sel, &ignore).unwrap().as_deref(),
                want,
                "{raw:?}"
            )
        };
        check(None, &all, &[], None);
        check(Some(""), &all, &[], None);
        check(Some("b=2&a=1"), &all, &[], Some("a=1&b=2"));
        check(Some("a=2&a=1"), &all, &[], Some("a=1&a=2"));
        check(Some("q=%7E&r=~"), &all, &[], Some("q=~&r=~"));
        check(Some("q=%2f"), &all, &[], Some("q=%2F"));
        check(Some("a=1%26b=2"), &all, &[], Some("a=1%26b=2"));
        check(Some("a=1;b=2"), &all, &[], Some("a=1;b=2"));
        check(Some("q=a+b"), &all, &[], Some("q=a+b"));
        check(Some("flag&flag="), &all, &[], Some("flag&flag="));
        check(
            Some("utm_source=x&fbclid=1&page=2"),
            &all,
            &["utm_*", "fbclid"],
            Some("page=2"),
        );
        let only = QuerySpec::Only(vec!["a".into(), "fields".into()]);
        check(Some("fields=x&utm=1&a=2"), &only, &[], Some("a=2&fields=x"));
        check(Some("utm=x;a=evil&a=good"), &only, &[], Some("a=good"));
        check(Some("fi%65lds=x"), &only, &[], Some("fields=x"));
        check(Some("a=1"), &QuerySpec::Only(vec![]), &[], None);
        assert!(query(Some("a=%"), &all, &[]).is_err());
    }

    #[test]
    fn hosts() {
        let check = |raw: &str, proto: &str, want: Result<&str, ()>| {
            assert_eq!(
                normalize_host(raw, proto).map_err(|_| ()),
                want.map(str::to_string),
                "{raw}"
            )
        };
        check("API.Example.com", "http", Ok("api.example.com"));
        check("api.example.com:80", "http", Ok("api.example.com"));
        check("api.example.com:443", "http", Ok("api.example.com:443"));
        check("api.example.com:443", "https", Ok("api.example.com"));
        check("api.example.com.", "http", Ok("api.example.com"));
        check("127.0.0.1:8080", "http", Ok("127.0.0.1:8080"));
        check("[::1]:8080", "http", Ok("[::1]:8080"));
        check("user@evil", "http", Err(()));
        check("a b", "http", Err(()));
        check("", "http", Err(()));
        check("host:abc", "http", Err(()));
    }

    #[test]
    fn listed_hosts_and_wildcards() {
        let edge = EdgePolicy {
            hosts: vec!["api.example.com".into(), "*.example.org".into()],
            trusted_proxies: vec![],
        };
        assert!(edge.allows("api.example.com"));
        assert!(edge.allows("api.example.com:8080"));
        assert!(edge.allows("a.example.org"));
        assert!(edge.allows("a.b.example.org"));
        assert!(!edge.allows("example.org"));
        assert!(!edge.allows("evilexample.org"));
        assert!(!edge.allows("evil.example"));
    }

    fn peer(ip: &str) -> Peer {
        Peer {
            addr: Some(SocketAddr::new(ip.parse().unwrap(), 5555)),
            tls: false,
        }
    }

    #[test]
    fn client_forwarding_headers_are_replaced_unless_the_peer_is_trusted() {
        let mut h = HeaderMap::new();
        h.insert("host", "api.example.com".parse().unwrap());
        h.insert("x-forwarded-host", "evil.example".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        let uri: http::Uri = "/x".parse().unwrap();
        let edge = EdgePolicy {
            hosts: vec![],
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        };
        let f = forwarding(&uri, &h, peer("192.0.2.1"), &edge).unwrap();
        assert_eq!(f.host.as_deref(), Some("api.example.com"));
        assert_eq!(f.proto, "http");
        assert_eq!(f.for_chain.as_deref(), Some("192.0.2.1"));
        let f = forwarding(&uri, &h, peer("10.1.2.3"), &edge).unwrap();
        assert_eq!(f.host.as_deref(), Some("evil.example"));
        assert_eq!(f.proto, "https");
        assert_eq!(f.for_chain.as_deref(), Some("1.2.3.4, 10.1.2.3"));
    }

    #[test]
    fn unlisted_hosts_are_misdirected() {
        let mut h = HeaderMap::new();
        h.insert("host", "evil.example".parse().unwrap());
        let uri: http::Uri = "/x".parse().unwrap();
        let edge = EdgePolicy {
            hosts: vec!["api.example.com".into()],
            trusted_proxies: vec![],
        };
        assert_eq!(
            forwarding(&uri, &h, peer("192.0.2.1"), &edge),
            Err(ProxyError::MisdirectedRequest)
        );
        assert_eq!(
            forwarding(&uri, &HeaderMap::new(), peer("192.0.2.1"), &edge),
            Err(ProxyError::MisdirectedRequest)
        );
    }
}
