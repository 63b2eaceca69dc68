//! The admin listener: liveness, readiness and Prometheus metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::app::AppState;
use crate::cache::store::Health;

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

/// Ready even when the store is degraded: requests are still served (from the origin),
/// so taking the replica out of rotation would only shift load. The body says which.
async fn ready(State(admin): State<Admin>) -> String {
    let store = admin.state.store.as_ref();
    let health = match store.health() {
        Health::Ok => "ok",
        Health::Degraded => "degraded",
    };
    format!("ready\nstore: {} {health}\n", store.name())
}

async fn render_metrics(State(admin): State<Admin>) -> String {
    admin
        .metrics
        .as_ref()
        .map(|m| m.render())
        .unwrap_or_default()
}
