//! An origin written for tests: a handler per test, a request counter per path, the
//! most requests it ever had in flight at once (in all and per path), and replies that
//! break the way real origins do (a reset or a close in the middle of the body, a body
//! that trickles).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// What the origin answers; built by the test's handler.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
    /// How the body is broken on the wire, if it is.
    pub fault: Option<BodyFault>,
    /// When the client is known to give up (its timeout): from then on the request no
    /// longer counts as in flight, although the origin may notice the closed connection
    /// only at its next write.
    pub client_gives_up: Option<Duration>,
}

/// A body that goes wrong after the headers: each announces the whole body in
/// `Content-Length`.
#[derive(Clone, Copy, Debug)]
pub enum BodyFault {
    /// Half the body, then a TCP reset (`SO_LINGER` 0 and close: an RST, no FIN).
    Reset,
    /// Half the body, then an orderly close (FIN): fewer bytes than announced.
    Truncate,
    /// The whole body, `chunk` bytes at a time, `every` apart.
    Trickle { chunk: usize, every: Duration },
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Self {
        Reply {
            status: 200,
            headers: vec![],
            body: body.into(),
            delay: Duration::ZERO,
            fault: None,
            client_gives_up: None,
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

    pub fn fault(mut self, fault: BodyFault) -> Self {
        self.fault = Some(fault);
        self
    }

    pub fn client_gives_up(mut self, after: Duration) -> Self {
        self.client_gives_up = Some(after);
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
    /// The request body, read in full before the handler answers (as an origin that
    /// reads what it is sent; answering first would race the client's upload).
    pub body: bytes::Bytes,
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

#[derive(Default)]
struct Counters {
    per_path: Mutex<HashMap<String, usize>>,
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    in_flight_per_path: Mutex<HashMap<String, usize>>,
    max_in_flight_per_path: AtomicUsize,
}

/// One request in flight, counted in all and for its path until it ends: when the
/// handler returns, or, for a broken body, when the origin ends the exchange; when the
/// client goes away first (hyper drops the handler or the body); or when the client is
/// known to have given up (`Reply::client_gives_up`).
struct Flight(Arc<FlightInner>);

struct FlightInner {
    counters: Arc<Counters>,
    path: String,
    ended: AtomicBool,
}

impl Flight {
    fn start(counters: &Arc<Counters>, path: &str) -> Flight {
        let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let on_path = {
            let mut per_path = counters.in_flight_per_path.lock().unwrap();
            let n = per_path.entry(path.to_string()).or_default();
            *n += 1;
            *n
        };
        counters
            .max_in_flight_per_path
            .fetch_max(on_path, Ordering::SeqCst);
        Flight(Arc::new(FlightInner {
            counters: counters.clone(),
            path: path.to_string(),
            ended: AtomicBool::new(false),
        }))
    }

    fn end_after(&self, d: Duration) {
        let inner = self.0.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            inner.end();
        });
    }
}

impl FlightInner {
    fn end(&self) {
        if self.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        self.counters.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(n) = self
            .counters
            .in_flight_per_path
            .lock()
            .unwrap()
            .get_mut(&self.path)
        {
            *n -= 1;
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Set on a connection whose socket must close with a reset; the socket wrapper sets
/// `SO_LINGER` 0 before it is dropped.
#[derive(Clone, Default)]
struct ResetOnClose(Arc<AtomicBool>);

/// The accepted socket, so a reply can choose to end its connection with an RST.
struct Socket {
    inner: TcpStream,
    reset: ResetOnClose,
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.reset.0.load(Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.reset.0.load(Ordering::SeqCst) {
            // No FIN before the reset.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
        // axum::serve's loop, with the socket wrapped so a reply can reset it. As with
        // axum::serve, stopping the loop (dropping `_stopped`) closes idle keep-alive
        // connections too: `stop` means the origin is gone.
        let task = tokio::spawn(async move {
            let (_stopped, stop) = tokio::sync::watch::channel(());
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let reset = ResetOnClose::default();
                let io = TokioIo::new(Socket {
                    inner: stream,
                    reset: reset.clone(),
                });
                let app = app.clone();
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let mut req = req.map(Body::new);
                        req.extensions_mut().insert(reset.clone());
                        app.clone().oneshot(req)
                    });
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(io, service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = stop.changed() => {}
                    }
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                });
            }
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

    /// The most requests for one path the origin had in flight at once (a broken body
    /// counts until the origin ends it, or the client goes away).
    pub fn max_in_flight_per_path(&self) -> usize {
        self.counters.max_in_flight_per_path.load(Ordering::SeqCst)
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
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let req = Request::from_parts(parts, Body::empty());
    let seen = Seen {
        method: req.method().clone(),
        path,
        query: req.uri().query().map(str::to_string),
        headers: req.headers().clone(),
        n,
        body,
    };
    counters.seen.lock().unwrap().push(seen.clone());
    let reset = req.extensions().get::<ResetOnClose>().cloned();
    // Dropped when the handler returns, or if the client goes away mid-delay (hyper
    // drops the handler then).
    let flight = Flight::start(&counters, &seen.path);
    let reply = handler(&seen);
    if let Some(after) = reply.client_gives_up {
        flight.end_after(after);
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut headers = reply.headers;
    let body = match reply.fault {
        None => {
            drop(flight);
            Body::from(reply.body)
        }
        Some(fault) => {
            let body = Bytes::from(reply.body);
            headers.push(("content-length".into(), body.len().to_string()));
            broken_body(body, fault, flight, reset.unwrap_or_default())
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    for (k, v) in headers {
        resp.headers_mut()
            .append(http::HeaderName::try_from(k).unwrap(), v.parse().unwrap());
    }
    resp
}

/// What a broken body does next.
enum Step {
    Data(Duration, Bytes),
    /// Ends the stream: with fewer bytes sent than announced, hyper closes the
    /// connection (FIN).
    End,
    /// Fails the stream after marking the socket for a reset: hyper drops the
    /// connection and the socket closes with an RST.
    Reset,
}

fn broken_body(body: Bytes, fault: BodyFault, flight: Flight, reset: ResetOnClose) -> Body {
    let half = body.slice(..body.len() / 2);
    let steps: VecDeque<Step> = match fault {
        BodyFault::Reset => [Step::Data(Duration::ZERO, half), Step::Reset].into(),
        BodyFault::Truncate => [Step::Data(Duration::ZERO, half), Step::End].into(),
        BodyFault::Trickle { chunk, every } => (0..body.len())
            .step_by(chunk.max(1))
            .map(|at| Step::Data(every, body.slice(at..(at + chunk).min(body.len()))))
            .chain([Step::End])
            .collect(),
    };
    let state = (steps, Some(flight), reset);
    let stream = futures_util::stream::unfold(state, |(mut steps, mut flight, reset)| async move {
        let step = steps.pop_front()?;
        if let Step::Data(wait, _) = &step {
            tokio::time::sleep(*wait).await;
        }
        // The origin ends the exchange here: it no longer counts as in flight once the
        // last bytes, the close or the reset are on their way.
        if !matches!(steps.front(), Some(Step::Data(..))) {
            flight.take();
        }
        match step {
            Step::Data(_, bytes) => Some((Ok(bytes), (steps, flight, reset))),
            Step::End => None,
            Step::Reset => {
                reset.0.store(true, Ordering::SeqCst);
                let error = io::Error::new(io::ErrorKind::ConnectionReset, "reset by the test");
                Some((Err(error), (steps, flight, reset)))
            }
        }
    });
    Body::from_stream(stream)
}
