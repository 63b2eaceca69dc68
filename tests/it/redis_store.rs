//! The Redis store through the proxy: single node, Sentinel and Cluster round trips,
//! variants, invalidation, restarts of cachegate, and bytes it cannot read.

use std::time::Duration;

use cachegate::cache::store::Health;

use crate::support::redis::{RedisCluster, RedisSentinel, RedisServer};
use crate::support::{proxy, Origin, Proxy, Reply};

const ROUTES: &str = "  - path: /{*rest}\n    upstream: origin\n";
/// Generous for a debug build on two cores: these tests are about behaviour, not speed.
const TIMEOUT: &str = "500ms";
const L1: &str = "{ max_size: 16MiB, max_ttl: 2s }";

pub async fn proxy_with_store(origin: &Origin, defaults: &str, store_yaml: &str) -> Proxy {
    let yaml = proxy::config_yaml(&origin.url(), defaults, ROUTES) + store_yaml;
    Proxy::start(&yaml).await
}

/// An origin that answers in the client's language and varies on it.
async fn language_origin() -> Origin {
    Origin::start(|s| {
        let lang = s
            .headers
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        Reply::ok(format!("{} {lang} {}", s.path, s.n)).header("vary", "accept-language")
    })
    .await
}

fn is_hit(status: &str) -> bool {
    status.starts_with("cachegate; hit")
}

