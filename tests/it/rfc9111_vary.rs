//! RFC 9111 §4.1: selecting a stored response by `Vary`: several variants per key,
//! `Vary: *` never matches, normalisation of header values (whitespace, field-name case,
//! comma-joined repeats), several `Vary` lines combined, the route's `vary:` allow-list
//! and `Accept-Encoding` normalisation.

use crate::support::{proxy, Origin, Proxy, Reply};

/// A catch-all route that honours (and so forwards) the request headers in `vary`.
async fn honouring(origin: &Origin, vary: &str) -> Proxy {
    let routes = format!("  - path: /{{*rest}}\n    upstream: origin\n    vary: {vary}\n");
    Proxy::start(&crate::support::proxy::config_yaml(
        &origin.url(),
        "ttl: 60s, jitter: 0",
        &routes,
    ))
    .await
}

fn h(s: &crate::support::origin::Seen, name: &str) -> String {
    s.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("|")
}

#[tokio::test]
async fn several_variants_are_stored_per_key() {
    let origin = Origin::start(|s| {
        Reply::ok(format!("lang={} n={}", h(s, "accept-language"), s.n))
            .header("vary", "Accept-Language")
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    let en = p.get_with("/v", &[("accept-language", "en")]).await;
    let fr = p.get_with("/v", &[("accept-language", "fr")]).await;
    let none = p.get("/v").await;
    assert_eq!(en.body, "lang=en n=0");
    assert_eq!(fr.body, "lang=fr n=1");
    assert_eq!(none.body, "lang= n=2", "no header is a variant of its own");
    let en2 = p.get_with("/v", &[("accept-language", "en")]).await;
    let fr2 = p.get_with("/v", &[("accept-language", "fr")]).await;
    let none2 = p.get("/v").await;
    assert_eq!(
        (en2.body.as_str(), fr2.body.as_str(), none2.body.as_str()),
        ("lang=en n=0", "lang=fr n=1", "lang= n=2")
    );
    assert!(
        en2.cache_status().starts_with("cachegate; hit")
            && fr2.cache_status().starts_with("cachegate; hit")
    );
    assert_eq!(origin.hits("/v"), 3);
    assert_eq!(en2.header("vary"), Some("Accept-Language"));
}

#[tokio::test]
async fn vary_star_is_never_stored_or_matched() {
    for vary in ["*", "Accept, *"] {
        let origin =
            Origin::start(move |s| Reply::ok(format!("n={}", s.n)).header("vary", vary)).await;
        let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
        let a = p.get("/star").await;
        let b = p.get("/star").await;
        assert_eq!(
            (a.body.as_str(), b.body.as_str()),
            ("n=0", "n=1"),
            "Vary: {vary}"
        );
        assert!(
            a.cache_status().contains("detail=vary-star"),
            "{}",
            a.cache_status()
        );
    }
}

#[tokio::test]
async fn equivalent_header_values_select_the_same_variant() {
    let origin =
        Origin::start(|s| Reply::ok(format!("n={}", s.n)).header("vary", "ACCEPT-LANGUAGE")).await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    p.get_with("/norm", &[("accept-language", "en,fr")]).await;
    for headers in [
        vec![("accept-language", "en, fr")],
        vec![("accept-language", "en ,  fr")],
        vec![("accept-language", "en"), ("accept-language", "fr")],
        vec![("Accept-Language", "en,fr")],
    ] {
        let r = p.get_with("/norm", &headers).await;
        assert_eq!(r.body, "n=0", "{headers:?} selects the stored variant");
    }
    assert_eq!(origin.hits("/norm"), 1);
    let r = p.get_with("/norm", &[("accept-language", "de")]).await;
    assert_eq!(r.body, "n=1", "another value is another variant");
}

#[tokio::test]
async fn several_vary_lines_are_combined() {
    let origin = Origin::start(|s| {
        Reply::ok(format!(
            "{}/{} n={}",
            h(s, "accept-language"),
            h(s, "x-tenant"),
            s.n
        ))
        .header("vary", "Accept-Language")
        .header("vary", "X-Tenant")
    })
    .await;
    // The origin sees (and can vary on) only the headers the route names.
    let p = honouring(&origin, "[accept-language, x-tenant]").await;
    let a = p
        .get_with("/lines", &[("accept-language", "en"), ("x-tenant", "a")])
        .await;
    let b = p
        .get_with("/lines", &[("accept-language", "en"), ("x-tenant", "b")])
        .await;
    assert_eq!(
        (a.body.as_str(), b.body.as_str()),
        ("en/a n=0", "en/b n=1"),
        "the second Vary line counts"
    );
    let a2 = p
        .get_with("/lines", &[("accept-language", "en"), ("x-tenant", "a")])
        .await;
    assert_eq!(a2.body, "en/a n=0");
    assert_eq!(origin.hits("/lines"), 2);
}

#[tokio::test]
async fn a_route_vary_allow_list_refuses_other_vary_headers() {
    let origin = Origin::start(|s| {
        let vary = if s.path == "/ok" {
            "accept-language"
        } else {
            "accept-language, x-tenant"
        };
        Reply::ok(format!("n={}", s.n)).header("vary", vary)
    })
    .await;
    let routes = "  - path: /{*rest}\n    upstream: origin\n    vary: [accept-language]\n";
    let p = Proxy::start(&proxy::config_yaml(
        &origin.url(),
        "ttl: 60s, jitter: 0",
        routes,
    ))
    .await;
    p.get("/ok").await;
    assert!(p
        .get("/ok")
        .await
        .cache_status()
        .starts_with("cachegate; hit"));
    let r = p.get("/other").await;
    assert!(
        r.cache_status().contains("detail=vary-not-allowed"),
        "{}",
        r.cache_status()
    );
    p.get("/other").await;
    assert_eq!(origin.hits("/ok"), 1);
    assert_eq!(
        origin.hits("/other"),
        2,
        "Vary on an unlisted header: not stored"
    );
}

#[tokio::test]
async fn accept_encoding_is_normalised_to_the_accepted_codings() {
    let origin = Origin::start(|s| {
        Reply::ok(format!("ae={} n={}", h(s, "accept-encoding"), s.n))
            .header("vary", "Accept-Encoding")
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    let first = p
        .get_with("/ae", &[("accept-encoding", "gzip, deflate, br")])
        .await;
    for ae in [
        "br, gzip, deflate",
        "gzip;q=1.0, br;q=0.9, deflate;q=0.1",
        "deflate,gzip,br,x-unknown",
        "GZIP, Br, deflate",
    ] {
        let r = p.get_with("/ae", &[("accept-encoding", ae)]).await;
        assert_eq!(
            r.body, first.body,
            "Accept-Encoding: {ae} shares the variant"
        );
    }
    assert_eq!(origin.hits("/ae"), 1);
    let gz = p.get_with("/ae", &[("accept-encoding", "gzip")]).await;
    assert_ne!(
        gz.body, first.body,
        "gzip alone is another set: a client never gets a coding it did not accept"
    );
    let refused = p
        .get_with("/ae", &[("accept-encoding", "gzip, br;q=0, deflate;q=0")])
        .await;
    assert_eq!(refused.body, gz.body, "q=0 means not accepted");
    assert_eq!(origin.hits("/ae"), 2);
}

#[tokio::test]
async fn vary_on_a_header_the_request_lacks_matches_only_requests_that_lack_it() {
    let origin = Origin::start(|s| Reply::ok(format!("n={}", s.n)).header("vary", "x-flag")).await;
    let p = honouring(&origin, "[x-flag]").await;
    p.get("/lack").await;
    assert_eq!(p.get("/lack").await.body, "n=0");
    assert_eq!(
        p.get_with("/lack", &[("x-flag", "")]).await.body,
        "n=1",
        "present but empty differs from absent"
    );
    assert_eq!(origin.hits("/lack"), 2);
}
