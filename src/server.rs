//! Listeners, the one place layers are stacked, and graceful shutdown.
//!
//! The onion, outermost first (a request passes top to bottom):
//!
//! ```text
//! limits (431 for oversized headers, 413 for oversized bodies)
//!   -> proxy::handle (route -> key -> store -> single flight -> origin -> respond)
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{header, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::app::{app, AppState};
use crate::config::Limits;
use crate::error::ProxyError;

/// The proxy router with its layers.
pub fn router(state: Arc<AppState>) -> Router {
    let limits = state.runtime().config.limits.clone();
    app(state).layer(middleware::from_fn_with_state(limits, enforce_limits))
}

async fn enforce_limits(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if header_bytes > limits.max_header_bytes {
        return (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header fields too large\n",
        )
            .into_response();
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_request_body as u64) {
        return ProxyError::PayloadTooLarge.into_response();
    }
    let (parts, body) = req.into_parts();
    let body = Body::new(http_body_util::Limited::new(body, limits.max_request_body));
    next.run(Request::from_parts(parts, body)).await
}

/// Serves the proxy (and the admin listener when configured) until `shutdown` resolves,
/// then stops accepting and lets in-flight requests finish.
pub async fn run(
    state: Arc<AppState>,
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let admin = match state.runtime().config.admin.listen {
        Some(addr) => {
            let admin_listener = TcpListener::bind(addr).await?;
            tracing::info!(addr = %admin_listener.local_addr()?, "admin listening");
            let router = crate::admin::router(state.clone(), metrics);
            let mut rx = rx.clone();
            Some(tokio::spawn(async move {
                axum::serve(admin_listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|stop| *stop).await;
                    })
                    .await
            }))
        }
        None => None,
    };
    tracing::info!(addr = %listener.local_addr()?, store = state.cache.store.name(), "cachegate listening");
    let proxy = axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = tx.send(true);
    });
    let mut rx = rx;
    proxy.await?;
    let _ = rx.wait_for(|stop| *stop).await;
    if let Some(admin) = admin {
        admin.await??;
    }
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
