//! Cache poisoning and mix-ups: each attack class against a real origin that echoes what
//! it received. After each attack a clean request never gets the attacker's content, and
//! the origin never sees an input the key does not hold.

use std::time::Duration;

use crate::support::origin::Seen;
use crate::support::proxy::{self, config_yaml, TEST_HOST};
use crate::support::{Origin, Proxy, Reply};

/// Headers an origin acts on that an attacker may send.
const UNKEYED: &[&str] = &[
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-scheme",
    "x-forwarded-port",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-method-override",
    "x-real-ip",
    "cookie",
    "x-evil",
    "user-agent",
];

/// Everything the origin received, one line: the body of every answer, so a test sees
/// exactly what each cached entry was made from.
fn echo(s: &Seen) -> String {
    let mut headers: Vec<String> = s
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "traceparent" | "tracestate"))
        .map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("?")))
        .collect();
    headers.sort();
    format!(
        "{} {}{} [{}]",
        s.method,
        s.path,
        s.query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default(),
        headers.join(" ")
    )
}

async fn echo_origin() -> Origin {
    Origin::start(|s| Reply::ok(echo(s)).header("cache-control", "max-age=60")).await
}

async fn proxy_with(origin: &Origin, top: &str, routes: &str) -> Proxy {
    let yaml = format!(
        "{top}{}",
        config_yaml(&origin.url(), "ttl: 60s, jitter: 0", routes)
    );
    Proxy::start(&yaml).await
}

const CATCH_ALL: &str = "  - path: /{*rest}\n    upstream: origin\n";

/// No request the origin saw carries a header an attacker chose.
fn assert_no_unkeyed_input(origin: &Origin) {
    for seen in origin.seen() {
        for name in UNKEYED {
            if let Some(v) = seen.headers.get(*name) {
                let v = v.to_str().unwrap_or("");
                assert!(
                    !v.contains("evil") && *name != "cookie" && *name != "user-agent",
                    "the origin saw {name}: {v} ({})",
                    echo(&seen)
                );
            }
        }
    }
}

#[tokio::test]
async fn every_query_parameter_is_keyed_by_default() {
    let origin = echo_origin().await;
    let p = proxy_with(&origin, "", CATCH_ALL).await;
    let one = p.get("/items?page=1").await;
    let two = p.get("/items?page=2").await;
    assert!(one.body.contains("/items?page=1"), "{}", one.body);
    assert!(two.body.contains("/items?page=2"), "{}", two.body);
    let qa = p.get("/search?q=a").await;
    let qb = p.get("/search?q=b").await;
    assert_ne!(qa.body, qb.body);
    assert!(qb.body.contains("q=b"));
    // The same request spelled another way shares the entry, and the origin received
    // the one canonical spelling.
    let sorted = p.get("/list?b=2&a=%7E").await;
    let again = p.get("/list?a=~&b=2").await;
    assert!(sorted.body.contains("/list?a=~&b=2"), "{}", sorted.body);
    assert!(again.cache_status().starts_with("cachegate; hit"));
    assert_eq!(origin.hits("/list"), 1);
}

