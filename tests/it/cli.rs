//! The real binary: `check` names the file, line and field; SIGTERM drains in-flight
//! requests.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{proxy, Origin, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_cachegate");

/// `cachegate check --config PATH`.
fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn check_reports_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        "upstreams:\n  api: { url: \"http://127.0.0.1:3000\" }\nroutes:\n  - path: /a\n    upstream: api\n    ttl: soon\n",
    )
    .unwrap();
    let out = check(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:6:10: routes[0].ttl: \"soon\" is not a duration",
            path.display()
        )),
        "{err}"
    );

    std::fs::write(&path, "upstreams:\n  api: { url: \"http://127.0.0.1:3000\" }\nroutes:\n  - path: /a\n    upstream: api\n")
        .unwrap();
    let out = check(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_worker_count_stops_start_up_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, "upstreams:\n  api: { url: \"http://127.0.0.1:3000\" }\nroutes:\n  - path: /a\n    upstream: api\n")
        .unwrap();
    for bad in ["0", "two", "-1"] {
        let out = Command::new(BIN)
            .env("CACHEGATE_WORKERS", bad)
            .args(["--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "CACHEGATE_WORKERS={bad} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("CACHEGATE_WORKERS=\"{bad}\"")),
            "{err}"
        );
    }
    let out = Command::new(BIN)
        .env("CACHEGATE_WORKERS", "3")
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn version_and_help_work() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cachegate "));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("check"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests() {
    let origin = Origin::start(|_| Reply::ok("finished").delay(Duration::from_millis(700))).await;
    let (mut child, port, _dir) = serve_binary(&origin, &[]).await;
    let url = format!("http://127.0.0.1:{port}/slow");
    let client = proxy::client();
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { proxy::send(&client, "GET", &url, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    unsafe_kill_term(child.id());
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "finished"));
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit after draining: {status:?}");
}

/// The real binary serving `origin` on a free port (every path, `ttl: 60s`), with `env`;
/// returns once it answers. The directory holds its routes file.
async fn serve_binary(
    origin: &Origin,
    env: &[(&str, &str)],
) -> (std::process::Child, u16, tempfile::TempDir) {
    let port = crate::support::free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        proxy::config_yaml(
            &origin.url(),
            "ttl: 60s",
            "  - path: /{*rest}\n    upstream: origin\n",
        )
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = proxy::client();
    for _ in 0..100 {
        if client
            .get(format!("http://127.0.0.1:{port}/ready-probe"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, port, dir)
}

/// More workers than cores: connections land on different workers, and a cold key asked
/// for on all of them at once is still one origin request (the single flight is the
/// process's, not a worker's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_many_workers_share_one_fetch_per_key() {
    let origin = Origin::start(|s| {
        Reply::ok(format!("{} #{}", s.path, s.n)).delay(Duration::from_millis(300))
    })
    .await;
    let (mut child, port, _dir) = serve_binary(&origin, &[("CACHEGATE_WORKERS", "3")]).await;
    // One client per request: a connection each, spread over the workers.
    let burst = (0..24).map(|_| {
        let url = format!("http://127.0.0.1:{port}/cold");
        tokio::spawn(async move { proxy::send(&proxy::client(), "GET", &url, &[]).await })
    });
    let answers = futures_util::future::join_all(burst).await;
    for r in &answers {
        let r = r.as_ref().unwrap();
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "/cold #0"),
            "{}",
            r.cache_status()
        );
    }
    assert_eq!(
        origin.hits("/cold"),
        1,
        "one origin request for 24 clients on 3 workers"
    );
    let again = proxy::send(
        &proxy::client(),
        "GET",
        &format!("http://127.0.0.1:{port}/cold"),
        &[],
    )
    .await;
    assert!(
        again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
    unsafe_kill_term(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit: {status:?}");
}

fn unsafe_kill_term(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn key_shows_the_key_and_the_exact_upstream_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        "upstreams:\n  api: { url: \"http://127.0.0.1:3000/v1\" }\nroutes:\n  - path: /users/{id}\n    upstream: api\n    key: { headers: [x-api-version], query_ignore: [utm_*] }\n",
    )
    .unwrap();
    let key = |args: &[&str]| {
        Command::new(BIN)
            .args(["key", "--config"])
            .arg(&path)
            .args(args)
            .output()
            .unwrap()
    };
    let out = key(&[
        "http://API.example.com/users/4%32?b=2&utm_source=x&a=%7E",
        "-H",
        "X-Api-Version: 3",
        "-H",
        "Cookie: session=1",
        "-H",
        "X-Forwarded-Host: evil.example",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("route:    /users/{id} (upstream api, cached)"),
        "{text}"
    );
    assert!(
        text.contains("key:      /users/{id}|id=42|a=~&b=2"),
        "{text}"
    );
    // The hash traces record as cache.key_hash.
    let hash = cachegate::telemetry::key_hash("/users/{id}|id=42|a=~&b=2");
    assert!(text.contains(&format!("key hash: {hash}")), "{text}");
    assert!(
        text.contains("upstream: GET http://127.0.0.1:3000/v1/users/42?a=~&b=2"),
        "{text}"
    );
    assert!(text.contains("  x-api-version: 3"), "{text}");
    assert!(
        text.contains("  x-forwarded-host: api.example.com"),
        "{text}"
    );
    assert!(!text.contains("cookie") && !text.contains("evil"), "{text}");

    let out = key(&["/users/../../x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("400"));
}
