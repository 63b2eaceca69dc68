//! The edge: which hosts this proxy answers for, which peers may speak for clients, and
//! the forwarding values (`X-Forwarded-*`) the origin is told. Pure, below both the
//! config (which validates `hosts` with the same normaliser) and the request path.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header;
use http::HeaderMap;

use crate::conn::PeerText;
use crate::error::ProxyError;

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
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    /// The connection is TLS (the client really used https).
    pub tls: bool,
    /// `addr` as text, written once per connection; `Some` whenever `addr` is.
    pub text: Option<Arc<PeerText>>,
}

impl Peer {
    /// A peer whose address is written out here (not once per connection).
    pub fn new(addr: Option<SocketAddr>, tls: bool) -> Peer {
        Peer {
            addr,
            tls,
            text: addr.map(|a| Arc::new(PeerText::of(a))),
        }
    }
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

    pub fn allows(&self, host: &str) -> bool {
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
    peer: &Peer,
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
        let ip = match &peer.text {
            Some(text) => text.ip.to_string(),
            None => a.ip().to_string(),
        };
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

#[cfg(test)]
mod tests {
    use super::*;

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
        Peer::new(Some(SocketAddr::new(ip.parse().unwrap(), 5555)), false)
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
        let f = forwarding(&uri, &h, &peer("192.0.2.1"), &edge).unwrap();
        assert_eq!(f.host.as_deref(), Some("api.example.com"));
        assert_eq!(f.proto, "http");
        assert_eq!(f.for_chain.as_deref(), Some("192.0.2.1"));
        let f = forwarding(&uri, &h, &peer("10.1.2.3"), &edge).unwrap();
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
            forwarding(&uri, &h, &peer("192.0.2.1"), &edge),
            Err(ProxyError::MisdirectedRequest)
        );
        assert_eq!(
            forwarding(&uri, &HeaderMap::new(), &peer("192.0.2.1"), &edge),
            Err(ProxyError::MisdirectedRequest)
        );
    }
}