#[tokio::test]
async fn a_route_query_list_is_all_that_is_keyed_and_forwarded() {
    let origin = echo_origin().await;
    let routes = "  - path: /users/{id}\n    upstream: origin\n    key: { query: [fields], query_ignore: [] }\n  - path: /none/{id}\n    upstream: origin\n    key: { query: [] }\n  - path: /{*rest}\n    upstream: origin\n    key: { query_ignore: [utm_*, fbclid] }\n";
    let p = proxy_with(&origin, "", routes).await;
    let r = p.get("/users/1?fields=name&debug=1&utm_source=x").await;
    assert!(r.body.contains("/users/1?fields=name ["), "{}", r.body);
    let cloaked = p.get("/users/1?debug=1;fields=evil&fields=name").await;
    assert_eq!(
        cloaked.body, r.body,
        "`;` hides nothing: only `fields` is kept"
    );
    assert!(cloaked.cache_status().starts_with("cachegate; hit"));
    let amp = p.get("/users/1?fields=name%26debug%3D1").await;
    assert!(
        amp.body.contains("/users/1?fields=name%26debug%3D1 ["),
        "an encoded & is data, keyed and forwarded as such: {}",
        amp.body
    );
    assert_eq!(origin.hits("/users/1"), 2);

    let none = p.get("/none/1?a=1").await;
    assert!(none.body.contains("GET /none/1 ["), "{}", none.body);

    let tracked = p.get("/page?utm_source=mail&fbclid=9&id=3").await;
    assert!(tracked.body.contains("/page?id=3 ["), "{}", tracked.body);
    let clean = p.get("/page?id=3").await;
    assert!(clean.cache_status().starts_with("cachegate; hit"));
}

#[tokio::test]
async fn a_client_host_is_keyed_and_never_poisons_other_hosts() {
    let origin = echo_origin().await;
    let p = proxy_with(&origin, "", CATCH_ALL).await;
    let attack = p.get_with("/home", &[("host", "evil.example")]).await;
    assert!(attack.body.contains("x-forwarded-host=evil.example"));
    let clean = p.get("/home").await;
    assert!(
        clean
            .body
            .contains(&format!("x-forwarded-host={TEST_HOST}")),
        "{}",
        clean.body
    );
    assert!(!clean.body.contains("evil"));
    // Host spelled another way is the same host.
    let upper = p.get_with("/home", &[("host", "CACHEGATE.test:80")]).await;
    assert_eq!(upper.body, clean.body);
    assert!(upper.cache_status().starts_with("cachegate; hit"));
    assert_eq!(origin.hits("/home"), 2);
}

#[tokio::test]
async fn listed_hosts_only_and_others_touch_nothing() {
    let origin = echo_origin().await;
    let p = proxy_with(
        &origin,
        "hosts: [cachegate.test, \"*.example.com\"]\n",
        CATCH_ALL,
    )
    .await;
    let evil = p.get_with("/home", &[("host", "evil.example")]).await;
    assert_eq!(evil.status, 421);
    assert_eq!(
        origin.total(),
        0,
        "a misdirected request never reaches the origin"
    );
    assert_eq!(p.get("/home").await.status, 200);
    let sub = p.get_with("/home", &[("host", "api.example.com")]).await;
    assert_eq!(sub.status, 200);
    assert!(sub.body.contains("x-forwarded-host=api.example.com"));
}

#[tokio::test]
async fn client_forwarding_and_override_headers_never_reach_the_origin() {
    let origin = echo_origin().await;
    let p = proxy_with(&origin, "", CATCH_ALL).await;
    let attack: Vec<(&str, &str)> = vec![
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-scheme", "evil"),
        ("x-forwarded-port", "666"),
        ("forwarded", "host=evil.example;proto=https"),
        ("x-original-url", "/admin/evil"),
        ("x-rewrite-url", "/admin/evil"),
        ("x-http-method-override", "DELETE-evil"),
        ("x-real-ip", "6.6.6.6-evil"),
        ("cookie", "session=evil"),
        ("x-evil", "1"),
        ("user-agent", "evil-bot"),
    ];
    let poisoned = p.get_with("/article", &attack).await;
    assert!(!poisoned.body.contains("evil"), "{}", poisoned.body);
    assert!(!poisoned.body.contains("6.6.6.6"), "{}", poisoned.body);
    assert!(
        poisoned.body.contains("x-forwarded-proto=http"),
        "{}",
        poisoned.body
    );
    assert!(
        poisoned.body.contains("x-forwarded-for=127.0.0.1"),
        "{}",
        poisoned.body
    );
    let clean = p.get("/article").await;
    assert_eq!(
        clean.body, poisoned.body,
        "the attack changed nothing the origin saw"
    );
    assert!(clean.cache_status().starts_with("cachegate; hit"));

    // Unsafe methods are forwarded with the client's headers, but never with the
    // override headers on a cached route, nor with forwarding headers it made up.
    p.request("POST", "/article", &attack).await;
    assert_no_unkeyed_input_but_cookies_on_posts(&origin);
    assert_eq!(origin.hits("/article"), 2);
}

