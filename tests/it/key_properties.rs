//! Properties of the canonical request over random routes and requests: the key names
//! exactly what the origin receives. Each request goes the way the proxy takes it:
//! `canonical::path` -> `RouteTable::find` -> `canonical::forwarding` ->
//! `canonical::cache_request`, plus the variant record an entry stores.
//!
//! - A: equal key and variant record => equal upstream request (nothing forwarded is
//!   missing from what selects an entry).
//! - B: equal upstream request => equal key (the key is a function of what is forwarded).
//! - C: spellings with one meaning (escapes of unreserved bytes, hex case, dot-segments,
//!   query order, empty pairs, dropped params, header case and whitespace, unkeyed and
//!   client forwarding headers) => one key and one upstream request.
//! - D: nothing reaches the origin that is neither keyed, a negotiation header the route
//!   honours, `Authorization`, nor set by cachegate.
//!
//! `Authorization` is the one forwarded input outside the key: a response to it is
//! stored only when the origin marks it shareable (RFC 9111 §3.5), so A compares the
//! upstream requests without it.

use std::net::SocketAddr;
use std::path::Path;

use cachegate::cache::entry::vary_values;
use cachegate::config::{Config, Overrides, Route};
use cachegate::proxy::canonical::{
    self, Peer, UpstreamRequest, FORWARDED_VARIANT, NEGOTIATION_HEADERS,
};
use cachegate::proxy::key::{self, QuerySpec};
use cachegate::proxy::route::RouteTable;
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

// === routes ===

#[derive(Debug, Clone)]
struct RouteSpec {
    literals: Vec<&'static str>,
    params: usize,
    catch_all: bool,
    query: Option<Vec<&'static str>>,
    ignore: Vec<&'static str>,
    headers: Vec<&'static str>,
    vary: Option<Vec<&'static str>>,
    hosts: bool,
}

const QUERY_NAMES: &[&str] = &["a", "b", "fields", "page", "q;x", "utm_source", "fbclid"];
const KEY_HEADERS: &[&str] = &[
    "accept-language",
    "x-tenant",
    "x-api-version",
    "x-original-url",
];
const VARY_HEADERS: &[&str] = &["accept", "accept-encoding", "x-tenant", "x-device"];

fn route_spec() -> impl Strategy<Value = RouteSpec> {
    (
        prop::collection::vec(select(&["users", "files", "v1", "a.b"][..]), 1..3),
        0usize..=2,
        any::<bool>(),
        prop_oneof![
            Just(None),
            Just(Some(vec![])),
            subsequence(QUERY_NAMES, 1..4).prop_map(Some),
        ],
        subsequence(&["utm_*", "fbclid", "gclid"][..], 0..3),
        subsequence(KEY_HEADERS, 0..3),
        prop_oneof![Just(None), subsequence(VARY_HEADERS, 0..3).prop_map(Some)],
        any::<bool>(),
    )
        .prop_map(
            |(literals, params, catch_all, query, ignore, headers, vary, hosts)| RouteSpec {
                literals,
                params,
                catch_all,
                query,
                ignore,
                headers,
                vary,
                hosts,
            },
        )
}

fn yaml_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

impl RouteSpec {
    fn template(&self) -> String {
        let mut t = format!("/{}", self.literals[0]);
        for i in 0..self.params {
            t.push_str(&format!("/{{p{i}}}"));
            if let Some(l) = self.literals.get(i + 1) {
                t.push_str(&format!("/{l}"));
            }
        }
        if self.catch_all {
            t.push_str("/{*rest}");
        }
        t
    }

