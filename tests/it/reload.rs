//! Hot reload: a valid config is swapped in atomically (new routes and TTLs for new
//! entries; stored entries stay hits), an invalid one is rejected and the old config
//! keeps serving, and requests under load never fail across reloads.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cachegate::app::AppState;
use cachegate::config::{Config, Overrides};
use cachegate::reload::{self, Outcome};

use crate::support::fleet::{eventually, TOKEN};
use crate::support::{proxy, Origin, Proxy, Reply};

fn yaml(origin: &Origin, ttl: &str, extra_route: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ token: {TOKEN} }}\nupstreams:\n  origin: {{ url: \"{}\", timeout: 3s }}\ndefaults: {{ ttl: {ttl}, jitter: 0 }}\nroutes:\n{extra_route}  - path: /{{*rest}}\n    upstream: origin\n",
        origin.url()
    )
}

async fn start(path: &Path) -> Proxy {
    let config = Config::load(path, &Overrides::default()).unwrap();
    let state = AppState::new(config).await.unwrap();
    state.set_config_path(path.to_path_buf());
    Proxy::start_with_state(state).await
}

fn ttl_of(r: &proxy::Resp) -> i64 {
    r.cache_status()
        .split("ttl=")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {}", r.cache_status()))
}

#[tokio::test]
async fn a_valid_reload_applies_to_new_entries_and_keeps_the_stored_ones() {
    let origin = Origin::start(|s| Reply::ok(format!("{} v{}", s.path, s.n))).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, yaml(&origin, "60s", "")).unwrap();
    let p = start(&path).await;
    assert!(ttl_of(&p.get("/a").await) > 50);

    let bypass = "  - path: /live/{id}\n    upstream: origin\n    cache: false\n";
    std::fs::write(&path, yaml(&origin, "5s", bypass)).unwrap();
    assert!(matches!(
        reload::reload(&p.state, &path, "test"),
        Outcome::Applied(_)
    ));
    let b = p.get("/b").await;
    assert!(ttl_of(&b) <= 5, "the new TTL: {}", b.cache_status());
    let a = p.get("/a").await;
    assert!(
        a.cache_status().starts_with("cachegate; hit"),
        "{}",
        a.cache_status()
    );
    assert!(ttl_of(&a) > 50, "a stored entry keeps its TTL");
    assert!(p.get("/live/1").await.cache_status().contains("fwd=bypass"));
    assert_eq!(origin.hits("/a"), 1, "the reload emptied nothing");
}

#[tokio::test]
async fn an_invalid_reload_is_rejected_and_the_old_config_serves() {
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, yaml(&origin, "60s", "")).unwrap();
    let p = start(&path).await;
    p.get("/x").await;

    std::fs::write(&path, yaml(&origin, "soon", "")).unwrap();
    match reload::reload(&p.state, &path, "test") {
        Outcome::Rejected(e) => {
            let text = e.to_string();
            assert!(text.contains("defaults.ttl"), "{text}");
            assert!(text.starts_with(&format!("{}:", path.display())), "{text}");
        }
        other => panic!("accepted an invalid config: {other:?}"),
    }
    let r = p.get("/x").await;
    assert!(r.cache_status().starts_with("cachegate; hit"));
    assert!(ttl_of(&p.get("/y").await) > 50, "the old TTL still applies");
}

#[tokio::test]
async fn admin_reload_answers_what_happened() {
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let (admin_line, admin_url) = crate::support::fleet::admin_yaml();
    let with_admin = |ttl: &str| {
        yaml(&origin, ttl, "").replace(&format!("admin: {{ token: {TOKEN} }}\n"), &admin_line)
    };
    std::fs::write(&path, with_admin("60s")).unwrap();
    let _p = start(&path).await;
    let listening = eventually(Duration::from_secs(5), async || {
        tokio::net::TcpStream::connect(admin_url.trim_start_matches("http://"))
            .await
            .is_ok()
    })
    .await;
    assert!(listening, "the admin listener is up");
    let post = |token: &'static str| {
        let url = format!("{admin_url}/reload");
        async move {
            let r = proxy::client()
                .post(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(post("wrong").await.0, 401);
    assert_eq!(post(TOKEN).await, (200, "reloaded\n".to_string()));
    std::fs::write(&path, with_admin("soon")).unwrap();
    let (status, body) = post(TOKEN).await;
    assert_eq!(status, 422);
    assert!(
        body.contains("defaults.ttl") && body.contains("running config stays"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_fail_no_request() {
    let origin = Origin::start(|s| Reply::ok(format!("v{}", s.n))).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, yaml(&origin, "60s", "")).unwrap();
    let p = Arc::new(start(&path).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..8 {
        let (p, stop) = (p.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let (mut sent, mut failed) = (0usize, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 5_000 {
                // Hot keys and a long tail of misses.
                let path = if sent % 4 == 0 {
                    format!("/cold/{w}/{sent}")
                } else {
                    format!("/hot/{}", sent % 8)
                };
                if p.get(&path).await.status != 200 {
                    failed += 1;
                }
                sent += 1;
            }
            (sent, failed)
        }));
    }
    for i in 0..10 {
        let ttl = if i % 2 == 0 { "30s" } else { "60s" };
        std::fs::write(&path, yaml(&origin, ttl, "")).unwrap();
        assert!(matches!(
            reload::reload(&p.state, &path, "test"),
            Outcome::Applied(_)
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut sent, mut failed) = (0, 0);
    for t in load {
        let (s, f) = t.await.unwrap();
        sent += s;
        failed += f;
    }
    assert!(sent > 100, "the load ran: {sent}");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across 10 reloads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_a_changed_file_reload_the_real_binary() {
    let origin = Origin::start(|s| Reply::ok(format!("{} v{}", s.path, s.n))).await;
    let port = crate::support::free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let write = |extra: &str| {
        std::fs::write(
            &path,
            yaml(&origin, "60s", extra).replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
        )
        .unwrap()
    };
    write("");
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cachegate"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let client = proxy::client();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let up = eventually(Duration::from_secs(10), async || {
        client.get(url("/probe")).send().await.is_ok()
    })
    .await;
    assert!(up, "the binary started");

    // The file changes: picked up by the watcher.
    write("  - path: /off/{id}\n    upstream: origin\n    cache: false\n");
    let watched = eventually(Duration::from_secs(10), async || {
        proxy::send(&client, "GET", &url("/off/1"), &[])
            .await
            .cache_status()
            .contains("fwd=bypass")
    })
    .await;
    assert!(watched, "the changed file was reloaded");

    // SIGHUP: reloads (and does not end the process).
    let ok = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let logged = eventually(Duration::from_secs(5), async || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("sighup"))
    })
    .await;
    assert!(
        logged,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP did not end the process"
    );
    assert_eq!(
        proxy::send(&client, "GET", &url("/still"), &[])
            .await
            .status,
        200
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
