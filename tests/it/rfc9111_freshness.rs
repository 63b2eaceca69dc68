//! RFC 9111 §4.2 (freshness), §4.2.1 (lifetime: s-maxage > max-age > Expires - Date),
//! §4.2.2 (heuristic freshness), §4.2.3 (Age), and RFC 9110 §15.1 (statuses cacheable
//! by default). Every test goes through the real router to an origin written for it.

use std::time::{Duration, SystemTime};

use crate::support::{proxy, Origin, Proxy, Reply, Resp};

/// The `ttl=` of this cache's Cache-Status member.
pub fn ttl(r: &Resp) -> Option<i64> {
    r.cache_status()
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("ttl="))
        .and_then(|v| v.parse().ok())
}

fn http_date(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let t = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs((-offset_secs) as u64)
    };
    httpdate::fmt_http_date(t)
}

/// One path, one origin reply: stores it (or not) and returns (first, second, hits).
async fn twice_with(defaults: &str, reply: Reply) -> (Resp, Resp, usize) {
    let origin = Origin::start(move |_| reply.clone()).await;
    let p = Proxy::simple(&origin.url(), defaults).await;
    let first = p.get("/f").await;
    let second = p.get("/f").await;
    let hits = origin.hits("/f");
    (first, second, hits)
}

#[tokio::test]
async fn s_maxage_takes_precedence_over_max_age_for_a_shared_cache() {
    // Route ttl 1s: if either directive were ignored the ttl would show it.
    let (first, second, hits) = twice_with(
        "ttl: 1s, stale: 0s, jitter: 0",
        Reply::ok("s").header("cache-control", "max-age=5, s-maxage=300"),
    )
    .await;
    assert_eq!(hits, 1);
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    let t = ttl(&second).unwrap();
    assert!((295..=300).contains(&t), "s-maxage=300 wins: ttl={t}");

    let (_, second, hits) = twice_with(
        "ttl: 1s, stale: 0s, jitter: 0",
        Reply::ok("s").header("cache-control", "max-age=300, s-maxage=5"),
    )
    .await;
    assert_eq!(hits, 1);
    let t = ttl(&second).unwrap();
    assert!(
        (1..=5).contains(&t),
        "s-maxage=5 wins even when lower: ttl={t}"
    );
}

#[tokio::test]
async fn max_age_takes_precedence_over_expires() {
    let (_, second, hits) = twice_with(
        "ttl: 1s, stale: 0s, jitter: 0",
        Reply::ok("m")
            .header("cache-control", "max-age=120")
            .header("date", &http_date(0))
            .header("expires", &http_date(3600)),
    )
    .await;
    assert_eq!(hits, 1);
    let t = ttl(&second).unwrap();
    assert!(
        (115..=120).contains(&t),
        "max-age=120, not Expires: ttl={t}"
    );
}

#[tokio::test]
async fn expires_minus_date_gives_the_lifetime() {
    let (_, second, hits) = twice_with(
        "ttl: 1s, stale: 0s, jitter: 0",
        Reply::ok("e")
            .header("date", &http_date(0))
            .header("expires", &http_date(600)),
    )
    .await;
    assert_eq!(hits, 1);
    assert!(
        second.cache_status().starts_with("cachegate; hit"),
        "{}",
        second.cache_status()
    );
    let t = ttl(&second).unwrap();
    assert!((590..=600).contains(&t), "Expires - Date = 600s: ttl={t}");
}

#[tokio::test]
async fn an_expires_in_the_past_or_invalid_means_stale() {
    for expires in [http_date(-60), "0".to_string(), "not a date".to_string()] {
        let (_, second, hits) = twice_with(
            "ttl: 60s, stale: 0s, stale_if_error: 0s, jitter: 0",
            Reply::ok("x")
                .header("date", &http_date(0))
                .header("expires", &expires),
        )
        .await;
        assert_eq!(
            hits, 2,
            "Expires: {expires:?} is already stale (RFC 9111 §5.3); the route ttl must not apply"
        );
        assert!(
            !second.cache_status().starts_with("cachegate; hit"),
            "{}",
            second.cache_status()
        );
    }
}

