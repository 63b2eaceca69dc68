use std::path::Path;
use std::time::Duration;

use super::*;

const GOOD: &str = "\
listen: 127.0.0.1:8080
upstreams:
  api: { url: \"http://127.0.0.1:3000/v1/\", connect_timeout: 1s, timeout: 10s }
defaults: { ttl: 60s, stale: 5m, stale_if_error: 1h, jitter: 0.1 }
routes:
  - path: /users/{id}
    upstream: api
    ttl: 30s
    stale: 2m
    key: { query: [fields], headers: [accept-language] }
  - path: /{*rest}
    upstream: api
    cache: false
";

fn parse(src: &str) -> Result<Config, ConfigError> {
    Config::parse(src, Path::new("routes.yaml"), &Overrides::default())
}

/// The error for `src` rendered as users see it.
fn check_err(src: &str, want: &str) {
    let err = parse(src).expect_err("config should be rejected");
    assert_eq!(err.to_string(), want);
}

#[test]
fn a_good_config_validates() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.upstreams[0].base_path, "/v1");
    assert_eq!(c.routes[0].policy.ttl, Duration::from_secs(30));
    assert_eq!(c.routes[0].policy.stale, Duration::from_secs(120));
    assert_eq!(c.routes[0].policy.stale_if_error, Duration::from_secs(3600));
    assert_eq!(
        c.routes[0].key.query,
        crate::proxy::key::QuerySpec::Only(vec!["fields".to_string()])
    );
    assert!(!c.routes[1].cache);
    assert!(matches!(c.store.backend, Backend::Memory { .. }));
}

#[test]
fn the_shipped_routes_yaml_validates() {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/routes.yaml")).unwrap();
    parse(&src).unwrap();
}

#[test]
fn errors_name_line_column_and_field() {
    check_err(
        &GOOD.replace("ttl: 30s", "ttl: 5 m"),
        "routes.yaml:8:10: routes[0].ttl: \"5 m\" is not a duration (expected e.g. 500ms, 30s, 5m, 1h)",
    );
    check_err(
        &GOOD.replace(
            "    upstream: api\n    cache",
            "    upstream: apx\n    cache",
        ),
        "routes.yaml:12:15: routes[1].upstream: \"apx\" is not a defined upstream (defined: api)",
    );
    // The list of known fields grows with features: check its start and that it helps.
    let err = parse(&GOOD.replace("    stale: 2m", "    stael: 2m"))
        .expect_err("a typo is rejected")
        .to_string();
    assert!(
        err.starts_with("routes.yaml:9:5: routes[0].stael: unknown field `stael`, expected one of `path`, `upstream`"),
        "{err}"
    );
    assert!(
        err.contains("`stale`") && err.contains("`strip_headers`"),
        "{err}"
    );
    check_err(
        &GOOD.replace("jitter: 0.1", "jitter: 2"),
        "routes.yaml:4:62: defaults.jitter: 2 is out of range (expected 0.0 to 0.5)",
    );
    check_err(
        &GOOD.replace("http://127.0.0.1:3000/v1/", "ftp://127.0.0.1:3000"),
        "routes.yaml:3:15: upstreams.api.url: \"ftp://127.0.0.1:3000\": expected an http:// or https:// URL",
    );
}

#[test]
fn conflicting_templates_are_rejected() {
    let src = GOOD.replace("  - path: /{*rest}", "  - path: /users/{name}");
    let err = parse(&src).unwrap_err();
    assert_eq!(err.field, "routes[1].path");
    assert_eq!(err.position, Some((11, 11)));
}

#[test]
fn environment_overrides_the_file() {
    let o = Overrides {
        listen: Some("127.0.0.1:9999".into()),
        redis_url: Some("redis://127.0.0.1:1".into()),
        ..Default::default()
    };
    let c = Config::parse(GOOD, Path::new("routes.yaml"), &o).unwrap();
    assert_eq!(c.listen.port(), 9999);
    assert!(matches!(c.store.backend, Backend::Redis(_)));
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("0"), Some(Duration::ZERO));
    assert_eq!(parse_duration("5 m"), None);
    assert_eq!(parse_duration("m"), None);
    assert_eq!(parse_size("64MiB"), Some(64 << 20));
    assert_eq!(parse_size("10"), Some(10));
    assert_eq!(parse_size("1 GiB"), Some(1 << 30));
    assert_eq!(parse_size("1XB"), None);
}

