//! Listeners (plain and TLS), connection limits, the one request stack (`serve_request`), and
//! the drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::FutureExt;
use http::{header, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::admin::Readiness;
use crate::app::AppState;
use crate::config::{Limits, ListenerTls};
use crate::conn::ConnectionInfo;
use crate::error::ProxyError;
use crate::workers::Workers;

/// The proxy's request stack, outermost first (a request passes top to bottom, its
/// response bottom to top):
///
/// ```text
/// contain           a panic below becomes a 500, not a dropped connection;
///                   limits.request_timeout over the whole request, origin included: 504
///   enforce_limits  431 for oversized headers, 413 for oversized bodies
///     proxy::handle   route -> key -> store -> single flight -> origin -> respond
/// ```
///
/// Plain calls, not a `Router` with layers: the router cloned its boxed fallback service
/// for every request and each middleware boxed its future, ~8k instructions a request
/// (BENCHMARKS.md section 14). Connection-level limits (header read and idle timeouts,
/// max connections, HTTP/2 streams) are not here: `serve` applies them per connection.
///
/// Not an `async fn`, nor is `contain`: an `async fn` keeps its arguments beside the
/// future it builds from them, and here that doubled the future every request moves
/// (9.2 KB, where the request itself needs 4.3 KB; BENCHMARKS.md section 14).
pub fn serve_request(
    state: Arc<AppState>,
    limits: &Limits,
    req: Request,
) -> impl Future<Output = Response> + Send + '_ {
    contain(limits.request_timeout, async move {
        match enforce_limits(limits, req) {
            Ok(req) => crate::proxy::handle(State(state), req).await,
            Err(refused) => refused,
        }
    })
}

/// The proxy as an axum `Router` (benches and embedders): `serve_request` for every path.
pub fn router(state: Arc<AppState>) -> Router {
    let limits = Arc::new(state.runtime().config.limits.clone());
    Router::new().fallback(move |req: Request| {
        let (state, limits) = (state.clone(), limits.clone());
        async move { serve_request(state, &limits, req).await }
    })
}

/// `request` bounded by `timeout` (504), with a panic inside it answered as a 500.
fn contain(
    timeout: Duration,
    request: impl Future<Output = Response>,
) -> impl Future<Output = Response> {
    std::panic::AssertUnwindSafe(tokio::time::timeout(timeout, request))
        .catch_unwind()
        .map(answer)
}

fn answer(
    outcome: Result<Result<Response, tokio::time::error::Elapsed>, Box<dyn std::any::Any + Send>>,
) -> Response {
    match outcome {
        Ok(Ok(resp)) => resp,
        Ok(Err(_elapsed)) => StatusCode::GATEWAY_TIMEOUT.into_response(),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            tracing::error!(panic = what, "request handler panicked");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "Service panicked",
            )
                .into_response()
        }
    }
}

/// 431 for oversized headers, 413 for a declared oversized body; otherwise the request
/// with its body bounded to `max_request_body`.
#[allow(clippy::result_large_err)]
fn enforce_limits(limits: &Limits, req: Request) -> Result<Request, Response> {
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if header_bytes > limits.max_header_bytes {
        return Err((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header fields too large\n",
        )
            .into_response());
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_request_body as u64) {
        return Err(ProxyError::PayloadTooLarge.into_response());
    }
    let (parts, body) = req.into_parts();
    let body = Body::new(http_body_util::Limited::new(body, limits.max_request_body));
    Ok(Request::from_parts(parts, body))
}

// === impl ServerTls ===

/// The TLS listener's certificate, swappable while connections are being accepted: a
/// reload calls `reload` and new handshakes use the new certificate.
#[derive(Clone)]
pub struct ServerTls(Arc<ArcSwap<rustls::ServerConfig>>);

impl ServerTls {
    /// Reads the certificate and key files.
    pub fn load(tls: &ListenerTls) -> Result<ServerTls, String> {
        let config = crate::tls::server_config(&tls.cert_file, &tls.key_file)?;
        Ok(ServerTls(Arc::new(ArcSwap::from_pointee(config))))
    }

    /// Re-reads the files; on error the certificate in use stays.
    pub fn reload(&self, tls: &ListenerTls) -> Result<(), String> {
        let config = crate::tls::server_config(&tls.cert_file, &tls.key_file)?;
        self.0.store(Arc::new(config));
        Ok(())
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.0.load_full())
    }
}

