//! Traces through the real binary and the real OTLP exporter, into receivers started
//! here: OTLP/HTTP protobuf (axum) and OTLP/gRPC (tonic, with opentelemetry-proto's
//! generated trace service). Each export is decoded, so the tests check the span tree:
//! the request span is the parent of the store lookup, lease, lock wait, origin.fetch
//! and store write spans of its trace; a background refresh is its own trace, linked to
//! the request that found the entry stale; the samplers of `OTEL_TRACES_SAMPLER`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

use crate::support::fleet::eventually;
use crate::support::redis::RedisServer;
use crate::support::{proxy, Origin, Reply};
use crate::telemetry::Served;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const STALE_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// One exported span with its resource's attributes.
#[derive(Clone, Debug)]
struct Got {
    resource: Vec<KeyValue>,
    span: Span,
}

impl Got {
    fn name(&self) -> &str {
        &self.span.name
    }

    fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }

    fn resource(&self, key: &str) -> Option<String> {
        attr(&self.resource, key)
    }

    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let value = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    Some(match value.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

type Sink = Arc<Mutex<Vec<Got>>>;

fn keep(sink: &Sink, request: ExportTraceServiceRequest) {
    let mut got = sink.lock().unwrap();
    for rs in request.resource_spans {
        let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                got.push(Got {
                    resource: resource.clone(),
                    span,
                });
            }
        }
    }
}

