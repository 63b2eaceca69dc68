//! RFC 9111 §4.4: a successful (2xx/3xx) unsafe request invalidates the stored responses
//! for its target URI, and for same-origin `Location` and `Content-Location`: all
//! variants, for GET and HEAD. Failures (4xx/5xx) and cross-origin URLs do not.

use crate::support::{proxy, Origin, Proxy, Reply, Resp};

/// A client that does not follow redirects (a 303 to a POST must reach the test).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn send(p: &Proxy, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    proxy::send(&client(), method, &p.url(path), headers).await
}

/// GETs answer `get n`; unsafe methods answer with the status and headers the test puts
/// in the query: `?status=303&location=/x`.
async fn origin() -> Origin {
    Origin::start(|s| {
        if s.method == "GET" {
            return Reply::ok(format!("get {}", s.n)).header("vary", "accept-language");
        }
        let q = s.query.clone().unwrap_or_default();
        let mut r = Reply::ok("done");
        for pair in q.split('&') {
            match pair.split_once('=') {
                Some(("status", v)) => r = r.status(v.parse().unwrap()),
                Some(("location", v)) => {
                    r = r.header("location", &v.replace("%2F", "/").replace("%3A", ":"))
                }
                Some(("content-location", v)) => {
                    r = r.header(
                        "content-location",
                        &v.replace("%2F", "/").replace("%3A", ":"),
                    )
                }
                _ => {}
            }
        }
        r
    })
    .await
}

async fn proxy_for(origin: &Origin) -> Proxy {
    // Query params are ignored by the key unless selected: `?status=...` on an unsafe
    // request targets the same entry as the GET.
    Proxy::simple(&origin.url(), "ttl: 600s, jitter: 0").await
}

#[tokio::test]
async fn successful_unsafe_methods_invalidate_the_target() {
    let origin = origin().await;
    let p = proxy_for(&origin).await;
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let path = format!("/inv/{method}");
        p.get(&path).await;
        assert!(p
            .get(&path)
            .await
            .cache_status()
            .starts_with("cachegate; hit"));
        let r = send(&p, method, &path, &[]).await;
        assert_eq!(r.status, 200);
        assert!(
            r.cache_status().contains("fwd=bypass"),
            "{}",
            r.cache_status()
        );
        let after = p.get(&path).await;
        assert!(
            after.cache_status().contains("fwd=miss"),
            "{method} invalidated: {}",
            after.cache_status()
        );
        assert_eq!(origin.hits(&path), 3, "{method}: GET, {method}, GET");
    }
}

#[tokio::test]
async fn a_redirect_status_counts_as_success() {
    let origin = origin().await;
    let p = proxy_for(&origin).await;
    // The query is part of the target URI (and of the key): the same URL is invalidated.
    let url = "/r303?status=303&location=%2Felsewhere";
    p.get(url).await;
    assert!(p
        .get(url)
        .await
        .cache_status()
        .starts_with("cachegate; hit"));
    let r = send(&p, "POST", url, &[]).await;
    assert_eq!(r.status, 303);
    assert!(p.get(url).await.cache_status().contains("fwd=miss"));
}

#[tokio::test]
async fn failed_unsafe_requests_do_not_invalidate() {
    let origin = origin().await;
    let p = proxy_for(&origin).await;
    for status in [400, 404, 409, 500, 503] {
        let path = format!("/fail/{status}");
        p.get(&path).await;
        let r = send(&p, "POST", &format!("{path}?status={status}"), &[]).await;
        assert_eq!(r.status, status);
        let after = p.get(&path).await;
        assert!(
            after.cache_status().starts_with("cachegate; hit"),
            "a {status} does not invalidate: {}",
            after.cache_status()
        );
    }
}

#[tokio::test]
async fn invalidation_covers_every_variant_and_head() {
    let origin = origin().await;
    let p = proxy_for(&origin).await;
    p.get_with("/all", &[("accept-language", "en")]).await;
    p.get_with("/all", &[("accept-language", "fr")]).await;
    assert!(p
        .request("HEAD", "/all", &[("accept-language", "fr")])
        .await
        .cache_status()
        .starts_with("cachegate; hit"));
    assert_eq!(origin.hits("/all"), 2);
    send(&p, "PUT", "/all", &[("accept-language", "en")]).await;
    let head = p
        .request("HEAD", "/all", &[("accept-language", "fr")])
        .await;
    assert!(
        head.cache_status().contains("fwd=miss"),
        "HEAD of another variant: {}",
        head.cache_status()
    );
    let en = p.get_with("/all", &[("accept-language", "en")]).await;
    assert!(
        en.cache_status().contains("fwd=miss"),
        "{}",
        en.cache_status()
    );
    assert_eq!(origin.hits("/all"), 5);
}

#[tokio::test]
async fn same_origin_location_and_content_location_are_invalidated() {
    let origin = origin().await;
    let p = proxy_for(&origin).await;
    // Absolute, naming the host the client asked for.
    let abs = format!("http%3A%2F%2F{}%2Fabs", proxy::TEST_HOST);
    for path in ["/loc", "/cloc", "/abs", "/target"] {
        p.get(path).await;
    }
    send(
        &p,
        "POST",
        "/target?location=%2Floc&content-location=%2Fcloc",
        &[],
    )
    .await;
    send(&p, "POST", &format!("/target?location={abs}"), &[]).await;
    for path in ["/loc", "/cloc", "/abs"] {
        let r = p.get(path).await;
        assert!(
            r.cache_status().contains("fwd=miss"),
            "{path} invalidated: {}",
            r.cache_status()
        );
    }
}

#[tokio::test]
async fn a_location_on_another_origin_is_not_invalidated() {
    let origin = origin().await;
    let p = proxy_for(&origin).await;
    p.get("/cross").await;
    send(&p, "POST", "/target?location=http%3A%2F%2Fevil.example%2Fcross&content-location=http%3A%2F%2Fevil.example%2Fcross", &[]).await;
    let r = p.get("/cross").await;
    assert!(
        r.cache_status().starts_with("cachegate; hit"),
        "another origin's URL is not ours to invalidate: {}",
        r.cache_status()
    );
}

#[tokio::test]
async fn safe_methods_do_not_invalidate() {
    let origin = origin().await;
    let p = proxy_for(&origin).await;
    p.get("/safe").await;
    send(&p, "OPTIONS", "/safe", &[]).await;
    assert!(p
        .get("/safe")
        .await
        .cache_status()
        .starts_with("cachegate; hit"));
}
