//! Logs (tracing), traces (OpenTelemetry over OTLP, gRPC or HTTP, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set) and
//! metrics (Prometheus). Metric labels are route templates and cache outcomes, never
//! raw paths, so cardinality stays bounded.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::cache::CacheStatus;

/// Flushes traces on drop; keep it alive for the life of the process.
pub struct Telemetry {
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// Flushes the log writer's queue when dropped (at exit).
    _log_writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Structured logs to stderr (`RUST_LOG` filters, `CACHEGATE_LOG_FORMAT=json` for JSON
/// lines) and, when an OTLP endpoint is set, spans exported over OTLP (`grpc` or
/// `http/protobuf`, from `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`) with the sampler of
/// `OTEL_TRACES_SAMPLER`, and W3C trace context taken from clients and passed to
/// origins. `runtime` runs the gRPC client's connection. An `OTEL_*` value cachegate
/// cannot use is an error: better no start than traces silently missing or a collector
/// sent every request instead of a sample.
pub fn init(runtime: &tokio::runtime::Handle) -> anyhow::Result<Telemetry> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("CACHEGATE_LOG_FORMAT").is_ok_and(|f| f == "json");
    // Colour codes only for a person at a terminal; in files and collectors they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Lines go through a bounded queue to a writer thread: a slow or stalled stderr (a
    // full pipe, a collector backing up) drops log lines instead of stalling requests.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .thread_name("cachegate-log")
        .finish(std::io::stderr());
    let sink = AccessSink {
        writer: writer.clone(),
        json,
    };
    let plain = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer.clone())
    });
    let json = json.then(|| tracing_subscriber::fmt::layer().json().with_writer(writer));
    let (otel, provider) = match otlp_tracer(&OsEnv, runtime)? {
        Some((layer, provider)) => {
            EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    let installed = tracing_subscriber::registry()
        .with(otel)
        .with(plain)
        .with(json)
        .with(filter)
        .try_init();
    if installed.is_ok() {
        let _ = ACCESS_SINK.set(sink);
    }
    Ok(Telemetry {
        tracer: provider,
        _log_writer: Some(guard),
    })
}

/// Log lines queued for the writer thread before new ones are dropped.
const LOG_QUEUE_LINES: usize = 64 * 1024;

// === OTLP export ===

type OtelLayer = tracing_opentelemetry::OpenTelemetryLayer<
    tracing_subscriber::Registry,
    opentelemetry_sdk::trace::Tracer,
>;

/// Where `OTEL_*` settings are read from: the process environment, or a table in tests.
trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

struct OsEnv;

impl Env for OsEnv {
    /// Unset and empty are the same (the OpenTelemetry convention).
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// The traces' protocol: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf` (the specification's default).
fn protocol(env: &dyn Env) -> anyhow::Result<Protocol> {
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(v) = env.get(var) {
            return match v.trim() {
                "grpc" => Ok(Protocol::Grpc),
                "http/protobuf" => Ok(Protocol::HttpProtobuf),
                _ => anyhow::bail!("{var}={v:?} is not a protocol cachegate sends (expected grpc or http/protobuf)"),
            };
        }
    }
    Ok(Protocol::HttpProtobuf)
}

const SAMPLERS: &str = "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio";

/// The SDK's sampler named by `OTEL_TRACES_SAMPLER` (default `parentbased_always_on`),
/// with the ratio of `OTEL_TRACES_SAMPLER_ARG` (default 1.0) for the ratio samplers.
/// Checked here rather than by the SDK, which logs a bad value where nobody sees it and
/// falls back to sampling everything.
fn sampler(env: &dyn Env) -> anyhow::Result<opentelemetry_sdk::trace::Sampler> {
    use opentelemetry_sdk::trace::Sampler;
    let name = env.get("OTEL_TRACES_SAMPLER");
    let name = name
        .as_deref()
        .map(str::trim)
        .unwrap_or("parentbased_always_on");
    let ratio = || -> anyhow::Result<f64> {
        let Some(arg) = env.get("OTEL_TRACES_SAMPLER_ARG") else {
            return Ok(1.0);
        };
        match arg.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => anyhow::bail!("OTEL_TRACES_SAMPLER_ARG={arg:?} is not a sampling ratio for {name} (expected a number from 0 to 1, e.g. 0.01)"),
        }
    };
    let parent = |root: Sampler| Sampler::ParentBased(Box::new(root));
    Ok(match name {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => parent(Sampler::AlwaysOn),
        "parentbased_always_off" => parent(Sampler::AlwaysOff),
        "parentbased_traceidratio" => parent(Sampler::TraceIdRatioBased(ratio()?)),
        other => anyhow::bail!("OTEL_TRACES_SAMPLER={other:?} is not a sampler cachegate knows (expected one of {SAMPLERS})"),
    })
}