/// Miss, hit, a second variant, then a PUT that invalidates both: against `store_yaml`.
async fn round_trip(store_yaml: &str) {
    let origin = language_origin().await;
    let p = proxy_with_store(&origin, "ttl: 60s", store_yaml).await;
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];

    let r = p.get_with("/users/1", &en).await;
    assert_eq!(r.body, "/users/1 en 0");
    assert!(
        r.cache_status().contains("fwd=miss"),
        "{}",
        r.cache_status()
    );
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    let r = p.get_with("/users/1", &en).await;
    assert!(is_hit(r.cache_status()), "{}", r.cache_status());
    assert_eq!(r.body, "/users/1 en 0");

    let r = p.get_with("/users/1", &fr).await;
    assert_eq!(r.body, "/users/1 fr 1", "another variant is a miss");
    assert!(is_hit(p.get_with("/users/1", &fr).await.cache_status()));
    assert!(is_hit(p.get_with("/users/1", &en).await.cache_status()));
    assert_eq!(origin.hits("/users/1"), 2);

    let put = p.request("PUT", "/users/1", &[]).await;
    assert_eq!(put.status, 200);
    let r = p.get_with("/users/1", &en).await;
    assert!(
        r.cache_status().contains("fwd=miss"),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.body, "/users/1 en 3", "the PUT invalidated the entry");
    assert_eq!(p.state.cache.store.health(), Health::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_node_round_trip_with_variants_and_invalidation() {
    let redis = RedisServer::start();
    round_trip(&redis.store_yaml(TIMEOUT, L1)).await;
    // Everything of one cache key shares one hash tag, in the versioned namespace.
    let keys = redis.cli(&["--scan", "--pattern", &crate::support::redis::ns("*")]);
    assert!(
        keys.lines()
            .all(|k| k.starts_with(&crate::support::redis::ns("{"))),
        "{keys}"
    );
    assert!(!keys.is_empty(), "the entry is in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_l1_every_lookup_reads_redis() {
    let redis = RedisServer::start();
    round_trip(&redis.store_yaml(TIMEOUT, "{ max_size: 0 }")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_survive_a_cachegate_restart() {
    let redis = RedisServer::start();
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let store = redis.store_yaml(TIMEOUT, L1);
    let first = proxy_with_store(&origin, "ttl: 60s", &store).await;
    assert_eq!(first.get("/kept").await.body, "v0");
    first.shutdown().await;

    let second = proxy_with_store(&origin, "ttl: 60s", &store).await;
    let r = second.get("/kept").await;
    assert_eq!(r.body, "v0");
    assert!(is_hit(r.cache_status()), "{}", r.cache_status());
    assert_eq!(origin.hits("/kept"), 1, "the new process found it in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytes_it_cannot_decode_read_as_a_miss() {
    let redis = RedisServer::start();
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let p = proxy_with_store(
        &origin,
        "ttl: 60s",
        &redis.store_yaml(TIMEOUT, "{ max_size: 0 }"),
    )
    .await;
    assert_eq!(p.get("/c").await.body, "v0");
    let key = redis.cli(&["--scan", "--pattern", &crate::support::redis::ns("*:e:*")]);
    assert_eq!(key.lines().count(), 1, "{key}");
    let field = redis.cli(&["HKEYS", key.trim()]);
    redis.cli(&["HSET", key.trim(), field.trim(), "not an entry"]);

    let r = p.get("/c").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "v1", "garbage is a miss, not an error");
    assert_eq!(p.state.cache.store.health(), Health::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_expires_a_key_with_its_last_usable_variant() {
    let redis = RedisServer::start();
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let p = proxy_with_store(
        &origin,
        "ttl: 10s, stale: 20s, stale_if_error: 100s, jitter: 0",
        &redis.store_yaml(TIMEOUT, L1),
    )
    .await;
    p.get("/ttl").await;
    let key = redis.cli(&["--scan", "--pattern", &crate::support::redis::ns("*:e:*")]);
    let pttl: i64 = redis.cli(&["PTTL", key.trim()]).parse().unwrap();
    // Hard TTL plus the stale-if-error window (the larger of the two windows).
    assert!((105_000..=110_000).contains(&pttl), "pttl {pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_redis_at_startup_serves_from_the_origin() {
    // Nothing listens there: the store starts degraded instead of refusing to start.
    let port = crate::support::redis::free_port();
    let store = format!(
        "store:\n  backend: redis\n  redis:\n    url: redis://127.0.0.1:{port}\n    timeout: 100ms\n"
    );
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let p = proxy_with_store(&origin, "ttl: 60s", &store).await;
    for _ in 0..10 {
        assert_eq!(p.get("/x").await.status, 200);
    }
    assert_eq!(p.state.cache.store.health(), Health::Degraded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_round_trip() {
    let cluster = RedisCluster::start();
    round_trip(&cluster.store_yaml(TIMEOUT, L1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_round_trip() {
    let set = RedisSentinel::start();
    round_trip(&set.store_yaml(TIMEOUT, L1)).await;
    let keys = set
        .master
        .cli(&["--scan", "--pattern", &crate::support::redis::ns("*")]);
    assert!(!keys.is_empty(), "written to the master sentinel named");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_node_with_a_password_round_trip() {
    // `default` has a password (requirepass) and an ACL user has its own: both kinds of
    // credentials in the URL reach the command and the pub/sub connections.
    let redis = RedisServer::start_with_password(
        "s3cret",
        &["--user", "alice", "on", ">alice-pass", "~*", "&*", "+@all"],
    );
    let default_user = redis.store_yaml(TIMEOUT, L1);
    assert!(default_user.contains("default:s3cret@"), "{default_user}");
    round_trip(&default_user).await;
    let keys = redis.cli(&["--scan", "--pattern", &crate::support::redis::ns("*")]);
    assert!(!keys.is_empty(), "the entry is in Redis");

    redis.cli(&["FLUSHALL"]);
    round_trip(&default_user.replace("default:s3cret@", "alice:alice-pass@")).await;
    let keys = redis.cli(&["--scan", "--pattern", &crate::support::redis::ns("*")]);
    assert!(!keys.is_empty(), "the entry is in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_password_serves_from_the_origin_degraded() {
    let redis = RedisServer::start_with_password("right", &[]);
    let store = redis
        .store_yaml("100ms", L1)
        .replace("default:right@", "default:wrong@");
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let p = proxy_with_store(&origin, "ttl: 60s", &store).await;
    for _ in 0..3 {
        assert_eq!(p.get("/x").await.status, 200);
    }
    assert_eq!(p.state.cache.store.health(), Health::Degraded);
    assert_eq!(redis.cli(&["DBSIZE"]), "0", "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_with_a_password_on_the_data_nodes_round_trip() {
    // The password in the sentinel node URLs authenticates to the master they name.
    let set = RedisSentinel::start_with_password(Some("m4ster"));
    let store = set.store_yaml(TIMEOUT, L1);
    assert!(store.contains("default:m4ster@"), "{store}");
    round_trip(&store).await;
    let keys = set
        .master
        .cli(&["--scan", "--pattern", &crate::support::redis::ns("*")]);
    assert!(!keys.is_empty(), "written to the master sentinel named");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_invalidation_subscription_clears_l1() {
    let redis = RedisServer::start();
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    // An L1 that would keep the entry for a minute on its own.
    let store = redis.store_yaml(TIMEOUT, "{ max_size: 16MiB, max_ttl: 60s }");
    let p = proxy_with_store(&origin, "ttl: 60s", &store).await;
    assert_eq!(p.get("/sub").await.body, "v0");

    // Drop the entry from Redis behind cachegate's back: no invalidation is published,
    // so only L1 still has it.
    redis.cli(&["FLUSHALL"]);
    let from_l1 = p.get("/sub").await;
    assert_eq!(from_l1.body, "v0");
    assert!(is_hit(from_l1.cache_status()), "{}", from_l1.cache_status());

    // The replica can no longer hear invalidations: it must not keep serving L1.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let cleared = crate::support::fleet::eventually(Duration::from_secs(5), async || {
        p.get("/sub").await.body != "v0"
    })
    .await;
    assert!(cleared, "L1 was cleared when the subscription was lost");
    assert_eq!(origin.hits("/sub"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_refusing_writes_with_oom_never_fails_a_request() {
    // Every write is refused with OOM (a Redis that is full and must not evict).
    let redis = RedisServer::start_with(&["--maxmemory", "1", "--maxmemory-policy", "noeviction"]);
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let p = proxy_with_store(
        &origin,
        "ttl: 60s",
        &redis.store_yaml(TIMEOUT, "{ max_size: 0 }"),
    )
    .await;
    for n in 0..3 {
        let r = p.get("/full").await;
        assert_eq!(
            (r.status, r.body.clone()),
            (200, format!("v{n}")),
            "served from the origin"
        );
        assert!(
            r.cache_status().contains("detail=store-error"),
            "{}",
            r.cache_status()
        );
    }
    assert_eq!(redis.cli(&["DBSIZE"]), "0", "nothing was written");
}
