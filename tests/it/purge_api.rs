//! Purges as a deploy pipeline uses them: the JSON API (each selector, counts, soft,
//! everything, 400s), route tags, tag headers kept from clients, `Fastly-Soft-Purge`,
//! and the race a pipeline cannot see: a fetch that began before a purge never stores
//! its (old) answer as fresh after it, on the memory store, Redis and a Cluster.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::fleet::{admin_yaml, TOKEN};
use crate::support::origin::Seen;
use crate::support::redis::{RedisCluster, RedisServer};
use crate::support::{proxy, Origin, Proxy, Reply};

const ROUTES: &str = concat!(
    "  - path: /users/{id}\n    upstream: origin\n    tags: [\"user:{id}\", users]\n",
    "  - path: /open/{id}\n    upstream: origin\n    expose_tags: true\n",
    "  - path: /{*rest}\n    upstream: origin\n",
);

/// `/slow/..` and `?slow` answer after 600 ms; every answer is tagged by its first
/// segment through `Surrogate-Key` and `Cache-Tag`.
fn handler(s: &Seen) -> Reply {
    let first = s.path.split('/').nth(1).unwrap_or("").to_string();
    let reply = Reply::ok(format!("{} #{}", s.path, s.n))
        .header("surrogate-key", &format!("seg-{first} all"))
        .header("cache-tag", "ct-one,ct-two");
    if s.path.contains("slow") {
        reply.delay(Duration::from_millis(600))
    } else {
        reply
    }
}

async fn start(origin: &Origin, store_yaml: &str) -> (Proxy, String) {
    let (admin_line, admin) = admin_yaml();
    let yaml = proxy::config_yaml(&origin.url(), "ttl: 60s, stale: 60s, jitter: 0", ROUTES)
        + &admin_line
        + store_yaml;
    (Proxy::start(&yaml).await, admin)
}

/// `POST {admin}/purge` with a JSON body: (status, parsed answer).
async fn purge(admin: &str, body: Value) -> (u16, Value) {
    purge_raw(admin, &body.to_string(), TOKEN).await
}