    /// The route, then a cached catch-all `/{*rest}` that drops tracking parameters, so
    /// requests land on two routes.
    fn yaml(&self) -> String {
        let mut key = Vec::new();
        if let Some(q) = &self.query {
            key.push(format!("query: {}", yaml_list(q)));
        }
        key.push(format!("query_ignore: {}", yaml_list(&self.ignore)));
        key.push(format!("headers: {}", yaml_list(&self.headers)));
        let vary = match &self.vary {
            Some(v) => format!("    vary: {}\n", yaml_list(v)),
            None => String::new(),
        };
        let hosts = if self.hosts {
            "hosts: [api.example.com, \"*.example.org\"]\n"
        } else {
            ""
        };
        format!(
            "listen: 127.0.0.1:0\n{hosts}trusted_proxies: [10.0.0.0/8]\n\
             upstreams:\n  origin: {{ url: \"http://127.0.0.1:9\" }}\n\
             routes:\n  - path: \"{}\"\n    upstream: origin\n{vary}    key: {{ {} }}\n\
             \x20 - path: \"/{{*rest}}\"\n    upstream: origin\n\
             \x20   key: {{ query_ignore: [utm_*, fbclid, gclid] }}\n",
            self.template(),
            key.join(", ")
        )
    }
}

// === requests: a meaning, then spellings of it ===

/// One byte of a path segment or query component as the origin reads it.
#[derive(Debug, Clone, Copy)]
enum Atom {
    /// Unreserved: literal or any `%XX` spelling is the same byte.
    Unreserved(u8),
    /// A sub-delimiter written literally (its escape is another resource).
    Literal(u8),
    /// Data that is always escaped (`%2F`, `%26`, `%25`, `%7C`, non-ASCII, ...).
    Escaped(u8),
}

fn atom() -> impl Strategy<Value = Atom> {
    prop_oneof![
        4 => select(&b"aZ09-._~"[..]).prop_map(Atom::Unreserved),
        2 => select(&b"!$'()*+,;:@"[..]).prop_map(Atom::Literal),
        2 => select(&[b'/', b'%', b'?', b'#', b' ', b'|', b'\\', 0, b'&', b'=', 0xC3, b'!'][..])
            .prop_map(Atom::Escaped),
    ]
}

fn word() -> impl Strategy<Value = Vec<Atom>> {
    prop::collection::vec(atom(), 1..4)
}

#[derive(Debug, Clone)]
struct Meaning {
    segments: Vec<Vec<Atom>>,
    query: Vec<(&'static str, Option<Vec<Atom>>)>,
    /// Values of the headers the proxy may forward, as comma-separated elements.
    headers: Vec<(&'static str, Vec<&'static str>)>,
    authorization: Option<&'static str>,
    host: &'static str,
    /// From a trusted proxy, with its `X-Forwarded-Host` and `-Proto`.
    trusted: Option<(&'static str, &'static str)>,
}

const FORWARDABLE: &[(&str, &[&str])] = &[
    ("accept", &["text/html", "application/json", "*/*;q=0.1"]),
    ("accept-encoding", &["gzip", "br", "identity", "zstd;q=0"]),
    ("accept-language", &["en", "fr-CH", "de;q=0.5"]),
    ("x-tenant", &["t1", "t2"]),
    ("x-api-version", &["1", "2"]),
    ("x-device", &["mobile", "desktop"]),
    ("x-original-url", &["/admin", "/other"]),
];

fn header_values() -> impl Strategy<Value = Vec<(&'static str, Vec<&'static str>)>> {
    let each: Vec<_> = FORWARDABLE
        .iter()
        .map(|(name, values)| {
            prop::option::weighted(0.5, prop::collection::vec(select(*values), 1..3))
                .prop_map(move |v| v.map(|v| (*name, v)))
        })
        .collect();
    each.prop_map(|v| v.into_iter().flatten().collect())
}

fn meaning() -> impl Strategy<Value = Meaning> {
    (
        prop::collection::vec(word(), 1..6),
        prop::collection::vec(
            (select(QUERY_NAMES), prop::option::weighted(0.8, word())),
            0..4,
        ),
        header_values(),
        prop::option::weighted(0.2, select(&["Bearer a", "Bearer b"][..])),
        select(&["api.example.com", "a.example.org", "evil.example"][..]),
        prop::option::weighted(
            0.3,
            (
                select(&["api.example.com", "evil.example"][..]),
                select(&["http", "https"][..]),
            ),
        ),
    )
        .prop_map(
            |(segments, query, headers, authorization, host, trusted)| Meaning {
                segments,
                query,
                headers,
                authorization,
                host,
                trusted,
            },
        )
}

/// Aligns a meaning's first segments with the route's literals, so most requests match
/// the generated route rather than only the catch-all.
fn aim(mut m: Meaning, spec: &RouteSpec) -> Meaning {
    let lit = |s: &str| s.bytes().map(Atom::Unreserved).collect::<Vec<_>>();
    m.segments[0] = lit(spec.literals[0]);
    for i in 0..spec.params {
        let at = 2 * i + 2;
        if let Some(l) = spec.literals.get(i + 1) {
            if at < m.segments.len() {
                m.segments[at] = lit(l);
            }
        }
    }
    m
}

/// The random choices of one spelling; interpreted by `spell`.
#[derive(Debug, Clone)]
struct Spelling {
    choices: Vec<u8>,
}

fn spelling() -> impl Strategy<Value = Spelling> {
    prop::collection::vec(any::<u8>(), 64).prop_map(|choices| Spelling { choices })
}

struct Choices<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Choices<'_> {
    fn next(&mut self) -> u8 {
        let b = self.bytes[self.at % self.bytes.len()];
        self.at += 1;
        b.rotate_left((self.at % 8) as u32)
    }
    fn one_in(&mut self, n: u8) -> bool {
        self.next() % n == 0
    }
}

