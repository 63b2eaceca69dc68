//! Observability through the real binary: OTLP traces reach a collector, the client's
//! trace continues to the origin, and Prometheus metrics count cache outcomes.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;

use crate::support::{proxy, Origin, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_cachegate");
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A stand-in OTLP/HTTP collector that keeps every export it receives.
async fn collector() -> (String, Arc<Mutex<Vec<Bytes>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_exported_and_the_trace_continues_to_the_origin() {
    let origin = Origin::start(|_| Reply::ok("traced")).await;
    let (collector_url, exports) = collector().await;
    let (port, admin_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let yaml = proxy::config_yaml(
        &origin.url(),
        "ttl: 60s",
        "  - path: /{*rest}\n    upstream: origin\n",
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(
        &path,
        format!("{yaml}admin: {{ listen: 127.0.0.1:{admin_port} }}\n"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector_url)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = proxy::client();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..100 {
        if client.get(format!("{base}/probe")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "cachegate did not start");

    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let r = proxy::send(
        &client,
        "GET",
        &format!("{base}/traced"),
        &[("traceparent", traceparent.as_str())],
    )
    .await;
    assert_eq!(r.body, "traced");
    let hit = proxy::send(&client, "GET", &format!("{base}/traced"), &[]).await;
    assert!(hit.cache_status().contains("hit"));

    let seen = origin
        .seen()
        .into_iter()
        .find(|s| s.path == "/traced")
        .unwrap();
    let forwarded = seen
        .headers
        .get("traceparent")
        .expect("the origin gets trace context");
    assert!(
        forwarded
            .to_str()
            .unwrap()
            .starts_with(&format!("00-{TRACE_ID}-")),
        "{forwarded:?}"
    );

    let metrics = proxy::send(
        &client,
        "GET",
        &format!("http://127.0.0.1:{admin_port}/metrics"),
        &[],
    )
    .await;
    assert!(
        metrics
            .body
            .contains(r#"cachegate_requests_total{route="/{*rest}",cache="hit",status="2xx"} 1"#),
        "{}",
        metrics.body
    );

    let trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&TRACE_ID[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut exported = false;
    for _ in 0..50 {
        exported = exports
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.windows(16).any(|w| w == trace_id.as_slice()));
        if exported {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(
        exported,
        "a span of the client's trace reached the collector"
    );
}