/// The resource: `service.name` `cachegate` unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` names another, `service.version`, the SDK's own
/// attributes, and whatever `OTEL_RESOURCE_ATTRIBUTES` adds.
fn resource(env: &dyn Env) -> opentelemetry_sdk::Resource {
    use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
    let mut builder = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name("cachegate")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ]);
    if let Some(name) = env.get("OTEL_SERVICE_NAME") {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

fn otlp_tracer(
    env: &dyn Env,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<Option<(OtelLayer, opentelemetry_sdk::trace::SdkTracerProvider)>> {
    use anyhow::Context as _;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    let protocol = protocol(env)?;
    let sampler = sampler(env)?;
    // The crate reads the endpoints, headers, timeout and compression (`OTEL_EXPORTER_OTLP_*`)
    // itself; the protocol is ours to pick, so an unknown one is not silently replaced.
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match protocol {
        Protocol::Grpc => {
            // tonic's channel runs on the runtime it was built in; the batch processor's
            // thread hands it each batch.
            let _rt = runtime.enter();
            builder
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                .build()
        }
        Protocol::HttpProtobuf => builder
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build(),
    }
    .context("OTLP trace exporter")?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(resource(env))
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("cachegate"));
    Ok(Some((layer, provider)))
}

/// The span of one proxied request, continuing the client's trace (`traceparent`).
/// Nothing (`Span::none`) when spans are not exported: the log layers would otherwise
/// format its fields on every request for nobody (log lines carry the route themselves).
pub fn request_span(
    method: &http::Method,
    route: &str,
    headers: &http::HeaderMap,
) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        http.request.method = %method,
        http.route = route,
        cache = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    let _ = span.set_parent(parent);
    span
}

/// The root span of a background refresh of `key`, linked to the current (request)
/// span. Nothing (`Span::none`) when spans are not exported.
pub fn refresh_span(route: &str, key: &str) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !exporting() {
        return tracing::Span::none();
    }
    let trigger = tracing::Span::current()
        .context()
        .span()
        .span_context()
        .clone();
    let span = tracing::info_span!(parent: None, "cache.refresh", otel.name = "cache.refresh", http.route = route);
    if trigger.is_valid() {
        span.add_link(trigger);
    }
    span.set_attribute(KEY_HASH, key_hash(key));
    span
}

/// The span of one origin exchange (a child of the request or refresh span).
/// Nothing (`Span::none`) when spans are not exported: misses do not pay for it.
pub fn origin_span(upstream: &str, kind: &'static str) -> tracing::Span {
    if !exporting() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "origin.fetch",
        otel.name = "origin.fetch",
        upstream = upstream,
        kind = kind
    )
}

/// Whether spans are exported (OTLP configured): recording span fields is skipped
/// otherwise, since the log layers would format them on every request for nobody.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Fills the request span's outcome fields once the response is known.
pub fn record_outcome(cache: &'static str, status: StatusCode) {
    if !exporting() {
        return;
    }
    let span = tracing::Span::current();
    span.record("cache", cache);
    span.record("http.response.status_code", status.as_u16());
}

/// The span attribute naming a request's cache key: a hash, since keys carry paths and
/// queries that may hold ids or credentials (`cachegate key URL` prints the key a URL
/// gets, and its hash).
const KEY_HASH: &str = "cache.key_hash";

/// A cache key as traces name it: 16 hex digits of its xxh3 hash.
pub fn key_hash(key: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(key.as_bytes()))
}