/// A POST carries the client's own headers (cookies included); never an attacker's
/// forwarding or override headers.
fn assert_no_unkeyed_input_but_cookies_on_posts(origin: &Origin) {
    for seen in origin.seen() {
        for name in UNKEYED {
            if matches!(*name, "cookie" | "user-agent" | "x-evil") && seen.method == "POST" {
                continue;
            }
            assert!(
                seen.headers
                    .get(*name)
                    .is_none_or(|v| !v.to_str().unwrap().contains("evil")),
                "the origin saw {name} ({})",
                echo(&seen)
            );
        }
    }
}

#[tokio::test]
async fn a_trusted_load_balancer_speaks_for_the_client_and_is_keyed() {
    let origin = echo_origin().await;
    let p = proxy_with(&origin, "trusted_proxies: [127.0.0.1/32]\n", CATCH_ALL).await;
    let via_lb = p
        .get_with(
            "/lb",
            &[
                ("x-forwarded-host", "www.example.com"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-for", "203.0.113.7"),
            ],
        )
        .await;
    assert!(
        via_lb.body.contains("x-forwarded-host=www.example.com"),
        "{}",
        via_lb.body
    );
    assert!(via_lb.body.contains("x-forwarded-proto=https"));
    assert!(via_lb
        .body
        .contains("x-forwarded-for=203.0.113.7, 127.0.0.1"));
    // Plain http through the same balancer is another request for the origin (it may
    // redirect it), so another entry.
    let plain = p
        .get_with("/lb", &[("x-forwarded-host", "www.example.com")])
        .await;
    assert!(
        plain.body.contains("x-forwarded-proto=http"),
        "{}",
        plain.body
    );
    assert_eq!(origin.hits("/lb"), 2);
}

#[tokio::test]
async fn h2c_clients_cannot_forge_forwarding_headers_either() {
    let origin = echo_origin().await;
    let p = proxy_with(&origin, "", CATCH_ALL).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(p.url("/h2"))
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let body = r.text().await.unwrap();
    assert!(!body.contains("evil"), "{body}");
    assert_no_unkeyed_input(&origin);
}

#[tokio::test]
async fn encoded_separators_stay_data_and_dot_segments_are_resolved() {
    let origin = echo_origin().await;
    let routes = "  - path: /files/{*path}\n    upstream: origin\n";
    let p = proxy_with(&origin, "", routes).await;
    let encoded = p.get("/files/a%2Fb").await;
    let lower = p.get("/files/a%2fb").await;
    let plain = p.get("/files/a/b").await;
    assert!(
        encoded.body.contains("GET /files/a%2Fb ["),
        "{}",
        encoded.body
    );
    assert_eq!(
        lower.body, encoded.body,
        "hex case is spelling, not meaning"
    );
    assert!(lower.cache_status().starts_with("cachegate; hit"));
    assert!(plain.body.contains("GET /files/a/b ["), "{}", plain.body);
    assert_ne!(
        plain.body, encoded.body,
        "a%2Fb and a/b are different resources"
    );

    // Sent as written (an HTTP client library would resolve the dots itself).
    let (status, dotted) = raw_get(&p, "/files/x/../a/./b").await;
    assert_eq!(status, 200);
    assert!(
        dotted.ends_with(&plain.body),
        "dot-segments resolve to /files/a/b: {dotted}"
    );
    assert!(dotted
        .to_ascii_lowercase()
        .contains("cache-status: cachegate; hit"));
    let unreserved = p.get("/files/%61/b").await;
    assert_eq!(unreserved.body, plain.body);

    let total = origin.total();
    assert_eq!(raw_get(&p, "/files/../../etc/passwd").await.0, 400);
    assert_eq!(raw_get(&p, "/files/%2e%2e/%2e%2e/etc").await.0, 400);
    assert_eq!(raw_get(&p, "/files/%zz").await.0, 400);
    assert_eq!(
        origin.total(),
        total,
        "rejected paths never reach the origin"
    );
}

/// A GET written to the socket byte for byte: (status, the whole response as text).
async fn raw_get(p: &Proxy, target: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nhost: {TEST_HOST}\r\nconnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out))
        .await
        .expect("the proxy answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn a_get_with_a_body_is_rejected_at_once() {
    let origin = echo_origin().await;
    let p = proxy_with(&origin, "", CATCH_ALL).await;
    let started = std::time::Instant::now();
    let r = proxy::client()
        .get(p.url("/fat"))
        .header("host", TEST_HOST)
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no wait for an upstream timeout"
    );
    assert_eq!(origin.total(), 0);
    // The connection and the cache are fine afterwards.
    let clean = p.get("/fat").await;
    assert_eq!(clean.status, 200);
    assert!(clean.body.starts_with("GET /fat ["));
}

