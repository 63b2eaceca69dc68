//! Micro-benchmarks of the pure pieces every request runs: the cache key, the storage
//! decision on an origin response, and the `Cache-Status` header.
//!
//! `cargo bench --bench micro` (results and machine in BENCHMARKS.md).

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use cachegate::cache::policy::{self, Exchange, RoutePolicy};
use cachegate::cache::{CacheStatus, Detail, Fwd};
use cachegate::proxy::canonical;
use cachegate::proxy::key::{cache_key, KeySpec, QuerySpec};
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderName, Request, Response};
use http_cache_semantics::CachePolicy;

/// The key of a request: its canonical query (the route's selection, normalised and
/// sorted), then the key string. Both run on every cached request.
fn key_of(
    template: &str,
    params: &[(String, String)],
    query: Option<&str>,
    spec: &KeySpec,
) -> String {
    let canonical = canonical::query(query, &spec.query, &spec.query_ignore).unwrap();
    cache_key(template, params, canonical.as_deref())
}

fn keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache_key");
    let no_query = KeySpec::default();
    let params = vec![("id".to_owned(), "42".to_owned())];
    g.bench_function("template+param", |b| {
        b.iter(|| {
            key_of(
                black_box("/users/{id}"),
                black_box(&params),
                black_box(None),
                &no_query,
            )
        })
    });

    // Two selected parameters out of four, out of order, one percent-encoded.
    let spec = KeySpec::new(
        QuerySpec::Only(vec!["fields".to_owned(), "lang".to_owned()]),
        vec![],
        vec![HeaderName::from_static("accept-language")],
    );
    let query = "utm_source=news&lang=en&fields=name%2Cemail&page=2";
    g.bench_function("template+param+4-query-2-selected", |b| {
        b.iter(|| {
            key_of(
                black_box("/users/{id}"),
                black_box(&params),
                black_box(Some(query)),
                &spec,
            )
        })
    });

    // What loadtests/run.sh and compare.sh route: a catch-all with four selected params.
    let catch_all = vec![("rest".to_owned(), "hit/1".to_owned())];
    let loadtest = KeySpec::new(
        QuerySpec::Only(["cc", "delay", "size", "status"].map(String::from).to_vec()),
        vec![],
        vec![],
    );
    g.bench_function("loadtest-route", |b| {
        b.iter(|| {
            key_of(
                black_box("/{*rest}"),
                black_box(&catch_all),
                black_box(Some("cc=max-age%3D3600")),
                &loadtest,
            )
        })
    });
    g.finish();
}

fn exchange(status: u16, res: &[(&str, &str)]) -> (http::request::Parts, http::response::Parts) {
    let req = Request::get("http://origin/users/42")
        .header("accept", "application/json")
        .header("user-agent", "bench")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let mut rs = Response::builder().status(status);
    for (k, v) in res {
        rs = rs.header(*k, *v);
    }
    (req, rs.body(()).unwrap().into_parts().0)
}

/// A named response: status and headers.
type Case<'a> = (&'a str, u16, Vec<(&'a str, &'a str)>);

fn decisions(c: &mut Criterion) {
    let route = RoutePolicy {
        ttl: Duration::from_secs(60),
        stale: Duration::from_secs(300),
        stale_if_error: Duration::from_secs(3600),
        jitter: 0.1,
        ..RoutePolicy::default()
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let date = httpdate::fmt_http_date(now);
    let cases: [Case; 4] = [
        (
            "store-max-age",
            200,
            vec![
                ("date", &date),
                (
                    "cache-control",
                    "public, max-age=60, stale-while-revalidate=30",
                ),
                ("etag", "\"v1\""),
                ("content-type", "application/json"),
                ("vary", "Accept-Encoding"),
            ],
        ),
        (
            "store-route-ttl",
            200,
            vec![("date", &date), ("content-type", "application/json")],
        ),
        (
            "no-store",
            200,
            vec![("date", &date), ("cache-control", "no-store")],
        ),
        (
            "private",
            200,
            vec![("date", &date), ("cache-control", "private, max-age=60")],
        ),
    ];

    let mut g = c.benchmark_group("policy");
    for (name, status, headers) in &cases {
        let (req, res) = exchange(*status, headers);
        let cache_policy = CachePolicy::new_options(&req, &res, now, policy::cache_options());
        let ex = Exchange {
            request_headers: &req.headers,
            status: res.status,
            response_headers: &res.headers,
        };
        let cc = policy::Directives::parse(&res.headers);
        // The decision alone, on a parsed http-cache-semantics policy.
        g.bench_function(format!("decide/{name}"), |b| {
            b.iter(|| {
                policy::decide(
                    &route,
                    black_box(&cache_policy),
                    black_box(&ex),
                    &cc,
                    now,
                    0.5,
                )
            })
        });
        // What a miss pays: reading the response once and deciding (`policy::evaluate`).
        g.bench_function(format!("evaluate/{name}"), |b| {
            b.iter(|| {
                policy::evaluate(
                    &route,
                    black_box(&req),
                    res.status,
                    black_box(&res.headers),
                    now,
                    0.5,
                )
            })
        });
    }
    g.finish();
}

fn statuses(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache_status");
    let hit = CacheStatus::hit(3599);
    g.bench_function("hit", |b| {
        b.iter(|| black_box(&hit).header_value("cachegate"))
    });
    let miss = CacheStatus {
        fwd: Some(Fwd::Miss),
        fwd_status: Some(200),
        stored: true,
        ttl: Some(60),
        ..Default::default()
    };
    g.bench_function("miss-stored", |b| {
        b.iter(|| black_box(&miss).header_value("cachegate"))
    });
    let stale = CacheStatus::hit(-3).with_detail(Detail::StaleWhileRevalidate);
    g.bench_function("stale-while-revalidate", |b| {
        b.iter(|| black_box(&stale).header_value("cachegate"))
    });
    let with_key = CacheStatus {
        key: Some("/users/{id}|id=42|fields=name".to_owned()),
        ..CacheStatus::hit(12)
    };
    g.bench_function("hit-with-key", |b| {
        b.iter(|| black_box(&with_key).header_value("cachegate"))
    });
    g.finish();
}

criterion_group!(benches, keys, decisions, statuses);
criterion_main!(benches);
