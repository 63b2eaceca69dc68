//! The upstream side: one pooled HTTP client per upstream, request and response header
//! hygiene, and bounded body reads.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::{
    FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream,
};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::canonical::Forwarding;
use crate::config::{Http2, Upstream};
use crate::error::ProxyError;

/// Clients for every upstream, indexed like `Config::upstreams`: one pool per connection
/// worker (`crate::workers`) and one for everything off the workers, so a request uses
/// origin connections served by its own thread.
pub struct Origins {
    upstreams: Vec<(Upstream, Vec<Client<Dial, Body>>)>,
}

impl Origins {
    pub fn new(upstreams: &[Upstream]) -> Self {
        let pools = crate::workers::count() + 1;
        let upstreams = upstreams
            .iter()
            .map(|u| (u.clone(), (0..pools).map(|_| client(u)).collect()))
            .collect();
        Origins { upstreams }
    }

    pub fn upstream(&self, index: usize) -> &Upstream {
        &self.upstreams[index].0
    }

    /// Sends `req` (already addressed by `outbound`) and waits for response headers
    /// within the upstream's timeout.
    pub async fn send(
        &self,
        index: usize,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (upstream, clients) = &self.upstreams[index];
        let client = &clients[crate::workers::current().map_or(0, |w| w + 1) % clients.len()];
        if let Some(host) = &upstream.host {
            with_host(&mut req, host);
        }
        // The reason names the upstream (for the log); the client only sees "origin
        // unreachable" / "origin failed", never addresses or its own request.
        let name = &upstream.name;
        let started = std::time::Instant::now();
        let (result, reason) =
            match tokio::time::timeout(upstream.timeout, client.request(req)).await {
                Err(_) => (Err(ProxyError::UpstreamTimeout), Some("timeout")),
                Ok(Ok(resp)) => {
                    let reason = resp.status().is_server_error().then_some("5xx");
                    (Ok(resp), reason)
                }
                Ok(Err(e)) if e.is_connect() => (
                    Err(ProxyError::UpstreamConnect(format!(
                        "upstream {name}: {}",
                        error_chain(&e)
                    ))),
                    Some("connect"),
                ),
                Ok(Err(e)) => (
                    Err(ProxyError::Upstream(format!(
                        "upstream {name}: {}",
                        error_chain(&e)
                    ))),
                    Some("protocol"),
                ),
            };
        crate::telemetry::record_origin_exchange(name, started.elapsed(), reason);
        result
    }
}

/// `upstreams.NAME.host`: the request names the override (HTTP/1.1 `Host` is derived
/// from the URI by the client, HTTP/2 `:authority` is the URI's authority); `Dial`
/// still connects to the URL's address, and TLS still checks the URL's host (or
/// `tls.server_name`).
fn with_host(req: &mut Request<Body>, host: &HeaderValue) {
    let Ok(authority) = Authority::try_from(host.as_bytes()) else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.authority = Some(authority);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    req.headers_mut().remove(header::HOST);
}

/// One pooled client per upstream: TLS for `https://`, HTTP/2 as `http2` says, idle
/// connections (and HTTP/2 connections, multiplexed) reused.
fn client(u: &Upstream) -> Client<Dial, Body> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(u.connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let transport = match &u.tls {
        None => Transport::Plain(http),
        Some(tls) => {
            let builder = HttpsConnectorBuilder::new()
                .with_tls_config((*tls.client).clone())
                .https_only();
            let builder = match tls.server_name.clone() {
                Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name)),
                None => builder,
            };
            Transport::Tls(match u.http2 {
                Http2::Never => builder.enable_http1().wrap_connector(http),
                Http2::Always => builder.enable_http2().wrap_connector(http),
                Http2::Auto => builder.enable_all_versions().wrap_connector(http),
            })
        }
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        // Prior knowledge over http://; over https:// ALPN only offers h2 anyway.
        .http2_only(u.http2 == Http2::Always)
        .build(Dial {
            transport,
            scheme: u.scheme.clone(),
            authority: u.authority.clone(),
        })
}

