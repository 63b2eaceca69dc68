//! The drain, through the real binary: on SIGTERM `/readyz` turns 503 at once, the proxy
//! keeps serving through `shutdown.grace`, finishes the request in flight and exits 0.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{free_port, proxy, Origin, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_cachegate");

struct Running {
    child: Child,
    port: u16,
    admin: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary in front of `origin` with an admin listener, waited on until it serves.
async fn start(origin: &Origin, shutdown: &str) -> Running {
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:{port}\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\nshutdown: {{ {shutdown} }}\n\
             upstreams:\n  origin: {{ url: \"{}\", timeout: 5s }}\n\
             defaults: {{ ttl: 60s }}\nroutes:\n  - path: /{{*rest}}\n    upstream: origin\n",
            origin.url()
        ),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let client = proxy::client();
    for _ in 0..200 {
        if client
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Running {
        child,
        port,
        admin,
        log,
        _dir: dir,
    }
}

fn kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

async fn readyz(client: &reqwest::Client, admin: u16) -> Option<u16> {
    let r = client
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readyz_503_serves_through_the_grace_finishes_in_flight_and_exits_0() {
    let origin = Origin::start(|s| {
        if s.path == "/slow" {
            Reply::ok("finished").delay(Duration::from_millis(1500))
        } else {
            Reply::ok("during grace")
        }
    })
    .await;
    let mut run = start(&origin, "grace: 1s, timeout: 10s").await;
    let client = proxy::client();
    assert_eq!(readyz(&client, run.admin).await, Some(200));

    let in_flight = tokio::spawn({
        let (client, url) = (
            client.clone(),
            format!("http://127.0.0.1:{}/slow", run.port),
        );
        async move { proxy::send(&client, "GET", &url, &[]).await }
    });
    // The request has reached the origin before the signal.
    for _ in 0..200 {
        if origin.hits("/slow") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(origin.hits("/slow"), 1);
    kill(run.child.id(), "-TERM");

    let mut saw_503 = false;
    for _ in 0..200 {
        if readyz(&client, run.admin).await == Some(503) {
            saw_503 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_503, "readyz turns 503 after SIGTERM");
    assert!(
        !in_flight.is_finished(),
        "readyz was 503 while the request was still in flight"
    );

    // Still serving new requests while load balancers take the replica out.
    let fresh = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = proxy::send(
        &fresh,
        "GET",
        &format!("http://127.0.0.1:{}/new", run.port),
        &[],
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "during grace"));

    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "finished"));
    let status = run.child.wait().unwrap();
    assert!(status.success(), "exit 0 after draining: {status:?}");
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert!(log.contains("/readyz answers 503"), "{log}");
}
