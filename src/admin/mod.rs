//! The admin listener: liveness, readiness, Prometheus metrics and purges.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::cache::store::Health;
use crate::purge;
use crate::telemetry;

#[derive(Clone)]
struct Admin {
    state: Arc<AppState>,
    metrics: Option<PrometheusHandle>,
    readiness: Readiness,
}

/// Whether this replica should get new traffic: false from the shutdown signal on, so
/// load balancers take it out of rotation while it still serves.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// `/readyz` answers 503 from now on.
    pub fn drain(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

pub fn router(state: Arc<AppState>, metrics: Option<PrometheusHandle>) -> Router {
    router_with(state, metrics, Readiness::default())
}

/// The admin router whose `/readyz` follows `readiness`.
pub fn router_with(
    state: Arc<AppState>,
    metrics: Option<PrometheusHandle>,
    readiness: Readiness,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .route("/purge", axum::routing::post(purge))
        .route("/reload", axum::routing::post(reload))
        .with_state(Admin {
            state,
            metrics,
            readiness,
        })
}

/// Ready even when the store is degraded: requests are still served (from the origin),
/// so taking the replica out of rotation would only shift load. The body says which.
/// Draining (after SIGTERM) is the one not-ready state. Upstreams whose breaker is open
/// are named (`upstream api: breaker open`), still 200.
async fn ready(State(admin): State<Admin>) -> Response {
    if admin.readiness.is_draining() {
        return (
            http::StatusCode::SERVICE_UNAVAILABLE,
            "draining: shutting down\n",
        )
            .into_response();
    }
    let store = admin.state.cache.store.as_ref();
    let health = match store.health() {
        Health::Ok => "ok",
        Health::Degraded => "degraded",
    };
    let mut body = format!("ready\nstore: {} {health}\n", store.name());
    // Still ready with an upstream's breaker open: its cached copies are being served.
    body.push_str(&crate::proxy::upstream_guard::open_upstreams(
        &admin.state.runtime().guards,
    ));
    body.into_response()
}

async fn render_metrics(State(admin): State<Admin>) -> String {
    let Some(metrics) = admin.metrics.as_ref() else {
        return String::new();
    };
    // Sizes are read here, once per scrape, so the hit path never pays for them.
    let state = &admin.state;
    if let Some(usage) = state.cache.store.usage().await {
        telemetry::record_store_usage(usage.tier, usage.bytes, usage.entries);
    }
    state.cache.hit_for_miss.run_pending_tasks();
    telemetry::record_table_entries("hit_for_miss", state.cache.hit_for_miss.entry_count());
    telemetry::record_table_entries("single_flight", state.cache.locks.in_flight() as u64);
    metrics.render()
}

/// `POST /purge` with `Authorization: Bearer TOKEN`: a JSON body (`purge::PurgeRequest`),
/// or the query-string form `?url=/users/1&tag=user-1&mode=soft` with no body. Deploy
/// pipelines and `cachegate purge` call this.
async fn purge(State(admin): State<Admin>, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, PURGE_BODY_MAX).await {
        Ok(b) => b,
        Err(_) => {
            let e = purge::Rejected(format!("the body is over {PURGE_BODY_MAX} bytes"));
            return purge::handle(&admin.state, &parts.headers, Err(e)).await;
        }
    };
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        purge::PurgeRequest::from_query(parts.uri.query().unwrap_or(""))
    } else {
        purge::PurgeRequest::from_json(&body)
    };
    purge::handle(&admin.state, &parts.headers, request).await
}

/// Enough for about 10,000 URLs in one call.
const PURGE_BODY_MAX: usize = 1 << 20;

/// `POST /reload` with the admin token: re-reads the config file. 200 with what needs a
/// restart, or 422 with the error (the running config stays).
async fn reload(State(admin): State<Admin>, req: axum::extract::Request) -> Response {
    let state = &admin.state;
    if let Err(e) = state.admin_token_ok(crate::app::bearer(req.headers())) {
        return e.into_response();
    }
    let Some(path) = state.config_path() else {
        return (
            http::StatusCode::CONFLICT,
            "started without a config file: nothing to reload\n",
        )
            .into_response();
    };
    match crate::reload::reload(state, path, "admin") {
        crate::reload::Outcome::Applied(notes) => {
            let mut body = String::from("reloaded\n");
            for n in notes {
                body.push_str(&format!("note: {n}\n"));
            }
            body.into_response()
        }
        crate::reload::Outcome::Rejected(e) => (
            http::StatusCode::UNPROCESSABLE_ENTITY,
            format!("rejected: {e}\nthe running config stays\n"),
        )
            .into_response(),
    }
}
