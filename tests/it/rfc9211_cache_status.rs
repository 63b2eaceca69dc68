//! RFC 9211 `Cache-Status`: every response carries this cache's member with `hit`,
//! `fwd`, `fwd-status`, `stored`, `collapsed`, `ttl`, `key` (only when the route shows
//! it) and `detail`; members from caches nearer the origin are kept first.

use std::time::Duration;

use crate::support::{proxy, Origin, Proxy, Reply};

#[tokio::test]
async fn miss_then_hit() {
    let origin = Origin::start(|_| Reply::ok("x").header("cache-control", "max-age=100")).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    let a = p.get("/s").await;
    assert!(
        a.cache_status() == "cachegate; fwd=miss; fwd-status=200; stored; ttl=100"
            || a.cache_status() == "cachegate; fwd=miss; fwd-status=200; stored; ttl=99",
        "{}",
        a.cache_status()
    );
    let b = p.get("/s").await;
    assert!(
        b.cache_status().starts_with("cachegate; hit; ttl=9"),
        "{}",
        b.cache_status()
    );
    assert!(!b.cache_status().contains("fwd="));
}

#[tokio::test]
async fn key_is_shown_only_when_the_route_allows() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let routes = "  - path: /shown/{id}\n    upstream: origin\n    show_key: true\n  - path: /{*rest}\n    upstream: origin\n";
    let p = Proxy::start(&proxy::config_yaml(&origin.url(), "ttl: 60s", routes)).await;
    let a = p.get("/shown/7").await;
    assert!(
        a.cache_status().contains("; key=\""),
        "{}",
        a.cache_status()
    );
    assert!(a.cache_status().contains('7'), "{}", a.cache_status());
    let b = p.get("/shown/7").await;
    assert!(
        b.cache_status().starts_with("cachegate; hit") && b.cache_status().contains("; key=\""),
        "{}",
        b.cache_status()
    );
    let c = p.get("/hidden").await;
    assert!(!c.cache_status().contains("key="), "{}", c.cache_status());
}

#[tokio::test]
async fn detail_names_why_a_response_was_not_stored() {
    let origin = Origin::start(|s| match s.path.as_str() {
        "/status" => Reply::ok("x").status(500),
        "/nostore" => Reply::ok("x").header("cache-control", "no-store"),
        "/private" => Reply::ok("x").header("cache-control", "private"),
        "/auth" => Reply::ok("x"),
        "/star" => Reply::ok("x").header("vary", "*"),
        "/cookie" => Reply::ok("x").header("set-cookie", "a=b"),
        _ => Reply::ok("x"),
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;
    for (path, headers, detail) in [
        (
            "/status",
            vec![],
            "fwd=miss; fwd-status=500; detail=uncacheable-status",
        ),
        ("/nostore", vec![], "detail=no-store"),
        ("/private", vec![], "detail=private"),
        (
            "/auth",
            vec![("authorization", "Bearer x")],
            "detail=authorization",
        ),
        ("/star", vec![], "detail=vary-star"),
        ("/cookie", vec![], "detail=set-cookie"),
    ] {
        let r = p.get_with(path, &headers).await;
        assert!(
            r.cache_status().contains(detail),
            "{path}: {}",
            r.cache_status()
        );
        assert!(
            !r.cache_status().contains("stored"),
            "{path}: {}",
            r.cache_status()
        );
    }
    let r = p.request("POST", "/post", &[]).await;
    assert_eq!(
        r.cache_status(),
        "cachegate; fwd=bypass; fwd-status=200; detail=method"
    );
}

#[tokio::test]
async fn bypass_routes_say_fwd_bypass() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let routes = "  - path: /{*rest}\n    upstream: origin\n    cache: false\n";
    let p = Proxy::start(&proxy::config_yaml(&origin.url(), "ttl: 60s", routes)).await;
    let r = p.get("/b").await;
    assert!(
        r.cache_status()
            .starts_with("cachegate; fwd=bypass; fwd-status=200"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn fwd_request_stale_and_revalidated() {
    let origin = Origin::start(|s| {
        if s.headers.contains_key("if-none-match") {
            Reply::ok("").status(304).header("etag", "\"e\"")
        } else {
            Reply::ok("x").header("etag", "\"e\"")
        }
    })
    .await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 1s, stale: 0s, stale_if_error: 60s, jitter: 0",
    )
    .await;
    p.get("/f").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p.get("/f").await;
    assert!(
        r.cache_status()
            .contains("fwd=stale; fwd-status=304; stored"),
        "{}",
        r.cache_status()
    );
    assert!(
        r.cache_status().contains("detail="),
        "the 304 revalidation is named: {}",
        r.cache_status()
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p.get_with("/f", &[("cache-control", "no-cache")]).await;
    assert!(
        r.cache_status().contains("fwd=stale") || r.cache_status().contains("fwd=request"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn client_no_cache_on_a_fresh_entry_is_fwd_request() {
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    p.get("/nc").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p.get_with("/nc", &[("cache-control", "no-cache")]).await;
    assert!(
        r.cache_status()
            .starts_with("cachegate; fwd=request; fwd-status=200; stored"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_say_collapsed() {
    let origin = Origin::start(|_| Reply::ok("x").delay(Duration::from_millis(300))).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;
    let resps = p.burst(20, "/c", &[]).await;
    let mut collapsed = 0;
    for r in resps {
        if r.cache_status()
            .contains("fwd=miss; fwd-status=200; collapsed")
        {
            collapsed += 1;
        }
    }
    assert!(collapsed > 0);
    assert_eq!(origin.hits("/c"), 1);
}

#[tokio::test]
async fn members_from_caches_nearer_the_origin_come_first() {
    let origin =
        Origin::start(|_| Reply::ok("x").header("cache-status", "origin-cache; hit")).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;
    let a = p.get("/m").await;
    assert!(
        a.cache_status()
            .starts_with("origin-cache; hit, cachegate; fwd=miss"),
        "{}",
        a.cache_status()
    );
    let b = p.get("/m").await;
    assert!(
        b.cache_status()
            .starts_with("origin-cache; hit, cachegate; hit"),
        "{}",
        b.cache_status()
    );
    assert_eq!(
        b.cache_status().matches("cachegate").count(),
        1,
        "ours is not repeated: {}",
        b.cache_status()
    );
}

#[tokio::test]
async fn origin_errors_carry_cache_status() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let p = Proxy::simple(&url, "ttl: 60s").await;
    let r = p.get("/e").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.cache_status(), "cachegate; fwd=miss");
}

#[tokio::test]
async fn only_if_cached_504_carries_cache_status() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;
    let r = p
        .get_with("/e", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(r.status, 504);
    assert!(
        r.cache_status().starts_with("cachegate; fwd=miss"),
        "{:?}",
        r.cache_status()
    );
}
