//! RFC 9213 targeted cache control: `Cachegate-Cache-Control` (configurable target
//! names) over `CDN-Cache-Control` over `Cache-Control` for this cache; `Surrogate-Control`
//! directives for this cache; the targeted fields are RFC 8941 Dictionaries, ignored as a
//! whole when they do not parse; this cache's own fields are stripped downstream,
//! `CDN-Cache-Control` and `Cache-Control` go downstream intact.

use crate::support::{proxy, Origin, Proxy, Reply};

/// Two GETs of `/t` answered by `reply`: (origin hits, the two responses).
async fn twice(
    reply: Reply,
    extra_config: &str,
) -> (usize, crate::support::Resp, crate::support::Resp) {
    let origin = Origin::start(move |_| reply.clone()).await;
    let yaml = format!(
        "{}{extra_config}",
        proxy::config_yaml(
            &origin.url(),
            "ttl: 60s, jitter: 0",
            "  - path: /{*rest}\n    upstream: origin\n"
        )
    );
    let p = Proxy::start(&yaml).await;
    let a = p.get("/t").await;
    let b = p.get("/t").await;
    (origin.hits("/t"), a, b)
}

#[tokio::test]
async fn cdn_cache_control_takes_precedence_over_cache_control() {
    let (hits, a, b) = twice(
        Reply::ok("x")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "max-age=120"),
        "",
    )
    .await;
    assert_eq!(
        hits, 1,
        "CDN-Cache-Control: max-age=120 lets this cache store it"
    );
    assert!(b.cache_status().starts_with("cachegate; hit"));
    let ttl: i64 = b
        .cache_status()
        .split("ttl=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((115..=120).contains(&ttl), "{}", b.cache_status());
    for r in [&a, &b] {
        assert_eq!(
            r.header("cache-control"),
            Some("no-store"),
            "Cache-Control goes downstream intact"
        );
        assert_eq!(
            r.header("cdn-cache-control"),
            Some("max-age=120"),
            "CDN-Cache-Control goes downstream too: another CDN may sit in front"
        );
    }

    let (hits, a, _) = twice(
        Reply::ok("x")
            .header("cache-control", "max-age=600")
            .header("cdn-cache-control", "no-store"),
        "",
    )
    .await;
    assert_eq!(
        hits, 2,
        "CDN-Cache-Control: no-store wins over Cache-Control: max-age"
    );
    assert_eq!(a.header("cache-control"), Some("max-age=600"));
    assert_eq!(a.header("cdn-cache-control"), Some("no-store"));
}

#[tokio::test]
async fn the_own_target_field_takes_precedence_over_cdn_cache_control() {
    let (hits, a, _) = twice(
        Reply::ok("x")
            .header("cache-control", "max-age=600")
            .header("cdn-cache-control", "max-age=600")
            .header("cachegate-cache-control", "no-store"),
        "",
    )
    .await;
    assert_eq!(hits, 2, "Cachegate-Cache-Control is the most specific");
    assert_eq!(
        a.header("cachegate-cache-control"),
        None,
        "our own field is consumed"
    );
    assert_eq!(a.header("cdn-cache-control"), Some("max-age=600"));

    let (hits, _, _) = twice(
        Reply::ok("x")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "no-store")
            .header("cachegate-cache-control", "max-age=60"),
        "",
    )
    .await;
    assert_eq!(hits, 1);
}

#[tokio::test]
async fn configured_target_names_replace_the_default() {
    let reply = Reply::ok("x")
        .header("cache-control", "no-store")
        .header("edge-cache-control", "max-age=60")
        .header("cachegate-cache-control", "no-store");
    let (hits, a, _) = twice(reply, "targets: [edge]\n").await;
    assert_eq!(hits, 1, "targets: [edge] reads Edge-Cache-Control");
    assert_eq!(a.header("edge-cache-control"), None, "and strips it");
}