async fn purge_raw(admin: &str, body: &str, token: &str) -> (u16, Value) {
    let send = || {
        proxy::client()
            .post(format!("{admin}/purge"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    // The admin listener may still be binding right after start-up.
    let mut r = send().await;
    for _ in 0..50 {
        if r.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        r = send().await;
    }
    let r = r.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn miss(p: &crate::support::Resp) -> bool {
    p.cache_status().contains("fwd=miss")
}

fn hit(p: &crate::support::Resp) -> bool {
    p.cache_status().starts_with("cachegate; hit")
}

/// A GET for `path` is sent, the purge `body` is applied while the origin is still
/// answering it, and then: the client still gets its answer, but the next request goes
/// to the origin (the answer fetched before the purge was not stored as fresh).
async fn purge_during_fetch(p: &Proxy, admin: &str, origin: &Origin, path: &str, body: Value) {
    let url = p.url(path);
    let inflight =
        tokio::spawn(async move { proxy::send(&proxy::client(), "GET", &url, &[]).await });
    // The origin has the request (and answers in 600 ms).
    for _ in 0..100 {
        if origin.hits(path) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(origin.hits(path), 1, "the fetch reached the origin");
    let (status, answer) = purge(admin, body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let first = inflight.await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(
        first.body,
        format!("{path} #0"),
        "the client that asked is answered"
    );
    let next = p.get(path).await;
    assert!(
        !hit(&next),
        "{body}: the answer fetched before the purge was served as a hit after it: {}",
        next.cache_status()
    );
    assert_eq!(
        origin.hits(path),
        2,
        "{body}: the next request went to the origin"
    );
    assert_eq!(next.body, format!("{path} #1"));
    // And that one is stored as usual.
    assert!(hit(&p.get(path).await));
}

async fn race_on(store_yaml: &str) {
    let origin = Origin::start(handler).await;
    let (p, admin) = start(&origin, store_yaml).await;
    purge_during_fetch(&p, &admin, &origin, "/slow/1", json!({"urls": ["/slow/1"]})).await;
    purge_during_fetch(
        &p,
        &admin,
        &origin,
        "/slow/2",
        json!({"tags": ["seg-slow"]}),
    )
    .await;
    purge_during_fetch(
        &p,
        &admin,
        &origin,
        "/slow/3",
        json!({"prefixes": ["/slow/"]}),
    )
    .await;
    purge_during_fetch(
        &p,
        &admin,
        &origin,
        "/slow/4",
        json!({"routes": ["/{*rest}"]}),
    )
    .await;
    purge_during_fetch(&p, &admin, &origin, "/slow/5", json!({"all": true})).await;
    // A soft purge during the fetch stores the answer stale: the next request is
    // answered at once from it while one refresh runs.
    let url = p.url("/slow/6");
    let inflight =
        tokio::spawn(async move { proxy::send(&proxy::client(), "GET", &url, &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        purge(&admin, json!({"urls": ["/slow/6"], "soft": true}))
            .await
            .0,
        200
    );
    inflight.await.unwrap();
    let next = p.get("/slow/6").await;
    assert!(
        next.cache_status().contains("stale-while-revalidate"),
        "soft-purged during its fetch: stored stale, so served stale: {}",
        next.cache_status()
    );
    assert_eq!(next.body, "/slow/6 #0");
    // A purge that does not cover the key leaves the fetch alone.
    let url = p.url("/slow/7");
    let inflight =
        tokio::spawn(async move { proxy::send(&proxy::client(), "GET", &url, &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(purge(&admin, json!({"tags": ["seg-other"]})).await.0, 200);
    inflight.await.unwrap();
    let r = p.get("/slow/7").await;
    assert!(
        hit(&r),
        "an unrelated purge undid a fetch: {}",
        r.cache_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fetch_that_began_before_a_purge_is_not_stored_after_it_memory() {
    race_on("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fetch_that_began_before_a_purge_is_not_stored_after_it_redis() {
    let redis = RedisServer::start();
    race_on(&redis.store_yaml("2s", "{ max_size: 16MiB, max_ttl: 30s }")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fetch_that_began_before_a_purge_is_not_stored_after_it_cluster() {
    let cluster = RedisCluster::start();
    race_on(&cluster.store_yaml("2s", "{ max_size: 16MiB, max_ttl: 30s }")).await;
}

/// The race across replicas: the purge goes to B while A's fetch is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_on_another_replica_during_a_fetch_is_not_undone() {
    let redis = RedisServer::start();
    let origin = Origin::start(handler).await;
    let store = redis.store_yaml("2s", "{ max_size: 16MiB, max_ttl: 30s }");
    let (a, _) = start(&origin, &store).await;
    let (b, admin_b) = start(&origin, &store).await;
    let url = a.url("/slow/x");
    let inflight =
        tokio::spawn(async move { proxy::send(&proxy::client(), "GET", &url, &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(purge(&admin_b, json!({"tags": ["seg-slow"]})).await.0, 200);
    inflight.await.unwrap();
    let r = a.get("/slow/x").await;
    assert!(
        !hit(&r),
        "served the pre-purge answer: {}",
        r.cache_status()
    );
    assert_eq!(r.body, "/slow/x #1");
    let r = b.get("/slow/x").await;
    assert_eq!(r.body, "/slow/x #1", "B finds A's new entry");
    assert_eq!(
        origin.hits("/slow/x"),
        2,
        "one new fetch, shared by both replicas"
    );
}

#[tokio::test]
async fn json_purge_counts_each_selector_and_purges_exactly_them() {
    let origin = Origin::start(handler).await;
    let (p, admin) = start(&origin, "").await;
    for path in ["/users/1", "/users/2", "/a/1", "/a/2", "/b/1", "/c/1?x=1"] {
        assert!(miss(&p.get(path).await), "{path}");
    }
    let (status, answer) = purge(
        &admin,
        json!({"urls": ["/c/1?x=1", "http://127.0.0.1/b/1"], "tags": ["user:1"], "prefixes": ["/a/"]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["mode"], "hard");
    assert_eq!(
        answer["purged"],
        json!({"urls": 2, "tags": 1, "prefixes": 2})
    );
    assert_eq!(answer["total"], 5);
    for path in ["/users/1", "/a/1", "/a/2", "/b/1", "/c/1?x=1"] {
        assert!(miss(&p.get(path).await), "{path} was purged");
    }
    assert!(hit(&p.get("/users/2").await), "user:1 is not user:2");

    // A route's own tag reaches all its keys; a route purge by template.
    let (_, answer) = purge(&admin, json!({"tags": ["users"]})).await;
    assert_eq!(answer["purged"]["tags"], 2);
    let (_, answer) = purge(&admin, json!({"routes": ["/users/{id}"]})).await;
    assert_eq!(answer["purged"]["routes"], 0, "already gone");

    // Everything, softly: served stale at once, refreshed once.
    p.get("/users/1").await;
    let (_, answer) = purge(&admin, json!({"all": true, "soft": true})).await;
    assert_eq!(answer["mode"], "soft");
    assert_eq!(answer["purged"]["all"], 5, "{answer}");
    let stale = p.get("/a/1").await;
    assert!(
        stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    assert_eq!(stale.body, "/a/1 #1", "the stale copy answers at once");
    // The refresh lands (on a connection worker, beside this test) before the count
    // below: an entry being replaced while a purge walks the store may be counted or not.
    let mut refreshed = false;
    for _ in 0..100 {
        if origin.hits("/a/1") >= 2 && p.get("/a/1").await.body == "/a/1 #2" {
            refreshed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refreshed, "one refresh brought /a/1 #2");

    // Hard purge of everything: all misses.
    let (_, answer) = purge(&admin, json!({"all": true})).await;
    assert_eq!(answer["total"], 5);
    assert!(miss(&p.get("/b/1").await));
}

#[tokio::test]
async fn bad_purge_requests_are_400_with_the_reason() {
    let origin = Origin::start(handler).await;
    let (_p, admin) = start(&origin, "").await;
    let cases: Vec<(&str, &str)> = vec![
        ("{\"urls\": [\"/users/1\"", "EOF"),
        ("{\"url\": [\"/users/1\"]}", "unknown field `url`"),
        ("{\"tags\": \"one\"}", "invalid type"),
        ("{}", "nothing to purge"),
        (
            "{\"routes\": [\"/user/{id}\"]}",
            "known: /users/{id}, /open/{id}, /{*rest}",
        ),
        ("{\"urls\": [\"users/1\"]}", "is not a URL"),
        ("{\"prefixes\": [\"users\"]}", "must start with /"),
        ("{\"tags\": [\"\"]}", "is empty"),
    ];
    for (body, reason) in cases {
        let (status, answer) = purge_raw(&admin, body, TOKEN).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(reason),
            "{body}: {error:?} should say {reason:?}"
        );
    }
    let (status, _) = purge_raw(&admin, "{\"all\": true}", "wrong").await;
    assert_eq!(status, 401);
    let r = proxy::client()
        .post(format!("{admin}/purge"))
        .body("{\"all\": true}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "no token");
}

#[tokio::test]
async fn tag_headers_stay_inside_unless_the_route_exposes_them() {
    let origin = Origin::start(handler).await;
    let (p, admin) = start(&origin, "").await;
    for _ in 0..2 {
        let r = p.get("/a/1").await;
        assert_eq!(r.header("surrogate-key"), None, "{:?}", r.headers);
        assert_eq!(r.header("cache-tag"), None);
    }
    let r = p.get("/open/1").await;
    assert_eq!(r.header("surrogate-key"), Some("seg-open all"));
    assert_eq!(r.header("cache-tag"), Some("ct-one,ct-two"));
    // Cache-Tag values are tags too.
    let (_, answer) = purge(&admin, json!({"tags": ["ct-two"]})).await;
    assert_eq!(answer["total"], 2);
}

#[tokio::test]
async fn purge_method_honours_fastly_soft_purge() {
    let origin = Origin::start(handler).await;
    let (p, _) = start(&origin, "").await;
    p.get("/a/9").await;
    let auth = format!("Bearer {TOKEN}");
    let r = p
        .request(
            "PURGE",
            "/a/9",
            &[("authorization", auth.as_str()), ("fastly-soft-purge", "1")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        (answer["mode"].as_str(), answer["total"].as_u64()),
        (Some("soft"), Some(1))
    );
    let stale = p.get("/a/9").await;
    assert!(
        stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    let r = p
        .request(
            "PURGE",
            "/nothing-routes-here-but-rest",
            &[("authorization", auth.as_str())],
        )
        .await;
    assert_eq!(r.status, 200, "a URL with nothing stored purges 0");
}

#[tokio::test]
async fn route_tags_must_name_path_parameters() {
    let yaml = |tags: &str| {
        format!(
            "listen: 127.0.0.1:0\nupstreams:\n  o: {{ url: \"http://127.0.0.1:1\" }}\nroutes:\n  - path: /users/{{id}}\n    upstream: o\n    tags: {tags}\n"
        )
    };
    let parse = |tags: &str| {
        cachegate::config::Config::parse(
            &yaml(tags),
            std::path::Path::new("routes.yaml"),
            &Default::default(),
        )
    };
    assert!(parse("[\"user:{id}\", users]").is_ok());
    let e = parse("[\"user:{uid}\"]").unwrap_err().to_string();
    assert!(
        e.contains("routes.yaml:")
            && e.contains("routes[0].tags[0]")
            && e.contains("{uid} is not a parameter"),
        "{e}"
    );
    let e = parse("[\"two words\"]").unwrap_err().to_string();
    assert!(e.contains("routes[0].tags[0]"), "{e}");
}

#[tokio::test]
async fn tags_survive_a_304_revalidation() {
    let origin = Origin::start(|s: &Seen| {
        if s.headers.get("if-none-match").is_some() {
            Reply::ok("").status(304).header("etag", "\"v1\"")
        } else {
            Reply::ok(format!("{} #{}", s.path, s.n))
                .header("etag", "\"v1\"")
                .header("surrogate-key", "from-origin")
        }
    })
    .await;
    let (admin_line, admin) = admin_yaml();
    let yaml =
        proxy::config_yaml(&origin.url(), "ttl: 1s, stale: 60s, jitter: 0", ROUTES) + &admin_line;
    let p = Proxy::start(&yaml).await;
    p.get("/users/5").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Stale: served at once while the refresh revalidates (a 304).
    p.get("/users/5").await;
    let revalidated = crate::support::fleet::eventually(Duration::from_secs(3), async || {
        origin.hits("/users/5") == 2 && hit(&p.get("/users/5").await)
    })
    .await;
    assert!(revalidated, "the refresh renewed the entry");
    for tag in ["user:5", "from-origin"] {
        let (_, answer) = purge(&admin, json!({"tags": [tag], "soft": true})).await;
        assert_eq!(answer["total"], 1, "{tag}: {answer}");
    }
}

#[tokio::test]
async fn a_soft_purge_never_serves_must_revalidate_entries_stale() {
    let origin = Origin::start(|s: &Seen| {
        Reply::ok(format!("{} #{}", s.path, s.n))
            .header("cache-control", "max-age=60, must-revalidate")
    })
    .await;
    let (p, admin) = start(&origin, "").await;
    p.get("/mr/1").await;
    assert!(hit(&p.get("/mr/1").await));
    let (_, answer) = purge(&admin, json!({"urls": ["/mr/1"], "soft": true})).await;
    assert_eq!(answer["total"], 1);
    let next = p.get("/mr/1").await;
    assert!(
        miss(&next),
        "must-revalidate: fetched, not served stale: {}",
        next.cache_status()
    );
    assert_eq!(next.body, "/mr/1 #1");
}
