//! Purges across a fleet: three replicas with L1 on one Redis (or a Cluster). A purge on
//! any replica, by URL, route, tag or prefix, hard or soft, reaches every replica's L1
//! and the shared store.

use std::time::{Duration, Instant};

use crate::support::fleet::{admin_purge, admin_yaml, eventually, TOKEN};
use crate::support::origin::Seen;
use crate::support::redis::{RedisCluster, RedisServer};
use crate::support::{proxy, Origin, Proxy, Reply, Resp};

const L1: &str = "{ max_size: 16MiB, max_ttl: 30s }";
const ROUTES: &str =
    "  - path: /users/{id}\n    upstream: origin\n  - path: /{*rest}\n    upstream: origin\n";
const AUTH: &str = "Bearer s3cret-token";

/// Three replicas on `store_yaml`, each with its admin listener (URL alongside).
async fn fleet(origin: &Origin, defaults: &str, store_yaml: &str) -> Vec<(Proxy, String)> {
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let (admin_line, admin) = admin_yaml();
        let yaml = proxy::config_yaml(&origin.url(), defaults, ROUTES) + &admin_line + store_yaml;
        replicas.push((Proxy::start(&yaml).await, admin));
    }
    replicas
}

/// Waits until `n` subscribers listen for invalidations on `nodes` together.
async fn subscribed(nodes: &[&RedisServer], n: usize) {
    let ok = eventually(Duration::from_secs(5), async || {
        let total: usize = nodes
            .iter()
            .map(|node| {
                let out = node.cli(&["PUBSUB", "NUMSUB", "cachegate:invalidate"]);
                out.lines().last().and_then(|l| l.parse().ok()).unwrap_or(0)
            })
            .sum();
        total == n
    })
    .await;
    assert!(ok, "every replica subscribes to invalidations");
}

/// `{path} #{n}`, tagged by the first path segment (`/users/1`: `users`) and `all`.
fn tagged(s: &Seen) -> Reply {
    let tag = s.path.split('/').nth(1).unwrap_or("none").to_string();
    Reply::ok(format!("{} #{}", s.path, s.n)).header("surrogate-key", &format!("{tag} all"))
}

fn hit(r: &Resp) -> bool {
    r.cache_status().starts_with("cachegate; hit")
}

fn miss(r: &Resp) -> bool {
    r.cache_status().contains("fwd=miss")
}

