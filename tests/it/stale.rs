//! Soft and hard TTLs: stale-while-revalidate with exactly one background refresh,
//! validators and 304s, and stale-if-error when the origin fails.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{Origin, Proxy, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_key_serves_200_clients_at_once_with_one_refresh() {
    // The first answer is quick; refreshes take 800ms.
    let origin = Origin::start(|s| {
        let delay = if s.n == 0 { 0 } else { 800 };
        Reply::ok(format!("v{}", s.n)).delay(Duration::from_millis(delay))
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 1s, stale: 60s, jitter: 0").await;
    assert_eq!(p.get("/hot").await.body, "v0");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    for r in p.burst(200, "/hot", &[]).await {
        // Had any client waited for the 800ms refresh it would have the new body.
        assert_eq!(r.body, "v0");
        assert!(
            r.cache_status().contains("hit; ttl=-"),
            "{}",
            r.cache_status()
        );
        assert!(r.cache_status().contains("detail=stale-while-revalidate"));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(origin.hits("/hot"), 2, "exactly one background refresh");
    let r = p.get("/hot").await;
    assert_eq!(r.body, "v1");
    assert!(
        r.cache_status().starts_with("cachegate; hit; ttl="),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn refresh_revalidates_with_the_etag_and_a_304_keeps_the_body() {
    let origin = Origin::start(|s| {
        if s.headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            return Reply::ok("")
                .status(304)
                .header("etag", "\"v1\"")
                .header("x-renewed", "yes");
        }
        Reply::ok("the body").header("etag", "\"v1\"")
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 1s, stale: 60s, jitter: 0").await;
    assert_eq!(p.get("/doc").await.body, "the body");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = p.get("/doc").await;
    assert!(stale.cache_status().contains("stale-while-revalidate"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers.get("if-none-match").unwrap(), "\"v1\"");
    let fresh = p.get("/doc").await;
    assert_eq!(
        fresh.body, "the body",
        "the 304 renewed the entry without a new body"
    );
    assert_eq!(
        fresh.header("x-renewed"),
        Some("yes"),
        "the 304's headers were merged"
    );
    assert!(
        fresh.cache_status().starts_with("cachegate; hit; ttl=0")
            || fresh.cache_status().contains("ttl=1")
    );
    assert!(
        !fresh.cache_status().contains("ttl=-"),
        "{}",
        fresh.cache_status()
    );
}

#[tokio::test]
async fn past_the_hard_ttl_a_request_waits_for_the_origin() {
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    // Kept for stale-if-error, but past the hard TTL it is not served while the origin works.
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 1s, stale: 1s, stale_if_error: 30s, jitter: 0",
    )
    .await;
    assert_eq!(p.get("/k").await.body, "v0");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = p.get("/k").await;
    assert_eq!(r.body, "v1");
    assert!(
        r.cache_status()
            .contains("fwd=stale; fwd-status=200; stored"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn origin_down_serves_stale_within_stale_if_error_and_502_after() {
    let origin = Origin::start(|_| Reply::ok("last good")).await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 1s, stale: 0s, stale_if_error: 2s, jitter: 0",
    )
    .await;
    assert_eq!(p.get("/a").await.body, "last good");
    origin.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let r = p.get("/a").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "last good");
    assert!(
        r.cache_status().contains("fwd=stale"),
        "{}",
        r.cache_status()
    );
    assert!(r.cache_status().contains("detail=stale-if-error"));

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = p.get("/a").await;
    assert_eq!(r.status, 502, "past stale_if_error the failure shows");
}

#[tokio::test]
async fn origin_5xx_serves_stale_and_says_so() {
    let status = Arc::new(AtomicU16::new(200));
    let s2 = status.clone();
    let origin = Origin::start(move |_| Reply::ok("good").status(s2.load(Ordering::SeqCst))).await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 1s, stale: 0s, stale_if_error: 1h, jitter: 0",
    )
    .await;
    assert_eq!(p.get("/b").await.body, "good");
    status.store(503, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p.get("/b").await;
    assert_eq!((r.status, r.body.as_str()), (200, "good"));
    assert!(
        r.cache_status().contains("fwd=stale; fwd-status=503")
            && r.cache_status().contains("detail=stale-if-error"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn must_revalidate_is_never_served_stale() {
    let origin = Origin::start(|s| {
        if s.n == 0 {
            Reply::ok("v0").header("cache-control", "max-age=1, must-revalidate")
        } else {
            Reply::ok("down").status(503)
        }
    })
    .await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 1s, stale: 60s, stale_if_error: 1h, jitter: 0",
    )
    .await;
    assert_eq!(p.get("/m").await.body, "v0");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p.get("/m").await;
    assert_eq!(
        r.status, 503,
        "must-revalidate: the origin's error, not a stale copy"
    );
}