/// Records the cache key's hash on the current (request) span. Nothing when spans are
/// not exported.
pub fn record_key(key: &str) {
    if !exporting() {
        return;
    }
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    tracing::Span::current().set_attribute(KEY_HASH, key_hash(key));
}

/// A lookup in one store tier (`memory`, `l1`, `l2`), a child of the current span;
/// `record_result` gives it `hit` or `miss` (or `error`). Like every span helper
/// below: `Span::none()` when spans are not exported, so a hit pays one relaxed load.
pub fn store_lookup_span(tier: &'static str) -> tracing::Span {
    if !exporting() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "store.lookup",
        otel.name = "store.lookup",
        store.tier = tier,
        result = tracing::field::Empty
    )
}

/// A store write (`store`: the backend, `memory`, `redis`, `redis+l1`).
pub fn store_write_span(store: &'static str) -> tracing::Span {
    if !exporting() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "store.write",
        otel.name = "store.write",
        store = store,
        result = tracing::field::Empty
    )
}

/// A follower waiting for its key's single-flight leader (in this process).
pub fn lock_wait_span() -> tracing::Span {
    if !exporting() {
        return tracing::Span::none();
    }
    tracing::info_span!("cache.lock_wait", otel.name = "cache.lock_wait")
}

/// Taking the fleet lease for a fetch (`result`: granted, held_elsewhere, error).
pub fn lease_span() -> tracing::Span {
    if !exporting() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "cache.lease",
        otel.name = "cache.lease",
        result = tracing::field::Empty
    )
}

/// Waiting for the replica that holds the fleet lease to store its entry.
pub fn lease_wait_span() -> tracing::Span {
    if !exporting() {
        return tracing::Span::none();
    }
    tracing::info_span!("cache.lease_wait", otel.name = "cache.lease_wait")
}

/// Fills a span's `result` (store and lease spans). Nothing on `Span::none()`.
pub fn record_result(span: &tracing::Span, result: &'static str) {
    span.record("result", result);
}

/// Adds the current span's trace context to an origin request (when spans are exported;
/// otherwise there is no context to add).
pub fn inject_trace_context(headers: &mut http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !exporting() {
        return;
    }
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers))
    });
}