/// Polls GETs of `path` on `p` (at most 2 s) until one is a miss; how long it took.
async fn until_miss(p: &Proxy, path: &str) -> Duration {
    let start = Instant::now();
    let missed = eventually(Duration::from_secs(2), async || miss(&p.get(path).await)).await;
    assert!(missed, "{path} on {} is never a miss", p.addr);
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_on_one_replica_drops_the_url_from_the_others_within_100ms() {
    let redis = RedisServer::start();
    let origin = Origin::start(tagged).await;
    let fleet = fleet(&origin, "ttl: 60s", &redis.store_yaml("500ms", L1)).await;
    let (a, b, c) = (&fleet[0].0, &fleet[1].0, &fleet[2].0);
    subscribed(&[&redis], 3).await;

    assert!(b.get("/users/1").await.cache_status().contains("stored"));
    for p in [b, c] {
        // The second GET is served from L1 (the first after the store filled it).
        p.get("/users/1").await;
        assert!(hit(&p.get("/users/1").await));
    }

    let purged = a
        .request("PURGE", "/users/1", &[("authorization", AUTH)])
        .await;
    let done = Instant::now();
    assert_eq!(
        (
            purged.status,
            crate::support::fleet::summary(&purged.body).as_str()
        ),
        (200, "{\"purged\":1,\"mode\":\"hard\"}\n")
    );
    // Neither serves the purged copy any more: B misses and fetches, then C finds B's
    // new entry (it would answer #0 from its L1 had the purge not reached it).
    let mut fresh = [None, None];
    let gone = eventually(Duration::from_secs(2), async || {
        for (i, p) in [b, c].into_iter().enumerate() {
            if fresh[i].is_none() && p.get("/users/1").await.body != "/users/1 #0" {
                fresh[i] = Some(done.elapsed());
            }
        }
        fresh.iter().all(Option::is_some)
    })
    .await;
    assert!(gone, "a replica kept serving the purged copy: {fresh:?}");
    let took = fresh.iter().flatten().max().copied().unwrap();
    println!("PURGE on A reached B and C after {fresh:?}");
    assert!(took < Duration::from_millis(100), "took {took:?}");
    assert_eq!(origin.hits("/users/1"), 2, "one refetch for the fleet");
    assert_eq!(c.get("/users/1").await.body, "/users/1 #1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_purges_by_route_prefix_and_tag_reach_exactly_their_keys_fleet_wide() {
    let redis = RedisServer::start();
    let origin = Origin::start(tagged).await;
    let fleet = fleet(&origin, "ttl: 60s", &redis.store_yaml("500ms", L1)).await;
    let (a, b, c) = (&fleet[0].0, &fleet[1].0, &fleet[2].0);
    let admins: Vec<&str> = fleet.iter().map(|(_, admin)| admin.as_str()).collect();
    subscribed(&[&redis], 3).await;

    const PATHS: &[&str] = &[
        "/users/1",
        "/users/2",
        "/teams/1",
        "/teams/2/members",
        "/misc",
    ];
    for (i, path) in PATHS.iter().enumerate() {
        assert!(fleet[i % 3]
            .0
            .get(path)
            .await
            .cache_status()
            .contains("stored"));
    }
    // Every replica holds every key in L1.
    for (p, _) in &fleet {
        for path in PATHS {
            p.get(path).await;
            assert!(hit(&p.get(path).await), "{path}");
        }
    }

    assert_eq!(
        admin_purge(admins[0], "route=/users/{id}", TOKEN).await,
        (200, "{\"purged\":2,\"mode\":\"hard\"}\n".into())
    );
    until_miss(b, "/users/1").await;
    until_miss(c, "/users/2").await;
    assert!(hit(&b.get("/teams/1").await), "other routes untouched");
    assert!(hit(&c.get("/misc").await));

    assert_eq!(
        admin_purge(admins[1], "prefix=/teams/2/", TOKEN).await.1,
        "{\"purged\":1,\"mode\":\"hard\"}\n"
    );
    until_miss(c, "/teams/2/members").await;
    assert!(
        hit(&a.get("/teams/1").await),
        "/teams/1 is not under /teams/2/"
    );

    assert_eq!(
        admin_purge(admins[2], "tag=teams", TOKEN).await.1,
        "{\"purged\":2,\"mode\":\"hard\"}\n"
    );
    until_miss(a, "/teams/1").await;
    until_miss(b, "/teams/2/members").await;
    for (p, _) in &fleet {
        for path in ["/users/1", "/users/2", "/misc"] {
            assert!(hit(&p.get(path).await), "{path} untouched by the tag purge");
        }
    }

    let hits: Vec<usize> = PATHS.iter().map(|p| origin.hits(p)).collect();
    assert_eq!(hits, [2, 2, 2, 3, 1], "origin requests per path: {PATHS:?}");

    assert_eq!(
        admin_purge(admins[0], "tag=nobody", TOKEN).await.1,
        "{\"purged\":0,\"mode\":\"hard\"}\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_too_large_to_announce_key_by_key_clears_every_l1() {
    let redis = RedisServer::start();
    let origin = Origin::start(tagged).await;
    let fleet = fleet(&origin, "ttl: 60s", &redis.store_yaml("500ms", L1)).await;
    let (a, b) = (&fleet[0].0, &fleet[1].0);
    subscribed(&[&redis], 3).await;

    let paths: Vec<String> = (0..150).map(|i| format!("/bulk/{i}")).collect();
    for path in &paths {
        a.get(path).await;
        b.get(path).await;
    }
    b.get("/users/9").await;
    assert!(hit(&b.get("/bulk/0").await));

    assert_eq!(
        admin_purge(&fleet[2].1, "prefix=/bulk/", TOKEN).await.1,
        "{\"purged\":150,\"mode\":\"hard\"}\n"
    );
    until_miss(b, "/bulk/0").await;
    for path in &paths[1..] {
        assert!(miss(&b.get(path).await), "{path} is still in B's L1");
    }
    assert!(
        hit(&b.get("/users/9").await),
        "what was not purged is still in L2"
    );
    assert!(paths.iter().all(|p| origin.hits(p) == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soft_purge_serves_stale_fleet_wide_while_one_refresh_runs() {
    let redis = RedisServer::start();
    // Refreshes take a while, so every replica finds the entry stale meanwhile.
    let origin = Origin::start(|s| {
        let delay = if s.n == 0 { 0 } else { 300 };
        tagged(s).delay(Duration::from_millis(delay))
    })
    .await;
    let fleet = fleet(
        &origin,
        "ttl: 60s, stale: 60s, jitter: 0",
        &redis.store_yaml("500ms", L1),
    )
    .await;
    let (a, b, c) = (&fleet[0].0, &fleet[1].0, &fleet[2].0);
    subscribed(&[&redis], 3).await;
    assert_eq!(a.get("/users/7").await.body, "/users/7 #0");
    for p in [b, c] {
        p.get("/users/7").await;
        assert!(hit(&p.get("/users/7").await));
    }

    assert_eq!(
        admin_purge(&fleet[0].1, "url=/users/7&mode=soft", TOKEN)
            .await
            .1,
        "{\"purged\":1,\"mode\":\"soft\"}\n"
    );
    let start = Instant::now();
    let swr = |r: &Resp| r.cache_status().contains("detail=stale-while-revalidate");
    let mut first = None;
    let stale = eventually(Duration::from_secs(2), async || {
        let r = b.get("/users/7").await;
        first = Some(r);
        first.as_ref().is_some_and(swr)
    })
    .await;
    let r = first.unwrap();
    assert!(stale, "B never served it stale: {}", r.cache_status());
    assert_eq!(
        r.body, "/users/7 #0",
        "served at once from the softened entry"
    );
    println!("soft purge seen by B after {:?}", start.elapsed());
    for p in [c, a] {
        let r = p.get("/users/7").await;
        assert!(swr(&r), "{}", r.cache_status());
        assert_eq!(r.body, "/users/7 #0");
    }

    let refreshed = eventually(Duration::from_secs(3), async || {
        origin.hits("/users/7") >= 2
    })
    .await;
    assert!(refreshed, "no refresh happened");
    // Time for a second refresh to show up, had any replica started one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        origin.hits("/users/7"),
        2,
        "exactly one refresh for the fleet"
    );
    for (p, _) in &fleet {
        assert_eq!(p.get("/users/7").await.body, "/users/7 #1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_purge_by_tag_reaches_keys_on_every_master() {
    let cluster = RedisCluster::start();
    let origin = Origin::start(tagged).await;
    let fleet = fleet(&origin, "ttl: 60s", &cluster.store_yaml("500ms", L1)).await;
    let nodes: Vec<&RedisServer> = cluster.masters.iter().chain(&cluster.replicas).collect();
    subscribed(&nodes, 3).await;

    let paths: Vec<String> = (0..12).map(|i| format!("/k/{i}")).collect();
    for (i, path) in paths.iter().enumerate() {
        fleet[i % 3].0.get(path).await;
    }
    fleet[0].0.get("/misc").await;
    let entries = |m: &RedisServer| {
        m.cli(&[
            "--scan",
            "--pattern",
            &crate::support::redis::ns("*:e:/{\\*rest}|rest=k*"),
        ])
    };
    for m in &cluster.masters {
        assert!(
            !entries(m).is_empty(),
            "master {} holds some of the keys",
            m.port
        );
    }
    for (p, _) in &fleet {
        p.get("/k/0").await;
        assert!(hit(&p.get("/k/0").await));
    }

    assert_eq!(
        admin_purge(&fleet[1].1, "tag=k", TOKEN).await.1,
        "{\"purged\":12,\"mode\":\"hard\"}\n"
    );
    for m in &cluster.masters {
        assert_eq!(entries(m), "", "master {} still holds tagged keys", m.port);
    }
    until_miss(&fleet[2].0, "/k/0").await;
    // The purge reached A's L1 too: it finds C's new entry, not its old copy.
    let fresh = eventually(Duration::from_secs(1), async || {
        fleet[0].0.get("/k/0").await.body == "/k/0 #1"
    })
    .await;
    assert!(fresh, "A kept serving its purged copy");
    // Each key's invalidation is published through the master that owns its slot and
    // crosses the cluster bus to A's subscription on its own: they arrive within
    // milliseconds of each other, not in one message.
    for path in &paths[1..] {
        let purged = eventually(Duration::from_secs(1), async || {
            miss(&fleet[0].0.get(path).await)
        })
        .await;
        assert!(purged, "{path} is still in A's L1");
    }
    assert!(hit(&fleet[2].0.get("/misc").await), "untagged keys stay");
    assert!(paths.iter().all(|p| origin.hits(p) == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_while_redis_is_down_is_a_503() {
    let mut redis = RedisServer::start();
    let origin = Origin::start(tagged).await;
    let (admin_line, admin) = admin_yaml();
    let yaml = proxy::config_yaml(&origin.url(), "ttl: 60s", ROUTES)
        + &admin_line
        + &redis.store_yaml("100ms", L1);
    let p = Proxy::start(&yaml).await;
    p.get("/users/1").await;
    redis.kill();
    let (status, body) = admin_purge(&admin, "tag=users", TOKEN).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        p.get("/users/1").await.status == 200,
        "requests are still served"
    );
}
