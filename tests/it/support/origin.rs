//! An origin written for tests: a handler per test, a request counter per path, and the
//! most requests it ever had in flight at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use http::{HeaderMap, Method, StatusCode};
use tokio::task::JoinHandle;

/// What the origin answers; built by the test's handler.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Self {
        Reply {
            status: 200,
            headers: vec![],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

/// What the handler sees of a request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// How many requests for this path the origin had seen before this one.
    pub n: usize,
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

#[derive(Default)]
struct Counters {
    per_path: Mutex<HashMap<String, usize>>,
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

pub struct Origin {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Origin {
    /// Starts an origin on a free loopback port answering with `handler`.
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, Arc::new(handler))
    }

    /// Starts on a given address (to bring an origin "back" where it was).
    pub async fn start_at(
        addr: SocketAddr,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Origin {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, Arc::new(handler))
    }

    fn serve(listener: tokio::net::TcpListener, handler: Handler) -> Origin {
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let app = Router::new()
            .fallback(handle)
            .with_state((handler, counters.clone()));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Origin {
            addr,
            counters,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests that reached the origin for `path` (any method).
    pub fn hits(&self, path: &str) -> usize {
        self.counters
            .per_path
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.counters.per_path.lock().unwrap().values().sum()
    }

    /// The most requests the origin had in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.counters.max_in_flight.load(Ordering::SeqCst)
    }

    /// Every request the origin received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.counters.seen.lock().unwrap().clone()
    }

    /// Stops the origin: the port refuses connections afterwards.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State((handler, counters)): State<(Handler, Arc<Counters>)>,
    req: Request,
) -> Response {
    let path = req.uri().path().to_string();
    let n = {
        let mut per_path = counters.per_path.lock().unwrap();
        let n = per_path.entry(path.clone()).or_default();
        *n += 1;
        *n - 1
    };
    let seen = Seen {
        method: req.method().clone(),
        path,
        query: req.uri().query().map(str::to_string),
        headers: req.headers().clone(),
        n,
    };
    counters.seen.lock().unwrap().push(seen.clone());
    let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let reply = handler(&seen);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    counters.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut resp = Response::new(Body::from(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    for (k, v) in reply.headers {
        resp.headers_mut()
            .append(http::HeaderName::try_from(k).unwrap(), v.parse().unwrap());
    }
    resp
}