/// Installs the global metrics recorder; the handle renders `/metrics`.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .install_recorder()?;
    RECORDER_INSTALLED.store(true, std::sync::atomic::Ordering::Release);
    metrics::gauge!("cachegate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

// === metric handles ===

/// Set once the Prometheus recorder is installed: handles taken before it would be the
/// no-op recorder's, so nothing is kept until then.
static RECORDER_INSTALLED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Metric handles by label values, so that a series is looked up in the recorder's
/// registry (its key built, every label hashed and compared: ~1.5k instructions) once
/// instead of on every request. A series is named by up to two strings compared by
/// content (a route template survives a reload as a new `Arc`; an upstream name) and up
/// to three `&'static str` label values compared by address (call sites pass literals, so
/// the same value at two sites is two slots for one series). Both sets are bounded, as
/// the metrics' labels must be.
struct Handles<H> {
    slots:
        std::sync::RwLock<std::collections::HashMap<u64, Vec<Slot<H>>, rustc_hash::FxBuildHasher>>,
}

struct Slot<H> {
    names: [Box<str>; 2],
    statics: [usize; 3],
    handle: H,
}

impl<H: Clone> Handles<H> {
    const fn new() -> Self {
        Handles {
            slots: std::sync::RwLock::new(std::collections::HashMap::with_hasher(
                rustc_hash::FxBuildHasher,
            )),
        }
    }

    fn get(&self, names: [&str; 2], statics: [&'static str; 3], make: impl FnOnce() -> H) -> H {
        if !RECORDER_INSTALLED.load(std::sync::atomic::Ordering::Acquire) {
            return make();
        }
        use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
        let statics = statics.map(|s| s.as_ptr() as usize);
        let mut hasher = rustc_hash::FxBuildHasher.build_hasher();
        names.hash(&mut hasher);
        statics.hash(&mut hasher);
        let hash = hasher.finish();
        let found = |slots: &[Slot<H>]| {
            slots
                .iter()
                .find(|s| {
                    s.statics == statics && *s.names[0] == *names[0] && *s.names[1] == *names[1]
                })
                .map(|s| s.handle.clone())
        };
        if let Ok(map) = self.slots.read() {
            if let Some(h) = map.get(&hash).and_then(|v| found(v)) {
                return h;
            }
        }
        let handle = make();
        if let Ok(mut map) = self.slots.write() {
            let slots = map.entry(hash).or_default();
            if found(slots).is_none() {
                slots.push(Slot {
                    names: names.map(Box::from),
                    statics,
                    handle: handle.clone(),
                });
            }
        }
        handle
    }
}

static REQUESTS: Handles<(metrics::Counter, metrics::Histogram)> = Handles::new();
static ORIGIN_REQUESTS: Handles<metrics::Counter> = Handles::new();
static ORIGIN_DURATION: Handles<metrics::Histogram> = Handles::new();
static STORE_OPS: Handles<metrics::Counter> = Handles::new();
static STORE_DURATION: Handles<metrics::Histogram> = Handles::new();
static COALESCED: Handles<metrics::Counter> = Handles::new();

/// The route label: a shared copy of the template (no allocation per request).
fn label(route: &Arc<str>) -> metrics::SharedString {
    metrics::SharedString::from(Arc::clone(route))
}

pub fn record_request(
    route: &Arc<str>,
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
    // One slot per (route, outcome, class) holds both series: one lookup per request.
    let (count, duration) = REQUESTS.get([route, ""], [outcome, class, ""], || {
        (
            metrics::counter!("cachegate_requests_total", "route" => label(route), "cache" => outcome, "status" => class),
            metrics::histogram!("cachegate_request_duration_seconds", "route" => label(route), "cache" => outcome),
        )
    });
    count.increment(1);
    duration.record(elapsed.as_secs_f64());
    tracing::debug!(
        route = &**route,
        cache = outcome,
        status = http_status.as_u16(),
        elapsed_ms = elapsed.as_millis() as u64,
        "request"
    );
}

/// A request sent to an origin (`kind`: fetch, refresh, pass).
pub fn record_origin_request(upstream: &str, route: &Arc<str>, kind: &'static str) {
    ORIGIN_REQUESTS
        .get([route, upstream], [kind, "", ""], || {
            metrics::counter!("cachegate_origin_requests_total", "upstream" => upstream.to_string(), "route" => label(route), "kind" => kind)
        })
        .increment(1);
}

pub fn record_refresh(route: &Arc<str>, result: &'static str) {
    metrics::counter!("cachegate_refreshes_total", "route" => label(route), "result" => result)
        .increment(1);
}

/// An upstream's breaker opened (`true`) or closed.
pub fn record_breaker_open(upstream: &str, open: bool) {
    breaker_gauge(format!("upstream:{upstream}").into(), open);
}

/// A breaker of another component (`store:redis`) is open (`true`) or closed.
pub fn record_breaker_component(component: &'static str, open: bool) {
    breaker_gauge(component.into(), open);
}

fn breaker_gauge(component: metrics::SharedString, open: bool) {
    metrics::gauge!("cachegate_breaker_open", "component" => component).set(if open {
        1.0
    } else {
        0.0
    });
}

/// An origin request cachegate did not send (`reason`: queue_timeout, rate_limit,
/// breaker_open).
pub fn record_origin_rejected(upstream: &str, reason: &'static str) {
    metrics::counter!("cachegate_origin_rejected_total", "upstream" => upstream.to_string(), "reason" => reason)
        .increment(1);
}

/// One origin exchange up to its response headers: `cachegate_origin_duration_seconds`,
/// and `cachegate_origin_errors_total{upstream,reason}` when it failed (`reason`:
/// timeout, connect, protocol, 5xx).
pub fn record_origin_exchange(upstream: &str, elapsed: Duration, error: Option<&'static str>) {
    ORIGIN_DURATION
        .get([upstream, ""], ["", "", ""], || {
            metrics::histogram!("cachegate_origin_duration_seconds", "upstream" => upstream.to_string())
        })
        .record(elapsed.as_secs_f64());
    if let Some(reason) = error {
        metrics::counter!("cachegate_origin_errors_total", "upstream" => upstream.to_string(), "reason" => reason)
            .increment(1);
    }
}

/// A request that waited for another's fetch of its key.
pub fn record_coalesced(route: &Arc<str>) {
    COALESCED
        .get(
            [route, ""],
            ["", "", ""],
            || metrics::counter!("cachegate_coalesced_waiters_total", "route" => label(route)),
        )
        .increment(1);
}

/// The fleet lease: granted, held_elsewhere, error.
pub fn record_lease(result: &'static str) {
    metrics::counter!("cachegate_lease_total", "result" => result).increment(1);
}

/// One store operation (`tier`: memory, l1, l2; `result`: hit, miss, ok, error).
pub fn record_store_op(tier: &'static str, op: &'static str, result: &'static str) {
    STORE_OPS
        .get(["", ""], [tier, op, result], || {
            metrics::counter!("cachegate_store_operations_total", "tier" => tier, "op" => op, "result" => result)
        })
        .increment(1);
}

/// How long a networked store operation took (`tier` l2).
pub fn record_store_duration(tier: &'static str, op: &'static str, elapsed: Duration) {
    STORE_DURATION
        .get(
            ["", ""],
            [tier, op, ""],
            || metrics::histogram!("cachegate_store_duration_seconds", "tier" => tier, "op" => op),
        )
        .record(elapsed.as_secs_f64());
}

/// An entry an in-process tier dropped for room.
pub fn record_eviction(tier: &'static str) {
    metrics::counter!("cachegate_store_evictions_total", "tier" => tier).increment(1);
}

/// Open client connections per listener (`plain`, `tls`).
pub fn record_connection(listener: &'static str, delta: f64) {
    metrics::gauge!("cachegate_connections", "listener" => listener).increment(delta);
}

pub fn record_store_error(op: &'static str) {
    metrics::counter!("cachegate_store_errors_total", "op" => op).increment(1);
}

/// One purge request's selector group: `cachegate_purges_total{selector,mode}` and the
/// keys it reached, `cachegate_purged_entries_total`.
pub fn record_purge(selector: &'static str, mode: &'static str, purged: u64) {
    metrics::counter!("cachegate_purges_total", "selector" => selector, "mode" => mode)
        .increment(1);
    metrics::counter!("cachegate_purged_entries_total").increment(purged);
}

/// A config reload: `applied` or `rejected`.
pub fn record_reload(result: &'static str) {
    metrics::counter!("cachegate_config_reloads_total", "result" => result).increment(1);
}

/// What an in-process store tier holds, as its bound counts it (`tier`: memory, l1).
pub fn record_store_usage(tier: &'static str, bytes: u64, entries: u64) {
    metrics::gauge!("cachegate_store_bytes", "tier" => tier).set(bytes as f64);
    metrics::gauge!("cachegate_store_entries", "tier" => tier).set(entries as f64);
}

/// Entries in a table that grows with traffic besides the store (`table`: hit_for_miss,
/// single_flight).
pub fn record_table_entries(table: &'static str, entries: u64) {
    metrics::gauge!("cachegate_table_entries", "table" => table).set(entries as f64);
}

// === access log ===

/// What the access line needs from the request, taken before the request moves on.
/// `None` when the access log is off, so that costs nothing per request.
pub struct AccessLog {
    method: http::Method,
    /// A `Uri` clone shares its bytes: no copy of the path per request.
    uri: http::Uri,
    client: Option<std::sync::Arc<crate::conn::PeerText>>,
    /// The client's `traceparent` trace id, for when no OpenTelemetry span carries one.
    client_trace: Option<http::HeaderValue>,
}

/// Starts the access line of a request (`log.access`, on by default).
pub fn access_start(
    enabled: bool,
    parts: &http::request::Parts,
    client: Option<std::sync::Arc<crate::conn::PeerText>>,
) -> Option<AccessLog> {
    enabled.then(|| AccessLog {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        client,
        client_trace: parts.headers.get("traceparent").cloned(),
    })
}

/// Writes one `info` line per request (target `cachegate::access`), in the log format
/// of the process. The path is logged without its query, which may carry credentials.
pub fn access_log(
    access: Option<AccessLog>,
    route: &str,
    status: &CacheStatus,
    resp: &axum::response::Response,
    elapsed: Duration,
) {
    let Some(a) = access else { return };
    if !tracing::enabled!(target: "cachegate::access", tracing::Level::INFO) {
        return;
    }
    let exported = exporting().then(current_trace_id).flatten();
    let trace_id = exported.as_deref().or_else(|| {
        a.client_trace
            .as_ref()
            .and_then(|v| traceparent_trace_id(v.to_str().ok()?))
    });
    if let Some(sink) = ACCESS_SINK.get() {
        let line = AccessLine {
            message: "access",
            method: a.method.as_str(),
            route,
            path: a.uri.path(),
            status: resp.status().as_u16(),
            cache: status.outcome(),
            bytes: response_bytes(resp),
            duration_ms: millis(elapsed),
            origin_ms: status.origin_time.map(millis),
            client: a.client.as_deref().map(|c| &*c.addr),
            trace_id,
        };
        sink.write(&line);
        return;
    }
    // No process log writer (an embedded router): through `tracing` like any event.
    tracing::info!(
        target: "cachegate::access",
        method = %a.method,
        route,
        path = a.uri.path(),
        status = resp.status().as_u16(),
        cache = status.outcome(),
        bytes = response_bytes(resp),
        duration_ms = millis(elapsed),
        origin_ms = status.origin_time.map(millis),
        client = a.client.as_deref().map(|c| tracing::field::display(&c.addr)),
        trace_id,
        "access"
    );
}

/// Milliseconds with microsecond precision, as access lines give durations.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// The process's log writer, for access lines: set by `init`.
static ACCESS_SINK: std::sync::OnceLock<AccessSink> = std::sync::OnceLock::new();

/// Access lines are written here, in the layout of the process's `tracing` format
/// (`CACHEGATE_LOG_FORMAT`), straight to the same bounded queue: one line per request
/// is the busiest log there is, and going through `tracing`'s field visitors cost ~19k
/// instructions a line (BENCHMARKS.md section 14) for a fixed set of fields.
struct AccessSink {
    writer: tracing_appender::non_blocking::NonBlocking,
    json: bool,
}

/// The fields of one access line.
#[derive(serde::Serialize)]
struct AccessLine<'a> {
    /// The JSON line's `message` (the plain line writes it as text).
    message: &'static str,
    method: &'a str,
    route: &'a str,
    path: &'a str,
    status: u16,
    cache: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    duration_ms: f64,
    /// The origin exchange this request made (to its response headers), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    origin_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
}

impl AccessSink {
    fn write(&self, line: &AccessLine<'_>) {
        use std::io::Write as _;
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| {
            buf.clear();
            if self.json {
                json_line(buf, line);
            } else {
                plain_line(buf, line);
            }
            buf.push(b'\n');
            // Lossy: a full queue drops the line, as it does for every log line.
            let _ = self.writer.clone().write_all(buf);
        });
    }
}