/// A receiver started by the test on a free loopback port.
struct Collector {
    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` names.
    endpoint: String,
    got: Sink,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// OTLP/HTTP: `POST /v1/traces` with a protobuf body.
    async fn http() -> Collector {
        let got: Sink = Arc::default();
        let sink = got.clone();
        let app = Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let sink = sink.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    keep(&sink, request);
                    ExportTraceServiceResponse::default().encode_to_vec()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector {
            endpoint,
            got,
            task,
        }
    }

    /// OTLP/gRPC: the collector's `TraceService/Export`.
    async fn grpc() -> Collector {
        struct Receiver(Sink);
        #[async_trait::async_trait]
        impl TraceService for Receiver {
            async fn export(
                &self,
                request: tonic::Request<ExportTraceServiceRequest>,
            ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
                keep(&self.0, request.into_inner());
                Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
            }
        }
        let got: Sink = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let service = TraceServiceServer::new(Receiver(got.clone()));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        Collector {
            endpoint,
            got,
            task,
        }
    }

    fn spans(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// The spans received once `done` holds of them (or after 10 s, for the assertion
    /// that follows to say what was missing).
    async fn until(&self, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        eventually(Duration::from_secs(10), async || done(&self.spans())).await;
        self.spans()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn traceparent(trace_id: &str, sampled: bool) -> String {
    format!(
        "00-{trace_id}-{CLIENT_SPAN}-{}",
        if sampled { "01" } else { "00" }
    )
}

/// The binary exporting to `collector`, with `env` on top; stops at once on SIGTERM
/// (no drain grace), which flushes the spans it still holds.
async fn serve(origin: &Origin, defaults: &str, env: &[(&str, &str)]) -> Served {
    serve_with(origin, defaults, "", env).await
}

async fn serve_with(origin: &Origin, defaults: &str, yaml: &str, env: &[(&str, &str)]) -> Served {
    let mut all = vec![("OTEL_BSP_SCHEDULE_DELAY", "50")];
    all.extend_from_slice(env);
    let yaml = format!("shutdown: {{ grace: 0s }}\n{yaml}");
    Served::start_with(origin, defaults, &yaml, &all).await
}

fn in_trace<'a>(spans: &'a [Got], trace_id: &str) -> Vec<&'a Got> {
    spans.iter().filter(|s| s.trace_id() == trace_id).collect()
}

fn children<'a>(spans: &'a [Got], parent: &Got) -> Vec<&'a Got> {
    spans
        .iter()
        .filter(|s| s.trace_id() == parent.trace_id() && s.parent_id() == parent.span_id())
        .collect()
}

fn names(spans: &[&Got]) -> Vec<String> {
    spans.iter().map(|s| s.name().to_string()).collect()
}

fn handler(s: &crate::support::origin::Seen) -> Reply {
    match s.path.as_str() {
        "/slow" => Reply::ok("slow").delay(Duration::from_millis(600)),
        p => Reply::ok(format!("body of {p}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_span_is_the_parent_of_its_lookup_lease_fetch_and_write() {
    let origin = Origin::start(handler).await;
    let collector = Collector::http().await;
    let served = serve(
        &origin,
        "ttl: 1s, stale: 60s, jitter: 0",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint),
            ("OTEL_SERVICE_NAME", "cachegate-under-test"),
        ],
    )
    .await;
    let client = proxy::client();
    let base = served.base.clone();
    let get = |path: &str, headers: Vec<(&'static str, String)>| {
        let (client, url) = (client.clone(), format!("{base}{path}"));
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, &**v)).collect();
            proxy::send(&client, "GET", &url, &headers).await
        }
    };

    // A miss in the client's trace, then a hit in a trace of its own.
    let miss = get(
        "/traced",
        vec![("traceparent", traceparent(TRACE_ID, true))],
    )
    .await;
    assert_eq!(miss.body, "body of /traced");
    assert!(miss.cache_status().contains("fwd=miss"), "{miss:?}");
    let seen = origin.seen();
    let seen = seen.iter().find(|s| s.path == "/traced").unwrap();
    let forwarded = seen.headers.get("traceparent").expect("trace context");
    assert!(
        forwarded
            .to_str()
            .unwrap()
            .starts_with(&format!("00-{TRACE_ID}-")),
        "the origin continues the client's trace: {forwarded:?}"
    );
    let hit = get("/traced", vec![]).await;
    assert!(hit.cache_status().contains("hit"), "{hit:?}");

    // Three request spans: the start-up probe's, the miss's, the hit's.
    let spans = collector
        .until(|s| s.iter().filter(|s| s.name() == "GET /{*rest}").count() >= 3)
        .await;
    let ours = in_trace(&spans, TRACE_ID);
    let request = ours
        .iter()
        .find(|s| s.name() == "GET /{*rest}")
        .unwrap_or_else(|| panic!("the request span in the client's trace: {spans:#?}"));
    assert_eq!(
        request.parent_id(),
        CLIENT_SPAN,
        "continues the client's span"
    );
    assert_eq!(request.attr("http.route").as_deref(), Some("/{*rest}"));
    assert_eq!(request.attr("cache").as_deref(), Some("miss"));
    assert_eq!(
        request.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    let key_hash = request.attr("cache.key_hash").expect("the key's hash");
    assert!(
        key_hash.len() == 16 && key_hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key_hash}"
    );
    assert_eq!(
        request.resource("service.name").as_deref(),
        Some("cachegate-under-test"),
        "OTEL_SERVICE_NAME"
    );
    assert_eq!(
        request.resource("service.version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );

    let kids = children(&spans, request);
    let kid_names = names(&kids);
    for name in ["store.lookup", "cache.lease", "origin.fetch", "store.write"] {
        assert!(
            kid_names.iter().any(|n| n == name),
            "{name} is a child of the request span: {kid_names:?}"
        );
    }
    // Every span of the miss is in the client's trace and hangs off the request span.
    assert_eq!(
        ours.len(),
        kids.len() + 1,
        "{:?}",
        names(&ours).iter().collect::<Vec<_>>()
    );
    let lookup = kids.iter().find(|s| s.name() == "store.lookup").unwrap();
    assert_eq!(lookup.attr("store.tier").as_deref(), Some("memory"));
    assert_eq!(lookup.attr("result").as_deref(), Some("miss"));
    let lease = kids.iter().find(|s| s.name() == "cache.lease").unwrap();
    assert_eq!(lease.attr("result").as_deref(), Some("granted"));
    let fetch = kids.iter().find(|s| s.name() == "origin.fetch").unwrap();
    assert_eq!(fetch.attr("kind").as_deref(), Some("fetch"));
    assert_eq!(fetch.attr("upstream").as_deref(), Some("origin"));
    let write = kids.iter().find(|s| s.name() == "store.write").unwrap();
    assert_eq!(write.attr("store").as_deref(), Some("memory"));
    // Children start and end within their parent.
    for kid in &kids {
        assert!(
            kid.span.start_time_unix_nano >= request.span.start_time_unix_nano
                && kid.span.end_time_unix_nano <= request.span.end_time_unix_nano,
            "{} within the request span",
            kid.name()
        );
    }

    // The hit: its own trace, one lookup (a hit) and nothing else.
    let same_key = |s: &&Got| s.attr("cache.key_hash").as_ref() == Some(&key_hash);
    let hit_span = spans
        .iter()
        .filter(same_key)
        .find(|s| s.name() == "GET /{*rest}" && s.trace_id() != TRACE_ID)
        .expect("the hit's request span, with the same key's hash");
    assert_eq!(hit_span.attr("cache").as_deref(), Some("hit"));
    assert_eq!(hit_span.parent_id(), "", "a root span");
    let hit_kids = children(&spans, hit_span);
    assert_eq!(names(&hit_kids), ["store.lookup"]);
    assert_eq!(hit_kids[0].attr("result").as_deref(), Some("hit"));

    // Followers: their request span holds the wait for the leader's fetch.
    let burst: Vec<_> = (0..5).map(|_| tokio::spawn(get("/slow", vec![]))).collect();
    for b in burst {
        assert_eq!(b.await.unwrap().body, "slow");
    }
    let spans = collector
        .until(|s| s.iter().any(|s| s.name() == "cache.lock_wait"))
        .await;
    let wait = spans
        .iter()
        .find(|s| s.name() == "cache.lock_wait")
        .unwrap_or_else(|| panic!("a follower's lock wait: {:?}", names(&in_all(&spans))));
    let follower = spans
        .iter()
        .find(|s| s.span_id() == wait.parent_id() && s.trace_id() == wait.trace_id())
        .expect("the lock wait's parent was exported");
    assert_eq!(follower.name(), "GET /{*rest}");
    assert_eq!(follower.attr("cache").as_deref(), Some("collapsed"));

    // Stale: answered at once; the refresh is a trace of its own, linked to this request.
    // Past the 1 s TTL with a second to spare (the origin's Date has 1 s resolution).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = get(
        "/traced",
        vec![("traceparent", traceparent(STALE_TRACE_ID, true))],
    )
    .await;
    assert!(
        stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    let spans = collector
        .until(|s| {
            s.iter().any(|s| s.name() == "cache.refresh")
                && s.iter()
                    .any(|s| s.name() == "store.write" && s.trace_id() != TRACE_ID)
        })
        .await;
    let stale_request = in_trace(&spans, STALE_TRACE_ID)
        .into_iter()
        .find(|s| s.name() == "GET /{*rest}")
        .expect("the stale request's span");
    assert_eq!(stale_request.attr("cache").as_deref(), Some("stale"));
    let refresh = spans
        .iter()
        .find(|s| s.name() == "cache.refresh")
        .expect("the refresh span");
    assert_ne!(refresh.trace_id(), STALE_TRACE_ID, "a trace of its own");
    assert_eq!(refresh.parent_id(), "", "the refresh is a root");
    assert_eq!(refresh.attr("cache.key_hash"), Some(key_hash));
    let links: Vec<(String, String)> = refresh
        .span
        .links
        .iter()
        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
        .collect();
    assert_eq!(
        links,
        [(STALE_TRACE_ID.to_string(), stale_request.span_id())],
        "linked to the request that found the entry stale"
    );
    let refresh_kids = spans
        .iter()
        .filter(|s| s.trace_id() == refresh.trace_id() && s.parent_id() == refresh.span_id())
        .collect::<Vec<_>>();
    let refresh_names = names(&refresh_kids);
    for name in ["cache.lease", "origin.fetch", "store.write"] {
        assert!(
            refresh_names.iter().any(|n| n == name),
            "{name} under cache.refresh: {refresh_names:?}"
        );
    }
    let refetch = refresh_kids
        .iter()
        .find(|s| s.name() == "origin.fetch")
        .unwrap();
    assert_eq!(refetch.attr("kind").as_deref(), Some("refresh"));
    // Nothing of the refresh is inside the stale request's trace.
    assert!(
        children(&spans, stale_request)
            .iter()
            .all(|s| s.name() == "store.lookup"),
        "{:?}",
        names(&children(&spans, stale_request))
    );
    served.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_each_tier_has_its_lookup_span() {
    let redis = RedisServer::start();
    let origin = Origin::start(handler).await;
    let collector = Collector::http().await;
    let served = serve_with(
        &origin,
        "ttl: 60s",
        &redis.store_yaml("500ms", "{ max_size: 1MiB }"),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)],
    )
    .await;
    let client = proxy::client();
    let url = format!("{}/tiers", served.base);
    let miss = proxy::send(
        &client,
        "GET",
        &url,
        &[("traceparent", &traceparent(TRACE_ID, true))],
    )
    .await;
    assert!(miss.cache_status().contains("fwd=miss"), "{miss:?}");
    let hit = proxy::send(
        &client,
        "GET",
        &url,
        &[("traceparent", &traceparent(STALE_TRACE_ID, true))],
    )
    .await;
    assert!(hit.cache_status().contains("hit"), "{hit:?}");
    let spans = collector
        .until(|s| {
            [TRACE_ID, STALE_TRACE_ID]
                .iter()
                .all(|t| in_trace(s, t).iter().any(|s| s.name() == "GET /{*rest}"))
        })
        .await;
    let lookups = |trace: &str| -> Vec<(String, String)> {
        let request = in_trace(&spans, trace)
            .into_iter()
            .find(|s| s.name() == "GET /{*rest}")
            .expect("the request span");
        let mut kids = children(&spans, request);
        kids.sort_by_key(|s| s.span.start_time_unix_nano);
        kids.iter()
            .filter(|s| s.name() == "store.lookup")
            .map(|s| (s.attr("store.tier").unwrap(), s.attr("result").unwrap()))
            .collect()
    };
    let pair = |t: &str, r: &str| (t.to_string(), r.to_string());
    // The miss: L1 then Redis, both missing (then the leader looks once more after its
    // lease, in case another replica just stored).
    let on_miss = lookups(TRACE_ID);
    assert_eq!(
        on_miss[..2],
        [pair("l1", "miss"), pair("l2", "miss")],
        "{on_miss:?}"
    );
    // The hit: from L1, or from Redis while L1 waits for its invalidation channel.
    let on_hit = lookups(STALE_TRACE_ID);
    assert!(
        on_hit == [pair("l1", "hit")] || on_hit == [pair("l1", "miss"), pair("l2", "hit")],
        "{on_hit:?}"
    );
    let lease = in_trace(&spans, TRACE_ID)
        .into_iter()
        .find(|s| s.name() == "cache.lease")
        .expect("the fleet lease");
    assert_eq!(lease.attr("result").as_deref(), Some("granted"));
    let write = in_trace(&spans, TRACE_ID)
        .into_iter()
        .find(|s| s.name() == "store.write")
        .expect("the store write");
    assert_eq!(write.attr("store").as_deref(), Some("redis+l1"));
    served.stop();
}

fn in_all(spans: &[Got]) -> Vec<&Got> {
    spans.iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_grpc_when_the_traces_protocol_says_so() {
    let origin = Origin::start(handler).await;
    let collector = Collector::grpc().await;
    // The traces' own variables win over the general ones.
    let served = serve(
        &origin,
        "ttl: 60s",
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &collector.endpoint),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=test,service.name=from-attributes",
            ),
        ],
    )
    .await;
    let r = proxy::send(
        &proxy::client(),
        "GET",
        &format!("{}/over-grpc", served.base),
        &[("traceparent", &traceparent(TRACE_ID, true))],
    )
    .await;
    assert_eq!(r.body, "body of /over-grpc");
    let spans = collector.until(|s| in_trace(s, TRACE_ID).len() >= 5).await;
    let ours = in_trace(&spans, TRACE_ID);
    let request = ours
        .iter()
        .find(|s| s.name() == "GET /{*rest}")
        .unwrap_or_else(|| panic!("the request span over gRPC: {:?}", names(&ours)));
    assert_eq!(request.attr("cache").as_deref(), Some("miss"));
    assert_eq!(
        request.resource("service.name").as_deref(),
        Some("from-attributes"),
        "service.name from OTEL_RESOURCE_ATTRIBUTES"
    );
    assert_eq!(
        request.resource("deployment.environment").as_deref(),
        Some("test")
    );
    let kid_names = names(&children(&spans, request));
    for name in ["store.lookup", "cache.lease", "origin.fetch", "store.write"] {
        assert!(kid_names.iter().any(|n| n == name), "{name}: {kid_names:?}");
    }
    served.stop();
}

/// Sends one request per `traceparent` (None: no header) to a binary with `sampler`,
/// stops it (which flushes what it kept) and returns the request spans exported.
async fn sampled(sampler: &[(&str, &str)], parents: &[Option<String>]) -> Vec<Got> {
    let origin = Origin::start(handler).await;
    let collector = Collector::http().await;
    let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str())];
    env.extend_from_slice(sampler);
    let served = serve(&origin, "ttl: 60s", &env).await;
    let client = proxy::client();
    for (i, parent) in parents.iter().enumerate() {
        let headers: Vec<(&str, &str)> = parent.iter().map(|p| ("traceparent", &**p)).collect();
        let url = format!("{}/sampled/{i}", served.base);
        assert_eq!(
            proxy::send(&client, "GET", &url, &headers).await.status,
            200
        );
    }
    served.stop();
    collector
        .spans()
        .into_iter()
        .filter(|s| s.name() == "GET /{*rest}")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_off_and_a_zero_ratio_export_nothing() {
    let parents = [Some(traceparent(TRACE_ID, true)), None];
    for sampler in [
        &[("OTEL_TRACES_SAMPLER", "always_off")][..],
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ][..],
    ] {
        let spans = sampled(sampler, &parents).await;
        assert!(spans.is_empty(), "{sampler:?} exported {spans:#?}");
    }
    // The control: the default sampler exports both (and the start-up probe's), the
    // same way.
    let spans = sampled(&[], &parents).await;
    assert_eq!(spans.len(), parents.len() + 1, "{spans:#?}");
    assert_eq!(in_trace(&spans, TRACE_ID).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parentbased_follows_the_clients_sampled_flag() {
    let spans = sampled(
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ],
        &[
            Some(traceparent(TRACE_ID, true)),
            Some(traceparent(STALE_TRACE_ID, false)),
            None,
        ],
    )
    .await;
    let ids: Vec<String> = spans.iter().map(Got::trace_id).collect();
    assert_eq!(
        ids,
        [TRACE_ID],
        "only the sampled parent's trace (ratio 0 for roots)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_otel_value_stops_start_up_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::write(
        &config,
        proxy::config_yaml(
            "http://127.0.0.1:9",
            "ttl: 1s",
            "  - path: /{*rest}\n    upstream: origin\n",
        ),
    )
    .unwrap();
    for (env, says) in [
        (
            [("OTEL_TRACES_SAMPLER", "traceidratoi")],
            "OTEL_TRACES_SAMPLER=\"traceidratoi\" is not a sampler",
        ),
        (
            [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
            "OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\" is not a protocol",
        ),
        (
            [("OTEL_TRACES_SAMPLER_ARG", "5%")],
            "OTEL_TRACES_SAMPLER_ARG=\"5%\" is not a sampling ratio",
        ),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cachegate"));
        cmd.arg("--config")
            .arg(&config)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
            .env_remove("OTEL_TRACES_SAMPLER")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL");
        if env[0].0 == "OTEL_TRACES_SAMPLER_ARG" {
            cmd.env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio");
        }
        cmd.envs(env)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let exited = eventually(Duration::from_secs(10), async || {
            matches!(child.try_wait(), Ok(Some(_)))
        })
        .await;
        if !exited {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(exited && !out.status.success(), "{env:?} started: {stderr}");
        assert!(stderr.contains(says), "{env:?}: {stderr}");
    }
}