fn escape(b: u8, c: &mut Choices<'_>, out: &mut String) {
    let s = format!("%{b:02X}");
    out.push_str(&if c.one_in(2) {
        s.to_ascii_lowercase()
    } else {
        s
    });
}

fn spell_word(word: &[Atom], c: &mut Choices<'_>, out: &mut String) {
    for a in word {
        match *a {
            Atom::Unreserved(b) if c.one_in(3) => escape(b, c, out),
            Atom::Unreserved(b) | Atom::Literal(b) => out.push(b as char),
            Atom::Escaped(b) => escape(b, c, out),
        }
    }
}

/// Whether the route drops this query name (neither keyed nor forwarded).
fn dropped(route: &Route, name: &str) -> bool {
    let name = canonical::query_name(name).expect("generated names are valid");
    let selected = match &route.key.query {
        QuerySpec::All => true,
        QuerySpec::Only(names) => names.binary_search(&name).is_ok(),
    };
    !selected || route.key.query_ignore.iter().any(|p| p.matches(&name))
}

/// Headers a client may send that no route here keys or honours.
const NOISE: &[(&str, &str)] = &[
    ("user-agent", "curl/8"),
    ("cookie", "session=evil"),
    ("cache-control", "max-age=0"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-proto", "https"),
    ("forwarded", "host=evil.example;proto=https"),
    ("x-real-ip", "6.6.6.6"),
    ("x-forwarded-scheme", "https"),
    ("x-rewrite-url", "/admin"),
    ("x-http-method-override", "DELETE"),
    ("x-original-url", "/admin"),
    ("x-tenant", "t-evil"),
    ("x-device", "tv"),
    ("accept", "image/*"),
];

struct Request {
    uri: http::Uri,
    headers: HeaderMap,
    peer: Peer,
}

fn spell(m: &Meaning, s: &Spelling, routes: &[std::sync::Arc<Route>]) -> Option<Request> {
    let mut c = Choices {
        bytes: &s.choices,
        at: 0,
    };
    let mut path = String::new();
    for seg in &m.segments {
        match c.next() % 8 {
            0 => path.push_str("/."),
            1 => path.push_str("/zz/.."),
            2 => path.push_str("/%2e"),
            _ => {}
        }
        path.push('/');
        spell_word(seg, &mut c, &mut path);
    }
    let mut pairs: Vec<String> = m
        .query
        .iter()
        .map(|(name, value)| {
            let mut p = String::new();
            spell_word(
                &name
                    .bytes()
                    .map(|b| match b {
                        b';' => Atom::Literal(b),
                        _ => Atom::Unreserved(b),
                    })
                    .collect::<Vec<_>>(),
                &mut c,
                &mut p,
            );
            if let Some(v) = value {
                p.push('=');
                spell_word(v, &mut c, &mut p);
            }
            p
        })
        .collect();
    // Parameters every route here drops: noise the origin never sees.
    for noise in ["utm_medium", "gclid", "utm_source", "fbclid"] {
        if c.one_in(3) && routes.iter().all(|r| dropped(r, noise)) {
            pairs.push(format!("{noise}=x{}", c.next()));
        }
    }
    if c.one_in(4) {
        pairs.push(String::new());
    }
    for i in (1..pairs.len()).rev() {
        let j = usize::from(c.next()) % (i + 1);
        pairs.swap(i, j);
    }
    let query = pairs.join("&");
    let host = {
        let mut h: String = m
            .host
            .chars()
            .map(|ch| {
                if c.one_in(2) {
                    ch.to_ascii_uppercase()
                } else {
                    ch
                }
            })
            .collect();
        match c.next() % 4 {
            0 => h.push_str(":80"),
            1 => h.push('.'),
            _ => {}
        }
        h
    };
    let in_uri = c.one_in(2);
    let target = if query.is_empty() && c.one_in(2) {
        path
    } else {
        format!("{path}?{query}")
    };
    let uri: http::Uri = if in_uri {
        format!("http://{host}{target}").parse().ok()?
    } else {
        target.parse().ok()?
    };

    let mut headers = HeaderMap::new();
    let add = |headers: &mut HeaderMap, name: &str, value: &str, c: &mut Choices<'_>| {
        let name: String = name
            .chars()
            .map(|ch| {
                if c.one_in(2) {
                    ch.to_ascii_uppercase()
                } else {
                    ch
                }
            })
            .collect();
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("generated names are valid"),
            HeaderValue::from_str(value).expect("generated values are valid"),
        );
    };
    if !in_uri || c.one_in(2) {
        // HTTP/1.1 sends Host; with an absolute URI the URI's authority wins.
        add(
            &mut headers,
            "host",
            if in_uri { "ignored.example" } else { &host },
            &mut c,
        );
    }
    for (name, values) in &m.headers {
        // One element list, written as one line or several, with any whitespace.
        let mut line = String::new();
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                if c.one_in(3) {
                    add(&mut headers, name, &line, &mut c);
                    line.clear();
                } else {
                    line.push_str([",", ", ", " ,  "][usize::from(c.next()) % 3]);
                }
            }
            line.push_str(v);
        }
        add(&mut headers, name, &line, &mut c);
    }
    if let Some(auth) = m.authorization {
        add(&mut headers, "authorization", auth, &mut c);
    }
    let forwarded: Vec<String> = m.headers.iter().map(|(n, _)| n.to_string()).collect();
    for (name, value) in NOISE {
        let meaningful = m.trusted.is_some() && name.starts_with("x-forwarded-")
            || forwarded.iter().any(|f| f == name)
            || routes.iter().any(|r| forwards(r).iter().any(|f| f == name));
        if !meaningful && c.one_in(3) {
            add(&mut headers, name, value, &mut c);
        }
    }
    let ip = match m.trusted {
        Some((host, proto)) => {
            add(&mut headers, "x-forwarded-host", host, &mut c);
            add(&mut headers, "x-forwarded-proto", proto, &mut c);
            "10.0.0.1"
        }
        None => "192.0.2.1",
    };
    let peer = Peer::new(
        Some(SocketAddr::new(ip.parse().expect("literal"), 40000)),
        false,
    );
    Some(Request { uri, headers, peer })
}