/// `tracing_subscriber::fmt`'s JSON layout: timestamp, level, fields (message first),
/// target.
fn json_line(buf: &mut Vec<u8>, line: &AccessLine<'_>) {
    #[derive(serde::Serialize)]
    struct Json<'a> {
        timestamp: &'a str,
        level: &'static str,
        fields: &'a AccessLine<'a>,
        target: &'static str,
    }
    let mut ts = [0u8; 27];
    let json = Json {
        timestamp: timestamp(&mut ts),
        level: "INFO",
        fields: line,
        target: "cachegate::access",
    };
    let _ = serde_json::to_writer(&mut *buf, &json);
}

/// `tracing_subscriber::fmt`'s plain layout: `timestamp  INFO target: message k=v ...`,
/// strings quoted as `Debug` quotes them, no colour codes.
fn plain_line(buf: &mut Vec<u8>, line: &AccessLine<'_>) {
    use std::io::Write as _;
    let mut ts = [0u8; 27];
    buf.extend_from_slice(timestamp(&mut ts).as_bytes());
    buf.extend_from_slice(b"  INFO cachegate::access: access method=");
    buf.extend_from_slice(line.method.as_bytes());
    buf.extend_from_slice(b" route=");
    quoted(buf, line.route);
    buf.extend_from_slice(b" path=");
    quoted(buf, line.path);
    buf.extend_from_slice(b" status=");
    buf.extend_from_slice(itoa::Buffer::new().format(line.status).as_bytes());
    buf.extend_from_slice(b" cache=");
    quoted(buf, line.cache);
    if let Some(bytes) = line.bytes {
        buf.extend_from_slice(b" bytes=");
        buf.extend_from_slice(itoa::Buffer::new().format(bytes).as_bytes());
    }
    let _ = write!(buf, " duration_ms={:?}", line.duration_ms);
    if let Some(ms) = line.origin_ms {
        let _ = write!(buf, " origin_ms={ms:?}");
    }
    if let Some(client) = line.client {
        buf.extend_from_slice(b" client=");
        buf.extend_from_slice(client.as_bytes());
    }
    if let Some(id) = line.trace_id {
        buf.extend_from_slice(b" trace_id=");
        quoted(buf, id);
    }
}

