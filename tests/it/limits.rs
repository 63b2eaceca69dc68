//! Connection limits: a slowloris is closed after `header_read_timeout`, an idle
//! keep-alive after `idle_timeout`, `max_connections` holds under a burst (the rest wait
//! or get 503), `request_timeout` answers 504; `check` shows them all.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::edge::Edge;
use crate::support::{Origin, Reply};

fn yaml(origin: &str, limits: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nlimits: {{ {limits} }}\n\
         upstreams:\n  origin: {{ url: \"{origin}\", timeout: 3s }}\n\
         defaults: {{ ttl: 60s }}\nroutes:\n  - path: /{{*rest}}\n    upstream: origin\n"
    )
}

/// Reads until the server closes the connection; what it sent. A bound, not a
/// measurement: a connection still open after 20s fails the test.
async fn read_until_closed(sock: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the server should have closed the connection");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_closed_after_header_read_timeout() {
    let origin = Origin::start(|_| Reply::ok("v")).await;
    let edge = Edge::start(&yaml(
        &origin.url(),
        "header_read_timeout: 300ms, idle_timeout: 60s",
    ))
    .await;

    // Half a request's headers, then nothing.
    let mut half = TcpStream::connect(edge.plain).await.unwrap();
    half.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let sent = read_until_closed(&mut half).await;
    assert!(!sent.contains("200 OK"), "{sent}");

    // Not even a first byte.
    let mut silent = TcpStream::connect(edge.plain).await.unwrap();
    read_until_closed(&mut silent).await;
    assert_eq!(origin.hits("/slow"), 0);

    // A client that sends its headers in time is served on the same listener.
    let r = reqwest::get(edge.http("/fast")).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_is_closed_after_idle_timeout() {
    let origin = Origin::start(|_| Reply::ok("kept")).await;
    let edge = Edge::start(&yaml(
        &origin.url(),
        "header_read_timeout: 30s, idle_timeout: 300ms",
    ))
    .await;
    let mut sock = TcpStream::connect(edge.plain).await.unwrap();
    sock.write_all(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The response arrives, the connection stays for keep-alive, then idles out.
    let sent = read_until_closed(&mut sock).await;
    assert!(sent.starts_with("HTTP/1.1 200 OK"), "{sent}");
    assert!(sent.ends_with("kept"), "{sent}");
    assert!(
        !sent.to_ascii_lowercase().contains("connection: close"),
        "{sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_connections_holds_under_a_burst() {
    let origin = Origin::start(|_| Reply::ok("v").delay(Duration::from_millis(300))).await;
    let edge = Edge::start(&yaml(&origin.url(), "max_connections: 4")).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(24));
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (url, barrier) = (edge.http(&format!("/p{i}")), barrier.clone());
        tasks.push(tokio::spawn(async move {
            // One connection per request, closed after it: the cap is on connections.
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            barrier.wait().await;
            match client.get(url).send().await {
                Ok(r) => r.status().as_u16(),
                Err(e) => panic!("every connection gets an answer: {e}"),
            }
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 4,
        "{statuses:?}"
    );
    assert!(
        origin.max_in_flight() <= 4,
        "origin saw {} at once",
        origin.max_in_flight()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_answers_504() {
    let origin = Origin::start(|_| Reply::ok("late").delay(Duration::from_secs(2))).await;
    let edge = Edge::start(&yaml(&origin.url(), "request_timeout: 300ms")).await;
    let r = reqwest::get(edge.http("/late")).await.unwrap();
    assert_eq!(r.status(), 504);
}

#[test]
fn check_shows_the_limits_and_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        "limits: { header_read_timeout: 2s, max_connections: 50 }\nshutdown: { grace: 1s }\n\
         upstreams:\n  api: { url: \"https://api.example.com\", timeout: 7s, http2: false, host: internal.example.com }\n\
         routes:\n  - path: /a\n    upstream: api\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cachegate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "header_read_timeout 2s",
        "idle_timeout 60s",
        "request_timeout 12s",
        "max_connections 50",
        "max_h2_streams 200",
        "shutdown: grace 1s, timeout 30s",
        "upstream api: https://api.example.com (http2 false, host internal.example.com)",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }
}

#[test]
fn edge_config_errors_name_the_field_and_what_was_expected() {
    let upstream = |fields: &str| {
        format!("upstreams:\n  api: {{ {fields} }}\nroutes:\n  - path: /a\n    upstream: api\n")
    };
    for (yaml, expected) in [
        (
            upstream("url: \"ftp://h\""),
            "upstreams.api.url: \"ftp://h\": expected an http:// or https:// URL",
        ),
        (
            upstream("url: \"https://h\", http2: maybe"),
            "upstreams.api.http2: \"maybe\" is not a choice (expected true, false or auto)",
        ),
        (
            upstream("url: \"http://h\", tls: { insecure_skip_verify: true }"),
            "upstreams.api.tls: applies to https:// upstreams only",
        ),
        (
            upstream("url: \"https://h\", tls: { client_cert: c.pem }"),
            "upstreams.api.tls.client_cert: needs client_key beside it",
        ),
        (
            upstream("url: \"https://h\", tls: { ca_file: missing-ca.pem }"),
            "upstreams.api.tls.ca_file: cannot read",
        ),
        (
            upstream("url: \"https://h\", host: \"a b\""),
            "upstreams.api.host: \"a b\" is not a host",
        ),
        (
            format!(
                "limits: {{ max_connections: 0 }}\n{}",
                upstream("url: \"http://h\"")
            ),
            "limits.max_connections: must be at least 1",
        ),
        (
            format!(
                "limits: {{ idle_timeout: 0 }}\n{}",
                upstream("url: \"http://h\"")
            ),
            "limits.idle_timeout: must be greater than 0",
        ),
        (
            format!(
                "shutdown: {{ grace: soon }}\n{}",
                upstream("url: \"http://h\"")
            ),
            "shutdown.grace: \"soon\" is not a duration",
        ),
    ] {
        let err = cachegate::config::Config::parse(
            &yaml,
            std::path::Path::new("routes.yaml"),
            &Default::default(),
        )
        .err()
        .unwrap_or_else(|| panic!("accepted: {yaml}"))
        .to_string();
        assert!(err.contains(expected), "{expected:?} in {err:?}");
    }
}
