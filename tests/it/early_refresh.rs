//! Issue 11: early refresh (XFetch), `negative_ttl`, and origin errors that never
//! replace a usable entry.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::proxy::config_yaml;
use crate::support::{Origin, Proxy, Reply};

/// Requests `/hot` back to back for `rounds` rounds (a few ms apart): how many answers
/// were stale, and every body seen.
async fn hammer(p: &Proxy, rounds: usize) -> (usize, Vec<String>) {
    let mut stale = 0;
    let mut bodies = Vec::new();
    for _ in 0..rounds {
        let r = p.get("/hot").await;
        assert_eq!(r.status, 200, "{}", r.cache_status());
        if r.cache_status().contains("ttl=-") || r.cache_status().contains("fwd=stale") {
            stale += 1;
        }
        bodies.push(r.body);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (stale, bodies)
}

fn slow_origin() -> impl Fn(&crate::support::origin::Seen) -> Reply + Send + Sync + 'static {
    // Each fetch takes 150 ms: the `delta` XFetch scales its head start by.
    |s| Reply::ok(format!("v{}", s.n)).delay(Duration::from_millis(150))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn early_refresh_keeps_a_hot_key_from_ever_going_stale() {
    let origin = Origin::start(slow_origin()).await;
    let routes = "  - path: /{*rest}\n    upstream: origin\n    early_refresh: { beta: 3.0 }\n";
    let p = Proxy::start(&config_yaml(
        &origin.url(),
        "ttl: 3s, stale: 60s, jitter: 0",
        routes,
    ))
    .await;
    // A few TTLs of steady traffic on one key.
    let started = std::time::Instant::now();
    let (stale, bodies) = hammer(&p, 600).await;
    let ttls: f64 = started.elapsed().as_secs_f64() / 3.0;
    assert_eq!(
        stale, 0,
        "a hot key with early refresh is never served stale"
    );
    let versions = {
        let mut v = bodies.clone();
        v.dedup();
        v.len()
    };
    assert!(versions >= 2, "the key was refreshed: {versions} versions");
    let hits = origin.hits("/hot");
    // The first fetch, then a refresh per TTL or a little more (XFetch starts early, the
    // earlier the busier the key: 1.5 to 2 per TTL at this rate and beta), never one per
    // request.
    let bound = 1 + (2.5 * ttls).ceil() as usize;
    eprintln!(
        "early refresh on: {} requests, {stale} stale, {hits} origin requests over {ttls:.1} TTLs",
        bodies.len()
    );
    assert!(
        hits <= bound,
        "{hits} origin requests over {ttls:.1} TTLs (bound {bound}) for {} client requests",
        bodies.len()
    );
    assert!(origin.max_in_flight() <= 1, "one refresh at a time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_early_refresh_the_same_traffic_sees_stale_answers() {
    // The control for the test above: the same traffic, no early refresh.
    let origin = Origin::start(slow_origin()).await;
    let p = Proxy::simple(&origin.url(), "ttl: 3s, stale: 60s, jitter: 0").await;
    let (stale, bodies) = hammer(&p, 600).await;
    eprintln!(
        "early refresh off: {} requests, {stale} stale, {} origin requests",
        bodies.len(),
        origin.hits("/hot")
    );
    assert!(stale >= 1, "past each soft TTL the key is served stale");
}

#[tokio::test]
async fn early_refresh_is_a_route_option_with_a_checked_beta() {
    for (beta, ok) in [("1.0", true), ("0", false), ("-1", false), ("11", false)] {
        let yaml = config_yaml(
            "http://127.0.0.1:9",
            "ttl: 1s",
            &format!("  - path: /{{*rest}}\n    upstream: origin\n    early_refresh: {{ beta: {beta} }}\n"),
        );
        let parsed = cachegate::config::Config::parse(
            &yaml,
            std::path::Path::new("routes.yaml"),
            &cachegate::config::Overrides::default(),
        );
        match (parsed, ok) {
            (Ok(_), true) => {}
            (Err(e), false) => {
                let e = e.to_string();
                assert!(e.contains("routes[0].early_refresh.beta"), "{e}");
                assert!(e.contains("routes.yaml:"), "{e}");
            }
            (r, _) => panic!(
                "beta {beta}: {:?}",
                r.map(|_| ()).map_err(|e| e.to_string())
            ),
        }
    }
}

#[tokio::test]
async fn not_found_is_kept_for_negative_ttl_and_found_for_ttl() {
    let origin = Origin::start(|s| match s.path.as_str() {
        "/missing" => Reply::ok("no such user").status(404),
        "/gone" => Reply::ok("gone").status(410),
        "/missing-explicit" => Reply::ok("no")
            .status(404)
            .header("cache-control", "max-age=30"),
        "/error" => Reply::ok("boom").status(500),
        _ => Reply::ok("found"),
    })
    .await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 60s, negative_ttl: 2s, stale: 0s, stale_if_error: 0s, jitter: 0",
    )
    .await;
    let ttl_of = |cs: &str| -> i64 {
        let t = cs
            .split("ttl=")
            .nth(1)
            .expect("a ttl")
            .split(';')
            .next()
            .unwrap();
        t.trim().parse().unwrap()
    };
    for path in ["/missing", "/gone"] {
        let r = p.get(path).await;
        assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
        let ttl = ttl_of(r.cache_status());
        assert!((1..=2).contains(&ttl), "{path}: {}", r.cache_status());
        assert!(p.get(path).await.cache_status().contains("hit"));
    }
    let r = p.get("/found").await;
    assert!(ttl_of(r.cache_status()) >= 59, "{}", r.cache_status());
    // The origin's own freshness wins over negative_ttl.
    let r = p.get("/missing-explicit").await;
    assert!(ttl_of(r.cache_status()) >= 29, "{}", r.cache_status());
    // A 500 without freshness is not stored at all, negative_ttl or not.
    let r = p.get("/error").await;
    assert!(!r.cache_status().contains("stored"), "{}", r.cache_status());

    // Once negative_ttl has passed, the 404 is asked again (the user may exist now).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let before = origin.hits("/missing");
    p.get("/missing").await;
    assert_eq!(origin.hits("/missing"), before + 1);
}

#[tokio::test]
async fn negative_ttl_defaults_to_10s_but_never_beyond_the_routes_ttl() {
    let origin = Origin::start(|_| Reply::ok("no").status(404)).await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 60s, stale: 0s, stale_if_error: 0s, jitter: 0",
    )
    .await;
    let cs = p.get("/a").await.cache_status().to_string();
    assert!(cs.contains("ttl=10") || cs.contains("ttl=9"), "{cs}");
    let short = Proxy::simple(
        &origin.url(),
        "ttl: 3s, stale: 0s, stale_if_error: 0s, jitter: 0",
    )
    .await;
    let cs = short.get("/b").await.cache_status().to_string();
    assert!(cs.contains("ttl=3") || cs.contains("ttl=2"), "{cs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_error_never_replaces_a_usable_entry() {
    // 200 first; then the origin fails with a 500 that even claims to be cacheable.
    let failing = Arc::new(AtomicU16::new(0));
    let origin = Origin::start({
        let failing = failing.clone();
        move |_| match failing.load(Ordering::SeqCst) {
            0 => Reply::ok("good"),
            code => Reply::ok("broken")
                .status(code)
                .header("cache-control", "max-age=600"),
        }
    })
    .await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 1s, stale: 30s, stale_if_error: 60s, jitter: 0",
    )
    .await;
    assert_eq!(p.get("/doc").await.body, "good");
    for code in [500, 502, 503] {
        failing.store(code, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before = origin.hits("/doc");
        // Stale: served at once while the refresh (which gets the error) runs.
        let r = p.get("/doc").await;
        assert_eq!((r.status, r.body.as_str()), (200, "good"), "{code}");
        let refreshed = crate::support::fleet::eventually(Duration::from_secs(5), async || {
            origin.hits("/doc") > before
        })
        .await;
        assert!(refreshed, "{code}: the refresh reached the origin");
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The failed refresh left the stored copy as it was.
        for _ in 0..3 {
            let r = p.get("/doc").await;
            assert_eq!(
                (r.status, r.body.as_str()),
                (200, "good"),
                "{code}: {}",
                r.cache_status()
            );
        }
    }
    failing.store(0, Ordering::SeqCst);
}