/// `s` as `{:?}` writes it; without the formatter when nothing needs escaping.
fn quoted(buf: &mut Vec<u8>, s: &str) {
    use std::io::Write as _;
    if s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        let _ = write!(buf, "{s:?}");
    }
}

/// Now as RFC 3339 in UTC with microseconds (`2026-12-02T20:33:25.123456Z`), as the
/// `tracing` layers print it.
fn timestamp(out: &mut [u8; 27]) -> &str {
    let t = time::OffsetDateTime::from(std::time::SystemTime::now());
    let mut at = 0;
    let mut put = |n: u32, width: usize, sep: u8| {
        for i in (0..width).rev() {
            out[at + i] = b'0' + (n / 10u32.pow((width - 1 - i) as u32) % 10) as u8;
        }
        out[at + width] = sep;
        at += width + 1;
    };
    put(t.year().clamp(0, 9999) as u32, 4, b'-');
    put(t.month() as u32, 2, b'-');
    put(t.day().into(), 2, b'T');
    put(t.hour().into(), 2, b':');
    put(t.minute().into(), 2, b':');
    put(t.second().into(), 2, b'.');
    put(t.microsecond(), 6, b'Z');
    std::str::from_utf8(&out[..]).unwrap_or("")
}

#[cfg(test)]
mod access_tests {
    use super::*;

