//! cachegate with all its listeners bound by the test on free loopback ports (plain,
//! TLS, admin), so tests know every address.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use cachegate::app::AppState;
use cachegate::config::{Config, Overrides};
use cachegate::server::{Listeners, ServerTls};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub struct Edge {
    pub plain: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Edge {
    /// Starts cachegate in this process with `yaml`; a `tls:` section gets a TLS
    /// listener on a free port (whatever its `listen` says).
    pub async fn start(yaml: &str) -> Edge {
        let config = Config::parse(yaml, Path::new("test-routes.yaml"), &Overrides::default())
            .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let state = AppState::new(config).await.expect("state");
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_addr = plain.local_addr().unwrap();
        let tls = match &state.runtime().config.tls {
            Some(t) => Some((
                TcpListener::bind("127.0.0.1:0").await.unwrap(),
                ServerTls::load(t).unwrap(),
            )),
            None => None,
        };
        let tls_addr = tls.as_ref().map(|(l, _)| l.local_addr().unwrap());
        let listeners = Listeners {
            plain,
            tls,
            admin: None,
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                let shutdown = async move {
                    let _ = rx.await;
                };
                cachegate::server::serve(state, listeners, None, shutdown)
                    .await
                    .unwrap();
            }
        });
        Edge {
            plain: plain_addr,
            tls: tls_addr,
            state,
            stop: Some(tx),
            task,
        }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.plain)
    }

    /// The TLS listener's URL, by a name its certificate carries.
    pub fn https(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{path}",
            self.tls.expect("a tls listener").port()
        )
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.task.abort();
    }
}
