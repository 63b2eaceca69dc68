//! The cache-hit path end to end in process: the proxy router (limits layer, route, key,
//! store lookup, freshness, response with `Age` and `Cache-Status`) answering a warm key,
//! driven with `tower::ServiceExt::oneshot`, no sockets on the hit path. A dev origin on a
//! loopback port fills the key once.
//!
//! `cargo bench --bench hit_path` (results and machine in BENCHMARKS.md).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use cachegate::app::AppState;
use cachegate::config::{Config, Overrides};
use cachegate::devorigin::{self, OriginOptions};
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

struct Stack {
    rt: tokio::runtime::Runtime,
    router: Router,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn stack(body_size: usize) -> Stack {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let opts = OriginOptions {
            body_size,
            cache_control: Some("max-age=3600".to_owned()),
            ..OriginOptions::default()
        };
        tokio::spawn(devorigin::serve(listener, opts, async {
            let _ = stopped.await;
        }));
        let yaml = format!(
            r#"
listen: 127.0.0.1:0
upstreams:
  origin: {{ url: "http://127.0.0.1:{port}", connect_timeout: 1s, timeout: 10s }}
defaults: {{ ttl: 60s, stale: 5m, stale_if_error: 1h, jitter: 0 }}
store: {{ backend: memory }}
routes:
  - path: /users/{{id}}
    upstream: origin
    key: {{ query: [fields] }}
"#
        );
        let config = Config::parse(&yaml, Path::new("bench.yaml"), &Overrides::default()).unwrap();
        let state: Arc<AppState> = AppState::new(config).await.unwrap();
        let router = cachegate::server::router(state);
        // Fill the key (a miss), then check the next answer is a hit.
        for expect in ["fwd=miss", "; hit"] {
            let resp = router.clone().oneshot(get()).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let cs = resp.headers()["cache-status"].to_str().unwrap().to_owned();
            assert!(cs.contains(expect), "{cs}");
            resp.into_body().collect().await.unwrap();
        }
        router
    });
    Stack {
        rt,
        router,
        _stop: stop,
    }
}

fn get() -> Request<Body> {
    Request::get("/users/42?fields=name&utm_source=bench")
        .header("host", "bench")
        .header("accept", "application/json")
        .header("accept-encoding", "gzip")
        .body(Body::empty())
        .unwrap()
}

fn conditional(etag: &str) -> Request<Body> {
    Request::get("/users/42?fields=name")
        .header("host", "bench")
        .header("if-none-match", etag)
        .body(Body::empty())
        .unwrap()
}

/// `iters` sequential requests in one `block_on`, so the runtime's entry cost is not
/// counted per request.
fn run(s: &Stack, iters: u64, make: impl Fn() -> Request<Body>, expect: StatusCode) -> Duration {
    s.rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let resp = s.router.clone().oneshot(make()).await.unwrap();
            debug_assert_eq!(resp.status(), expect);
            let body = resp.into_body().collect().await.unwrap();
            std::hint::black_box(body);
        }
        start.elapsed()
    })
}

fn hit_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("hit_path");
    for size in [0usize, 16 * 1024] {
        let s = stack(size);
        let label = if size == 0 { "small" } else { "16KiB" };
        g.bench_function(format!("GET/{label}"), |b| {
            b.iter_custom(|iters| run(&s, iters, get, StatusCode::OK))
        });
        if size == 0 {
            let etag = s.rt.block_on(async {
                let resp = s.router.clone().oneshot(get()).await.unwrap();
                resp.headers()["etag"].to_str().unwrap().to_owned()
            });
            g.bench_function("conditional-304", |b| {
                b.iter_custom(|iters| {
                    run(&s, iters, || conditional(&etag), StatusCode::NOT_MODIFIED)
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, hit_path);
criterion_main!(benches);