/// The headers a route may forward from the client on the cache path (besides
/// `Authorization`): its key headers and the negotiation headers it honours.
fn forwards(route: &Route) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = route.key.headers.clone();
    match &route.policy.vary_allow {
        Some(v) => names.extend(v.iter().cloned()),
        None => names.extend(NEGOTIATION_HEADERS.iter().cloned()),
    }
    names
}

// === the proxy's path ===

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    key: String,
    variant: Vec<(HeaderName, Option<String>)>,
    upstream: UpstreamRequest,
    allowed: Vec<HeaderName>,
}

fn run(config: &Config, table: &RouteTable, r: &Request) -> Option<Outcome> {
    let path = canonical::path(r.uri.path()).ok()?;
    let matched = table.find(&path)?;
    let fwd = canonical::forwarding(&r.uri, &r.headers, &r.peer, &config.edge).ok()?;
    let route = &config.routes[matched.route];
    let (key, upstream) = canonical::cache_request(
        route,
        &matched.params,
        path,
        r.uri.query(),
        &r.headers,
        &fwd,
    )
    .ok()?;
    assert_eq!(key::template_of(&key), &*route.template);
    let mut names = FORWARDED_VARIANT.to_vec();
    for n in forwards(route) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let variant = vary_values(&upstream.headers, &names);
    let mut allowed = names;
    allowed.push(http::header::AUTHORIZATION);
    Some(Outcome {
        key,
        variant,
        upstream,
        allowed,
    })
}

