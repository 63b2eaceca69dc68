//! RFC 9111 §4.3 validation: stale entries revalidate with `If-None-Match` (strong and
//! weak ETags) and `If-Modified-Since` (§4.3.1); a 304 updates stored headers and keeps
//! the body (§3.2, §4.3.4); client conditionals are evaluated against the stored response
//! (§4.3.2, RFC 9110 §13); a 304 selects the stored response unless it names another
//! strong validator, and is never followed by a second origin request; HEAD is answered
//! from a stored GET and revalidates it with a GET (§4.3.5 deviation noted in
//! docs/http-caching.md).

use std::time::Duration;

use crate::support::{Origin, Proxy, Reply};

const LM: &str = "Tue, 01 Jan 2030 00:00:00 GMT";

/// Stores `/v` (ttl 1s, no stale-while-revalidate window, kept for stale-if-error) and
/// waits until it is stale: the next GET revalidates synchronously.
async fn revalidate_once(
    reply_200: Reply,
    reply_304: Reply,
    validator: &'static str,
) -> (Origin, Proxy) {
    revalidate_once_with(
        "ttl: 1s, stale: 0s, stale_if_error: 60s, jitter: 0",
        reply_200,
        reply_304,
        validator,
    )
    .await
}

/// `revalidate_once` with the route `defaults` given.
async fn revalidate_once_with(
    defaults: &str,
    reply_200: Reply,
    reply_304: Reply,
    validator: &'static str,
) -> (Origin, Proxy) {
    let origin = Origin::start(move |s| {
        if s.n > 0 && s.headers.contains_key(validator) {
            reply_304.clone()
        } else {
            reply_200.clone()
        }
    })
    .await;
    let p = Proxy::simple(&origin.url(), defaults).await;
    assert_eq!(p.get("/v").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    (origin, p)
}

#[tokio::test]
async fn stale_entry_revalidates_with_a_strong_etag_and_304_keeps_the_body() {
    let (origin, p) = revalidate_once(
        Reply::ok("stored body")
            .header("etag", "\"s1\"")
            .header("x-version", "1"),
        Reply::ok("")
            .status(304)
            .header("etag", "\"s1\"")
            .header("x-version", "2")
            .header("cache-control", "max-age=120"),
        "if-none-match",
    )
    .await;
    let r = p.get("/v").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "stored body");
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers.get("if-none-match").unwrap(), "\"s1\"");
    assert!(
        r.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        r.header("x-version"),
        Some("2"),
        "the 304's fields replace the stored ones"
    );
    assert_eq!(r.header("content-length"), Some("11"));
    let again = p.get("/v").await;
    assert_eq!(again.body, "stored body");
    assert_eq!(
        again.header("x-version"),
        Some("2"),
        "the update was stored"
    );
    assert_eq!(again.header("cache-control"), Some("max-age=120"));
    assert!(
        again.cache_status().starts_with("cachegate; hit"),
        "{}",
        again.cache_status()
    );
    assert_eq!(
        origin.hits("/v"),
        2,
        "the 304's max-age=120 renewed freshness"
    );
}

#[tokio::test]
async fn stale_entry_revalidates_with_a_weak_etag() {
    let (origin, p) = revalidate_once(
        Reply::ok("weak body").header("etag", "W/\"w1\""),
        Reply::ok("").status(304).header("etag", "W/\"w1\""),
        "if-none-match",
    )
    .await;
    let r = p.get("/v").await;
    assert_eq!((r.status, r.body.as_str()), (200, "weak body"));
    assert_eq!(
        origin.seen()[1].headers.get("if-none-match").unwrap(),
        "W/\"w1\""
    );
}

#[tokio::test]
async fn stale_entry_revalidates_with_if_modified_since() {
    let (origin, p) = revalidate_once(
        Reply::ok("dated body").header("last-modified", LM),
        Reply::ok("").status(304).header("last-modified", LM),
        "if-modified-since",
    )
    .await;
    let r = p.get("/v").await;
    assert_eq!((r.status, r.body.as_str()), (200, "dated body"));
    assert_eq!(
        origin.seen()[1].headers.get("if-modified-since").unwrap(),
        LM
    );
}