    fn line<'a>(path: &'a str, trace_id: Option<&'a str>) -> AccessLine<'a> {
        AccessLine {
            message: "access",
            method: "GET",
            route: "/users/{id}",
            path,
            status: 200,
            cache: "hit",
            bytes: Some(70),
            duration_ms: 0.084,
            origin_ms: None,
            client: Some("127.0.0.1:4242"),
            trace_id,
        }
    }

    #[test]
    fn plain_lines_read_as_the_tracing_layer_writes_them() {
        let mut buf = Vec::new();
        plain_line(
            &mut buf,
            &line("/users/\"q\"", Some("4bf92f3577b34da6a3ce929d0e0e4736")),
        );
        let text = String::from_utf8(buf).unwrap();
        let (ts, rest) = text.split_once("  ").unwrap();
        assert_eq!(ts.len(), 27, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        assert_eq!(
            rest,
            r#"INFO cachegate::access: access method=GET route="/users/{id}" path="/users/\"q\"" status=200 cache="hit" bytes=70 duration_ms=0.084 client=127.0.0.1:4242 trace_id="4bf92f3577b34da6a3ce929d0e0e4736""#
        );
    }

    #[test]
    fn json_lines_carry_the_fields_under_fields() {
        let mut buf = Vec::new();
        json_line(&mut buf, &line("/users/1", None));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "cachegate::access");
        assert_eq!(v["fields"]["message"], "access");
        assert_eq!(v["fields"]["status"], 200);
        assert_eq!(v["fields"]["client"], "127.0.0.1:4242");
        assert!(v["fields"].get("trace_id").is_none());
        let ts = v["timestamp"].as_str().unwrap();
        let now = time::OffsetDateTime::now_utc();
        assert!(ts.starts_with(&format!("{:04}-", now.year())), "{ts}");
    }
}

