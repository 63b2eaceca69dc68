//! The Redis store over TLS: `rediss://` URLs to TLS-only `redis-server`s (a single node
//! and a Cluster) with self-signed certificates (`#insecure` skips their verification).

use cachegate::cache::store::Health;

use crate::redis_store::proxy_with_store;
use crate::support::redis::{RedisCluster, RedisServer};
use crate::support::{Origin, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rediss_url_round_trip_without_l1() {
    let redis = RedisServer::start_tls();
    let store = redis.store_yaml("500ms", "{ max_size: 0B }");
    assert!(store.contains("rediss://"), "{store}");
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let p = proxy_with_store(&origin, "ttl: 60s", &store).await;

    let r = p.get("/tls").await;
    assert_eq!(r.body, "v0");
    assert!(
        r.cache_status().contains("fwd=miss"),
        "{}",
        r.cache_status()
    );
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    // No L1: the hit came back through the TLS connection.
    let r = p.get("/tls").await;
    assert_eq!(r.body, "v0");
    assert!(
        r.cache_status().starts_with("cachegate; hit"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/tls"), 1);
    assert_eq!(p.state.cache.store.health(), Health::Ok);

    let keys = redis.cli(&["--scan", "--pattern", &crate::support::redis::ns("*:e:*")]);
    assert_eq!(keys.lines().count(), 1, "the entry is in Redis: {keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rediss_cluster_round_trip() {
    // TLS and `#insecure` come from the first node URL and apply to every node the
    // cluster client discovers.
    let cluster = RedisCluster::start_tls();
    let store = cluster.store_yaml("500ms", "{ max_size: 0B }");
    assert!(store.contains("rediss://"), "{store}");
    let origin = Origin::start(|s| Reply::ok(format!("{} {}", s.path, s.n))).await;
    let p = proxy_with_store(&origin, "ttl: 60s", &store).await;
    for path in ["/a", "/b", "/c", "/d"] {
        assert!(p.get(path).await.cache_status().contains("fwd=miss"));
        let r = p.get(path).await;
        assert!(
            r.cache_status().starts_with("cachegate; hit"),
            "{path}: {}",
            r.cache_status()
        );
        assert_eq!(origin.hits(path), 1);
    }
    assert_eq!(p.state.cache.store.health(), Health::Ok);
}
