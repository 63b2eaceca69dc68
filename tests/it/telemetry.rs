//! Observability through the real binary: OTLP traces reach a collector, the client's
//! trace continues to the origin, Prometheus metrics count cache outcomes, and the
//! access log writes one line per request to stderr.

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
        "ttl: 2s, stale: 60s",
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

    // Stale: answered at once while a refresh runs as its own trace.
    // Past the 2 s TTL with a second to spare (the origin's Date has 1 s resolution).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let stale = proxy::send(&client, "GET", &format!("{base}/traced"), &[]).await;
    assert!(
        stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    for name in [&b"origin.fetch"[..], b"cache.refresh"] {
        let mut found = false;
        for _ in 0..50 {
            found = exports
                .lock()
                .unwrap()
                .iter()
                .any(|b| b.windows(name.len()).any(|w| w == name));
            if found {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            found,
            "a {} span reached the collector",
            String::from_utf8_lossy(name)
        );
    }

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

/// The real binary serving `/{*rest}` from `origin`, with stderr captured.
pub(crate) struct Served {
    child: std::process::Child,
    pub(crate) base: String,
}

impl Served {
    async fn start(origin: &Origin, extra_yaml: &str, env: &[(&str, &str)]) -> Served {
        Self::start_with(origin, "ttl: 60s", extra_yaml, env).await
    }

    /// The binary with `defaults` for the one route `/{*rest}`, then `extra_yaml`.
    pub(crate) async fn start_with(
        origin: &Origin,
        defaults: &str,
        extra_yaml: &str,
        env: &[(&str, &str)],
    ) -> Served {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        let yaml = proxy::config_yaml(
            &origin.url(),
            defaults,
            "  - path: /{*rest}\n    upstream: origin\n",
        )
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
        std::fs::write(&path, format!("{yaml}{extra_yaml}")).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .env_remove("CACHEGATE_LOG_FORMAT")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let client = proxy::client();
        let mut up = false;
        for _ in 0..100 {
            if client.get(format!("{base}/probe")).send().await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "cachegate did not start");
        drop(dir);
        Served { child, base }
    }

    /// Stops the process (SIGTERM, a graceful drain) and returns what it wrote to stderr.
    pub(crate) fn stop(self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let out = self.child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn access_lines<'a>(stderr: &'a str, path: &str) -> Vec<&'a str> {
    stderr
        .lines()
        .filter(|l| l.contains("cachegate::access") && l.contains(path))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_one_json_line_per_request_with_its_fields() {
    let origin = Origin::start(|_| Reply::ok("logged body")).await;
    let served = Served::start(&origin, "", &[("CACHEGATE_LOG_FORMAT", "json")]).await;
    let client = proxy::client();
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let url = format!("{}/logged?secret=x", served.base);
    let miss = proxy::send(&client, "GET", &url, &[("traceparent", &traceparent)]).await;
    assert_eq!(miss.body, "logged body");
    let hit = proxy::send(&client, "GET", &url, &[]).await;
    assert!(hit.cache_status().contains("hit"));
    let stderr = served.stop();

    let lines = access_lines(&stderr, r#""path":"/logged""#);
    assert_eq!(lines.len(), 2, "one line per request:\n{stderr}");
    for field in [
        r#""level":"INFO""#,
        r#""method":"GET""#,
        r#""route":"/{*rest}""#,
        r#""status":200"#,
        r#""bytes":11"#,
        r#""duration_ms":"#,
        r#""client":"127.0.0.1:"#,
    ] {
        assert!(
            lines.iter().all(|l| l.contains(field)),
            "{field} in every line:\n{lines:#?}"
        );
    }
    assert!(lines[0].contains(r#""cache":"miss""#), "{}", lines[0]);
    assert!(lines[1].contains(r#""cache":"hit""#), "{}", lines[1]);
    assert!(
        lines[0].contains(&format!(r#""trace_id":"{TRACE_ID}""#)),
        "the client's trace id: {}",
        lines[0]
    );
    assert!(!stderr.contains("secret=x"), "no query string in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_logs_into_a_pipe_carry_no_colour_codes() {
    let origin = Origin::start(|_| Reply::ok("plain")).await;
    let served = Served::start(&origin, "", &[]).await;
    let r = proxy::send(
        &proxy::client(),
        "GET",
        &format!("{}/plain", served.base),
        &[],
    )
    .await;
    assert_eq!(r.body, "plain");
    let stderr = served.stop();

    let lines = access_lines(&stderr, r#"path="/plain""#);
    assert_eq!(lines.len(), 1, "{stderr}");
    for field in [
        "INFO",
        "method=GET",
        "status=200",
        "cache=",
        "bytes=5",
        "client=",
    ] {
        assert!(lines[0].contains(field), "{field}: {}", lines[0]);
    }
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escape in a pipe:\n{stderr:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_off_writes_no_line() {
    let origin = Origin::start(|_| Reply::ok("quiet")).await;
    let served = Served::start(&origin, "log: { access: false }\n", &[]).await;
    let r = proxy::send(
        &proxy::client(),
        "GET",
        &format!("{}/quiet", served.base),
        &[],
    )
    .await;
    assert_eq!(r.body, "quiet");
    let stderr = served.stop();

    assert!(stderr.contains("cachegate listening"), "{stderr}");
    assert!(!stderr.contains("cachegate::access"), "{stderr}");
}