/// Connects to the upstream's own address whatever authority the request names (the
/// `host:` override), over TLS for `https://` upstreams.
#[derive(Clone)]
pub struct Dial {
    transport: Transport,
    scheme: Scheme,
    authority: Authority,
}

#[derive(Clone)]
enum Transport {
    Plain(HttpConnector),
    Tls(HttpsConnector<HttpConnector>),
}

type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for Dial {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.transport {
            Transport::Plain(c) => c.poll_ready(cx).map_err(Into::into),
            Transport::Tls(c) => c.poll_ready(cx),
        }
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let target = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .unwrap_or(uri);
        match &mut self.transport {
            Transport::Plain(c) => {
                let connecting = c.call(target);
                Box::pin(async move { Ok(MaybeHttpsStream::Http(connecting.await?)) })
            }
            Transport::Tls(c) => c.call(target),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Builds the upstream request: the upstream's address and base path, the request's
/// (canonical) path and query, end-to-end headers only, and cachegate's own forwarding
/// headers (any a client sent were removed by `canonical`).
pub fn outbound(
    upstream: &Upstream,
    method: Method,
    path_and_query: &str,
    headers: HeaderMap,
    fwd: &Forwarding,
    body: Body,
) -> Request<Body> {
    let target = format!("{}{}", upstream.base_path, path_and_query);
    let uri = Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(target)
        .build()
        .unwrap_or_else(|_| Uri::from_static("/"));

    let mut out = headers;
    strip_hop_by_hop(&mut out);
    out.remove(header::HOST);
    if let Some(v) = fwd
        .for_chain
        .as_deref()
        .and_then(|f| HeaderValue::try_from(f).ok())
    {
        out.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    out.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(fwd.proto),
    );
    match fwd
        .host
        .as_deref()
        .and_then(|h| HeaderValue::try_from(h).ok())
    {
        Some(host) => {
            out.insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        None => {
            out.remove(&super::canonical::FORWARDED_VARIANT[0]);
        }
    }
    append_via(&mut out);
    crate::telemetry::inject_trace_context(&mut out);
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = out;
    req
}

pub fn append_via(headers: &mut HeaderMap) {
    const OURS: &str = "1.1 cachegate";
    let Some(prev) = headers.get(header::VIA) else {
        // The common case, on every hit: no allocation.
        headers.insert(header::VIA, HeaderValue::from_static(OURS));
        return;
    };
    if let Ok(v) = HeaderValue::from_str(&format!("{}, {OURS}", prev.to_str().unwrap_or(""))) {
        headers.insert(header::VIA, v);
    }
}

/// Removes hop-by-hop fields (RFC 9110 §7.6.1), including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Fields that describe one connection, never forwarded (RFC 9110 §7.6.1), as constants:
/// removing by `&str` parses each name again on every message.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A response body read up to a limit.
pub enum BodyRead {
    Complete(Bytes),
    /// Over the limit: what was read so far and the rest of the stream.
    TooLarge(Bytes, Incoming),
}

/// Reads `body` whole if it fits in `limit` bytes, within `timeout`.
/// A body cut short (fewer bytes than `Content-Length`, a reset) is an error.
pub async fn read_body(
    mut body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<BodyRead, ProxyError> {
    let read = async move {
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ProxyError::Upstream(format!("response body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                if buf.len() > limit {
                    return Ok(BodyRead::TooLarge(buf.freeze(), body));
                }
            }
        }
        Ok(BodyRead::Complete(buf.freeze()))
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ProxyError::UpstreamTimeout)?
}

/// A body that yields `prefix`, then the rest of `rest`.
pub fn chain_body(prefix: Bytes, rest: Incoming) -> Body {
    let first = futures_util::stream::once(async move { Ok::<_, hyper::Error>(prefix) });
    let rest = http_body_util::BodyDataStream::new(rest);
    Body::from_stream(futures_util::StreamExt::chain(first, rest))
}
