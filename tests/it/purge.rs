//! Purges: PURGE on the proxy and the admin API by URL, route, tag and prefix, hard or
//! soft, behind the admin token.

use std::time::Duration;

use crate::support::fleet::{admin_purge, admin_yaml, TOKEN};
use crate::support::{proxy, Origin, Proxy, Reply};

async fn start(origin: &Origin) -> (Proxy, String) {
    let (admin_yaml, admin) = admin_yaml();
    let yaml = proxy::config_yaml(
        &origin.url(),
        "ttl: 60s, stale: 60s, jitter: 0",
        "  - path: /users/{id}\n    upstream: origin\n  - path: /{*rest}\n    upstream: origin\n",
    ) + &admin_yaml;
    (Proxy::start(&yaml).await, admin)
}

fn origin_handler(s: &crate::support::origin::Seen) -> Reply {
    let tag = if s.path.starts_with("/users/") {
        "users"
    } else {
        "other"
    };
    Reply::ok(format!("{} #{}", s.path, s.n)).header("surrogate-key", &format!("{tag} all"))
}

#[tokio::test]
async fn purge_method_needs_the_token_and_removes_the_url() {
    let origin = Origin::start(origin_handler).await;
    let (p, _) = start(&origin).await;
    p.get("/users/1").await;
    assert!(p.get("/users/1").await.cache_status().contains("hit"));

    let denied = p
        .request("PURGE", "/users/1", &[("authorization", "Bearer wrong")])
        .await;
    assert_eq!(denied.status, 401);
    assert!(
        p.get("/users/1").await.cache_status().contains("hit"),
        "a refused purge changes nothing"
    );

    let auth = format!("Bearer {TOKEN}");
    let ok = p
        .request("PURGE", "/users/1", &[("authorization", auth.as_str())])
        .await;
    assert_eq!(
        (ok.status, crate::support::fleet::summary(&ok.body).as_str()),
        (200, "{\"purged\":1,\"mode\":\"hard\"}\n")
    );
    let after = p.get("/users/1").await;
    assert!(
        after.cache_status().contains("fwd=miss"),
        "{}",
        after.cache_status()
    );
    assert_eq!(after.body, "/users/1 #1");
}

#[tokio::test]
async fn admin_purges_by_route_tag_and_prefix() {
    let origin = Origin::start(origin_handler).await;
    let (p, admin) = start(&origin).await;
    for path in ["/users/1", "/users/2", "/teams/1", "/teams/2/members"] {
        p.get(path).await;
    }

    assert_eq!(
        admin_purge(&admin, "route=/users/{id}", TOKEN).await,
        (200, "{\"purged\":2,\"mode\":\"hard\"}\n".into())
    );
    assert!(p.get("/users/1").await.cache_status().contains("fwd=miss"));
    assert!(
        p.get("/teams/1").await.cache_status().contains("hit"),
        "other routes untouched"
    );

    assert_eq!(
        admin_purge(&admin, "prefix=/teams/2/", TOKEN).await.1,
        "{\"purged\":1,\"mode\":\"hard\"}\n"
    );
    assert!(p
        .get("/teams/2/members")
        .await
        .cache_status()
        .contains("fwd=miss"));
    assert!(p.get("/teams/1").await.cache_status().contains("hit"));

    let (status, body) = admin_purge(&admin, "tag=other", TOKEN).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "{\"purged\":2,\"mode\":\"hard\"}\n")
    );
    assert!(p.get("/teams/1").await.cache_status().contains("fwd=miss"));

    assert_eq!(admin_purge(&admin, "tag=other", "nope").await.0, 401);
    assert_eq!(admin_purge(&admin, "colour=red", TOKEN).await.0, 400);
    assert_eq!(admin_purge(&admin, "tag=a&route=/x", TOKEN).await.0, 400);
}

#[tokio::test]
async fn soft_purge_serves_stale_once_while_one_refresh_runs() {
    let origin = Origin::start(origin_handler).await;
    let (p, admin) = start(&origin).await;
    assert_eq!(p.get("/users/7").await.body, "/users/7 #0");
    assert_eq!(
        admin_purge(&admin, "url=/users/7&mode=soft", TOKEN).await.1,
        "{\"purged\":1,\"mode\":\"soft\"}\n"
    );

    let stale = p.get("/users/7").await;
    assert_eq!(
        stale.body, "/users/7 #0",
        "served at once from the softened entry"
    );
    assert!(stale.cache_status().contains("stale-while-revalidate"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.get("/users/7").await.body, "/users/7 #1");
    assert_eq!(origin.hits("/users/7"), 2);
}

#[tokio::test]
async fn purge_is_refused_without_a_configured_token() {
    let origin = Origin::start(origin_handler).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;
    let r = p
        .request("PURGE", "/x", &[("authorization", "Bearer anything")])
        .await;
    assert_eq!(r.status, 403);
}
