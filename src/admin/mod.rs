//! The admin listener: liveness, readiness and Prometheus metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::app::AppState;

#[derive(Clone)]
struct Admin {
    state: Arc<AppState>,
    metrics: Option<PrometheusHandle>,
}

pub fn router(state: Arc<AppState>, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(Admin { state, metrics })
}

async fn ready(State(admin): State<Admin>) -> String {
    format!("ready\nstore: {}\n", admin.state.store.name())
}

async fn render_metrics(State(admin): State<Admin>) -> String {
    admin
        .metrics
        .as_ref()
        .map(|m| m.render())
        .unwrap_or_default()
}
