//! Forwarding: header hygiene, forwarding headers, errors as 502/504/404, bypass routes,
//! streamed request bodies, invalidation by unsafe methods, client conditionals.

use std::time::Duration;

use crate::support::{proxy, Origin, Proxy, Reply};

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_added() {
    let origin = Origin::start(|s| {
        let h = |n: &str| s.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        let report = format!(
            "xff={:?} proto={:?} host={:?} via={:?} secret={:?} keep={:?} custom={:?}",
            h("x-forwarded-for"),
            h("x-forwarded-proto"),
            h("x-forwarded-host"),
            h("via"),
            h("x-secret-hop"),
            h("keep-alive"),
            h("x-custom")
        );
        Reply::ok(report)
            .header("cache-control", "no-store")
            .header("x-origin-hop", "1")
            .header("connection", "x-origin-hop")
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;
    let r = p
        .get_with(
            "/f",
            &[
                ("connection", "x-secret-hop"),
                ("x-secret-hop", "1"),
                ("x-custom", "kept"),
                ("host", "api.example"),
            ],
        )
        .await;
    assert!(r.body.contains("xff=Some(\"127.0.0.1\")"), "{}", r.body);
    assert!(r.body.contains("proto=Some(\"http\")"));
    assert!(r.body.contains("host=Some(\"api.example\")"));
    assert!(r.body.contains("via=Some(\"1.1 cachegate\")"));
    assert!(
        r.body.contains("secret=None"),
        "a header named in Connection is not forwarded"
    );
    assert!(
        r.body.contains("custom=None"),
        "an unkeyed header does not reach the origin on the cache path: {}",
        r.body
    );
    assert_eq!(
        r.header("x-origin-hop"),
        None,
        "hop-by-hop response headers are removed too"
    );
    assert_eq!(r.header("via"), Some("1.1 cachegate"));
}

#[tokio::test]
async fn unreachable_origin_is_502_slow_origin_is_504_unknown_path_is_404() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let slow = Origin::start(|_| Reply::ok("late").delay(Duration::from_secs(5))).await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nupstreams:\n  dead: {{ url: \"{dead_url}\" }}\n  slow: {{ url: \"{}\", timeout: 300ms }}\n\
         routes:\n  - path: /dead/{{*rest}}\n    upstream: dead\n  - path: /slow/{{*rest}}\n    upstream: slow\n",
        slow.url()
    );
    let p = Proxy::start(&yaml).await;
    let r = p.get("/dead/x").await;
    assert_eq!((r.status, r.body.as_str()), (502, "origin unreachable\n"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let r = p.get("/slow/x").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (504, "origin did not answer in time\n")
    );
    let r = p.get("/nowhere").await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn cache_false_routes_are_forwarded_every_time() {
    let origin =
        Origin::start(|s| Reply::ok(format!("n={}", s.n)).header("cache-control", "max-age=60"))
            .await;
    let routes = "  - path: /live/{*rest}\n    upstream: origin\n    cache: false\n";
    let p = Proxy::start(&proxy::config_yaml(&origin.url(), "ttl: 60s", routes)).await;
    assert_eq!(p.get("/live/a").await.body, "n=0");
    let r = p.get("/live/a").await;
    assert_eq!(r.body, "n=1");
    assert_eq!(r.cache_status(), "cachegate; fwd=bypass; fwd-status=200");
}

#[tokio::test]
async fn unsafe_methods_are_forwarded_with_their_body_and_invalidate() {
    let origin = Origin::start(|s| match s.method.as_str() {
        "GET" => Reply::ok(format!("get {}", s.n)),
        _ => Reply::ok("updated")
            .status(200)
            .header("location", "/items/2"),
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;
    assert_eq!(p.get("/items/1").await.body, "get 0");
    assert_eq!(p.get("/items/2").await.body, "get 0");
    assert!(p.get("/items/1").await.cache_status().contains("hit"));

    let client = proxy::client();
    let r = client
        .put(p.url("/items/1"))
        .body("new value")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("fwd=bypass"));

    let after = p.get("/items/1").await;
    assert_eq!(after.body, "get 2", "the PUT invalidated the stored GET");
    assert!(after.cache_status().contains("fwd=miss"));
    assert_eq!(
        p.get("/items/2").await.body,
        "get 1",
        "and the Location it named"
    );
}

#[tokio::test]
async fn request_bodies_reach_the_origin() {
    let origin = Origin::start(|s| {
        Reply::ok(format!(
            "len={:?} read={}",
            s.headers.get("content-length"),
            s.body.len()
        ))
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;
    let r = proxy::client()
        .post(p.url("/upload"))
        .body(vec![b'a'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "len=Some(\"100000\") read=100000");
}

#[tokio::test]
async fn client_conditionals_get_304_from_a_fresh_entry() {
    let origin = Origin::start(|_| {
        Reply::ok("tagged")
            .header("etag", "W/\"abc\"")
            .header("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT")
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;
    p.get("/c").await;
    let r = p.get_with("/c", &[("if-none-match", "\"abc\"")]).await;
    assert_eq!(r.status, 304);
    assert_eq!(r.body, "");
    assert_eq!(r.header("etag"), Some("W/\"abc\""));
    let r = p.get_with("/c", &[("if-none-match", "\"other\"")]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "tagged"));
    let r = p
        .get_with(
            "/c",
            &[("if-modified-since", "Wed, 02 Jan 2030 00:00:00 GMT")],
        )
        .await;
    assert_eq!(r.status, 304);
    assert_eq!(
        origin.hits("/c"),
        1,
        "the origin never saw the conditionals"
    );
}

#[tokio::test]
async fn age_counts_residence_time() {
    let origin = Origin::start(|_| Reply::ok("aged").header("age", "10")).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;
    let first = p.get("/age").await;
    assert_eq!(first.header("age"), Some("10"), "upstream Age is kept");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = p.get("/age").await;
    assert_eq!(later.header("age"), Some("11"));
}

#[tokio::test]
async fn oversized_headers_get_431_and_oversized_bodies_413() {
    let origin = Origin::start(|_| Reply::ok("ok")).await;
    let yaml = format!(
        "{}limits: {{ max_header_bytes: 4KiB, max_request_body: 1KiB }}\n",
        proxy::config_yaml(
            &origin.url(),
            "ttl: 60s",
            "  - path: /{*rest}\n    upstream: origin\n"
        )
    );
    let p = Proxy::start(&yaml).await;
    let big = "v".repeat(8000);
    assert_eq!(
        p.get_with("/x", &[("x-big", big.as_str())]).await.status,
        431
    );
    let r = proxy::client()
        .post(p.url("/x"))
        .body(vec![0u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(origin.total(), 0, "neither reached the origin");
}
