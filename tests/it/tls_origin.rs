//! HTTPS upstreams: a TLS origin with a certificate from a CA the test makes, trusted
//! through `tls.ca_file`; mutual TLS; HTTP/2 by ALPN; the `host:` override; certificate
//! failures answered 502 without the client's data.

use std::time::Duration;

use crate::support::tls::{Certs, TlsOrigin, TlsOriginOptions};
use crate::support::{Proxy, Reply};

/// One upstream `origin` at `url` with `extra` (YAML flow fields) and a `/{*rest}` route.
fn yaml(url: &str, extra: &str, defaults: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nupstreams:\n  origin: {{ url: \"{url}\", connect_timeout: 500ms, timeout: 3s{extra} }}\n\
         defaults: {{ {defaults} }}\nroutes:\n  - path: /{{*rest}}\n    upstream: origin\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_origin_with_ca_file_is_cached_and_revalidated() {
    let certs = Certs::new();
    let origin = TlsOrigin::start(&certs, TlsOriginOptions::default(), |s| {
        if s.headers.contains_key("if-none-match") {
            Reply::ok("").status(304).header("etag", "\"e1\"")
        } else {
            Reply::ok("over tls").header("etag", "\"e1\"")
        }
    })
    .await;
    let extra = format!(", tls: {{ ca_file: {} }}", certs.yaml("ca.pem"));
    let p = Proxy::start(&yaml(
        &origin.url(),
        &extra,
        "ttl: 1s, stale: 0s, stale_if_error: 60s, jitter: 0",
    ))
    .await;

    let r = p.get("/doc").await;
    assert_eq!((r.status, r.body.as_str()), (200, "over tls"));
    assert!(
        r.cache_status().contains("fwd=miss"),
        "{}",
        r.cache_status()
    );
    let r = p.get("/doc").await;
    assert!(
        r.cache_status().starts_with("cachegate; hit"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/doc"), 1);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p.get("/doc").await;
    assert_eq!((r.status, r.body.as_str()), (200, "over tls"));
    assert!(
        r.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        r.cache_status()
    );
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].0.headers["if-none-match"], "\"e1\"");
    // `http2: auto` (the default) and an origin offering h2 in ALPN: HTTP/2, one
    // connection for both requests.
    assert!(
        seen.iter().all(|(_, t)| t.version == http::Version::HTTP_2),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_is_a_502_that_shows_no_request_data() {
    let certs = Certs::new();
    let origin = TlsOrigin::start(&certs, TlsOriginOptions::default(), |_| Reply::ok("x")).await;
    // No ca_file: the system roots do not know the test CA.
    let p = Proxy::start(&yaml(&origin.url(), "", "ttl: 60s")).await;
    let r = p
        .get_with("/secret-path?token=abc", &[("x-client", "private")])
        .await;
    assert_eq!(r.status, 502);
    assert!(
        !r.body.contains("secret") && !r.body.contains("abc") && !r.body.contains("private"),
        "{}",
        r.body
    );
    assert!(
        !r.body.contains("127.0.0.1"),
        "no addresses either: {}",
        r.body
    );
    assert_eq!(origin.hits("/secret-path"), 0);

    // The same CA trusted: the request goes through.
    let extra = format!(", tls: {{ ca_file: {} }}", certs.yaml("ca.pem"));
    let p = Proxy::start(&yaml(&origin.url(), &extra, "ttl: 60s")).await;
    assert_eq!(p.get("/secret-path").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_is_refused_without_a_client_certificate() {
    let certs = Certs::new();
    let options = TlsOriginOptions {
        require_client_cert: true,
        ..TlsOriginOptions::default()
    };
    let origin = TlsOrigin::start(&certs, options, |_| Reply::ok("hello client")).await;

    let without = format!(", tls: {{ ca_file: {} }}", certs.yaml("ca.pem"));
    let p = Proxy::start(&yaml(&origin.url(), &without, "ttl: 60s")).await;
    assert_eq!(p.get("/m").await.status, 502);
    assert_eq!(origin.hits("/m"), 0);

    let with = format!(
        ", tls: {{ ca_file: {}, client_cert: {}, client_key: {} }}",
        certs.yaml("ca.pem"),
        certs.yaml("client.pem"),
        certs.yaml("client.key")
    );
    let p = Proxy::start(&yaml(&origin.url(), &with, "ttl: 60s")).await;
    let r = p.get("/m").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello client"));
    assert_eq!(origin.hits("/m"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_false_speaks_http1_and_host_overrides_what_the_origin_sees() {
    let certs = Certs::new();
    let origin = TlsOrigin::start(&certs, TlsOriginOptions::default(), |_| Reply::ok("v")).await;
    let extra = format!(
        ", http2: false, host: \"api.example.com\", tls: {{ ca_file: {} }}",
        certs.yaml("ca.pem")
    );
    let p = Proxy::start(&yaml(&origin.url(), &extra, "ttl: 60s")).await;
    assert_eq!(p.get("/h").await.status, 200);

    let extra = format!(
        ", http2: true, host: \"api.example.com\", tls: {{ ca_file: {} }}",
        certs.yaml("ca.pem")
    );
    let p2 = Proxy::start(&yaml(&origin.url(), &extra, "ttl: 60s")).await;
    assert_eq!(p2.get("/h2").await.status, 200);

    let seen = origin.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].1.version, http::Version::HTTP_11);
    assert_eq!(seen[0].1.host, "api.example.com");
    assert_eq!(seen[1].1.version, http::Version::HTTP_2);
    assert_eq!(seen[1].1.host, "api.example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_checks_the_certificate_against_another_name() {
    let certs = Certs::new();
    let origin = TlsOrigin::start(&certs, TlsOriginOptions::default(), |_| Reply::ok("v")).await;
    // The certificate carries origin.test; a name it lacks fails the handshake.
    for (name, status) in [("origin.test", 200), ("elsewhere.test", 502)] {
        let extra = format!(
            ", tls: {{ ca_file: {}, server_name: {name} }}",
            certs.yaml("ca.pem")
        );
        let p = Proxy::start(&yaml(&origin.url(), &extra, "ttl: 60s")).await;
        assert_eq!(p.get("/n").await.status, status, "server_name {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_connects_and_is_a_config_warning() {
    let certs = Certs::new();
    let origin = TlsOrigin::start(&certs, TlsOriginOptions::default(), |_| Reply::ok("v")).await;
    let y = yaml(
        &origin.url(),
        ", tls: { insecure_skip_verify: true }",
        "ttl: 60s",
    );
    let config = cachegate::config::Config::parse(
        &y,
        std::path::Path::new("routes.yaml"),
        &Default::default(),
    )
    .unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("upstreams.origin.tls.insecure_skip_verify")),
        "{warnings:?}"
    );
    let p = Proxy::start(&y).await;
    assert_eq!(p.get("/i").await.status, 200);
}
