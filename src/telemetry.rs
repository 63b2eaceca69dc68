//! Logs (tracing) and metrics (Prometheus). Labels are route templates and cache
//! outcomes, never raw paths, so cardinality stays bounded.

use std::time::Duration;

use http::StatusCode;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::cache::CacheStatus;

/// Structured logs to stderr; `RUST_LOG` filters, `CACHEGATE_LOG_FORMAT=json` for JSON lines.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("CACHEGATE_LOG_FORMAT").is_ok_and(|f| f == "json");
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the global metrics recorder; the handle renders `/metrics`.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .install_recorder()?;
    Ok(handle)
}

pub fn record_request(
    route: &str,
    status: &CacheStatus,
    http_status: StatusCode,
    elapsed: Duration,
) {
    let outcome = status.outcome();
    let class = match http_status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("cachegate_requests_total", "route" => route.to_string(), "cache" => outcome, "status" => class)
        .increment(1);
    metrics::histogram!("cachegate_request_duration_seconds", "route" => route.to_string(), "cache" => outcome)
        .record(elapsed.as_secs_f64());
    tracing::debug!(
        route,
        cache = outcome,
        status = http_status.as_u16(),
        elapsed_ms = elapsed.as_millis() as u64,
        "request"
    );
}

pub fn record_origin_request(route: &str, kind: &'static str) {
    metrics::counter!("cachegate_origin_requests_total", "route" => route.to_string(), "kind" => kind).increment(1);
}

pub fn record_refresh(route: &str, result: &'static str) {
    metrics::counter!("cachegate_refreshes_total", "route" => route.to_string(), "result" => result).increment(1);
}

pub fn record_store_error(op: &'static str) {
    metrics::counter!("cachegate_store_errors_total", "op" => op).increment(1);
}