/// The body length when it is known up front (stored entries, sized origin bodies);
/// `None` for a streamed pass-through body of unknown length.
fn response_bytes(resp: &axum::response::Response) -> Option<u64> {
    use http_body::Body as _;
    resp.body().size_hint().exact().or_else(|| {
        resp.headers()
            .get(http::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    })
}

/// The trace id of the current OpenTelemetry span, when traces are exported.
fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn traceparent_trace_id(v: &str) -> Option<&str> {
    let mut parts = v.split('-');
    let _version = parts.next()?;
    let id = parts.next()?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != "0".repeat(32))
        .then_some(id)
}

#[cfg(test)]
mod tests {
    use super::{protocol, sampler, traceparent_trace_id, Env, Protocol};
    use opentelemetry_sdk::trace::Sampler;

    impl Env for &[(&str, &str)] {
        fn get(&self, name: &str) -> Option<String> {
            self.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn protocol_from_the_traces_variable_then_the_general_one() {
        let check = |env: &[(&str, &str)], want: Protocol| {
            assert_eq!(protocol(&env).unwrap(), want, "{env:?}");
        };
        check(&[], Protocol::HttpProtobuf);
        check(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")], Protocol::Grpc);
        check(
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
            Protocol::HttpProtobuf,
        );
        check(
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ],
            Protocol::Grpc,
        );
        let env: &[(&str, &str)] = &[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")];
        let e = protocol(&env).unwrap_err().to_string();
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=\"http/json\"")
                && e.contains("expected grpc or http/protobuf"),
            "{e}"
        );
    }

    #[test]
    fn samplers_by_name_with_their_ratio() {
        let check = |env: &[(&str, &str)], want: &str| {
            let got = format!("{:?}", sampler(&env).unwrap());
            assert_eq!(got, want, "{env:?}");
        };
        let name = "OTEL_TRACES_SAMPLER";
        let arg = "OTEL_TRACES_SAMPLER_ARG";
        check(
            &[],
            &format!("{:?}", Sampler::ParentBased(Box::new(Sampler::AlwaysOn))),
        );
        check(&[(name, "always_on")], "AlwaysOn");
        check(&[(name, "always_off")], "AlwaysOff");
        check(
            &[(name, "traceidratio"), (arg, "0.25")],
            "TraceIdRatioBased(0.25)",
        );
        check(&[(name, "traceidratio")], "TraceIdRatioBased(1.0)");
        check(
            &[(name, "parentbased_always_off")],
            &format!("{:?}", Sampler::ParentBased(Box::new(Sampler::AlwaysOff))),
        );
        check(
            &[(name, "parentbased_traceidratio"), (arg, "0")],
            &format!(
                "{:?}",
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.0)))
            ),
        );
        for (env, says) in [
            (
                &[(name, "traceidratoi")][..],
                "OTEL_TRACES_SAMPLER=\"traceidratoi\"",
            ),
            (&[(name, "xray")][..], "expected one of always_on"),
            (
                &[(name, "traceidratio"), (arg, "1%")][..],
                "OTEL_TRACES_SAMPLER_ARG=\"1%\"",
            ),
            (
                &[(name, "parentbased_traceidratio"), (arg, "2")][..],
                "from 0 to 1",
            ),
        ] {
            let e = sampler(&env).unwrap_err().to_string();
            assert!(e.contains(says), "{env:?}: {e}");
        }
    }

    #[test]
    fn traceparent_gives_its_trace_id_or_nothing() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        for (input, want) in [
            (format!("00-{id}-00f067aa0ba902b7-01"), Some(id)),
            ("00-short-00f067aa0ba902b7-01".into(), None),
            (format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)), None),
            (format!("00-{}-00f067aa0ba902b7-01", "g".repeat(32)), None),
            (String::new(), None),
        ] {
            assert_eq!(traceparent_trace_id(&input), want, "{input:?}");
        }
    }
}
