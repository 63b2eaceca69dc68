//! Observability through the real binary: the access log writes one line per request
//! to stderr (traces are in `traces.rs`, metrics in `metrics.rs`). `Served` runs the
//! binary for those modules too.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{free_port, proxy, Origin, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_cachegate");
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

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
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Only the test's own OpenTelemetry settings.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
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
    // The miss went to the origin and says how long that took; the hit did not.
    assert!(lines[0].contains(r#""origin_ms":"#), "{}", lines[0]);
    assert!(!lines[1].contains("origin_ms"), "{}", lines[1]);
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
