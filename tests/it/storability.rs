//! What must not be shared is never stored: `no-store`, `private`, `Set-Cookie`,
//! `Authorization`; oversized bodies pass through.

use crate::support::{proxy, Origin, Proxy, Reply};

/// Two identical GETs; returns the origin's count and the second Cache-Status.
async fn twice(
    reply: Reply,
    headers: &[(&str, &str)],
    routes_extra: &str,
) -> (usize, String, String) {
    let origin = Origin::start(move |_| reply.clone()).await;
    let routes = format!("  - path: /{{*rest}}\n    upstream: origin\n{routes_extra}");
    let p = Proxy::start(&proxy::config_yaml(&origin.url(), "ttl: 60s", &routes)).await;
    let first = p.get_with("/r", headers).await;
    let second = p.get_with("/r", headers).await;
    assert_eq!(first.body, second.body);
    (
        origin.hits("/r"),
        first.cache_status().to_string(),
        second.cache_status().to_string(),
    )
}

#[tokio::test]
async fn no_store_private_and_set_cookie_are_never_stored() {
    let cases = [
        (
            Reply::ok("a").header("cache-control", "no-store"),
            "detail=no-store",
        ),
        (
            Reply::ok("b").header("cache-control", "private, max-age=60"),
            "detail=private",
        ),
        (
            Reply::ok("c").header("set-cookie", "session=secret"),
            "detail=set-cookie",
        ),
    ];
    for (reply, detail) in cases {
        let (hits, first, _) = twice(reply, &[], "").await;
        assert_eq!(hits, 2, "{detail}: both requests reached the origin");
        assert!(
            first.contains("fwd=miss") && first.contains(detail),
            "{first}"
        );
        assert!(!first.contains("stored"));
    }
}

#[tokio::test]
async fn authorization_requests_are_not_shared_unless_the_origin_says_public() {
    let auth = [("authorization", "Bearer alice")];
    let (hits, first, _) = twice(Reply::ok("mine"), &auth, "").await;
    assert_eq!(hits, 2);
    assert!(first.contains("detail=authorization"), "{first}");

    let (hits, _, second) = twice(
        Reply::ok("public").header("cache-control", "public, max-age=60"),
        &auth,
        "",
    )
    .await;
    assert_eq!(hits, 1, "public makes an authenticated response shareable");
    assert!(second.contains("hit"));
}

#[tokio::test]
async fn a_route_may_opt_in_to_caching_set_cookie() {
    let (hits, _, second) = twice(
        Reply::ok("c").header("set-cookie", "a=b"),
        &[],
        "    cache_set_cookie: true\n",
    )
    .await;
    assert_eq!(hits, 1);
    assert!(second.starts_with("cachegate; hit"), "{second}");
}

#[tokio::test]
async fn bodies_over_max_body_pass_through_whole_and_uncached() {
    let big = "x".repeat(300_000);
    let (hits, first, _) = twice(Reply::ok(big.clone()), &[], "    max_body: 100KiB\n").await;
    assert_eq!(hits, 2);
    assert!(first.contains("detail=too-large"), "{first}");

    let origin = Origin::start(move |_| Reply::ok(big.clone())).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, max_body: 100KiB").await;
    assert_eq!(
        p.get("/big").await.body.len(),
        300_000,
        "the whole body reaches the client"
    );
}

#[tokio::test]
async fn uncacheable_statuses_are_not_stored_without_explicit_freshness() {
    let (hits, first, _) = twice(Reply::ok("err").status(500), &[], "").await;
    assert_eq!(hits, 2);
    assert!(first.contains("fwd-status=500"), "{first}");
    let (hits, _, _) = twice(Reply::ok("gone").status(404), &[], "").await;
    assert_eq!(hits, 1, "404 is cacheable by default (RFC 9110 §15.1)");
    for status in [403, 500] {
        let reply = Reply::ok("explicit")
            .status(status)
            .header("cache-control", "max-age=60");
        let (hits, _, second) = twice(reply, &[], "").await;
        assert_eq!(
            hits, 1,
            "{status} with explicit freshness may be stored (RFC 9111 §3)"
        );
        assert!(second.starts_with("cachegate; hit"), "{second}");
    }
}

#[tokio::test]
async fn vary_star_is_never_stored() {
    let (hits, first, _) = twice(Reply::ok("v").header("vary", "*"), &[], "").await;
    assert_eq!(hits, 2);
    assert!(first.contains("detail=vary-star"), "{first}");
}