#[test]
fn pool_size_is_accepted_with_a_warning() {
    let src = format!(
        "{GOOD}store:\n  backend: redis\n  redis:\n    url: redis://127.0.0.1:1\n    pool_size: 32\n"
    );
    let c = parse(&src).unwrap();
    let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        [
            "routes.yaml:18:16: store.redis.pool_size: is ignored: one multiplexed connection per \
          worker thread carries its commands"
        ]
    );
    assert!(parse(GOOD).unwrap().warnings.is_empty());
}

#[test]
fn origin_protection_settings() {
    let c = parse(GOOD).unwrap();
    let p = &c.upstreams[0].protection;
    assert_eq!(p.max_concurrency, None);
    assert_eq!(p.queue_timeout, Duration::from_secs(1));
    assert_eq!(p.rate_limit, None);
    assert_eq!(p.breaker, None);

    let src = GOOD.replace(
        "timeout: 10s }",
        "timeout: 10s, max_concurrency: 8, queue_timeout: 250ms, rate_limit: 600/m, breaker: {} }",
    );
    let p = parse(&src).unwrap().upstreams[0].protection.clone();
    assert_eq!(p.max_concurrency, Some(8));
    assert_eq!(p.queue_timeout, Duration::from_millis(250));
    assert_eq!(
        p.rate_limit,
        Some(RateLimit {
            requests: 600,
            per: Duration::from_secs(60)
        })
    );
    assert_eq!(
        p.breaker,
        Some(BreakerSettings {
            failures: 5,
            open_for: Duration::from_secs(10)
        })
    );
}

#[test]
fn bad_origin_protection_values_name_the_field() {
    let with = |extra: &str| GOOD.replace("timeout: 10s }", &format!("timeout: 10s, {extra} }}"));
    check_err(
        &with("max_concurrency: 0"),
        "routes.yaml:3:96: upstreams.api.max_concurrency: 0 is out of range (expected 1 to 1000000 requests in flight)",
    );
    check_err(
        &with("queue_timeout: soon"),
        "routes.yaml:3:94: upstreams.api.queue_timeout: \"soon\" is not a duration (expected e.g. 500ms, 30s, 5m, 1h)",
    );
    check_err(
        &with("rate_limit: 200"),
        "routes.yaml:3:91: upstreams.api.rate_limit: \"200\" is not a rate (expected e.g. 200/s, 600/m; at least 1)",
    );
    check_err(
        &with("rate_limit: 0/s"),
        "routes.yaml:3:91: upstreams.api.rate_limit: \"0/s\" is not a rate (expected e.g. 200/s, 600/m; at least 1)",
    );
    check_err(
        &with("breaker: { failures: 0 }"),
        "routes.yaml:3:100: upstreams.api.breaker.failures: 0 is out of range (expected 1 to 10000 consecutive failures)",
    );
    check_err(
        &with("breaker: { open_for: 0s }"),
        "routes.yaml:3:100: upstreams.api.breaker.open_for: must be longer than 0s (expected e.g. 10s)",
    );
    let err = parse(&with("breaker: { failurs: 3 }"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("upstreams.api.breaker.failurs: unknown field `failurs`, expected `failures` or `open_for`"),
        "{err}"
    );
    assert_eq!(parse_rate("200/s").map(|r| r.requests), Some(200));
    assert_eq!(parse_rate("200/day"), None);
    assert_eq!(parse_rate("-1/s"), None);
}

#[test]
fn a_vary_list_names_headers() {
    let src = "upstreams:\n  api: { url: \"http://127.0.0.1:3000\" }\nroutes:\n  - path: /a\n    upstream: api\n    vary: [Accept, \"not a header\"]\n";
    let err = parse(src).expect_err("a bad vary name is rejected");
    let text = err.to_string();
    assert!(text.starts_with("routes.yaml:6:"), "{text}");
    assert!(
        text.contains("routes[0].vary[1]: \"not a header\" is not a header name"),
        "{text}"
    );
    let ok = parse(&src.replace(", \"not a header\"", "")).unwrap();
    let names = ok.routes[0].policy.vary_allow.as_deref().unwrap();
    assert_eq!(names, [http::header::ACCEPT]);
}
