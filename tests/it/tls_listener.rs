//! The `tls:` listener: HTTPS with ALPN h2 and http/1.1 beside the plain listener, which
//! keeps serving HTTP/1.1 and h2c with prior knowledge.

use crate::support::edge::Edge;
use crate::support::tls::{https_client, Certs};
use crate::support::{Origin, Reply};

fn yaml(origin: &str, certs: &Certs) -> String {
    format!(
        "listen: 127.0.0.1:0\ntls: {{ listen: \"127.0.0.1:0\", cert_file: {}, key_file: {} }}\n\
         upstreams:\n  origin: {{ url: \"{origin}\", timeout: 3s }}\n\
         defaults: {{ ttl: 60s }}\nroutes:\n  - path: /{{*rest}}\n    upstream: origin\n",
        certs.yaml("server.pem"),
        certs.yaml("server.key")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_answers_http2_and_http1() {
    let certs = Certs::new();
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let edge = Edge::start(&yaml(&origin.url(), &certs)).await;

    let r = https_client(&certs, false)
        .get(edge.https("/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2, "ALPN picks h2");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "v0");

    let r = https_client(&certs, true)
        .get(edge.https("/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_11);
    let status = r.headers()["cache-status"].to_str().unwrap().to_string();
    assert_eq!(r.text().await.unwrap(), "v0");
    assert!(status.starts_with("cachegate; hit"), "{status}");
    assert_eq!(origin.hits("/a"), 1);

    // The plain listener stays: HTTP/1.1 and h2c with prior knowledge.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = plain.get(edge.http("/a")).send().await.unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (http::Version::HTTP_11, 200)
    );
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2c.get(edge.http("/a")).send().await.unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (http::Version::HTTP_2, 200)
    );
    // Another Host (127.0.0.1 instead of localhost) is another origin request, so
    // another entry: the plain listener's first request stored v1, h2c hits it.
    assert_eq!(r.text().await.unwrap(), "v1");
    assert_eq!(origin.hits("/a"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_refuses_a_client_that_does_not_trust_it() {
    let certs = Certs::new();
    let other = Certs::new();
    let origin = Origin::start(|_| Reply::ok("v")).await;
    let edge = Edge::start(&yaml(&origin.url(), &certs)).await;
    let err = https_client(&other, false)
        .get(edge.https("/a"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(origin.hits("/a"), 0);
}

#[test]
fn a_missing_certificate_fails_check_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "tls: { cert_file: nope.pem, key_file: nope.key }\nupstreams:\n  api: { url: \"http://127.0.0.1:3000\" }\nroutes:\n  - path: /a\n    upstream: api\n";
    let err = cachegate::config::Config::parse(
        yaml,
        &dir.path().join("routes.yaml"),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("tls.cert_file") && err.contains("nope.pem"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_proto_is_the_scheme_the_client_really_used() {
    let certs = Certs::new();
    let origin = Origin::start(|s| {
        let proto = s
            .headers
            .get("x-forwarded-proto")
            .map(|v| v.to_str().unwrap().to_string());
        Reply::ok(format!("{proto:?}"))
    })
    .await;
    let edge = Edge::start(&yaml(&origin.url(), &certs)).await;
    let over_tls = https_client(&certs, true)
        .get(edge.https("/p"))
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .unwrap();
    assert_eq!(over_tls.text().await.unwrap(), "Some(\"https\")");
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = plain
        .get(edge.http("/p"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "Some(\"http\")",
        "a client cannot claim https"
    );
}