// === impl Listeners ===

/// Bound sockets, so a caller (or a test) can bind port 0 and learn the address.
pub struct Listeners {
    pub plain: TcpListener,
    /// The `tls:` listener with its certificate.
    pub tls: Option<(TcpListener, ServerTls)>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds what the config names besides `plain`: the TLS and admin listeners.
    pub async fn bind_rest(state: &AppState, plain: TcpListener) -> anyhow::Result<Listeners> {
        let runtime = state.runtime();
        let config = &runtime.config;
        let tls = match &config.tls {
            Some(t) => {
                let certs = ServerTls::load(t).map_err(|e| anyhow::anyhow!("tls: {e}"))?;
                // Certificates are re-read on every reload; a bad file keeps the old one.
                let reloadable = certs.clone();
                state.on_reload(Box::new(move |config| match &config.tls {
                    Some(t) => reloadable.reload(t).map_err(|e| {
                        format!("tls certificate not reloaded, the old one stays: {e}")
                    }),
                    None => Err("tls listener removed: needs a restart".to_string()),
                }));
                Some((TcpListener::bind(t.listen).await?, certs))
            }
            None => None,
        };
        let admin = match config.admin.listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        Ok(Listeners { plain, tls, admin })
    }
}

/// Serves the proxy (and the TLS and admin listeners the config names) until
/// `shutdown` resolves, then drains (see `serve`).
pub async fn run(
    state: Arc<AppState>,
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listeners = Listeners::bind_rest(&state, listener).await?;
    serve(state, listeners, metrics, shutdown).await
}

/// Serves until `shutdown` resolves, then drains: `/readyz` answers 503 at once, the
/// proxy keeps serving for `shutdown.grace` (load balancers stop sending), then stops
/// accepting and lets in-flight requests and background refreshes finish within
/// `shutdown.timeout`. The admin listener stays up until the end.
pub async fn serve(
    state: Arc<AppState>,
    listeners: Listeners,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    let (admin_stop, admin_rx) = watch::channel(false);
    let admin = match listeners.admin {
        Some(listener) => {
            tracing::info!(addr = %listener.local_addr()?, "admin listening");
            let router = crate::admin::router_with(state.clone(), metrics, readiness.clone());
            let mut rx = admin_rx;
            Some(tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|stop| *stop).await;
                    })
                    .await
            }))
        }
        None => None,
    };

    let ctx = Arc::new(Ctx::new(&state));
    // Dropped at the end of `serve`, after the drain: what still runs on them then goes.
    let workers = Workers::start()?;
    let graceful = GracefulShutdown::new();
    let (stop, stop_rx) = watch::channel(false);
    tracing::info!(addr = %listeners.plain.local_addr()?, store = state.cache.store.name(), "cachegate listening");
    let plain = accept_loop(
        listeners.plain,
        None,
        &ctx,
        &workers,
        &graceful,
        stop_rx.clone(),
    );
    let tls = async {
        if let Some((listener, certs)) = listeners.tls {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "cachegate listening (TLS)");
            }
            accept_loop(listener, Some(certs), &ctx, &workers, &graceful, stop_rx).await;
        }
    };
    let grace = state.runtime().config.shutdown.grace;
    let drain = async {
        shutdown.await;
        readiness.drain();
        tracing::info!(
            grace = ?grace,
            "shutting down: /readyz answers 503; still serving for the grace period"
        );
        tokio::time::sleep(grace).await;
        let _ = stop.send(true);
    };
    tokio::join!(plain, tls, drain);

    let timeout = state.runtime().config.shutdown.timeout;
    tracing::info!(
        connections = graceful.count(),
        refreshes = state.cache.locks.in_flight(),
        "stopped accepting; finishing in-flight requests"
    );
    let finish = async {
        graceful.shutdown().await;
        // Detached fetches and background refreshes hold a key in the lock table until
        // they have stored their entry.
        while state.cache.locks.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(timeout, finish).await.is_err() {
        tracing::warn!(timeout = ?timeout, refreshes = state.cache.locks.in_flight(), "shutdown.timeout passed; abandoning what is still running");
    }
    let _ = admin_stop.send(true);
    if let Some(admin) = admin {
        admin.await??;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

// === impl Ctx ===

/// What every connection of both listeners shares.
struct Ctx {
    state: Arc<AppState>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// One permit per open connection (`limits.max_connections`), both listeners.
    permits: Arc<Semaphore>,
    limits: Limits,
}

/// How long the accept loop waits for a free connection slot before answering what
/// queued up with 503.
const QUEUE_WAIT: Duration = Duration::from_millis(100);

impl Ctx {
    fn new(state: &Arc<AppState>) -> Ctx {
        let limits = state.runtime().config.limits.clone();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper's header timer also runs while a kept-alive HTTP/1.1 connection waits
        // for its next request; `watch_connection` covers HTTP/2 and idle connections.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_h2_streams);
        Ctx {
            state: state.clone(),
            builder: Arc::new(builder),
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
        }
    }
}

/// Accepts until `stop` turns true. Without a free connection slot new connections wait
/// in the kernel's accept queue; when none frees within `QUEUE_WAIT`, those queued are
/// answered 503 so clients learn to back off instead of hanging.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<ServerTls>,
    ctx: &Arc<Ctx>,
    workers: &Workers,
    graceful: &GracefulShutdown,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let permit = match ctx.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                p = tokio::time::timeout(QUEUE_WAIT, ctx.permits.clone().acquire_owned()) => {
                    p.ok().and_then(Result::ok)
                }
            },
        };
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match permit {
            Some(permit) => spawn_connection(stream, peer, &tls, ctx, workers, graceful, permit),
            None => {
                tokio::spawn(reject(stream, tls.clone(), ctx.clone()));
                // Shed what else is queued now, without waiting again for each.
                while let Some(Ok((stream, peer))) = listener.accept().now_or_never() {
                    match ctx.permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            spawn_connection(stream, peer, &tls, ctx, workers, graceful, permit)
                        }
                        Err(_) => {
                            tokio::spawn(reject(stream, tls.clone(), ctx.clone()));
                        }
                    }
                }
            }
        }
    }
}