#[tokio::test]
async fn an_invalid_max_age_means_stale() {
    for cc in ["max-age=abc", "max-age=-5", "max-age=", "s-maxage=1.5"] {
        let (_, _, hits) = twice_with(
            "ttl: 60s, stale: 0s, stale_if_error: 0s, jitter: 0",
            Reply::ok("x").header("cache-control", cc),
        )
        .await;
        assert_eq!(
            hits, 2,
            "Cache-Control: {cc} must be treated as stale (RFC 9111 §4.2.1)"
        );
    }
}

#[tokio::test]
async fn duplicate_max_age_uses_the_first_or_treats_as_stale() {
    // §4.2.1: with several values, use the first or consider the response stale; never
    // the larger one.
    let (_, second, hits) = twice_with(
        "ttl: 1s, stale: 0s, stale_if_error: 0s, jitter: 0",
        Reply::ok("d").header("cache-control", "max-age=5, max-age=3600"),
    )
    .await;
    if hits == 1 {
        let t = ttl(&second).unwrap();
        assert!(
            t <= 5,
            "duplicate max-age: the first (5) or stale, got ttl={t}"
        );
    } else {
        assert_eq!(hits, 2);
    }
}

#[tokio::test]
async fn route_ttl_applies_when_the_origin_gives_no_explicit_freshness() {
    let (first, second, hits) =
        twice_with("ttl: 90s, stale: 0s, jitter: 0", Reply::ok("plain")).await;
    assert_eq!(hits, 1);
    assert!(first
        .cache_status()
        .contains("fwd=miss; fwd-status=200; stored"));
    let t = ttl(&second).unwrap();
    assert!((85..=90).contains(&t), "route ttl 90s: ttl={t}");
}

#[tokio::test]
async fn jitter_never_extends_origin_freshness() {
    let origin = Origin::start(|_| Reply::ok("j").header("cache-control", "max-age=100")).await;
    let p = Proxy::simple(&origin.url(), "ttl: 1s, stale: 0s, jitter: 0.5").await;
    for i in 0..20 {
        let r = p.get(&format!("/j{i}")).await;
        let t = ttl(&r).unwrap();
        assert!(
            (45..=100).contains(&t),
            "jitter only shortens max-age=100: ttl={t}"
        );
    }
}

#[tokio::test]
async fn upstream_age_reduces_freshness_and_is_sent_downstream() {
    let (first, second, hits) = twice_with(
        "ttl: 1s, stale: 0s, jitter: 0",
        Reply::ok("a")
            .header("cache-control", "max-age=100")
            .header("age", "40"),
    )
    .await;
    assert_eq!(hits, 1);
    assert_eq!(first.header("age"), Some("40"));
    assert_eq!(second.header("age"), Some("40"));
    let t = ttl(&second).unwrap();
    assert!((55..=60).contains(&t), "max-age 100 - Age 40: ttl={t}");
}

#[tokio::test]
async fn a_response_older_than_its_max_age_is_stale_on_arrival() {
    let (_, _, hits) = twice_with(
        "ttl: 60s, stale: 0s, stale_if_error: 0s, jitter: 0",
        Reply::ok("old")
            .header("cache-control", "max-age=10")
            .header("age", "20"),
    )
    .await;
    assert_eq!(hits, 2, "Age 20 > max-age 10: never served fresh");
}

#[tokio::test]
async fn every_hit_carries_age() {
    let (first, second, _) = twice_with("ttl: 60s, jitter: 0", Reply::ok("x")).await;
    assert_eq!(first.header("age"), Some("0"));
    assert_eq!(second.header("age"), Some("0"));
}

#[tokio::test]
async fn age_grows_with_residence_time_and_expiry_refetches() {
    let origin = Origin::start(|s| {
        Reply::ok(format!("v{}", s.n))
            .header("cache-control", "max-age=2")
            .header("age", "1")
    })
    .await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 60s, stale: 0s, stale_if_error: 0s, jitter: 0",
    )
    .await;
    assert_eq!(p.get("/r").await.body, "v0");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Age 1 upstream + >=1s here = 2 = max-age: stale.
    let r = p.get("/r").await;
    assert_eq!(r.body, "v1", "expired by upstream Age plus residence time");
    assert_eq!(origin.hits("/r"), 2);
}

