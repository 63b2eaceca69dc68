//! `cachegate purge` and `cachegate warm` as a deploy pipeline runs them: the real binary
//! against a real cachegate binary (or, for the retry contract, an admin endpoint the
//! test scripts), with exit codes, output and origin request counts.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::{Child, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use http::HeaderMap;

use crate::support::fleet::{admin_yaml, TOKEN};
use crate::support::{free_port, proxy, Origin, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_cachegate");

/// The real `cachegate` serving `routes` in front of `origin`, with an admin listener.
struct Binary {
    proxy: String,
    admin: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Binary {
    async fn start(origin: &Origin, routes: &str) -> Binary {
        // A port free when picked may be taken (by another test's outgoing connection)
        // before the binary binds it: it exits then, and we try other ports.
        for _ in 0..3 {
            if let Some(binary) = Self::try_start(origin, routes).await {
                return binary;
            }
        }
        panic!("cachegate did not start on three pairs of free ports");
    }

    async fn try_start(origin: &Origin, routes: &str) -> Option<Binary> {
        let port = free_port();
        let (admin_line, admin) = admin_yaml();
        let yaml = proxy::config_yaml(&origin.url(), "ttl: 60s, stale: 60s, jitter: 0", routes)
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
            + &admin_line;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, yaml).unwrap();
        let child = std::process::Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut binary = Binary {
            proxy: format!("http://127.0.0.1:{port}"),
            admin,
            child,
            _dir: dir,
        };
        for url in [binary.proxy.clone(), binary.admin.clone()] {
            let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                if binary.child.try_wait().unwrap().is_some() {
                    return None;
                }
                assert!(
                    Instant::now() < deadline,
                    "cachegate did not listen on {addr}"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        Some(binary)
    }

    /// A GET with the `Host` that `cachegate warm` sends for a path (the host is part
    /// of every entry).
    async fn get(&self, path: &str) -> proxy::Resp {
        self.get_with(path, &[]).await
    }

    async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> proxy::Resp {
        let host = self.proxy.trim_start_matches("http://");
        let mut headers = headers.to_vec();
        headers.push(("host", host));
        proxy::send(
            &proxy::client(),
            "GET",
            &format!("{}{path}", self.proxy),
            &headers,
        )
        .await
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cachegate ARGS` with `env`; the token variable is unset unless `env` sets it.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).env_remove("CACHEGATE_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the command finished within 60s")
        .unwrap()
}

fn text(out: &Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tagged(s: &crate::support::origin::Seen) -> Reply {
    let tag = if s.path.starts_with("/users/") {
        "users"
    } else {
        "other"
    };
    Reply::ok(format!("{} #{}", s.path, s.n)).header("surrogate-key", tag)
}

const ROUTES: &str =
    "  - path: /users/{id}\n    upstream: origin\n    key: { headers: [x-api-version] }\n  \
                      - path: /health\n    upstream: origin\n    cache: false\n  \
                      - path: /{*rest}\n    upstream: origin\n";

// === purge: exit codes ===

#[tokio::test]
async fn purge_without_a_selector_is_a_usage_error() {
    let out = cli(
        &["purge", "--admin", "http://127.0.0.1:9", "--soft"],
        &[("CACHEGATE_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let (code, _, err) = text(&out);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--url") && err.contains("--all"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_with_a_bad_or_missing_token_exits_3() {
    let origin = Origin::start(tagged).await;
    let b = Binary::start(&origin, ROUTES).await;
    let args = ["purge", "--admin", b.admin.as_str(), "--tag", "users"];
    let (code, _, err) = text(&cli(&args, &[("CACHEGATE_ADMIN_TOKEN", "wrong")]).await);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("401"), "{err}");
    assert!(!err.contains("retry"), "a 401 is not retried: {err}");

    let (code, _, err) = text(&cli(&args, &[]).await);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("CACHEGATE_ADMIN_TOKEN"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_of_an_unknown_route_is_rejected_with_4() {
    let origin = Origin::start(tagged).await;
    let b = Binary::start(&origin, ROUTES).await;
    let out = cli(
        &["purge", "--admin", &b.admin, "--route", "/no/{such}"],
        &[("CACHEGATE_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let (code, _, err) = text(&out);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("rejected (400)"), "{err}");
    assert!(
        err.contains("known: /users/{id}"),
        "the server's reason is shown: {err}"
    );
    assert!(!err.contains("retry"), "a 400 is not retried: {err}");
}

#[tokio::test]
async fn purge_of_an_unreachable_admin_retries_then_exits_5() {
    let admin = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = cli(
        &["purge", "--admin", &admin, "--all"],
        &[("CACHEGATE_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let took = started.elapsed();
    let (code, _, err) = text(&out);
    assert_eq!(code, Some(5), "{err}");
    assert_eq!(err.matches("retry ").count(), 4, "{err}");
    assert!(err.contains("gave up after 5 attempts"), "{err}");
    // Backoff 100 + 200 + 400 + 800 ms: bounded, and it did wait.
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(20),
        "{took:?}"
    );
}

// === purge: the contract, against a scripted admin endpoint ===

/// An admin endpoint answering `POST /purge` from a script, recording what it got.
struct Scripted {
    url: String,
    got: Arc<Mutex<Vec<(String, HeaderMap, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

type Script = Arc<Mutex<VecDeque<(u16, &'static str)>>>;
type Got = Arc<Mutex<Vec<(String, HeaderMap, String)>>>;

impl Scripted {
    async fn start(replies: &[(u16, &'static str)]) -> Scripted {
        let script: Script = Arc::new(Mutex::new(replies.iter().copied().collect()));
        let got: Got = Arc::default();
        async fn handle(
            State((script, got)): State<(Script, Got)>,
            uri: http::Uri,
            headers: HeaderMap,
            body: String,
        ) -> axum::response::Response {
            got.lock()
                .unwrap()
                .push((uri.path().to_string(), headers, body));
            let (status, body) = script.lock().unwrap().pop_front().unwrap_or((500, "{}"));
            let mut resp = axum::response::Response::new(axum::body::Body::from(body));
            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
            resp
        }
        let app = axum::Router::new()
            .fallback(handle)
            .with_state((script, got.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Scripted { url, got, task }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_sends_the_json_contract_and_retries_5xx() {
    let ok = r#"{"mode":"soft","purged":{"urls":1,"tags":4},"total":5}"#;
    let admin =
        Scripted::start(&[(503, "{\"error\":\"store failed\"}"), (502, ""), (200, ok)]).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let out = cli(
        &[
            "purge",
            "--admin",
            &format!("{}/", admin.url),
            "--url",
            "/users/1?fields=a",
            "--tag",
            "users",
            "--tag",
            "user:1",
            "--soft",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let (code, stdout, err) = text(&out);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(stdout, "purged 5 entries (soft): urls 1, tags 4\n");
    assert!(err.contains("server error (503): store failed"), "{err}");

    let got = admin.got.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "two 5xx retried, then done");
    for (path, headers, body) in &got {
        assert_eq!(path, "/purge");
        assert_eq!(
            headers["authorization"].to_str().unwrap(),
            format!("Bearer {TOKEN}")
        );
        assert_eq!(headers["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"urls": ["/users/1?fields=a"], "tags": ["users", "user:1"],
                "routes": [], "prefixes": [], "all": false, "soft": true})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_never_retries_4xx_and_json_shows_the_answer() {
    let admin = Scripted::start(&[(400, r#"{"error":"routes[0]: \"/x\" is no route"}"#)]).await;
    let out = cli(
        &["purge", "--admin", &admin.url, "--route", "/x", "--json"],
        &[("CACHEGATE_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let (code, stdout, err) = text(&out);
    assert_eq!(code, Some(4), "{err}");
    assert!(
        err.contains(r#"rejected (400): routes[0]: "/x" is no route"#),
        "{err}"
    );
    assert!(
        stdout.contains("\"error\""),
        "--json shows the server's answer: {stdout}"
    );
    assert_eq!(admin.got.lock().unwrap().len(), 1);

    let admin = Scripted::start(&[(500, ""), (500, ""), (500, "")]).await;
    let out = cli(
        &["purge", "--admin", &admin.url, "--all", "--retries", "2"],
        &[("CACHEGATE_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        admin.got.lock().unwrap().len(),
        3,
        "--retries 2: three attempts"
    );
}

// === purge: against the real binary ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_tag_prints_the_counts_and_the_next_request_goes_to_the_origin() {
    let origin = Origin::start(tagged).await;
    let b = Binary::start(&origin, ROUTES).await;
    for path in ["/users/1", "/users/2", "/other"] {
        b.get(path).await;
        assert!(b.get(path).await.cache_status().contains("hit"));
    }
    let token = [("CACHEGATE_ADMIN_TOKEN", TOKEN)];
    let out = cli(&["purge", "--admin", &b.admin, "--tag", "users"], &token).await;
    let (code, stdout, err) = text(&out);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(stdout, "purged 2 entries (hard): tags 2\n");
    assert_eq!(
        b.get("/users/1").await.body,
        "/users/1 #1",
        "purged: fetched again"
    );
    assert_eq!(b.get("/other").await.body, "/other #0", "another tag stays");
    assert_eq!(b.get("/users/2").await.body, "/users/2 #1");

    let out = cli(
        &[
            "purge", "--admin", &b.admin, "--url", "/users/2", "--soft", "--json",
        ],
        &token,
    )
    .await;
    let (code, stdout, err) = text(&out);
    assert_eq!(code, Some(0), "{err}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["mode"], "soft", "{stdout}");
    assert_eq!(answer["purged"]["urls"], 1, "{stdout}");
    assert_eq!(answer["total"], 1, "{stdout}");
    let stale = b.get("/users/2").await;
    assert!(
        stale
            .cache_status()
            .contains("detail=stale-while-revalidate"),
        "soft: served stale while one refresh runs: {}",
        stale.cache_status()
    );
}

// === warm ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_stores_a_file_of_urls_and_a_second_run_finds_them_fresh() {
    let origin = Origin::start(tagged).await;
    let b = Binary::start(&origin, ROUTES).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("urls.txt");
    std::fs::write(
        &file,
        "# hot paths after a deploy\n/users/1\n\n/users/2?fields=a\n  /catalog  \n/health\n",
    )
    .unwrap();
    let args = [
        "warm",
        "--proxy",
        b.proxy.as_str(),
        "--file",
        file.to_str().unwrap(),
        "--concurrency",
        "2",
    ];
    let (code, stdout, err) = text(&cli(&args, &[]).await);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        stdout.contains("warmed 4 URLs")
            && stdout.contains("3 stored, 0 already fresh, 1 not cacheable, 0 failed"),
        "{stdout}"
    );
    assert_eq!(origin.total(), 4);

    let (code, stdout, err) = text(&cli(&args, &[]).await);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        stdout.contains("0 stored, 3 already fresh, 1 not cacheable, 0 failed"),
        "{stdout}"
    );
    assert_eq!(
        (
            origin.hits("/users/1"),
            origin.hits("/catalog"),
            origin.hits("/health")
        ),
        (1, 1, 2),
        "cached URLs were not fetched again; the pass-through route was"
    );
    assert_eq!(b.get("/users/2?fields=a").await.body, "/users/2 #0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_exits_1_when_a_url_fails() {
    let origin = Origin::start(|s| {
        if s.path == "/broken" {
            Reply::ok("down").status(500)
        } else {
            Reply::ok("fine")
        }
    })
    .await;
    let b = Binary::start(&origin, ROUTES).await;
    let out = cli(
        &["warm", "--proxy", &b.proxy, "/fine", "/broken", "users/3"],
        &[],
    )
    .await;
    let (code, _, err) = text(&out);
    assert_eq!(
        code,
        Some(2),
        "an invalid URL is a usage error before any request: {err}"
    );
    assert_eq!(origin.total(), 0);

    let out = cli(&["warm", "--proxy", &b.proxy, "/fine", "/broken"], &[]).await;
    let (code, stdout, err) = text(&out);
    assert_eq!(code, Some(1), "{stdout}{err}");
    assert!(
        stdout.contains("1 stored, 0 already fresh, 0 not cacheable, 1 failed"),
        "{stdout}"
    );
    assert!(err.contains("failed: /broken (500"), "{err}");
    assert!(!err.contains("/fine"), "only failures are listed: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_sends_keyed_headers_to_the_origin() {
    let origin = Origin::start(tagged).await;
    let b = Binary::start(&origin, ROUTES).await;
    let out = cli(
        &[
            "warm",
            "--proxy",
            &b.proxy,
            "-H",
            "X-Api-Version: 3",
            "--rate",
            "20",
            "/users/7",
        ],
        &[],
    )
    .await;
    let (code, stdout, err) = text(&out);
    assert_eq!(code, Some(0), "{err}");
    assert!(stdout.contains("1 stored"), "{stdout}");
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-api-version"], "3");

    // The entry is the keyed variant: the same header hits, another version misses.
    let same = b.get_with("/users/7", &[("x-api-version", "3")]).await;
    assert!(
        same.cache_status().contains("hit"),
        "{}",
        same.cache_status()
    );
    let other = b.get_with("/users/7", &[("x-api-version", "4")]).await;
    assert!(
        other.cache_status().contains("fwd=miss"),
        "{}",
        other.cache_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purge_then_warm_refreshes_each_entry_once() {
    let origin = Origin::start(tagged).await;
    let b = Binary::start(&origin, ROUTES).await;
    let warm = [
        "warm",
        "--proxy",
        b.proxy.as_str(),
        "/users/1",
        "/users/2",
        "/other",
    ];
    let (code, stdout, err) = text(&cli(&warm, &[]).await);
    assert_eq!(code, Some(0), "{err}");
    assert!(stdout.contains("3 stored"), "{stdout}");

    let token = [("CACHEGATE_ADMIN_TOKEN", TOKEN)];
    let out = cli(
        &["purge", "--admin", &b.admin, "--tag", "users", "--soft"],
        &token,
    )
    .await;
    let (code, stdout, err) = text(&out);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(stdout, "purged 2 entries (soft): tags 2\n");

    // Stale copies answer at once; warm's requests start their one refresh each.
    let (code, stdout, err) = text(&cli(&warm, &[]).await);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        stdout.contains("2 stored, 1 already fresh, 0 not cacheable, 0 failed"),
        "{stdout}"
    );
    let refreshed = crate::support::fleet::eventually(Duration::from_secs(5), async || {
        origin.hits("/users/1") == 2 && origin.hits("/users/2") == 2
    })
    .await;
    assert!(refreshed, "one refresh per purged entry");
    assert_eq!(origin.hits("/other"), 1);
    let (_, stdout, _) = text(&cli(&warm, &[]).await);
    assert!(stdout.contains("0 stored, 3 already fresh"), "{stdout}");
    assert_eq!(origin.total(), 5, "no further origin requests");
    let out = cli(&["purge", "--admin", &b.admin, "--tag", "users"], &token).await;
    let (code, stdout, err) = text(&out);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        stdout, "purged 2 entries (hard): tags 2\n",
        "refreshed entries keep their tags"
    );
}
