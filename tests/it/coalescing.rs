//! A cache stampede never reaches the origin: concurrent misses make one request.

use std::time::Duration;

use crate::support::{Origin, Proxy, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_key_200_concurrent_requests_make_one_origin_request() {
    let origin =
        Origin::start(|s| Reply::ok(format!("user {}", s.n)).delay(Duration::from_millis(300)))
            .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;

    let resps = p.burst(200, "/users/1", &[]).await;

    assert_eq!(
        origin.hits("/users/1"),
        1,
        "one origin request for 200 clients"
    );
    assert!(resps.iter().all(|r| r.status == 200 && r.body == "user 0"));
    let stored = resps
        .iter()
        .filter(|r| r.cache_status().contains("stored"))
        .count();
    let collapsed = resps
        .iter()
        .filter(|r| r.cache_status().contains("collapsed"))
        .count();
    let hits = resps
        .iter()
        .filter(|r| r.cache_status().starts_with("cachegate; hit"))
        .count();
    assert_eq!(stored, 1, "the leader stored it");
    assert!(collapsed > 0, "requests waited for the leader");
    // Requests the machine only got to after the fetch finished are plain hits.
    assert_eq!(stored + collapsed + hits, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uncacheable_response_releases_waiters_to_the_origin_concurrently() {
    let origin = Origin::start(|s| {
        Reply::ok(format!("private {}", s.n))
            .header("cache-control", "private")
            .delay(Duration::from_millis(200))
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;

    let resps = p.burst(20, "/me", &[]).await;

    assert!(resps
        .iter()
        .all(|r| r.status == 200 && r.body.starts_with("private")));
    assert_eq!(
        origin.hits("/me"),
        20,
        "a private response is never shared with waiters"
    );
    assert!(
        origin.max_in_flight() > 1,
        "waiters went to the origin together, not queued one behind the other"
    );
    // Remembered as hit-for-miss: the next request goes straight to the origin.
    let r = p.get("/me").await;
    assert!(
        r.cache_status().contains("detail=hit-for-miss"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_no_cache_revalidates_through_one_coalesced_request() {
    let origin =
        Origin::start(|s| Reply::ok(format!("v{}", s.n)).delay(Duration::from_millis(800))).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;
    assert_eq!(p.get("/x").await.body, "v0");

    let resps = p.burst(200, "/x", &[("cache-control", "no-cache")]).await;

    assert_eq!(
        origin.hits("/x"),
        2,
        "200 no-cache clients caused one origin request"
    );
    assert!(
        resps.iter().all(|r| r.body == "v1"),
        "everyone got the revalidated copy"
    );
    let forwarded = resps
        .iter()
        .filter(|r| r.cache_status().contains("fwd=request"))
        .count();
    assert!(forwarded > 0 && resps.iter().all(|r| r.status == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_failure_is_shared_by_waiters_not_retried_by_each() {
    // Nothing listens on this port: connect fails.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let p = Proxy::simple(&url, "ttl: 60s").await;
    let resps = p.burst(50, "/down", &[]).await;
    assert!(
        resps.iter().all(|r| r.status == 502),
        "connect failure is a 502 for everyone"
    );
    assert!(resps.iter().all(|r| r.body == "origin unreachable\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_disconnects_does_not_cancel_the_fetch() {
    let origin =
        Origin::start(|s| Reply::ok(format!("v{}", s.n)).delay(Duration::from_millis(600))).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let gave_up = impatient
        .get(p.url("/slow"))
        .header("host", crate::support::proxy::TEST_HOST)
        .send()
        .await;
    assert!(
        gave_up.is_err(),
        "the first client hung up before the origin answered"
    );

    // A request that arrives while the fetch still runs waits for it rather than refetching.
    let waiter = p.get("/slow").await;
    assert_eq!(waiter.body, "v0");
    assert!(
        waiter.cache_status().contains("collapsed"),
        "{}",
        waiter.cache_status()
    );
    let later = p.get("/slow").await;
    assert!(
        later.cache_status().starts_with("cachegate; hit"),
        "{}",
        later.cache_status()
    );
    assert_eq!(
        origin.hits("/slow"),
        1,
        "the abandoned client's fetch filled the cache"
    );
}