/// Runs its closure when dropped (a connection's end, however it ends).
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Hands the connection to a worker (`workers`), where it is served to its end.
fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &Option<ServerTls>,
    ctx: &Arc<Ctx>,
    workers: &Workers,
    graceful: &GracefulShutdown,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    // Off this runtime's reactor, onto the worker's (inside the task, on its thread).
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(error) => {
            tracing::debug!(%error, %peer, "accepted connection lost before it was served");
            return;
        }
    };
    let info = ConnectionInfo::new(peer, tls.is_some());
    let (ctx, watcher, acceptor) = (
        ctx.clone(),
        graceful.watcher(),
        tls.as_ref().map(ServerTls::acceptor),
    );
    let listener = if acceptor.is_some() { "tls" } else { "plain" };
    workers.spawn(move |placed| async move {
        let _placed = placed;
        let _permit = permit;
        let Ok(stream) = TcpStream::from_std(stream) else {
            return;
        };
        crate::telemetry::record_connection(listener, 1.0);
        let _open = OnDrop(move || crate::telemetry::record_connection(listener, -1.0));
        match acceptor {
            None => serve_connection(stream, info, &ctx, watcher).await,
            Some(acceptor) => {
                // The handshake counts against the header timeout: a client that never
                // finishes it is a slowloris too.
                let handshake = acceptor.accept(stream);
                match tokio::time::timeout(ctx.limits.header_read_timeout, handshake).await {
                    Ok(Ok(tls_stream)) => serve_connection(tls_stream, info, &ctx, watcher).await,
                    Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
    });
}

async fn serve_connection<S>(stream: S, info: ConnectionInfo, ctx: &Ctx, watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let shared = Arc::new((ctx.state.clone(), ctx.limits.clone()));
    let peer = info.peer;
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |mut req: http::Request<Incoming>| {
            // The peer, the scheme and the peer's text, in one extension.
            req.extensions_mut().insert(info.clone());
            let busy = activity.begin();
            let shared = shared.clone();
            async move {
                let (state, limits) = &*shared;
                let resp = serve_request(state.clone(), limits, req.map(Body::new)).await;
                drop(busy);
                Ok::<_, std::convert::Infallible>(resp)
            }
        }
    });
    let conn = watcher.watch(ctx.builder.serve_connection(io, service));
    tokio::select! {
        result = conn => {
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        }
        reason = activity.expired(&ctx.limits) => {
            tracing::debug!(%peer, reason, "closing connection");
        }
    }
}

