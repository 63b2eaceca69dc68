//! `max_size` bounds what the in-process tiers hold: many distinct keys through the real
//! proxy leave the counted bytes under the bound (memory store and L1 in front of Redis),
//! and the admin `/metrics` reports those figures.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::fleet::eventually;
use crate::support::redis::RedisServer;
use crate::support::{free_port, proxy, Origin, Proxy, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_cachegate");
const ROUTES: &str = "  - path: /{*rest}\n    upstream: origin\n";
const KEYS: usize = 400;

/// 1 KiB bodies that every key stores for ten minutes.
async fn origin() -> Origin {
    Origin::start(|_| Reply::ok("x".repeat(1024)).header("cache-control", "max-age=600")).await
}

/// Fetches `KEYS` never-seen keys, a few at a time; each is stored and served whole.
async fn distinct_keys(base: &str) {
    let client = proxy::client();
    for chunk in 0..KEYS / 8 {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let url = format!("{base}/item/{}", chunk * 8 + i);
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                proxy::send(&client, "GET", &url, &[]).await
            }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!((r.status, r.body.len()), (200, 1024));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_counts_no_more_than_max_size() {
    let origin = origin().await;
    let yaml = proxy::config_yaml(&origin.url(), "ttl: 60s", ROUTES)
        + "store: { backend: memory, memory: { max_size: 256KiB } }\n";
    let proxy = Proxy::start(&yaml).await;
    distinct_keys(&format!("http://{}", proxy.addr)).await;
    assert_eq!(origin.total(), KEYS, "every key was fetched once");

    let usage = proxy
        .state
        .cache
        .store
        .usage()
        .await
        .expect("the memory store counts");
    assert_eq!(usage.tier, "memory");
    assert!(usage.bytes <= 256 << 10, "{usage:?}");
    // It filled up (more than half the bound) and evicted: it holds fewer keys than it saw.
    assert!(usage.bytes > 128 << 10, "{usage:?}");
    assert!(
        usage.entries > 0 && usage.entries < KEYS as u64,
        "{usage:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_in_front_of_redis_counts_no_more_than_its_max_size() {
    let redis = RedisServer::start();
    let origin = origin().await;
    let yaml = proxy::config_yaml(&origin.url(), "ttl: 60s", ROUTES)
        + &redis.store_yaml("1s", "{ max_size: 128KiB, max_ttl: 60s }");
    let proxy = Proxy::start(&yaml).await;
    let subscribed = eventually(Duration::from_secs(5), async || {
        redis
            .cli(&["PUBSUB", "NUMSUB", "cachegate:invalidate"])
            .ends_with("\n1")
    })
    .await;
    assert!(subscribed, "L1 listens for invalidations");
    distinct_keys(&format!("http://{}", proxy.addr)).await;

    let usage = proxy.state.cache.store.usage().await.expect("L1 counts");
    assert_eq!(usage.tier, "l1");
    assert!(usage.bytes <= 128 << 10, "{usage:?}");
    assert!(usage.bytes > 64 << 10, "{usage:?}");
    assert!(
        usage.entries > 0 && usage.entries < KEYS as u64,
        "{usage:?}"
    );
    // Redis keeps what L1 let go: an early key is still a hit.
    let r = proxy.get("/item/0").await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
}

/// The first sample of `name` (with its labels) in a Prometheus text page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_the_counted_store_size() {
    let origin = origin().await;
    let (port, admin_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let yaml = proxy::config_yaml(&origin.url(), "ttl: 60s", ROUTES)
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(
        &path,
        format!(
            "{yaml}store: {{ backend: memory, memory: {{ max_size: 128KiB }} }}\n\
             admin: {{ listen: 127.0.0.1:{admin_port} }}\n"
        ),
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
    let base = format!("http://127.0.0.1:{port}");
    let up = eventually(Duration::from_secs(10), async || {
        client.get(format!("{base}/__up")).send().await.is_ok()
    })
    .await;
    assert!(up, "cachegate did not start");

    distinct_keys(&base).await;
    let page = proxy::send(
        &client,
        "GET",
        &format!("http://127.0.0.1:{admin_port}/metrics"),
        &[],
    )
    .await
    .body;
    let _ = child.kill();
    let _ = child.wait();

    let bytes = sample(&page, r#"cachegate_store_bytes{tier="memory"}"#).expect(&page);
    let entries = sample(&page, r#"cachegate_store_entries{tier="memory"}"#).expect(&page);
    assert!(
        bytes > 0.0 && bytes <= (128 << 10) as f64,
        "{bytes}\n{page}"
    );
    assert!(entries >= 1.0 && entries < KEYS as f64, "{entries}\n{page}");
    assert_eq!(
        sample(&page, r#"cachegate_table_entries{table="single_flight"}"#),
        Some(0.0),
        "{page}"
    );
    assert!(sample(&page, r#"cachegate_table_entries{table="hit_for_miss"}"#).is_some());
}
