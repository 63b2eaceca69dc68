//! cachegate under test: the real router served on a free loopback port, built from a
//! `routes.yaml` string, and a client that returns what a user would look at.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use cachegate::app::AppState;
use cachegate::config::{Config, Overrides};
use tokio::sync::oneshot;

pub struct Proxy {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Cache-Status` value, or "" when missing.
    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }
}

/// A config with one upstream `origin` at `origin_url`, listening on a free port.
/// `routes` is the YAML of the `routes:` list (and anything after it).
pub fn config_yaml(origin_url: &str, defaults: &str, routes: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nupstreams:\n  origin: {{ url: \"{origin_url}\", connect_timeout: 500ms, timeout: 3s }}\n\
         defaults: {{ {defaults} }}\nroutes:\n{routes}"
    )
}

impl Proxy {
    /// Starts cachegate in this process with the given `routes.yaml` text.
    pub async fn start(yaml: &str) -> Proxy {
        let config = Config::parse(yaml, Path::new("test-routes.yaml"), &Overrides::default())
            .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let state = AppState::new(config).await.expect("state");
        Self::start_with_state(state).await
    }

    pub async fn start_with_state(state: Arc<AppState>) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                let shutdown = async move {
                    let _ = rx.await;
                };
                cachegate::server::run(state, listener, None, shutdown)
                    .await
                    .unwrap();
            }
        });
        Proxy {
            addr,
            state,
            client: client(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A one-route cache for `/{*rest}` in front of `origin`, with `defaults`.
    pub async fn simple(origin_url: &str, defaults: &str) -> Proxy {
        Proxy::start(&config_yaml(
            origin_url,
            defaults,
            "  - path: /{*rest}\n    upstream: origin\n",
        ))
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `n` concurrent GETs for `path` released together (see `burst`).
    pub async fn burst(
        &self,
        n: usize,
        path: &str,
        headers: &'static [(&'static str, &'static str)],
    ) -> Vec<Resp> {
        burst(std::slice::from_ref(self), n, path, headers).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", path, headers).await
    }

    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        send(&self.client, method, &self.url(path), headers).await
    }

    /// Stops accepting and waits for in-flight requests.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Sends `n` GETs for `path`, released together by a barrier and spread round-robin over
/// `targets`: the stampede every coalescing test needs. Each client connects first (a
/// `PURGE` without a token: answered 4xx before routing, touching neither origin nor
/// store), so the burst measures the cache, not 200 simultaneous TCP handshakes on a
/// runtime the test shares with the proxy (those stalled some requests past a whole
/// origin fetch in-process; the real binary shows no such stall).
pub async fn burst(
    targets: &[Proxy],
    n: usize,
    path: &str,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<Resp> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let client = client();
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = targets[i % targets.len()].url(path);
        let (barrier, client) = (barrier.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            send(&client, "PURGE", &url, &[]).await;
            barrier.wait().await;
            send(&client, "GET", &url, headers).await
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The `Host` test requests carry unless they set one.
pub const TEST_HOST: &str = "cachegate.test";

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap()
}

pub async fn send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut req = client.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    // Every replica of a fleet is reached under one name, as behind a load balancer:
    // the host is part of every key, and the test proxies listen on different ports.
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", TEST_HOST);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    Resp {
        status,
        headers,
        body,
    }
}
