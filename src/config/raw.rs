//! The serde mirror of `routes.yaml`: the only place that derives `Deserialize` from
//! user input. Values keep their user-facing form; `config::Config` validates them.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub log: RawLog,
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub limits: RawLimits,
    /// Names this cache answers to in targeted cache-control fields (RFC 9213).
    pub targets: Option<Vec<String>>,
    /// Hosts this proxy answers for (`api.example.com`, `*.example.com`); others get 421.
    pub hosts: Option<Vec<String>>,
    /// Peers (CIDRs) whose `X-Forwarded-*` headers are believed and extended.
    pub trusted_proxies: Option<Vec<String>>,
    pub routes: Vec<RawRoute>,
    /// Response headers whose values tag entries for purges (default: Surrogate-Key,
    /// Cache-Tag); values split on spaces and commas.
    pub tag_headers: Option<Vec<String>>,
    /// An HTTPS listener beside the plain `listen`.
    pub tls: Option<RawListenerTls>,
    #[serde(default)]
    pub shutdown: RawShutdown,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub listen: Option<String>,
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    pub grace: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// One line per request at `info`; on unless set to `false`.
    pub access: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    /// The Host sent upstream instead of the URL's authority.
    pub host: Option<String>,
    /// `true`, `false` or `auto` (ALPN decides).
    pub http2: Option<RawHttp2>,
    pub tls: Option<RawUpstreamTls>,
    /// Origin requests in flight at once, all routes and refreshes together.
    pub max_concurrency: Option<u64>,
    /// How long a miss waits for a slot (or a rate-limit token) before it is rejected.
    pub queue_timeout: Option<String>,
    /// `200/s`, `600/m`: a token bucket over origin requests.
    pub rate_limit: Option<String>,
    pub breaker: Option<RawBreaker>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub failures: Option<u64>,
    pub open_for: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawHttp2 {
    Bool(bool),
    Word(String),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub server_name: Option<String>,
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub ttl: Option<String>,
    pub negative_ttl: Option<String>,
    pub stale: Option<String>,
    pub stale_if_error: Option<String>,
    pub jitter: Option<f64>,
    pub max_body: Option<String>,
    pub hit_for_miss: Option<String>,
    pub refresh_timeout: Option<String>,
    pub client_no_cache: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<String>,
    pub max_request_body: Option<String>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub max_connections: Option<u64>,
    pub max_h2_streams: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub backend: Option<String>,
    #[serde(default)]
    pub memory: RawMemoryStore,
    pub redis: Option<RawRedis>,
    pub l1: Option<RawL1>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMemoryStore {
    pub max_size: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: Option<String>,
    pub cluster: Option<Vec<String>>,
    pub sentinel: Option<RawSentinel>,
    /// Removed (one multiplexed connection per worker carries its commands); still read, whatever
    /// its value, only to reject it with a message that says so.
    pub pool_size: Option<serde::de::IgnoredAny>,
    pub timeout: Option<String>,
    pub key_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSentinel {
    pub master: String,
    pub nodes: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawL1 {
    pub max_size: Option<String>,
    pub max_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: String,
    pub upstream: String,
    pub cache: Option<bool>,
    pub ttl: Option<String>,
    pub negative_ttl: Option<String>,
    /// Probabilistic early refresh of hot keys (XFetch).
    pub early_refresh: Option<RawEarlyRefresh>,
    pub stale: Option<String>,
    pub stale_if_error: Option<String>,
    pub override_origin: Option<bool>,
    pub cache_set_cookie: Option<bool>,
    pub show_key: Option<bool>,
    pub max_body: Option<String>,
    pub client_no_cache: Option<String>,
    /// Request headers this route honours in `Vary`.
    pub vary: Option<Vec<String>>,
    #[serde(default)]
    pub key: RawKey,
    /// Request headers never forwarded on this route.
    pub strip_headers: Option<Vec<String>>,
    /// Tags every entry of the route carries, with `{param}` from the path:
    /// `["user:{id}", "users"]`.
    pub tags: Option<Vec<String>>,
    /// Pass the tag headers on to clients (default: removed).
    pub expose_tags: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEarlyRefresh {
    pub beta: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// Absent: every query parameter is keyed (and forwarded).
    pub query: Option<Vec<String>>,
    /// Names or `prefix*` patterns removed from the key and the forwarded URL.
    #[serde(default)]
    pub query_ignore: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
}