/// Answers every request on a connection that found no free slot with 503, briefly.
async fn reject(stream: TcpStream, tls: Option<ServerTls>, ctx: Arc<Ctx>) {
    let service = hyper::service::service_fn(|_req: http::Request<Incoming>| async {
        let mut resp = (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections; try again\n",
        )
            .into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
        headers.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        Ok::<_, std::convert::Infallible>(resp)
    });
    let answer = async {
        match tls {
            None => {
                let _ = ctx
                    .builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
            Some(tls) => {
                if let Ok(stream) = tls.acceptor().accept(stream).await {
                    let _ = ctx
                        .builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), answer).await;
    tracing::debug!("connection refused with 503: limits.max_connections reached");
}

// === impl Activity ===

/// What a connection's watchdog sees: requests in progress, requests ever begun, and
/// a count of socket reads and writes (bumped on every I/O, read on a timer; cheaper
/// than reading the clock on every I/O).
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    begun: AtomicU64,
    io: AtomicU64,
}

/// Decrements `in_flight` when the response (headers) is ready or the request dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.io.fetch_add(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.begun.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Resolves when the connection should be closed: no request began within
    /// `header_read_timeout` of connecting (a silent or slow client; hyper's own timer
    /// covers later HTTP/1.1 requests), or nothing happened on it for `idle_timeout`.
    async fn expired(&self, limits: &Limits) -> &'static str {
        let started = tokio::time::Instant::now();
        let tick = (limits.idle_timeout.min(limits.header_read_timeout) / 4)
            .max(Duration::from_millis(10));
        let mut seen = self.io.load(Ordering::Relaxed);
        let mut quiet = Duration::ZERO;
        loop {
            tokio::time::sleep(tick).await;
            if self.begun.load(Ordering::Relaxed) == 0
                && started.elapsed() >= limits.header_read_timeout
            {
                return "no request headers within limits.header_read_timeout";
            }
            let now = self.io.load(Ordering::Relaxed);
            if now != seen || self.in_flight.load(Ordering::Relaxed) > 0 {
                seen = now;
                quiet = Duration::ZERO;
            } else {
                quiet += tick;
                if quiet >= limits.idle_timeout {
                    return "idle for limits.idle_timeout";
                }
            }
        }
    }
}

/// A socket that counts its reads and writes into `Activity`.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    fn touch(&self) {
        self.activity.io.fetch_add(1, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if poll.is_ready() {
            self.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if poll.is_ready() {
            self.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if poll.is_ready() {
            self.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(request_timeout: Duration) -> Limits {
        Limits {
            max_header_bytes: 64 << 10,
            max_request_body: 1 << 20,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout,
            max_connections: 10,
            max_h2_streams: 10,
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_and_a_slow_one_a_504() {
        let timeout = Duration::from_millis(50);
        let panicked = contain(timeout, async {
            if true {
                panic!("handler bug");
            }
            StatusCode::OK.into_response()
        })
        .await;
        assert_eq!(panicked.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let slow = contain(timeout, async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK.into_response()
        })
        .await;
        assert_eq!(slow.status(), StatusCode::GATEWAY_TIMEOUT);
        let fine = contain(timeout, async { StatusCode::OK.into_response() }).await;
        assert_eq!(fine.status(), StatusCode::OK);
    }

    #[test]
    fn oversized_headers_are_431_and_a_declared_oversized_body_413() {
        let limits = Limits {
            max_header_bytes: 64,
            max_request_body: 10,
            ..limits(Duration::from_secs(1))
        };
        let big = http::Request::get("/x")
            .header("x-pad", "p".repeat(100))
            .body(Body::empty())
            .unwrap();
        let refused = enforce_limits(&limits, big).unwrap_err();
        assert_eq!(
            refused.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let body = http::Request::post("/x")
            .header("content-length", "11")
            .body(Body::empty())
            .unwrap();
        let refused = enforce_limits(&limits, body).unwrap_err();
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let ok = http::Request::get("/x").body(Body::empty()).unwrap();
        assert!(enforce_limits(&limits, ok).is_ok());
    }
}
