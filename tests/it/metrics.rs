//! `/metrics` after scripted traffic through the real binary: each family an operator's
//! dashboard and alerts read moves as it must (docs/observability.md lists them).

use std::time::Duration;

use crate::support::fleet::{admin_yaml, eventually, TOKEN};
use crate::support::origin::Seen;
use crate::support::redis::RedisServer;
use crate::support::{proxy, Origin, Reply};
use crate::telemetry::Served;

/// The value of the series `name{labels...}` (labels given as `k="v"` fragments that
/// must all appear), summed over the matching lines; 0 when absent.
fn value(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split([' ', '{']).next() == Some(name) && labels.iter().all(|f| l.contains(f))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(admin: &str) -> String {
    proxy::send(&proxy::client(), "GET", &format!("{admin}/metrics"), &[])
        .await
        .body
}

fn handler(s: &Seen) -> Reply {
    match s.path.as_str() {
        "/err" => Reply::ok("boom").status(500),
        "/slow" => Reply::ok("slow").delay(Duration::from_millis(400)),
        "/a" => Reply::ok("a")
            .header("surrogate-key", "t1")
            .header("etag", "\"e\""),
        p => Reply::ok(format!("{p} {}", "x".repeat(2000))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_family_moves_with_the_traffic_that_drives_it() {
    let origin = Origin::start(handler).await;
    let (admin_line, admin) = admin_yaml();
    let store = "store:\n  backend: memory\n  memory: { max_size: 256KiB }\n";
    let p = Served::start_with(
        &origin,
        "ttl: 1s, stale: 60s, jitter: 0",
        &(admin_line + store),
        &[],
    )
    .await;
    // One client (one pool) for all of it, as a real client would.
    let client = proxy::client();
    let get = |path: &str| {
        let url = format!("{}{path}", p.base);
        let client = client.clone();
        async move { proxy::send(&client, "GET", &url, &[]).await }
    };
    let m0 = scrape(&admin).await;
    assert_eq!(
        value(
            &m0,
            "cachegate_build_info",
            &[&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))]
        ),
        1.0,
        "{m0}"
    );

    // Miss, then hit.
    get("/a").await;
    get("/a").await;
    // Twenty at once on a slow key: one leader, the rest collapsed onto it.
    let burst: Vec<_> = (0..20).map(|_| tokio::spawn(get("/slow"))).collect();
    for b in burst {
        b.await.unwrap();
    }
    // An origin error.
    get("/err").await;
    // Stale: served at once, one refresh (a 304) runs.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    get("/a").await;
    // The refresh lands before the purge below (it runs on a connection worker, beside
    // this test): a purge that meets the key mid-write counts it or not.
    let mut renewed = false;
    for _ in 0..50 {
        let r = get("/a").await;
        if !r.cache_status().contains("stale") {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(renewed, "the refresh renewed /a");
    // A purge by tag.
    let purged = proxy::client()
        .post(format!("{admin}/purge"))
        .bearer_auth(TOKEN)
        .body("{\"tags\": [\"t1\"]}")
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);

    // Churn past the memory bound: evictions.
    for i in 0..300 {
        get(&format!("/fill/{i}")).await;
    }
    let ok = eventually(Duration::from_secs(5), async || {
        value(&scrape(&admin).await, "cachegate_refreshes_total", &[]) >= 1.0
    })
    .await;
    assert!(ok, "the refresh is counted");
    let m = scrape(&admin).await;
    let route = "route=\"/{*rest}\"";
    let checks: Vec<(&str, Vec<&str>, f64)> = vec![
        (
            "cachegate_requests_total",
            vec![route, "cache=\"miss\""],
            1.0,
        ),
        (
            "cachegate_requests_total",
            vec![route, "cache=\"hit\""],
            1.0,
        ),
        (
            "cachegate_requests_total",
            vec![route, "cache=\"collapsed\""],
            1.0,
        ),
        (
            "cachegate_requests_total",
            vec![route, "cache=\"stale\""],
            1.0,
        ),
        (
            "cachegate_request_duration_seconds_count",
            vec![route, "cache=\"hit\""],
            1.0,
        ),
        ("cachegate_coalesced_waiters_total", vec![route], 1.0),
        (
            "cachegate_origin_requests_total",
            vec![route, "kind=\"fetch\""],
            300.0,
        ),
        (
            "cachegate_origin_duration_seconds_count",
            vec!["upstream=\"origin\""],
            300.0,
        ),
        (
            "cachegate_origin_errors_total",
            vec!["upstream=\"origin\"", "reason=\"5xx\""],
            1.0,
        ),
        ("cachegate_refreshes_total", vec![route], 1.0),
        ("cachegate_lease_total", vec!["result=\"granted\""], 300.0),
        (
            "cachegate_store_operations_total",
            vec!["tier=\"memory\"", "op=\"lookup\"", "result=\"hit\""],
            1.0,
        ),
        (
            "cachegate_store_operations_total",
            vec!["tier=\"memory\"", "op=\"lookup\"", "result=\"miss\""],
            300.0,
        ),
        (
            "cachegate_store_operations_total",
            vec!["tier=\"memory\"", "op=\"insert\""],
            300.0,
        ),
        (
            "cachegate_store_evictions_total",
            vec!["tier=\"memory\""],
            1.0,
        ),
        ("cachegate_store_entries", vec!["tier=\"memory\""], 1.0),
        ("cachegate_store_bytes", vec!["tier=\"memory\""], 1.0),
        (
            "cachegate_purges_total",
            vec!["selector=\"tags\"", "mode=\"hard\""],
            1.0,
        ),
        ("cachegate_purged_entries_total", vec![], 1.0),
        // The test client keeps its keep-alive connection open.
        ("cachegate_connections", vec!["listener=\"plain\""], 1.0),
    ];
    for (name, labels, at_least) in checks {
        let v = value(&m, name, &labels);
        assert!(
            v >= at_least && m.contains(name),
            "{name}{labels:?} = {v}, expected at least {at_least}\n{m}"
        );
    }
    // Bounded by bytes: the churn did not grow the store past max_size.
    assert!(value(&m, "cachegate_store_bytes", &["tier=\"memory\""]) <= 256.0 * 1024.0 * 1.1);
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_failure_shows_in_store_errors_and_the_breaker_gauge() {
    let mut redis = RedisServer::start();
    let origin = Origin::start(handler).await;
    let (admin_line, admin) = admin_yaml();
    let store = redis.store_yaml("200ms", "{ max_size: 0 }");
    let p = Served::start_with(&origin, "ttl: 60s", &(admin_line + &store), &[]).await;
    let client = proxy::client();
    let get = |path: String| {
        let url = format!("{}{path}", p.base);
        let client = client.clone();
        async move { proxy::send(&client, "GET", &url, &[]).await }
    };
    get("/r/1".into()).await;
    assert!(get("/r/1".into()).await.cache_status().contains("hit"));
    let m = scrape(&admin).await;
    assert!(
        value(
            &m,
            "cachegate_store_operations_total",
            &["tier=\"l2\"", "result=\"ok\""]
        ) >= 2.0,
        "{m}"
    );
    assert!(
        value(
            &m,
            "cachegate_store_duration_seconds_count",
            &["tier=\"l2\""]
        ) >= 2.0
    );
    assert_eq!(
        value(&m, "cachegate_breaker_open", &["component=\"store:redis\""]),
        0.0
    );

    redis.kill();
    for i in 0..10 {
        let r = get(format!("/r/x{i}")).await;
        assert_eq!(r.status, 200, "served from the origin while Redis is down");
    }
    let m = scrape(&admin).await;
    assert!(
        value(
            &m,
            "cachegate_store_operations_total",
            &["tier=\"l2\"", "result=\"error\""]
        ) >= 5.0,
        "{m}"
    );
    assert!(value(&m, "cachegate_store_errors_total", &[]) >= 5.0);
    assert_eq!(
        value(&m, "cachegate_breaker_open", &["component=\"store:redis\""]),
        1.0,
        "{m}"
    );
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_copy_served_for_a_failing_origin_is_cache_stale_if_error() {
    // The first answer is stored; every later one is a 503.
    let origin = Origin::start(|s| {
        if s.n == 0 {
            Reply::ok("kept")
        } else {
            Reply::ok("down").status(503)
        }
    })
    .await;
    let (admin_line, admin) = admin_yaml();
    let p = Served::start_with(
        &origin,
        "ttl: 1s, stale: 0s, stale_if_error: 60s, jitter: 0",
        &(admin_line + "shutdown: { grace: 0s }\n"),
        &[],
    )
    .await;
    let url = format!("{}/flaky", p.base);
    let client = proxy::client();
    assert_eq!(proxy::send(&client, "GET", &url, &[]).await.body, "kept");
    // Past the 1 s TTL with a second to spare (the origin's Date has 1 s resolution).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = proxy::send(&client, "GET", &url, &[]).await;
    assert_eq!(r.body, "kept");
    // The header keeps RFC 9111's spelling; the metric label is Prometheus-style.
    assert!(
        r.cache_status().contains("detail=stale-if-error"),
        "{}",
        r.cache_status()
    );
    let m = scrape(&admin).await;
    let route = "route=\"/{*rest}\"";
    assert_eq!(
        value(
            &m,
            "cachegate_requests_total",
            &[route, "cache=\"stale_if_error\"", "status=\"2xx\""]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            "cachegate_request_duration_seconds_count",
            &[route, "cache=\"stale_if_error\""]
        ),
        1.0
    );
    assert!(!m.contains("cache=\"stale-if-error\""), "{m}");
    p.stop();
}
