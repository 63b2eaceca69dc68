//! RFC 9111 §5.2.1 request directives (`max-age`, `max-stale`, `min-fresh`,
//! `only-if-cached`, `no-store`, `no-cache`), §5.4 (`Pragma: no-cache`) and the route's
//! `client_no_cache: revalidate | ignore`, with the stampede guarantee for client
//! `no-cache`.

use std::time::Duration;

use crate::support::{proxy, Origin, Proxy, Reply};

/// An origin answering `v{n}` with an ETag, 304 to a matching If-None-Match.
async fn counting_origin() -> Origin {
    Origin::start(|s| {
        if s.headers.get("if-none-match").is_some_and(|v| v == "\"e\"") {
            return Reply::ok("").status(304).header("etag", "\"e\"");
        }
        Reply::ok(format!("v{}", s.n)).header("etag", "\"e\"")
    })
    .await
}

#[tokio::test]
async fn request_max_age_rejects_older_responses() {
    let origin = counting_origin().await;
    let p = Proxy::simple(&origin.url(), "ttl: 600s, jitter: 0").await;
    assert_eq!(p.get("/ma").await.body, "v0");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p
        .get_with("/ma", &[("cache-control", "max-age=3600")])
        .await;
    assert!(
        r.cache_status().starts_with("cachegate; hit"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        origin.hits("/ma"),
        1,
        "max-age=3600 accepts a 1s old response"
    );
    let r = p.get_with("/ma", &[("cache-control", "max-age=0")]).await;
    assert_eq!(
        origin.hits("/ma"),
        2,
        "max-age=0 does not accept a 1s old response"
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "v0", "the origin's 304 validated the stored body");
    assert_eq!(r.header("age"), Some("0"));
}

#[tokio::test]
async fn request_max_age_counts_upstream_age() {
    let origin = Origin::start(|s| {
        Reply::ok(format!("v{}", s.n))
            .header("cache-control", "max-age=600")
            .header("age", "30")
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    p.get("/mu").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    p.get_with("/mu", &[("cache-control", "max-age=60")]).await;
    assert_eq!(origin.hits("/mu"), 1, "Age 31 <= 60");
    p.get_with("/mu", &[("cache-control", "max-age=10")]).await;
    assert_eq!(origin.hits("/mu"), 2, "Age 31 > 10");
}

#[tokio::test]
async fn max_stale_accepts_a_stale_response_unless_the_origin_forbids_it() {
    let origin = Origin::start(|s| {
        let cc = if s.path == "/mustrev" {
            "max-age=1, must-revalidate"
        } else {
            "max-age=1"
        };
        Reply::ok(format!("v{}", s.n)).header("cache-control", cc)
    })
    .await;
    // No stale-while-revalidate window: past max-age only max-stale allows the copy.
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 60s, stale: 0s, stale_if_error: 600s, jitter: 0",
    )
    .await;
    for path in ["/ms", "/ms0", "/plain", "/mustrev"] {
        assert_eq!(p.get(path).await.body, "v0");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p
        .get_with("/ms", &[("cache-control", "max-stale=600")])
        .await;
    assert_eq!(r.body, "v0", "max-stale=600 accepts a 1s stale copy");
    let r = p
        .get_with("/ms0", &[("cache-control", "max-stale=0")])
        .await;
    assert_eq!(r.body, "v1", "max-stale=0 does not accept a stale copy");
    let r = p.get("/plain").await;
    assert_eq!(r.body, "v1", "without max-stale a stale copy is not served");
    let r = p
        .get_with("/mustrev", &[("cache-control", "max-stale")])
        .await;
    assert_eq!(
        r.body, "v1",
        "must-revalidate overrides the client's max-stale"
    );
}

#[tokio::test]
async fn min_fresh_requires_remaining_freshness() {
    let origin = counting_origin().await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    p.get("/mf").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p
        .get_with("/mf", &[("cache-control", "min-fresh=30")])
        .await;
    assert!(
        r.cache_status().starts_with("cachegate; hit"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/mf"), 1);
    p.get_with("/mf", &[("cache-control", "min-fresh=3600")])
        .await;
    assert_eq!(origin.hits("/mf"), 2, "less than 3600s of freshness left");
}

#[tokio::test]
async fn only_if_cached_is_504_when_nothing_is_stored_and_a_hit_otherwise() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    let oic = [("cache-control", "only-if-cached")];
    let r = p.get_with("/oic", &oic).await;
    assert_eq!(r.status, 504);
    assert_eq!(
        origin.hits("/oic"),
        0,
        "only-if-cached never reaches the origin"
    );
    p.get("/oic").await;
    let r = p.get_with("/oic", &oic).await;
    assert_eq!((r.status, r.body.as_str()), (200, "x"));
    assert_eq!(origin.hits("/oic"), 1);
}

#[tokio::test]
async fn only_if_cached_does_not_reach_the_origin_for_a_stale_entry() {
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 1s, stale: 0s, stale_if_error: 60s, jitter: 0",
    )
    .await;
    p.get("/os").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p
        .get_with("/os", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(r.status, 504, "a stale copy not allowed to be served: 504");
    assert_eq!(origin.hits("/os"), 1);
}

#[tokio::test]
async fn request_no_store_prevents_storing_the_response() {
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    let r = p.get_with("/rns", &[("cache-control", "no-store")]).await;
    assert!(
        r.cache_status().contains("detail=no-store"),
        "{}",
        r.cache_status()
    );
    assert_eq!(p.get("/rns").await.body, "v1", "nothing was stored");
}

#[tokio::test]
async fn request_no_cache_revalidates_with_the_stored_validator() {
    let origin = counting_origin().await;
    let p = Proxy::simple(&origin.url(), "ttl: 600s, jitter: 0").await;
    p.get("/rnc").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p.get_with("/rnc", &[("cache-control", "no-cache")]).await;
    assert_eq!(origin.hits("/rnc"), 2);
    assert_eq!(r.body, "v0", "a 304 keeps the body");
    assert!(
        r.cache_status().contains("fwd=request"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        origin.seen()[1].headers.get("if-none-match").unwrap(),
        "\"e\""
    );
}

#[tokio::test]
async fn pragma_no_cache_counts_only_without_cache_control() {
    let origin = counting_origin().await;
    let p = Proxy::simple(&origin.url(), "ttl: 600s, jitter: 0").await;
    p.get("/pr").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    p.get_with(
        "/pr",
        &[("pragma", "no-cache"), ("cache-control", "max-age=600")],
    )
    .await;
    assert_eq!(
        origin.hits("/pr"),
        1,
        "Cache-Control present: Pragma ignored"
    );
    p.get_with("/pr", &[("pragma", "no-cache")]).await;
    assert_eq!(origin.hits("/pr"), 2, "Pragma: no-cache alone revalidates");
}

#[tokio::test]
async fn client_no_cache_ignore_answers_from_the_cache() {
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let routes = "  - path: /{*rest}\n    upstream: origin\n    client_no_cache: ignore\n";
    let p = Proxy::start(&proxy::config_yaml(
        &origin.url(),
        "ttl: 600s, jitter: 0",
        routes,
    ))
    .await;
    p.get("/ign").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p
        .get_with("/ign", &[("cache-control", "no-cache, max-age=0")])
        .await;
    assert_eq!(r.body, "v0");
    assert!(
        r.cache_status().starts_with("cachegate; hit"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/ign"), 1);
}

#[tokio::test]
async fn no_cache_right_after_a_fetch_still_goes_to_the_origin() {
    // Only a copy validated after the request arrived satisfies no-cache (§5.2.1.4);
    // one fetched a moment earlier does not.
    let origin = counting_origin().await;
    let p = Proxy::simple(&origin.url(), "ttl: 600s, jitter: 0").await;
    p.get("/grace").await;
    let r = p.get_with("/grace", &[("cache-control", "no-cache")]).await;
    assert_eq!(
        origin.hits("/grace"),
        2,
        "the no-cache request reached the origin"
    );
    let revalidation = &origin.seen()[1];
    assert_eq!(revalidation.headers.get("if-none-match").unwrap(), "\"e\"");
    assert_eq!(r.body, "v0", "the 304 kept the stored body");
    assert!(
        r.cache_status().contains("fwd=request"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_client_no_cache_requests_make_one_origin_request() {
    let origin = Origin::start(|s| {
        Reply::ok(format!("v{}", s.n)).delay(Duration::from_millis(if s.n == 0 { 0 } else { 300 }))
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 600s, jitter: 0").await;
    p.get("/cnc").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resps = p.burst(200, "/cnc", &[("cache-control", "no-cache")]).await;
    assert_eq!(
        origin.hits("/cnc"),
        2,
        "200 no-cache clients, one origin request"
    );
    assert!(resps.iter().all(|r| r.status == 200 && r.body == "v1"));
    let resps = p.burst(200, "/cnc", &[("pragma", "no-cache")]).await;
    assert!(resps.iter().all(|r| r.status == 200));
    assert!(
        origin.hits("/cnc") <= 3,
        "Pragma: no-cache flood coalesced too"
    );
}