#[tokio::test]
async fn a_header_too_large_for_the_origin_cannot_cache_an_error() {
    // An origin that refuses large headers with a cacheable 400 (a CPDoS target).
    let origin = Origin::start(|s| {
        if s.headers.iter().any(|(_, v)| v.len() > 1000) {
            return Reply::ok("header too large")
                .status(400)
                .header("cache-control", "max-age=60");
        }
        Reply::ok(echo(s)).header("cache-control", "max-age=60")
    })
    .await;
    let p = proxy_with(&origin, "", CATCH_ALL).await;
    let big = "x".repeat(4000);
    let attack = p.get_with("/big", &[("x-oversized", &big)]).await;
    assert_eq!(
        attack.status, 200,
        "the unkeyed header never reached the origin"
    );
    let clean = p.get("/big").await;
    assert_eq!(clean.status, 200);
    assert!(!clean.body.contains("too large"));
}

#[tokio::test]
async fn keyed_headers_reach_the_origin_and_split_entries() {
    let origin = echo_origin().await;
    let routes =
        "  - path: /{*rest}\n    upstream: origin\n    key: { headers: [x-api-version, cookie] }\n";
    let p = proxy_with(&origin, "", routes).await;
    let v1 = p
        .get_with("/k", &[("x-api-version", "1"), ("cookie", "a=1")])
        .await;
    let v2 = p
        .get_with("/k", &[("x-api-version", "2"), ("cookie", "a=1")])
        .await;
    assert!(v1.body.contains("x-api-version=1") && v1.body.contains("cookie=a=1"));
    assert!(v2.body.contains("x-api-version=2"));
    let none = p.get("/k").await;
    assert!(!none.body.contains("x-api-version"), "{}", none.body);
    assert_eq!(origin.hits("/k"), 3);
}

#[tokio::test]
async fn pass_through_routes_forward_client_headers_but_not_stripped_or_forged_ones() {
    let origin = echo_origin().await;
    let routes = "  - path: /{*rest}\n    upstream: origin\n    cache: false\n    strip_headers: [x-debug]\n";
    let p = proxy_with(&origin, "", routes).await;
    let r = p
        .get_with(
            "/pass",
            &[
                ("x-custom", "kept"),
                ("cookie", "s=1"),
                ("x-debug", "1"),
                ("x-forwarded-host", "evil.example"),
            ],
        )
        .await;
    assert!(
        r.body.contains("x-custom=kept") && r.body.contains("cookie=s=1"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("x-debug"), "{}", r.body);
    assert!(
        r.body.contains(&format!("x-forwarded-host={TEST_HOST}")),
        "{}",
        r.body
    );
}
