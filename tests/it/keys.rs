//! Keys: route template + params + selected query params; selected headers and `Vary`
//! pick variants; HEAD is answered from the GET entry.

use crate::support::{proxy, Origin, Proxy, Reply};

async fn users_proxy(origin: &Origin) -> Proxy {
    let routes = "  - path: /users/{id}\n    upstream: origin\n    key: { query: [fields], headers: [accept-language] }\n  - path: /{*rest}\n    upstream: origin\n";
    Proxy::start(&proxy::config_yaml(&origin.url(), "ttl: 60s", routes)).await
}

#[tokio::test]
async fn unselected_query_params_share_an_entry() {
    let origin = Origin::start(|s| Reply::ok(format!("{} {:?}", s.path, s.query))).await;
    let p = users_proxy(&origin).await;
    let a = p.get("/users/1?fields=name&utm_source=mail").await;
    let b = p.get("/users/1?utm_source=ads&fields=name").await;
    assert_eq!(origin.hits("/users/1"), 1);
    assert_eq!(a.body, b.body);
    assert!(b.cache_status().contains("hit"));

    p.get("/users/1?fields=email").await;
    p.get("/users/2?fields=name").await;
    assert_eq!(
        origin.hits("/users/1"),
        2,
        "a selected param splits the entry"
    );
    assert_eq!(origin.hits("/users/2"), 1, "a path param splits the entry");
}

#[tokio::test]
async fn selected_headers_and_vary_pick_variants() {
    let origin = Origin::start(|s| {
        let lang = s
            .headers
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let accept = s
            .headers
            .get("accept")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        Reply::ok(format!("{lang}/{accept}")).header("vary", "Accept")
    })
    .await;
    let p = users_proxy(&origin).await;
    let en = p
        .get_with(
            "/users/1",
            &[("accept-language", "en"), ("accept", "text/plain")],
        )
        .await;
    let fr = p
        .get_with(
            "/users/1",
            &[("accept-language", "fr"), ("accept", "text/plain")],
        )
        .await;
    let en_json = p
        .get_with(
            "/users/1",
            &[("accept-language", "en"), ("accept", "application/json")],
        )
        .await;
    assert_eq!(
        (en.body.as_str(), fr.body.as_str(), en_json.body.as_str()),
        ("en/text/plain", "fr/text/plain", "en/application/json")
    );
    assert_eq!(origin.hits("/users/1"), 3);

    // Each variant is now a hit, and an unkeyed header cannot poison them.
    let again = p
        .get_with(
            "/users/1",
            &[
                ("accept-language", "fr"),
                ("accept", "text/plain"),
                ("x-evil", "1"),
            ],
        )
        .await;
    assert_eq!(again.body, "fr/text/plain");
    assert!(again.cache_status().contains("hit"));
    assert_eq!(origin.hits("/users/1"), 3);
}

#[tokio::test]
async fn head_is_answered_from_the_get_entry() {
    let origin = Origin::start(|s| Reply::ok(format!("body via {}", s.method))).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;
    let head = p.request("HEAD", "/h", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.body, "");
    assert_eq!(head.header("content-length"), Some("12"));
    let get = p.get("/h").await;
    assert_eq!(
        get.body, "body via GET",
        "the HEAD miss fetched and stored a GET"
    );
    assert!(get.cache_status().contains("hit"));
    assert_eq!(origin.hits("/h"), 1);
}