#[tokio::test]
async fn surrogate_control_for_this_cache_takes_precedence_and_is_stripped() {
    let (hits, a, _) = twice(
        Reply::ok("x")
            .header("cache-control", "no-store")
            .header("surrogate-control", "max-age=60;cachegate"),
        "",
    )
    .await;
    assert_eq!(hits, 1, "max-age=60;cachegate targets this cache");
    assert_eq!(a.header("surrogate-control"), None);
    assert_eq!(a.header("cache-control"), Some("no-store"));

    let (hits, _, _) = twice(
        Reply::ok("x")
            .header("cache-control", "no-store")
            .header("surrogate-control", "max-age=60"),
        "",
    )
    .await;
    assert_eq!(
        hits, 1,
        "an untargeted Surrogate-Control directive applies to every surrogate"
    );

    let (hits, a, _) = twice(
        Reply::ok("x")
            .header("cache-control", "no-store")
            .header("surrogate-control", "max-age=60;othercdn"),
        "",
    )
    .await;
    assert_eq!(hits, 2, "a directive for another cache is ignored");
    assert_eq!(a.header("surrogate-control"), None);
}

#[tokio::test]
async fn own_targeted_fields_are_stripped_from_passed_through_responses_too() {
    let origin = Origin::start(|_| {
        Reply::ok("x")
            .status(500)
            .header("cdn-cache-control", "no-store")
            .header("cachegate-cache-control", "no-store")
            .header("surrogate-control", "no-store")
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s").await;
    for method in ["GET", "POST"] {
        let r = p.request(method, "/pt", &[]).await;
        assert_eq!(r.status, 500);
        for f in ["cachegate-cache-control", "surrogate-control"] {
            assert_eq!(r.header(f), None, "{method}: {f}");
        }
        assert_eq!(r.header("cdn-cache-control"), Some("no-store"), "{method}");
    }
}

/// The `ttl=` of this cache's Cache-Status member.
fn ttl(r: &crate::support::Resp) -> i64 {
    crate::rfc9111_freshness::ttl(r).unwrap_or_else(|| panic!("no ttl: {}", r.cache_status()))
}

#[tokio::test]
async fn a_targeted_field_that_is_not_a_valid_dictionary_is_ignored_as_a_whole() {
    // Each value holds `no-store` (or `private`) read naively; as a Dictionary each one
    // fails to parse or types a known directive wrongly, so Cache-Control applies.
    for cdn in [
        "no-store, max-age=\"60\"",
        "no-store, max-age=1.5",
        "no-store, max-age=-5",
        "no-store, MAX-AGE=60",
        "no-store, max-age=60,",
        "no-store=1",
        "private=5",
        "no-store, max-age",
    ] {
        let (hits, a, b) = twice(
            Reply::ok("x")
                .header("cache-control", "max-age=120")
                .header("cdn-cache-control", cdn),
            "",
        )
        .await;
        assert_eq!(
            hits, 1,
            "CDN-Cache-Control: {cdn} is ignored, Cache-Control applies"
        );
        assert!(
            (115..=120).contains(&ttl(&b)),
            "{cdn}: {}",
            b.cache_status()
        );
        assert_eq!(
            a.header("cdn-cache-control"),
            Some(cdn),
            "passed on as it came"
        );
    }
}

#[tokio::test]
async fn targeted_fields_are_read_as_dictionaries() {
    // Parameters are ignored; `max-age` is the Integer 60.
    let (hits, _, b) = twice(
        Reply::ok("x")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "max-age=60;foo=bar, x-ext=(1 2)"),
        "",
    )
    .await;
    assert_eq!(hits, 1);
    assert!((55..=60).contains(&ttl(&b)), "{}", b.cache_status());

    // An invalid own field is ignored: the next most specific, CDN-Cache-Control, applies.
    let (hits, _, b) = twice(
        Reply::ok("x")
            .header("cache-control", "no-store")
            .header("cachegate-cache-control", "max-age=\"x\"")
            .header("cdn-cache-control", "max-age=300"),
        "",
    )
    .await;
    assert_eq!(hits, 1);
    assert!((295..=300).contains(&ttl(&b)), "{}", b.cache_status());

    // `private` with an Inner List of field names stores without them.
    let (hits, a, b) = twice(
        Reply::ok("x")
            .header("cdn-cache-control", "max-age=60, private=(\"x-user\")")
            .header("x-user", "alice"),
        "",
    )
    .await;
    assert_eq!(hits, 1);
    assert_eq!(a.header("x-user"), Some("alice"));
    assert_eq!(b.header("x-user"), None, "x-user was not stored");
}