#[tokio::test]
async fn a_200_to_a_revalidation_replaces_the_stored_response() {
    let (origin, p) = revalidate_once(
        Reply::ok("old").header("etag", "\"a\""),
        Reply::ok("new").header("etag", "\"b\""),
        "if-none-match",
    )
    .await;
    assert_eq!(p.get("/v").await.body, "new");
    let r = p.get("/v").await;
    assert_eq!((r.body.as_str(), r.header("etag")), ("new", Some("\"b\"")));
    assert_eq!(origin.hits("/v"), 2);
}

#[tokio::test]
async fn a_304_for_a_different_validator_is_not_applied() {
    let (origin, p) = revalidate_once(
        Reply::ok("stored v1").header("etag", "\"v1\""),
        Reply::ok("")
            .status(304)
            .header("etag", "\"v2\"")
            .header("x-from-304", "yes"),
        "if-none-match",
    )
    .await;
    let r = p.get("/v").await;
    // The client sent no conditional: it must not get a bare 304, nor the stored body
    // relabelled with the other representation's fields.
    assert_eq!(
        r.status,
        200,
        "an unconditional request never gets a 304: {}",
        r.cache_status()
    );
    assert_ne!(r.header("etag"), Some("\"v2\""));
    assert_ne!(
        r.header("x-from-304"),
        Some("yes"),
        "the 304 was not merged"
    );
    assert!(
        r.cache_status().contains("detail=stale-if-error"),
        "the stale copy answers the failed revalidation: {}",
        r.cache_status()
    );
    assert_eq!(
        origin.hits("/v"),
        2,
        "one origin request for one client request"
    );
    // The copy is gone: the next request asks for the full response.
    let r = p.get("/v").await;
    assert_eq!(origin.hits("/v"), 3);
    assert!(!origin.seen()[2].headers.contains_key("if-none-match"));
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_304_for_a_different_validator_without_stale_if_error_is_a_502() {
    let (origin, p) = revalidate_once_with(
        "ttl: 1s, stale: 0s, stale_if_error: 0s, jitter: 0",
        Reply::ok("stored v1").header("etag", "\"v1\""),
        Reply::ok("").status(304).header("etag", "\"v2\""),
        "if-none-match",
    )
    .await;
    let r = p.get("/v").await;
    assert_eq!(r.status, 502, "{}", r.cache_status());
    assert!(
        r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/v"), 2, "the origin is not asked twice");
}

#[tokio::test]
async fn a_304_without_validators_freshens_the_response_it_validated() {
    for (stored_etag, etag_304) in [
        ("\"s1\"", None),
        ("W/\"s1\"", Some("\"s1\"")),
        ("\"s1\"", Some("W/\"s0\"")),
    ] {
        let mut reply_304 = Reply::ok("")
            .status(304)
            .header("cache-control", "max-age=120")
            .header("x-version", "2");
        if let Some(e) = etag_304 {
            reply_304 = reply_304.header("etag", e);
        }
        let (origin, p) = revalidate_once(
            Reply::ok("stored body")
                .header("etag", stored_etag)
                .header("x-version", "1"),
            reply_304,
            "if-none-match",
        )
        .await;
        let case = format!("stored {stored_etag}, 304 with {etag_304:?}");
        let r = p.get("/v").await;
        assert_eq!((r.status, r.body.as_str()), (200, "stored body"), "{case}");
        assert_eq!(
            r.header("x-version"),
            Some("2"),
            "{case}: the 304 was applied"
        );
        assert!(
            r.cache_status().contains("fwd=stale; fwd-status=304"),
            "{case}: {}",
            r.cache_status()
        );
        assert_eq!(origin.hits("/v"), 2, "{case}: one origin request");
        let again = p.get("/v").await;
        assert!(
            again.cache_status().starts_with("cachegate; hit"),
            "{case}: freshened by the 304's max-age: {}",
            again.cache_status()
        );
        assert_eq!(again.body, "stored body");
        assert_eq!(origin.hits("/v"), 2, "{case}");
    }
}

#[tokio::test]
async fn a_304_whose_fields_forbid_storing_answers_once_and_drops_the_copy() {
    let (origin, p) = revalidate_once(
        Reply::ok("stored body").header("etag", "\"s1\""),
        Reply::ok("")
            .status(304)
            .header("etag", "\"s1\"")
            .header("cache-control", "no-store"),
        "if-none-match",
    )
    .await;
    let r = p.get("/v").await;
    assert_eq!((r.status, r.body.as_str()), (200, "stored body"));
    assert!(
        r.cache_status().contains("detail=no-store"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        origin.hits("/v"),
        2,
        "one origin request for one client request"
    );
    let r = p.get("/v").await;
    assert!(
        !r.cache_status().starts_with("cachegate; hit"),
        "the copy was not kept: {}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/v"), 3);
}

#[tokio::test]
async fn client_if_none_match_gets_304_from_a_fresh_entry() {
    let origin = Origin::start(|_| {
        Reply::ok("tagged")
            .header("etag", "\"t1\"")
            .header("cache-control", "max-age=60")
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    p.get("/c").await;
    for inm in ["\"t1\"", "\"x\", \"t1\"", "W/\"t1\"", "*"] {
        let r = p.get_with("/c", &[("if-none-match", inm)]).await;
        assert_eq!(r.status, 304, "If-None-Match: {inm} (weak comparison)");
        assert_eq!(r.body, "");
        assert_eq!(r.header("etag"), Some("\"t1\""));
        assert_eq!(r.header("cache-control"), Some("max-age=60"));
    }
    let r = p.get_with("/c", &[("if-none-match", "\"other\"")]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "tagged"));
    assert_eq!(origin.hits("/c"), 1);
}

#[tokio::test]
async fn client_if_modified_since_gets_304_from_a_fresh_entry() {
    let origin = Origin::start(|_| Reply::ok("dated").header("last-modified", LM)).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    p.get("/ims").await;
    let r = p.get_with("/ims", &[("if-modified-since", LM)]).await;
    assert_eq!(r.status, 304);
    let r = p
        .get_with(
            "/ims",
            &[("if-modified-since", "Mon, 31 Dec 2029 00:00:00 GMT")],
        )
        .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "dated"),
        "modified since then"
    );
    // If-None-Match takes precedence over If-Modified-Since (RFC 9110 §13.1.3).
    let r = p
        .get_with(
            "/ims",
            &[("if-none-match", "\"nope\""), ("if-modified-since", LM)],
        )
        .await;
    assert_eq!(
        r.status, 200,
        "If-Modified-Since is ignored when If-None-Match is present"
    );
    assert_eq!(origin.hits("/ims"), 1);
}

#[tokio::test]
async fn client_conditional_on_a_miss_fetches_unconditionally_and_stores() {
    let origin = Origin::start(|s| {
        if s.headers.contains_key("if-none-match") {
            Reply::ok("").status(304).header("etag", "\"m\"")
        } else {
            Reply::ok("full").header("etag", "\"m\"")
        }
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    let r = p.get_with("/miss", &[("if-none-match", "\"m\"")]).await;
    assert_eq!(r.status, 304);
    assert!(
        !origin.seen()[0].headers.contains_key("if-none-match"),
        "the cache asks for the full response"
    );
    let r = p.get("/miss").await;
    assert_eq!((r.status, r.body.as_str()), (200, "full"));
    assert!(
        r.cache_status().starts_with("cachegate; hit"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn if_match_and_if_unmodified_since_are_evaluated_against_the_stored_response() {
    let origin = Origin::start(|s| {
        let etag = if s.path == "/weak" {
            "W/\"w\""
        } else {
            "\"s\""
        };
        Reply::ok("body")
            .header("etag", etag)
            .header("last-modified", LM)
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    p.get("/strong").await;
    p.get("/weak").await;
    assert_eq!(
        p.get_with("/strong", &[("if-match", "\"s\"")]).await.status,
        200
    );
    assert_eq!(
        p.get_with("/strong", &[("if-match", "*")]).await.status,
        200
    );
    assert_eq!(
        p.get_with("/strong", &[("if-match", "\"other\"")])
            .await
            .status,
        412
    );
    assert_eq!(
        p.get_with("/weak", &[("if-match", "W/\"w\"")]).await.status,
        412,
        "If-Match uses the strong comparison"
    );
    assert_eq!(
        p.get_with(
            "/strong",
            &[("if-unmodified-since", "Mon, 31 Dec 2029 00:00:00 GMT")]
        )
        .await
        .status,
        412
    );
    assert_eq!(
        p.get_with("/strong", &[("if-unmodified-since", LM)])
            .await
            .status,
        200
    );
    assert_eq!(origin.hits("/strong"), 1);
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get() {
    let origin =
        Origin::start(|s| Reply::ok(format!("{} body", s.method)).header("etag", "\"h\"")).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    assert_eq!(p.get("/h").await.body, "GET body");
    let head = p.request("HEAD", "/h", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.body, "");
    assert_eq!(head.header("content-length"), Some("8"));
    assert_eq!(head.header("etag"), Some("\"h\""));
    assert!(
        head.cache_status().starts_with("cachegate; hit"),
        "{}",
        head.cache_status()
    );
    assert_eq!(origin.hits("/h"), 1);
}

#[tokio::test]
async fn a_head_miss_is_fetched_as_get_and_stored_for_both() {
    let origin = Origin::start(|s| Reply::ok(format!("{} body", s.method))).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    let head = p.request("HEAD", "/hm", &[]).await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(
        origin.seen()[0].method,
        "GET",
        "documented deviation: HEAD misses are fetched as GET"
    );
    assert_eq!(p.get("/hm").await.body, "GET body");
    assert_eq!(origin.hits("/hm"), 1);
}

#[tokio::test]
async fn a_head_on_a_stale_entry_revalidates_with_a_get_that_updates_the_stored_get() {
    // RFC 9111 §4.3.5 is about HEAD responses; cachegate asks the origin with a
    // conditional GET instead, so a changed answer replaces the stored GET, and a 304
    // freshens it, as for a GET.
    let origin = Origin::start(|s| {
        if s.n == 0 {
            return Reply::ok("short").header("etag", "\"a\"");
        }
        if s.path == "/same" {
            Reply::ok("")
                .status(304)
                .header("etag", "\"a\"")
                .header("cache-control", "max-age=60")
        } else {
            Reply::ok("a longer body")
                .header("etag", "\"b\"")
                .header("cache-control", "max-age=60")
        }
    })
    .await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 1s, stale: 0s, stale_if_error: 60s, jitter: 0",
    )
    .await;
    for path in ["/same", "/changed"] {
        assert_eq!(p.get(path).await.body, "short");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let head = p.request("HEAD", "/changed", &[]).await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(head.header("etag"), Some("\"b\""), "the new validator");
    assert_eq!(head.header("content-length"), Some("13"), "the new length");
    let seen: Vec<_> = origin
        .seen()
        .into_iter()
        .filter(|s| s.path == "/changed")
        .collect();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].method, "GET");
    assert_eq!(seen[1].headers.get("if-none-match").unwrap(), "\"a\"");
    let get = p.get("/changed").await;
    assert_eq!(get.body, "a longer body", "the stored GET was replaced");
    assert!(
        get.cache_status().starts_with("cachegate; hit"),
        "{}",
        get.cache_status()
    );

    let head = p.request("HEAD", "/same", &[]).await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(head.header("etag"), Some("\"a\""));
    assert_eq!(head.header("content-length"), Some("5"));
    let get = p.get("/same").await;
    assert_eq!(get.body, "short");
    assert!(
        get.cache_status().starts_with("cachegate; hit"),
        "the 304 to the HEAD's revalidation freshened the stored GET: {}",
        get.cache_status()
    );
    assert_eq!(origin.total(), 4);
}
