//! A fleet: three cachegate replicas sharing one Redis (or a Cluster, or a Sentinel set)
//! make one origin request per key, hear each other's purges within 100 ms, and keep
//! answering while Redis dies and comes back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachegate::cache::store::Health;

use crate::redis_store::proxy_with_store;
use crate::support::fleet::eventually;
use crate::support::redis::{RedisCluster, RedisSentinel, RedisServer};
use crate::support::{proxy, Origin, Proxy, Reply};

const L1: &str = "{ max_size: 16MiB, max_ttl: 30s }";

async fn fleet(origin: &Origin, defaults: &str, store_yaml: &str) -> Vec<Proxy> {
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(proxy_with_store(origin, defaults, store_yaml).await);
    }
    replicas
}

/// Sends GETs for `paths` from `per_replica` loops on each replica until `stop` is set
/// (and at most 20 s); returns (requests, non-200 answers or transport errors).
fn load(
    replicas: &[Proxy],
    paths: &'static [&'static str],
    per_replica: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    let urls: Vec<Vec<String>> = replicas
        .iter()
        .map(|p| paths.iter().map(|path| p.url(path)).collect())
        .collect();
    tokio::spawn(async move {
        let client = proxy::client();
        let sent = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for replica_urls in urls {
            for worker in 0..per_replica {
                let (client, urls, stop, sent) = (
                    client.clone(),
                    replica_urls.clone(),
                    stop.clone(),
                    sent.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut errors = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(20);
                    let mut i = worker;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let url = &urls[i % urls.len()];
                        i += 1;
                        sent.fetch_add(1, Ordering::Relaxed);
                        match client.get(url).send().await {
                            Ok(r) if r.status() == 200 => {
                                let _ = r.bytes().await;
                            }
                            Ok(r) => errors.push(format!("{url}: status {}", r.status())),
                            Err(e) => errors.push(format!("{url}: {e}")),
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    errors
                }));
            }
        }
        let mut errors = Vec::new();
        for t in tasks {
            errors.extend(t.await.unwrap());
        }
        (sent.load(Ordering::Relaxed), errors)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_300_cold_requests_make_one_origin_request() {
    let redis = RedisServer::start();
    let origin =
        Origin::start(|s| Reply::ok(format!("v{}", s.n)).delay(Duration::from_millis(300))).await;
    let replicas = fleet(&origin, "ttl: 60s", &redis.store_yaml("500ms", L1)).await;

    let resps = proxy::burst(&replicas, 300, "/cold", &[]).await;

    assert!(resps.iter().all(|r| r.status == 200 && r.body == "v0"));
    assert_eq!(origin.hits("/cold"), 1, "one origin request for the fleet");
    let stored = resps
        .iter()
        .filter(|r| r.cache_status().contains("stored"))
        .count();
    assert_eq!(stored, 1, "one replica fetched and stored");
    // The others waited: in-process behind their leader, or for the lease holder's entry.
    assert!(resps.iter().any(|r| r.cache_status().contains("collapsed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_key_gets_one_background_refresh_per_fleet_over_three_expiries() {
    let redis = RedisServer::start();
    // The first answer is quick; refreshes take 500 ms, longer than a burst lasts.
    let origin = Origin::start(|s| {
        let delay = if s.n == 0 { 0 } else { 500 };
        Reply::ok(format!("v{}", s.n)).delay(Duration::from_millis(delay))
    })
    .await;
    let replicas = fleet(
        &origin,
        "ttl: 1s, stale: 60s, jitter: 0",
        &redis.store_yaml("500ms", L1),
    )
    .await;
    assert_eq!(replicas[0].get("/hot").await.body, "v0");

    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let resps = proxy::burst(&replicas, 300, "/hot", &[]).await;
        let want = format!("v{round}");
        for r in &resps {
            assert_eq!(r.status, 200);
            assert_eq!(r.body, want, "round {round}: served stale at once");
            assert!(
                r.cache_status().contains("detail=stale-while-revalidate"),
                "round {round}: {}",
                r.cache_status()
            );
        }
        let refreshed = eventually(Duration::from_secs(3), async || {
            origin.hits("/hot") >= round + 2
        })
        .await;
        assert!(refreshed, "round {round}: no refresh happened");
        // Time for a second refresh to show up, had any replica started one.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            origin.hits("/hot"),
            round + 2,
            "round {round}: exactly one background refresh for the fleet"
        );
        for p in &replicas {
            let r = p.get("/hot").await;
            assert_eq!(r.body, format!("v{}", round + 1), "every replica sees it");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_on_one_replica_drops_the_others_l1_copy_within_100ms() {
    let redis = RedisServer::start();
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let replicas = fleet(&origin, "ttl: 60s", &redis.store_yaml("500ms", L1)).await;
    let (a, b) = (&replicas[0], &replicas[1]);
    let subscribed = eventually(Duration::from_secs(5), async || {
        redis
            .cli(&["PUBSUB", "NUMSUB", "cachegate:invalidate"])
            .ends_with("\n3")
    })
    .await;
    assert!(subscribed, "every replica subscribes to invalidations");

    assert!(b.get("/doc").await.cache_status().contains("stored"));
    // Emptied behind cachegate's back (no announcement): B still hits, from its L1.
    redis.cli(&["FLUSHALL"]);
    let r = b.get("/doc").await;
    assert!(
        r.cache_status().starts_with("cachegate; hit"),
        "{}",
        r.cache_status()
    );

    assert_eq!(a.request("PUT", "/doc", &[]).await.status, 200);
    let put_done = Instant::now();
    let mut first_miss = None;
    let seen = eventually(Duration::from_secs(2), async || {
        let r = b.get("/doc").await;
        if r.cache_status().contains("fwd=miss") {
            first_miss = Some(put_done.elapsed());
            return true;
        }
        false
    })
    .await;
    assert!(seen, "B never dropped its L1 copy");
    let took = first_miss.unwrap();
    println!("L1 invalidation seen by another replica after {took:?}");
    assert!(took < Duration::from_millis(100), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_dying_under_load_causes_no_client_errors_and_the_breaker_closes_again() {
    let mut redis = RedisServer::start();
    let origin =
        Origin::start(|s| Reply::ok(format!("v{}", s.n)).delay(Duration::from_millis(30))).await;
    // Short TTLs so entries keep expiring and fetches keep happening during the outage.
    let replicas = fleet(
        &origin,
        "ttl: 1s, jitter: 0",
        &redis.store_yaml("100ms", "{ max_size: 16MiB, max_ttl: 1s }"),
    )
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(&replicas, &["/hot"], 4, stop.clone());

    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.kill();
    let degraded = eventually(Duration::from_secs(5), async || {
        replicas
            .iter()
            .all(|p| p.state.cache.store.health() == Health::Degraded)
    })
    .await;
    assert!(degraded, "every replica notices");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    redis.restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, errors) = running.await.unwrap();

    println!(
        "fault test: {sent} requests, origin saw {} (max {} in flight)",
        origin.hits("/hot"),
        origin.max_in_flight()
    );
    assert!(
        errors.is_empty(),
        "{} client errors, first: {:?}",
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        origin.max_in_flight() <= replicas.len(),
        "at most one fetch per key per replica: {} in flight",
        origin.max_in_flight()
    );
    let healthy = eventually(Duration::from_secs(10), async || {
        for p in &replicas {
            p.get("/probe").await;
        }
        replicas
            .iter()
            .all(|p| p.state.cache.store.health() == Health::Ok)
    })
    .await;
    assert!(healthy, "the breaker closes once Redis is back");
    // The fleet shares the store again: stored by one replica, a hit on another.
    replicas[0].get("/after").await;
    let r = replicas[1].get("/after").await;
    assert!(
        r.cache_status().starts_with("cachegate; hit"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/after"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_fleet_coalesces_a_cold_key_and_survives_losing_a_master() {
    let mut cluster = RedisCluster::start();
    let origin =
        Origin::start(|s| Reply::ok(format!("v{}", s.n)).delay(Duration::from_millis(300))).await;
    let replicas = fleet(&origin, "ttl: 60s", &cluster.store_yaml("500ms", L1)).await;

    let resps = proxy::burst(&replicas, 300, "/cold", &[]).await;
    assert!(resps.iter().all(|r| r.status == 200 && r.body == "v0"));
    assert_eq!(origin.hits("/cold"), 1, "one origin request for the fleet");

    // Keys spread over every master's slots.
    const KEYS: &[&str] = &[
        "/k/0", "/k/1", "/k/2", "/k/3", "/k/4", "/k/5", "/k/6", "/k/7", "/k/8", "/k/9",
    ];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(&replicas, KEYS, 2, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.masters[0].kill();
    // Its replica takes over after the node timeout (1 s) and an election.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, errors) = running.await.unwrap();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    println!("cluster failover: {sent} requests, no client errors");

    // Every key is stored and found again, including those of the lost master's slots.
    for key in KEYS {
        let path = format!("{key}/after");
        let found = eventually(Duration::from_secs(20), async || {
            replicas[0].get(&path).await;
            replicas[1]
                .get(&path)
                .await
                .cache_status()
                .starts_with("cachegate; hit")
        })
        .await;
        assert!(found, "{path} is never a hit after the failover");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_failover_keeps_requests_succeeding() {
    let mut set = RedisSentinel::start();
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let replicas = fleet(&origin, "ttl: 60s", &set.store_yaml("500ms", L1)).await;
    replicas[0].get("/s").await;
    assert!(replicas[1]
        .get("/s")
        .await
        .cache_status()
        .starts_with("cachegate; hit"));

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(&replicas, &["/s", "/t"], 2, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    set.master.kill();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::Relaxed);
    let (_, errors) = running.await.unwrap();
    assert!(errors.is_empty(), "client errors: {errors:?}");

    // The sentinels promote the replica; cachegate finds it through them.
    let found = eventually(Duration::from_secs(20), async || {
        replicas[0].get("/after").await;
        replicas[2]
            .get("/after")
            .await
            .cache_status()
            .starts_with("cachegate; hit")
    })
    .await;
    assert!(found, "the store works again on the promoted master");
    assert!(set.replica.cli(&["ROLE"]).starts_with("master"));
}