fn without_authorization(u: &UpstreamRequest) -> UpstreamRequest {
    let mut u = u.clone();
    u.headers.remove(http::header::AUTHORIZATION);
    u
}

fn check(outcomes: &[(usize, Outcome)]) -> Result<(), TestCaseError> {
    for (_, o) in outcomes {
        for name in o.upstream.headers.keys() {
            prop_assert!(
                o.allowed.contains(name),
                "{name} reaches the origin unkeyed: {o:#?}"
            );
        }
    }
    for (i, (ma, a)) in outcomes.iter().enumerate() {
        for (mb, b) in &outcomes[i + 1..] {
            if a.key == b.key && a.variant == b.variant {
                prop_assert_eq!(
                    without_authorization(&a.upstream),
                    without_authorization(&b.upstream),
                    "one entry, two upstream requests: {:#?} {:#?}",
                    a,
                    b
                );
            }
            if a.upstream == b.upstream {
                prop_assert_eq!(&a.key, &b.key, "one upstream request, two keys");
            }
            if ma == mb {
                prop_assert_eq!(a, b, "two spellings of one request differ");
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn keys_name_exactly_the_forwarded_request(
        spec in route_spec(),
        meanings in prop::collection::vec((meaning(), any::<bool>(), 0u8..5), 2..4),
        spellings in prop::collection::vec(spelling(), 3),
    ) {
        let yaml = spec.yaml();
        let config = Config::parse(&yaml, Path::new("prop.yaml"), &Overrides::default())
            .unwrap_or_else(|e| panic!("generated config invalid: {e}\n{yaml}"));
        let table = RouteTable::new(&config.routes);
        let mut outcomes = Vec::new();
        let first = meanings[0].0.clone();
        for (i, (m, aimed, share)) in meanings.into_iter().enumerate() {
            // Most requests share the first one's path (and query), so equal keys with
            // other headers, hosts and credentials are common.
            let m = match share {
                1 => Meaning { segments: first.segments.clone(), query: first.query.clone(), ..m },
                2 => Meaning { segments: first.segments.clone(), ..m },
                3 => Meaning { headers: m.headers, authorization: m.authorization, ..first.clone() },
                4 => Meaning { headers: m.headers, ..first.clone() },
                _ => m,
            };
            let m = if aimed { aim(m, &spec) } else { m };
            for s in &spellings {
                if let Some(o) = spell(&m, s, &config.routes).and_then(|r| run(&config, &table, &r)) {
                    outcomes.push((i, o));
                }
            }
        }
        check(&outcomes)?;
    }
}
