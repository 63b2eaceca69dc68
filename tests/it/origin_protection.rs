//! Origin protection per upstream: `max_concurrency` + `queue_timeout`, `rate_limit`
//! and the breaker. What a client sees when the upstream is full or failing (a stale
//! copy, or 503 with `Retry-After`), and what the origin sees (how many requests, how
//! many at once).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::fleet::eventually;
use crate::support::{proxy, Origin, Proxy, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_cachegate");

/// One upstream `origin` with `protection` (extra flow-map fields), one cached route
/// `/{*rest}` and a pass-through route `/pass/{*rest}`.
fn yaml(origin: &str, protection: &str, defaults: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nupstreams:\n  origin: {{ url: \"{origin}\", connect_timeout: 500ms, timeout: 3s, {protection} }}\n\
         defaults: {{ {defaults} }}\nroutes:\n  - path: /pass/{{*rest}}\n    upstream: origin\n    cache: false\n  \
         - path: /{{*rest}}\n    upstream: origin\n"
    )
}

/// `/slow*` paths take `SLOW`; everything else answers at once with its request number.
const SLOW: Duration = Duration::from_millis(1500);

async fn slow_origin() -> Origin {
    Origin::start(|s| {
        let reply = Reply::ok(format!("{}#{}", s.path, s.n));
        if s.path.starts_with("/slow") {
            reply.delay(SLOW)
        } else {
            reply
        }
    })
    .await
}

/// Fills the upstream's one slot with a slow request; returns once the origin has it.
async fn occupy(p: &Proxy, origin: &Origin, path: &'static str) -> tokio::task::JoinHandle<u16> {
    let url = p.url(path);
    let task =
        tokio::spawn(async move { proxy::send(&proxy::client(), "GET", &url, &[]).await.status });
    let arrived = eventually(Duration::from_secs(5), async || origin.hits(path) == 1).await;
    assert!(arrived, "the slow request reached the origin");
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_in_flight_never_exceeds_max_concurrency_under_50_distinct_requests() {
    let origin =
        Origin::start(|s| Reply::ok(s.path.clone()).delay(Duration::from_millis(100))).await;
    let p = Proxy::start(&yaml(
        &origin.url(),
        "max_concurrency: 4, queue_timeout: 10s",
        "ttl: 60s",
    ))
    .await;
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for i in 0..50 {
        // Misses and pass-through share the bound.
        let url = if i % 2 == 0 {
            p.url(&format!("/k{i}"))
        } else {
            p.url(&format!("/pass/k{i}"))
        };
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let client = proxy::client();
            barrier.wait().await;
            proxy::send(&client, "GET", &url, &[]).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{} {}", r.cache_status(), r.body);
    }
    assert_eq!(origin.total(), 50);
    let max = origin.max_in_flight();
    assert!(
        max <= 4,
        "origin had {max} requests in flight, max_concurrency is 4"
    );
    assert!(max >= 2, "the requests did overlap ({max} at once)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hit_answers_while_the_upstream_is_full() {
    let origin = slow_origin().await;
    let p = Proxy::start(&yaml(
        &origin.url(),
        "max_concurrency: 1, queue_timeout: 5s",
        "ttl: 60s",
    ))
    .await;
    assert_eq!(p.get("/hot").await.body, "/hot#0");
    let slow = occupy(&p, &origin, "/slow").await;

    let started = Instant::now();
    let hit = p.get("/hot").await;
    assert_eq!(hit.body, "/hot#0");
    assert!(
        hit.cache_status().contains("; hit"),
        "{}",
        hit.cache_status()
    );
    assert!(
        !slow.is_finished(),
        "the hit was answered while the slot was taken"
    );
    assert!(
        started.elapsed() < SLOW,
        "the hit did not wait for the slot"
    );
    assert_eq!(slow.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_queue_timeout_a_miss_gets_503_with_retry_after() {
    let origin = slow_origin().await;
    let p = Proxy::start(&yaml(
        &origin.url(),
        "max_concurrency: 1, queue_timeout: 200ms",
        "ttl: 60s",
    ))
    .await;
    let slow = occupy(&p, &origin, "/slow").await;

    for path in ["/other", "/pass/other"] {
        let r = p.get(path).await;
        assert_eq!(r.status, 503, "{path}: {}", r.body);
        assert_eq!(r.header("retry-after"), Some("1"), "{path}");
        assert!(
            r.cache_status().contains("detail=origin-busy"),
            "{}",
            r.cache_status()
        );
        assert_eq!(origin.hits(path), 0, "{path} never reached the origin");
    }
    assert_eq!(slow.await.unwrap(), 200);
    // The slot is free again: the same miss goes through.
    assert_eq!(p.get("/other").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_copy_answers_when_the_queue_times_out() {
    let origin = slow_origin().await;
    let p = Proxy::start(&yaml(
        &origin.url(),
        "max_concurrency: 1, queue_timeout: 200ms",
        "ttl: 1s, stale: 0s, stale_if_error: 60s, jitter: 0",
    ))
    .await;
    assert_eq!(p.get("/doc").await.body, "/doc#0");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let slow = occupy(&p, &origin, "/slow").await;

    let r = p.get("/doc").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "/doc#0");
    assert!(
        r.cache_status().contains("fwd=stale")
            && r.cache_status().contains("detail=stale-if-error"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        origin.hits("/doc"),
        1,
        "no origin request for the stale copy"
    );
    slow.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_that_finds_the_upstream_full_is_skipped_and_retried_later() {
    let origin = slow_origin().await;
    let p = Proxy::start(&yaml(
        &origin.url(),
        "max_concurrency: 1",
        "ttl: 1s, stale: 60s, jitter: 0",
    ))
    .await;
    assert_eq!(p.get("/doc").await.body, "/doc#0");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let slow = occupy(&p, &origin, "/slow").await;

    let r = p.get("/doc").await;
    assert_eq!(r.body, "/doc#0");
    assert!(
        r.cache_status().contains("stale-while-revalidate"),
        "{}",
        r.cache_status()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        origin.hits("/doc"),
        1,
        "the refresh was skipped, not queued"
    );
    slow.await.unwrap();

    // The entry stayed stale; the next request starts the refresh.
    assert!(p
        .get("/doc")
        .await
        .cache_status()
        .contains("stale-while-revalidate"));
    let refreshed = eventually(Duration::from_secs(3), async || origin.hits("/doc") == 2).await;
    assert!(refreshed);
    let fresh = eventually(Duration::from_secs(3), async || {
        p.get("/doc").await.body == "/doc#1"
    })
    .await;
    assert!(fresh, "the refreshed copy is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_rejects_above_the_rate() {
    let origin = slow_origin().await;
    // 5 a minute: a burst of 5, then one every 12 s; no waiting.
    let p = Proxy::start(&yaml(
        &origin.url(),
        "rate_limit: 5/m, queue_timeout: 0s",
        "ttl: 60s",
    ))
    .await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let r = p.get(&format!("/r{i}")).await;
        if r.status == 503 {
            assert!(
                r.cache_status().contains("detail=rate-limited"),
                "{}",
                r.cache_status()
            );
            let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=12).contains(&retry), "retry-after {retry}");
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 503, 503, 503]);
    assert_eq!(origin.total(), 5);
    // Hits never take a token.
    assert_eq!(p.get("/r0").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_breaker_opens_serves_stale_half_opens_and_closes() {
    let failing = Arc::new(AtomicBool::new(false));
    let origin = Origin::start({
        let failing = failing.clone();
        move |s| {
            let reply = Reply::ok(format!("{}#{}", s.path, s.n));
            let reply = if s.path.starts_with("/slow") {
                reply.delay(Duration::from_millis(600))
            } else {
                reply
            };
            if failing.load(Ordering::SeqCst) {
                reply.status(500)
            } else {
                reply
            }
        }
    })
    .await;
    let p = Proxy::start(&yaml(
        &origin.url(),
        "breaker: { failures: 3, open_for: 1s }",
        "ttl: 1s, stale: 0s, stale_if_error: 60s, jitter: 0",
    ))
    .await;
    let admin = admin(&p).await;
    assert_eq!(p.get("/a").await.body, "/a#0");
    failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Three consecutive 5xx open it.
    for path in ["/x1", "/x2", "/x3"] {
        assert_eq!(p.get(path).await.status, 500, "{path}");
    }
    let ready = proxy::send(&proxy::client(), "GET", &admin, &[]).await;
    assert_eq!(ready.status, 200, "still ready: the cache is serving");
    assert!(
        ready.body.contains("upstream origin: breaker open"),
        "{}",
        ready.body
    );

    // Open: the stale copy at once, without an origin request; 503 for the rest.
    let stale = p.get("/a").await;
    assert_eq!((stale.status, stale.body.as_str()), (200, "/a#0"));
    assert!(
        stale.cache_status().contains("detail=stale-if-error"),
        "{}",
        stale.cache_status()
    );
    assert_eq!(origin.hits("/a"), 1);
    let busy = p.get("/new").await;
    assert_eq!(busy.status, 503);
    assert!(
        busy.cache_status().contains("detail=breaker-open"),
        "{}",
        busy.cache_status()
    );
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert_eq!(origin.hits("/new"), 0, "an open breaker sends nothing");

    // After open_for one probe goes through; a failed probe re-opens it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        p.get("/p1").await.status,
        500,
        "the probe reached the origin"
    );
    assert_eq!(p.get("/p2").await.status, 503, "re-opened");
    assert_eq!(origin.hits("/p2"), 0);

    // The next probe succeeds; while it is out, other requests are still turned away.
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let probe = tokio::spawn({
        let url = p.url("/slow-probe");
        async move { proxy::send(&proxy::client(), "GET", &url, &[]).await.status }
    });
    assert!(
        eventually(Duration::from_secs(3), async || origin.hits("/slow-probe")
            == 1)
        .await
    );
    assert_eq!(
        p.get("/during").await.status,
        503,
        "half-open: one probe at a time"
    );
    assert_eq!(probe.await.unwrap(), 200);

    // Closed again.
    let r = p.get("/new").await;
    assert_eq!((r.status, r.body.as_str()), (200, "/new#0"));
    let ready = proxy::send(&proxy::client(), "GET", &admin, &[]).await;
    assert!(!ready.body.contains("breaker"), "{}", ready.body);
}

/// Serves the admin router for `p`'s state; the `/readyz` URL.
async fn admin(p: &Proxy) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = cachegate::admin::router(p.state.clone(), None);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}/readyz")
}

#[test]
fn check_names_the_field_of_a_bad_protection_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    for (field, value, want) in [
        (
            "max_concurrency",
            "0",
            "upstreams.api.max_concurrency: 0 is out of range",
        ),
        (
            "rate_limit",
            "lots",
            "upstreams.api.rate_limit: \"lots\" is not a rate",
        ),
        (
            "queue_timeout",
            "1 s",
            "upstreams.api.queue_timeout: \"1 s\" is not a duration",
        ),
    ] {
        std::fs::write(
            &path,
            format!(
                "upstreams:\n  api:\n    url: \"http://127.0.0.1:3000\"\n    {field}: {value}\nroutes:\n  - path: /a\n    upstream: api\n"
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}:4:", path.display())) && err.contains(want),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_open_breaker_and_the_rejections() {
    let origin = Origin::start(|_| Reply::ok("down").status(503)).await;
    let (port, admin_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let config = yaml(
        &origin.url(),
        "breaker: { failures: 1, open_for: 1m }",
        "ttl: 60s",
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(
        &path,
        format!("{config}admin: {{ listen: 127.0.0.1:{admin_port} }}\n"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = proxy::client();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let up = eventually(Duration::from_secs(10), async || {
        client.get(format!("{admin}/healthz")).send().await.is_ok()
    })
    .await;
    assert!(up, "cachegate did not start");
    let base = format!("http://127.0.0.1:{port}");

    let closed = proxy::send(&client, "GET", &format!("{admin}/metrics"), &[])
        .await
        .body;
    let first = proxy::send(&client, "GET", &format!("{base}/a"), &[]).await;
    let second = proxy::send(&client, "GET", &format!("{base}/b"), &[]).await;
    let open = proxy::send(&client, "GET", &format!("{admin}/metrics"), &[])
        .await
        .body;
    let _ = child.kill();
    let _ = child.wait();

    assert!(
        closed.contains(r#"cachegate_breaker_open{component="upstream:origin"} 0"#),
        "{closed}"
    );
    assert_eq!(first.status, 503, "the origin's own 503 passes through");
    assert_eq!(second.status, 503);
    assert!(second.cache_status().contains("detail=breaker-open"));
    assert_eq!(
        origin.total(),
        1,
        "the open breaker kept /b from the origin"
    );
    assert!(
        open.contains(r#"cachegate_breaker_open{component="upstream:origin"} 1"#),
        "{open}"
    );
    assert!(
        open.contains(
            r#"cachegate_origin_rejected_total{upstream="origin",reason="breaker_open"} 1"#
        ),
        "{open}"
    );
}

fn free_port() -> u16 {
    crate::support::redis::free_port()
}
