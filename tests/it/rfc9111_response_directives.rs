//! RFC 9111 §5.2.2 response directives (`no-store`, `private`, `private="f"`,
//! `no-cache`, `no-cache="f"`, `must-revalidate`, `proxy-revalidate`, `public`,
//! `immutable`), §3.5 (Authorization) and RFC 5861 (`stale-while-revalidate`,
//! `stale-if-error`).

use std::time::Duration;

use crate::support::{Origin, Proxy, Reply, Resp};

#[tokio::test]
async fn no_store_is_never_stored_even_with_max_age() {
    let origin = Origin::start(|s| {
        Reply::ok(format!("v{}", s.n)).header("cache-control", "max-age=60, no-store")
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    let a = p.get("/ns").await;
    let b = p.get("/ns").await;
    assert_eq!((a.body.as_str(), b.body.as_str()), ("v0", "v1"));
    assert!(
        a.cache_status().contains("detail=no-store"),
        "{}",
        a.cache_status()
    );
    assert!(!a.cache_status().contains("stored"));
    assert_eq!(b.header("cache-control"), Some("max-age=60, no-store"));
}

#[tokio::test]
async fn private_is_never_stored_by_a_shared_cache() {
    let origin = Origin::start(|s| {
        Reply::ok(format!("v{}", s.n)).header("cache-control", "private, s-maxage=60")
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    let a = p.get("/p").await;
    let b = p.get("/p").await;
    assert_eq!((a.body.as_str(), b.body.as_str()), ("v0", "v1"));
    assert!(
        a.cache_status().contains("detail=private"),
        "{}",
        a.cache_status()
    );
}

/// Two GETs of `/q` answered with `cc` and the fields it names: returns the second.
async fn qualified(cc: &'static str) -> (Origin, Resp, Resp) {
    let origin = Origin::start(move |s| {
        Reply::ok(format!("v{}", s.n))
            .header("cache-control", cc)
            .header("x-user", "alice")
            .header("x-plan", "gold")
            .header("x-shared", "yes")
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    let first = p.get("/q").await;
    let second = p.get("/q").await;
    (origin, first, second)
}

#[tokio::test]
async fn qualified_private_stores_the_response_without_the_named_fields() {
    let (origin, first, second) = qualified("max-age=60, private=\"x-user, x-plan\"").await;
    assert_eq!(
        first.header("x-user"),
        Some("alice"),
        "the requesting client gets them"
    );
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    assert_eq!(
        origin.hits("/q"),
        1,
        "private=\"f\" does not prevent storing"
    );
    assert_eq!(second.body, "v0");
    assert_eq!(
        second.header("x-user"),
        None,
        "private=\"x-user\" is not shared"
    );
    assert_eq!(second.header("x-plan"), None, "the list names two fields");
    assert_eq!(second.header("x-shared"), Some("yes"));
}

#[tokio::test]
async fn qualified_no_cache_stores_the_response_without_the_named_fields() {
    let (origin, first, second) = qualified("max-age=60, no-cache=\"x-user\"").await;
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    assert_eq!(
        origin.hits("/q"),
        1,
        "no-cache=\"f\" does not require revalidation"
    );
    assert_eq!(second.body, "v0");
    assert_eq!(
        second.header("x-user"),
        None,
        "no-cache=\"x-user\" is not reused"
    );
    assert_eq!(second.header("x-plan"), Some("gold"));
}

#[tokio::test]
async fn qualified_private_and_no_cache_never_share_the_named_fields() {
    // Whatever the storage decision, the named fields never reach another client.
    for cc in [
        "max-age=60, private=\"x-user\"",
        "max-age=60, no-cache=\"x-user\"",
    ] {
        let (_, first, second) = qualified(cc).await;
        assert_eq!(first.header("x-user"), Some("alice"));
        if second.cache_status().starts_with("cachegate; hit") {
            assert_eq!(second.header("x-user"), None, "{cc}");
        }
    }
}

#[tokio::test]
async fn no_cache_is_stored_but_revalidated_before_reuse_and_a_304_serves_the_stored_body() {
    let origin = Origin::start(|s| {
        if s.headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"nc1\"")
        {
            return Reply::ok("").status(304).header("etag", "\"nc1\"");
        }
        Reply::ok(format!("body{}", s.n))
            .header("cache-control", "no-cache")
            .header("etag", "\"nc1\"")
    })
    .await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 60s, stale: 60s, stale_if_error: 60s, jitter: 0",
    )
    .await;
    let first = p.get("/nc").await;
    assert_eq!(first.body, "body0");
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    // At once: a no-cache entry is never reused without asking the origin.
    let second = p.get("/nc").await;
    assert_eq!(second.status, 200);
    assert_eq!(
        second.body, "body0",
        "the 304 let the stored body be reused"
    );
    assert!(
        !second
            .cache_status()
            .contains("detail=stale-while-revalidate"),
        "no-cache is never served stale: {}",
        second.cache_status()
    );
    let seen = origin.seen();
    assert_eq!(seen.len(), 2, "revalidated before reuse");
    assert_eq!(seen[1].headers.get("if-none-match").unwrap(), "\"nc1\"");
    assert_eq!(second.header("cache-control"), Some("no-cache"));
}

#[tokio::test]
async fn no_cache_without_a_validator_is_refetched_before_reuse() {
    let origin =
        Origin::start(|s| Reply::ok(format!("v{}", s.n)).header("cache-control", "no-cache")).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, stale: 60s, jitter: 0").await;
    assert_eq!(p.get("/nv").await.body, "v0");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(p.get("/nv").await.body, "v1");
    assert_eq!(origin.hits("/nv"), 2);
}

#[tokio::test]
async fn no_cache_entry_is_not_served_when_revalidation_fails() {
    let origin = Origin::start(|s| {
        if s.n == 0 {
            Reply::ok("v0")
                .header("cache-control", "no-cache, stale-if-error=600")
                .header("etag", "\"e\"")
        } else {
            Reply::ok("down").status(503)
        }
    })
    .await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 60s, stale: 60s, stale_if_error: 1h, jitter: 0",
    )
    .await;
    assert_eq!(p.get("/nf").await.body, "v0");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p.get("/nf").await;
    assert_eq!(
        r.status, 503,
        "no-cache: the origin's error, never an unvalidated copy"
    );
}

#[tokio::test]
async fn must_revalidate_and_proxy_revalidate_are_never_served_stale() {
    // n == 0: the stored response; afterwards /ok/* answers 200 and /err/* fails.
    let origin = Origin::start(|s| {
        if s.n == 0 {
            let cc = if s.path.ends_with("/mr") {
                "max-age=1, must-revalidate, stale-while-revalidate=600, stale-if-error=600"
            } else {
                "max-age=1, proxy-revalidate, stale-while-revalidate=600, stale-if-error=600"
            };
            Reply::ok("v0").header("cache-control", cc)
        } else if s.path.starts_with("/err") {
            Reply::ok("down").status(503)
        } else {
            Reply::ok("v1").header("cache-control", "max-age=60")
        }
    })
    .await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 60s, stale: 60s, stale_if_error: 1h, jitter: 0",
    )
    .await;
    let paths = ["/ok/mr", "/ok/pr", "/err/mr", "/err/pr"];
    for path in paths {
        assert_eq!(p.get(path).await.body, "v0");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for path in ["/ok/mr", "/ok/pr"] {
        let r = p.get(path).await;
        assert_eq!(
            r.body, "v1",
            "{path}: not served stale under stale-while-revalidate"
        );
        assert!(
            !r.cache_status().contains("stale-while-revalidate"),
            "{}",
            r.cache_status()
        );
    }
    for path in ["/err/mr", "/err/pr"] {
        let r = p.get(path).await;
        assert_eq!(
            r.status, 503,
            "{path}: not served stale under stale-if-error"
        );
        assert!(
            !r.cache_status().contains("detail=stale-if-error"),
            "{}",
            r.cache_status()
        );
    }
}

#[tokio::test]
async fn must_revalidate_responses_are_reused_while_fresh() {
    let origin =
        Origin::start(|_| Reply::ok("x").header("cache-control", "max-age=60, must-revalidate"))
            .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    p.get("/mr").await;
    let r = p.get("/mr").await;
    assert!(
        r.cache_status().starts_with("cachegate; hit"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/mr"), 1);
}

#[tokio::test]
async fn proxy_revalidate_responses_are_reused_while_fresh() {
    let origin =
        Origin::start(|_| Reply::ok("x").header("cache-control", "max-age=60, proxy-revalidate"))
            .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    p.get("/pr").await;
    let r = p.get("/pr").await;
    assert!(
        r.cache_status().starts_with("cachegate; hit"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        origin.hits("/pr"),
        1,
        "proxy-revalidate only forbids serving it stale"
    );
}

#[tokio::test]
async fn public_and_s_maxage_and_must_revalidate_allow_sharing_authorized_responses() {
    let origin = Origin::start(|s| {
        let cc = match s.path.as_str() {
            "/public" => "public",
            "/smaxage" => "s-maxage=60",
            "/mustrev" => "max-age=60, must-revalidate",
            _ => "max-age=60",
        };
        Reply::ok(format!("v{}", s.n)).header("cache-control", cc)
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    let auth = [("authorization", "Bearer a")];
    let mut plain_first = String::new();
    for path in ["/public", "/smaxage", "/mustrev", "/plain"] {
        let first = p.get_with(path, &auth).await;
        if path == "/plain" {
            plain_first = first.cache_status().to_string();
        }
        p.get_with(path, &auth).await;
    }
    assert_eq!(origin.hits("/public"), 1);
    assert_eq!(origin.hits("/smaxage"), 1);
    assert_eq!(origin.hits("/mustrev"), 1);
    assert_eq!(
        origin.hits("/plain"),
        2,
        "max-age alone does not share an authorized response"
    );
    assert!(
        plain_first.contains("detail=authorization"),
        "{plain_first}"
    );
}

#[tokio::test]
async fn public_and_immutable_responses_are_stored_and_reused_while_fresh() {
    let origin = Origin::start(|s| {
        Reply::ok(format!("v{}", s.n)).header("cache-control", "public, immutable, max-age=60")
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 1s, jitter: 0").await;
    p.get("/imm").await;
    let r = p.get("/imm").await;
    assert_eq!(r.body, "v0");
    assert!(
        r.cache_status().starts_with("cachegate; hit"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        r.header("cache-control"),
        Some("public, immutable, max-age=60")
    );
    assert_eq!(origin.hits("/imm"), 1);
}

#[tokio::test]
async fn origin_stale_while_revalidate_serves_stale_and_refreshes_once() {
    let origin = Origin::start(|s| {
        Reply::ok(format!("v{}", s.n))
            .header("cache-control", "max-age=1, stale-while-revalidate=60")
    })
    .await;
    // The route adds no stale window: only the origin's.
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 60s, stale: 0s, stale_if_error: 0s, jitter: 0",
    )
    .await;
    assert_eq!(p.get("/swr").await.body, "v0");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p.get("/swr").await;
    assert_eq!(r.body, "v0", "served stale at once");
    assert!(
        r.cache_status().contains("detail=stale-while-revalidate"),
        "{}",
        r.cache_status()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(origin.hits("/swr"), 2, "one background refresh");
    assert_eq!(p.get("/swr").await.body, "v1");
}

#[tokio::test]
async fn origin_stale_if_error_serves_stale_when_the_origin_fails() {
    let origin = Origin::start(|s| {
        if s.n == 0 {
            Reply::ok("good").header("cache-control", "max-age=1, stale-if-error=60")
        } else {
            Reply::ok("bad").status(500)
        }
    })
    .await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 60s, stale: 0s, stale_if_error: 0s, jitter: 0",
    )
    .await;
    assert_eq!(p.get("/sie").await.body, "good");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p.get("/sie").await;
    assert_eq!((r.status, r.body.as_str()), (200, "good"));
    assert!(
        r.cache_status().contains("fwd=stale; fwd-status=500")
            && r.cache_status().contains("detail=stale-if-error"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_requests_for_a_no_cache_entry_make_one_origin_request() {
    let origin = Origin::start(|s| {
        Reply::ok(format!("v{}", s.n))
            .header("cache-control", "no-cache")
            .header("etag", "\"s\"")
            .delay(Duration::from_millis(if s.n == 0 { 0 } else { 300 }))
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    assert_eq!(p.get("/flood").await.body, "v0");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resps = p.burst(200, "/flood", &[]).await;
    assert!(resps.iter().all(|r| r.status == 200));
    assert_eq!(origin.hits("/flood"), 2, "200 clients, one revalidation");
}

#[tokio::test]
async fn s_maxage_is_never_served_stale_under_the_route_windows() {
    // n == 0: the stored response; afterwards /ok/* answers 200 and /err/* fails.
    let origin = Origin::start(|s| {
        if s.n == 0 {
            Reply::ok("v0").header("cache-control", "s-maxage=1")
        } else if s.path.starts_with("/err") {
            Reply::ok("down").status(503)
        } else {
            Reply::ok("v1").header("cache-control", "s-maxage=60")
        }
    })
    .await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 60s, stale: 60s, stale_if_error: 1h, jitter: 0",
    )
    .await;
    for path in ["/ok/s", "/err/s"] {
        assert_eq!(p.get(path).await.body, "v0");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p.get("/ok/s").await;
    assert_eq!(
        r.body, "v1",
        "s-maxage carries proxy-revalidate: the route's stale window does not apply"
    );
    let r = p.get("/err/s").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "down"),
        "nor the route's stale_if_error: {}",
        r.cache_status()
    );
    // A client's max-stale does not either (RFC 9111 §5.2.2.8 via §5.2.2.10).
    let r = p
        .get_with("/err/s", &[("cache-control", "max-stale")])
        .await;
    assert_eq!(r.status, 503, "{}", r.cache_status());
}

#[tokio::test]
async fn s_maxage_is_served_stale_only_under_the_origin_s_own_stale_directives() {
    let origin = Origin::start(|s| {
        if s.n == 0 {
            let cc = if s.path == "/swr" {
                "s-maxage=1, stale-while-revalidate=60"
            } else {
                "s-maxage=1, stale-if-error=60"
            };
            Reply::ok("v0").header("cache-control", cc)
        } else {
            Reply::ok("down").status(503)
        }
    })
    .await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 60s, stale: 0s, stale_if_error: 0s, jitter: 0",
    )
    .await;
    for path in ["/swr", "/sie"] {
        assert_eq!(p.get(path).await.body, "v0");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p.get("/swr").await;
    assert_eq!((r.status, r.body.as_str()), (200, "v0"));
    assert!(
        r.cache_status().contains("detail=stale-while-revalidate"),
        "{}",
        r.cache_status()
    );
    let r = p.get("/sie").await;
    assert_eq!((r.status, r.body.as_str()), (200, "v0"));
    assert!(
        r.cache_status().contains("detail=stale-if-error"),
        "{}",
        r.cache_status()
    );
}