#[tokio::test]
async fn heuristic_freshness_only_for_heuristically_cacheable_statuses() {
    // `ttl: 0s`: the route adds no freshness; only Last-Modified can give some.
    let lm = http_date(-100 * 86400);
    let lm2 = lm.clone();
    let origin = Origin::start(move |s| {
        let status = if s.path == "/h500" {
            500
        } else if s.path == "/h302" {
            302
        } else {
            200
        };
        let r = Reply::ok("h").status(status).header("date", &http_date(0));
        if s.path == "/none" {
            r
        } else {
            r.header("last-modified", &lm2)
        }
    })
    .await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 0s, stale: 0s, stale_if_error: 0s, jitter: 0",
    )
    .await;
    for path in ["/h200", "/h500", "/h302", "/none"] {
        p.get(path).await;
        p.get(path).await;
    }
    assert_eq!(
        origin.hits("/h200"),
        1,
        "200 + Last-Modified 100 days ago: heuristic freshness"
    );
    assert_eq!(
        origin.hits("/h500"),
        2,
        "500 is not heuristically cacheable"
    );
    assert_eq!(
        origin.hits("/h302"),
        2,
        "302 is not heuristically cacheable"
    );
    assert_eq!(
        origin.hits("/none"),
        2,
        "no Last-Modified, no route ttl: no freshness"
    );
    let r = p.get("/h200").await;
    let t = ttl(&r).unwrap();
    assert!(t > 0 && t <= 10 * 86400, "at most 10% of 100 days: ttl={t}");
    let _ = lm;
}

#[tokio::test]
async fn statuses_cacheable_by_default_are_stored_others_need_explicit_freshness() {
    let origin = Origin::start(|s| {
        let code: u16 = s
            .path
            .trim_start_matches("/s/")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let r = Reply::ok(if code == 204 { "" } else { "body" }).status(code);
        if s.path.ends_with("/explicit") {
            r.header("cache-control", "max-age=60")
        } else {
            r
        }
    })
    .await;
    let p = Proxy::simple(
        &origin.url(),
        "ttl: 60s, stale: 0s, stale_if_error: 0s, jitter: 0",
    )
    .await;
    let by_default = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];
    let others = [201, 302, 303, 307, 400, 403, 409, 429, 500, 502, 503];
    for code in by_default.iter().chain(others.iter()) {
        let path = format!("/s/{code}");
        let a = p.get(&path).await;
        assert_eq!(a.status, *code);
        p.get(&path).await;
    }
    for code in by_default {
        assert_eq!(
            origin.hits(&format!("/s/{code}")),
            1,
            "{code} is cacheable by default"
        );
    }
    for code in others {
        assert_eq!(
            origin.hits(&format!("/s/{code}")),
            2,
            "{code} is not cacheable without explicit freshness"
        );
    }
    // With explicit freshness, a status not cacheable by default may be stored.
    // (Statuses the RFC does not define caching for, e.g. 403 or 500, are not stored even
    // with max-age: storing is never required. See docs/http-caching.md.)
    for code in [302, 307] {
        let path = format!("/s/{code}/explicit");
        p.get(&path).await;
        let r = p.get(&path).await;
        assert_eq!(r.status, code);
        assert_eq!(origin.hits(&path), 1, "{code} + max-age=60 is stored");
    }
}

#[tokio::test]
async fn override_origin_uses_the_route_ttl() {
    let origin = Origin::start(|_| Reply::ok("o").header("cache-control", "max-age=5")).await;
    let routes =
        "  - path: /{*rest}\n    upstream: origin\n    override_origin: true\n    ttl: 200s\n";
    let p = Proxy::start(&proxy::config_yaml(
        &origin.url(),
        "stale: 0s, jitter: 0",
        routes,
    ))
    .await;
    p.get("/o").await;
    let r = p.get("/o").await;
    let t = ttl(&r).unwrap();
    assert!((195..=200).contains(&t), "override_origin: ttl={t}");
    assert_eq!(
        r.header("cache-control"),
        Some("max-age=5"),
        "downstream Cache-Control intact"
    );
}

#[tokio::test]
async fn directive_names_are_case_insensitive() {
    // Route ttl 1s: a directive that was not read would show as ttl <= 1 or a refetch.
    for (cc, lifetime) in [("MAX-AGE=120", 120), ("Max-Age=5, S-MAXAGE=300", 300)] {
        let (_, second, hits) = twice_with(
            "ttl: 1s, stale: 0s, jitter: 0",
            Reply::ok("c").header("cache-control", cc),
        )
        .await;
        assert_eq!(hits, 1, "Cache-Control: {cc}");
        let t = ttl(&second).unwrap();
        assert!(
            (lifetime - 5..=lifetime).contains(&t),
            "Cache-Control: {cc}: ttl={t}"
        );
    }
    for cc in [
        "NO-STORE, max-age=60",
        "Private, max-age=60",
        "max-age=60, No-Cache",
    ] {
        let (_, _, hits) = twice_with(
            "ttl: 60s, stale: 0s, stale_if_error: 0s, jitter: 0",
            Reply::ok("c").header("cache-control", cc),
        )
        .await;
        assert_eq!(
            hits, 2,
            "Cache-Control: {cc} is not reused without the origin"
        );
    }
}

#[tokio::test]
async fn an_age_that_is_not_a_non_negative_integer_is_ignored() {
    for age in ["10s", "1.5", "-1", "+5", "abc", ""] {
        let (first, second, hits) = twice_with(
            "ttl: 1s, stale: 0s, jitter: 0",
            Reply::ok("a")
                .header("cache-control", "max-age=100")
                .header("age", age),
        )
        .await;
        assert_eq!(hits, 1, "Age: {age:?}");
        let t = ttl(&second).unwrap();
        assert!((98..=100).contains(&t), "Age: {age:?} is ignored: ttl={t}");
        for r in [&first, &second] {
            assert!(
                matches!(r.header("age"), Some("0" | "1")),
                "Age: {age:?} downstream is this cache's own: {:?}",
                r.header("age")
            );
        }
    }
    // A list: the first member counts (RFC 9111 §5.1).
    let (_, second, _) = twice_with(
        "ttl: 1s, stale: 0s, jitter: 0",
        Reply::ok("a")
            .header("cache-control", "max-age=100")
            .header("age", "10, 20"),
    )
    .await;
    let t = ttl(&second).unwrap();
    assert!((88..=90).contains(&t), "Age: 10, 20 is 10: ttl={t}");
    assert_eq!(second.header("age"), Some("10"));
}

/// `http_date(offset)` in RFC 850 and in asctime form (RFC 9110 §5.6.7).
fn obsolete_dates(offset_secs: i64) -> [String; 2] {
    let imf = http_date(offset_secs); // "Tue, 01 Jan 2030 00:00:00 GMT"
    let wday = match &imf[..3] {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    let (day, mon, year, time) = (&imf[5..7], &imf[8..11], &imf[12..16], &imf[17..25]);
    let rfc850 = format!("{wday}, {day}-{mon}-{} {time} GMT", &year[2..]);
    let asctime = format!(
        "{} {mon} {:>2} {time} {year}",
        &imf[..3],
        day.trim_start_matches('0')
    );
    [rfc850, asctime]
}

#[tokio::test]
async fn expires_in_each_of_the_three_http_date_formats_gives_the_lifetime() {
    let [rfc850, asctime] = obsolete_dates(600);
    for expires in [http_date(600), rfc850, asctime] {
        let (_, second, hits) = twice_with(
            "ttl: 1s, stale: 0s, jitter: 0",
            Reply::ok("e")
                .header("date", &http_date(0))
                .header("expires", &expires),
        )
        .await;
        assert_eq!(hits, 1, "Expires: {expires}");
        let t = ttl(&second).unwrap();
        assert!((590..=600).contains(&t), "Expires: {expires}: ttl={t}");
    }
}

#[tokio::test]
async fn an_expires_in_another_format_means_already_expired() {
    let imf = http_date(600);
    let others = [
        imf.replacen(' ', "  ", 1),   // extra space after the comma
        imf.replace(" GMT", "  GMT"), // extra space before the zone
        imf.replace("GMT", "+0000"),  // RFC 5322 zone
        imf[5..].to_string(),         // no day name
        imf.replace("GMT", "UTC"),    // other zone name
        imf.to_lowercase(),           // names are case-sensitive
    ];
    for expires in others {
        let (_, second, hits) = twice_with(
            "ttl: 60s, stale: 0s, stale_if_error: 0s, jitter: 0",
            Reply::ok("x")
                .header("date", &http_date(0))
                .header("expires", &expires),
        )
        .await;
        assert_eq!(
            hits, 2,
            "Expires: {expires:?} is invalid, so already expired (RFC 9111 §5.3)"
        );
        assert!(
            !second.cache_status().starts_with("cachegate; hit"),
            "{}",
            second.cache_status()
        );
    }
}
