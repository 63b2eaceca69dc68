//! Configuration in two stages: `raw` mirrors `routes.yaml`; this module validates it
//! once into `Config`, so the request path never sees a raw string.

mod error;
mod locate;
pub mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, Uri};

pub use error::ConfigError;
use locate::Locations;
use raw::RawConfig;

use crate::cache::policy::{ClientNoCache, RoutePolicy, Targets};
use crate::proxy::edge::{self, EdgePolicy};
use crate::proxy::key::{KeySpec, NamePattern, QuerySpec};
use crate::proxy::uri;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub upstreams: Vec<Upstream>,
    /// Shared, so a detached fetch or refresh can hold its route without copying it.
    pub routes: Vec<Arc<Route>>,
    pub store: StoreConfig,
    pub limits: Limits,
    /// Which hosts are served and which peers may speak for clients.
    pub edge: EdgePolicy,
    /// How long a key whose response was not storable skips coalescing.
    pub hit_for_miss: Duration,
    /// Budget of one background refresh, independent of any client.
    pub refresh_timeout: Duration,
    /// Accepted but worth telling the operator (`check` prints them, `serve` logs them).
    pub warnings: Vec<ConfigError>,
    /// The HTTPS listener, beside the plain one.
    pub tls: Option<ListenerTls>,
    pub shutdown: Shutdown,
    /// Response headers that tag entries (`tag_headers`), lower-case.
    pub tag_headers: Vec<HeaderName>,
}

/// `tls:` at the top level: where HTTPS is served and the PEM files it serves with.
/// Paths are kept (not the loaded certificate) so a reload re-reads them.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The drain on SIGTERM.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// How long `/readyz` says 503 while the proxy still accepts (load balancers stop
    /// sending).
    pub grace: Duration,
    /// How long in-flight requests and background refreshes may take after that.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None` disables the admin listener.
    pub listen: Option<SocketAddr>,
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The access log: one line per request at `info`.
    pub access: bool,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix of the upstream URL without a trailing slash ("" for none).
    pub base_path: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Sent as `Host` instead of `authority` (`upstreams.NAME.host`).
    pub host: Option<http::HeaderValue>,
    pub http2: Http2,
    /// Set for `https://` upstreams.
    pub tls: Option<UpstreamTls>,
    /// What protects the origin (`max_concurrency`, `rate_limit`, `breaker`).
    pub protection: Protection,
}

/// An upstream's origin protection; `proxy::upstream_guard` enforces it. Compared on
/// reload: an upstream whose protection is unchanged keeps its guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protection {
    /// `None`: unbounded.
    pub max_concurrency: Option<usize>,
    /// How long a miss or pass-through waits for a slot or a token.
    pub queue_timeout: Duration,
    pub rate_limit: Option<RateLimit>,
    pub breaker: Option<BreakerSettings>,
}

/// `rate_limit: 200/s`: `requests` per `per`, a burst of `requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
}

/// `breaker: { failures: 5, open_for: 10s }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive connect errors, timeouts or 5xx that open it.
    pub failures: u32,
    /// How long it stays open before one probe is let through.
    pub open_for: Duration,
}

/// `upstreams.NAME.http2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http2 {
    /// HTTP/1.1 only.
    Never,
    /// HTTP/2 only: offered alone in ALPN, or with prior knowledge over `http://`.
    Always,
    /// HTTP/2 when the origin's ALPN picks it, else HTTP/1.1 (`http://`: HTTP/1.1).
    Auto,
}

impl Http2 {
    pub fn as_str(self) -> &'static str {
        match self {
            Http2::Never => "false",
            Http2::Always => "true",
            Http2::Auto => "auto",
        }
    }
}

/// An HTTPS upstream's client TLS, built (files read) once at validation.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub client: Arc<rustls::ClientConfig>,
    /// Sent as SNI and checked against the certificate instead of the URL's host.
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// `insecure_skip_verify: true`: any certificate is accepted.
    pub insecure: bool,
    /// Whether a client certificate is presented (mutual TLS).
    pub client_auth: bool,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// The template as written, e.g. `/users/{id}`: part of every key and metric label.
    pub template: Arc<str>,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    /// `false`: forwarded, never stored.
    pub cache: bool,
    pub policy: RoutePolicy,
    pub key: KeySpec,
    /// Whether `Cache-Status` may show the cache key.
    pub show_key: bool,
    /// Request headers never forwarded on this route (`strip_headers`).
    pub strip_headers: Vec<HeaderName>,
    /// Tag templates (`user:{id}`): every `{name}` is a path parameter of the route.
    pub tags: Vec<String>,
    /// Whether the tag headers reach clients.
    pub expose_tags: bool,
}

impl Route {
    /// The route's tags for a request with these (canonical) path parameters.
    pub fn tags_for(&self, params: &[(String, String)]) -> Vec<String> {
        self.tags
            .iter()
            .map(|t| {
                let mut tag = t.clone();
                for (name, value) in params {
                    tag = tag.replace(&format!("{{{name}}}"), value);
                }
                tag
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: Backend,
    pub l1: L1Config,
}

#[derive(Debug, Clone)]
pub enum Backend {
    Memory { max_size: u64 },
    Redis(RedisConfig),
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub target: RedisTarget,
    pub timeout: Duration,
    pub key_prefix: String,
}

#[derive(Debug, Clone)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
    Sentinel { master: String, nodes: Vec<String> },
}

#[derive(Debug, Clone)]
pub struct L1Config {
    /// 0 disables the in-process tier in front of Redis.
    pub max_size: u64,
    pub max_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_request_body: usize,
    /// A client that has not sent a request's headers in this time is disconnected.
    pub header_read_timeout: Duration,
    /// A connection with no request and no traffic this long is closed.
    pub idle_timeout: Duration,
    /// The whole request, origin included; then 504.
    pub request_timeout: Duration,
    /// Open client connections, both listeners together.
    pub max_connections: usize,
    /// Concurrent streams on one HTTP/2 connection.
    pub max_h2_streams: u32,
}

/// Values from the environment that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub redis_url: Option<String>,
    pub admin_token: Option<String>,
}

impl Overrides {
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Overrides {
            listen: var("CACHEGATE_LISTEN"),
            admin_listen: var("CACHEGATE_ADMIN_LISTEN"),
            redis_url: var("CACHEGATE_REDIS_URL"),
            admin_token: var("CACHEGATE_ADMIN_TOKEN"),
        }
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            position: None,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&source, path, overrides)
    }

    /// Validates `source`, naming `file` in errors.
    pub fn parse(source: &str, file: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let raw: RawConfig = {
            let de = yaml_serde::Deserializer::from_str(source);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let field = e.path().to_string();
                let inner = e.into_inner();
                let position = inner.location().map(|l| (l.line(), l.column()));
                let mut message = inner.to_string();
                if let Some(cut) = message.rfind(" at line ") {
                    message.truncate(cut);
                }
                // yaml_serde prefixes its own (shorter) path; ours is more precise.
                if let Some((prefix, rest)) = message.split_once(": ") {
                    if !prefix.contains(' ') && field.starts_with(prefix) {
                        message = rest.to_string();
                    }
                }
                ConfigError {
                    file: file.to_path_buf(),
                    position,
                    field: if field == "." { String::new() } else { field },
                    message,
                }
            })?
        };
        let mut v = Validator {
            file: file.to_path_buf(),
            locations: Locations::index(source),
        };
        v.config(raw, overrides)
    }
}

/// Turns a `RawConfig` into a `Config`, attaching source positions to errors.
struct Validator {
    file: PathBuf,
    locations: Locations,
}

impl Validator {
    fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            position: self.locations.find(field),
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn duration(
        &self,
        field: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(s) => parse_duration(s).ok_or_else(|| {
                self.err(
                    field,
                    format!("{s:?} is not a duration (expected e.g. 500ms, 30s, 5m, 1h)"),
                )
            }),
        }
    }

    fn size(&self, field: &str, value: Option<&str>, default: u64) -> Result<u64, ConfigError> {
        match value {
            None => Ok(default),
            Some(s) => parse_size(s).ok_or_else(|| {
                self.err(
                    field,
                    format!("{s:?} is not a size (expected e.g. 512KiB, 8MiB, 1GiB)"),
                )
            }),
        }
    }

    fn client_no_cache(
        &self,
        field: &str,
        value: Option<&str>,
        default: ClientNoCache,
    ) -> Result<ClientNoCache, ConfigError> {
        match value {
            None => Ok(default),
            Some("revalidate") => Ok(ClientNoCache::Revalidate),
            Some("ignore") => Ok(ClientNoCache::Ignore),
            Some(other) => Err(self.err(
                field,
                format!("{other:?} is not a choice (expected revalidate or ignore)"),
            )),
        }
    }

    fn addr(&self, field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.parse().map_err(|_| {
            self.err(
                field,
                format!("{value:?} is not a socket address (expected e.g. 127.0.0.1:8080)"),
            )
        })
    }

    fn config(&mut self, raw: RawConfig, overrides: &Overrides) -> Result<Config, ConfigError> {
        let edge = self.edge(&raw)?;
        let listen = match &overrides.listen {
            Some(l) => l.parse().map_err(|_| ConfigError {
                file: self.file.clone(),
                position: None,
                field: "CACHEGATE_LISTEN".into(),
                message: format!("{l:?} is not a socket address (expected e.g. 127.0.0.1:8080)"),
            })?,
            None => self.addr("listen", raw.listen.as_deref().unwrap_or("127.0.0.1:8080"))?,
        };

        let log = LogConfig {
            access: raw.log.access.unwrap_or(true),
        };
        let admin_raw = raw.admin.unwrap_or_default();
        let admin = AdminConfig {
            listen: match &overrides.admin_listen {
                Some(l) => Some(l.parse().map_err(|_| ConfigError {
                    file: self.file.clone(),
                    position: None,
                    field: "CACHEGATE_ADMIN_LISTEN".into(),
                    message: format!("{l:?} is not a socket address (expected e.g. 0.0.0.0:9090)"),
                })?),
                None => admin_raw
                    .listen
                    .as_deref()
                    .map(|l| self.addr("admin.listen", l))
                    .transpose()?,
            },
            token: overrides.admin_token.clone().or(admin_raw.token),
        };

        let mut upstreams = Vec::new();
        for (name, u) in &raw.upstreams {
            upstreams.push(self.upstream(name, u)?);
        }
        if upstreams.is_empty() {
            return Err(self.err("upstreams", "at least one upstream is required"));
        }

        let d = &raw.defaults;
        let jitter = d.jitter.unwrap_or(0.1);
        if !(0.0..=0.5).contains(&jitter) {
            return Err(self.err(
                "defaults.jitter",
                format!("{jitter} is out of range (expected 0.0 to 0.5)"),
            ));
        }
        let default_ttl =
            self.duration("defaults.ttl", d.ttl.as_deref(), Duration::from_secs(60))?;
        // Unset, a 404 is kept 10 s, never longer than a found resource would be.
        let default_negative = d
            .negative_ttl
            .as_deref()
            .map(|v| self.duration("defaults.negative_ttl", Some(v), Duration::ZERO))
            .transpose()?;
        let defaults = RoutePolicy {
            ttl: default_ttl,
            negative_ttl: default_negative
                .unwrap_or_else(|| default_ttl.min(Duration::from_secs(10))),
            early_refresh: None,
            stale: self.duration(
                "defaults.stale",
                d.stale.as_deref(),
                Duration::from_secs(300),
            )?,
            stale_if_error: self.duration(
                "defaults.stale_if_error",
                d.stale_if_error.as_deref(),
                Duration::from_secs(3600),
            )?,
            jitter,
            override_origin: false,
            cache_set_cookie: false,
            max_body: self.size("defaults.max_body", d.max_body.as_deref(), 8 << 20)? as usize,
            client_no_cache: self.client_no_cache(
                "defaults.client_no_cache",
                d.client_no_cache.as_deref(),
                ClientNoCache::Revalidate,
            )?,
            vary_allow: None,
            targets: match &raw.targets {
                None => Targets::default(),
                Some(names) => Targets::new(names).map_err(|e| self.err("targets", e))?,
            },
        };

        let mut routes = Vec::new();
        let mut router = matchit::Router::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let f = |name: &str| format!("routes[{i}].{name}");
            if !r.path.starts_with('/') {
                return Err(self.err(&f("path"), format!("{:?} must start with '/'", r.path)));
            }
            router
                .insert(r.path.as_str(), i)
                .map_err(|e| self.err(&f("path"), format!("{:?}: {e}", r.path)))?;
            let upstream = upstreams
                .iter()
                .position(|u| u.name == r.upstream)
                .ok_or_else(|| {
                    let known: Vec<_> = upstreams.iter().map(|u| u.name.as_str()).collect();
                    self.err(
                        &f("upstream"),
                        format!(
                            "{:?} is not a defined upstream (defined: {})",
                            r.upstream,
                            known.join(", ")
                        ),
                    )
                })?;
            let ttl = self.duration(&f("ttl"), r.ttl.as_deref(), defaults.ttl)?;
            let negative_ttl = match (r.negative_ttl.as_deref(), default_negative) {
                (Some(v), _) => self.duration(&f("negative_ttl"), Some(v), Duration::ZERO)?,
                (None, Some(d)) => d,
                (None, None) => ttl.min(Duration::from_secs(10)),
            };
            let early_refresh = match &r.early_refresh {
                None => None,
                Some(e) => {
                    let beta = e.beta.unwrap_or(1.0);
                    if !(beta.is_finite() && beta > 0.0 && beta <= 10.0) {
                        return Err(self.err(
                            &f("early_refresh.beta"),
                            format!("{beta} is out of range (expected more than 0, at most 10; 1.0 is the usual value)"),
                        ));
                    }
                    Some(beta)
                }
            };
            let policy = RoutePolicy {
                ttl,
                negative_ttl,
                early_refresh,
                stale: self.duration(&f("stale"), r.stale.as_deref(), defaults.stale)?,
                stale_if_error: self.duration(
                    &f("stale_if_error"),
                    r.stale_if_error.as_deref(),
                    defaults.stale_if_error,
                )?,
                jitter: defaults.jitter,
                override_origin: r.override_origin.unwrap_or(false),
                cache_set_cookie: r.cache_set_cookie.unwrap_or(false),
                max_body: self.size(
                    &f("max_body"),
                    r.max_body.as_deref(),
                    defaults.max_body as u64,
                )? as usize,
                client_no_cache: self.client_no_cache(
                    &f("client_no_cache"),
                    r.client_no_cache.as_deref(),
                    defaults.client_no_cache,
                )?,
                vary_allow: match &r.vary {
                    Some(names) => Some(self.header_names(&f("vary"), names)?),
                    None => None,
                },
                targets: defaults.targets.clone(),
            };
            let headers = self.header_names(&f("key.headers"), &r.key.headers)?;
            let strip_headers = self.header_names(
                &f("strip_headers"),
                r.strip_headers.as_deref().unwrap_or(&[]),
            )?;
            let query = match &r.key.query {
                None => QuerySpec::All,
                Some(names) => {
                    let mut canon = Vec::new();
                    for (j, n) in names.iter().enumerate() {
                        canon.push(uri::query_name(n).map_err(|_| {
                            self.err(
                                &f(&format!("key.query[{j}]")),
                                format!("{n:?} is not a query parameter name"),
                            )
                        })?);
                    }
                    QuerySpec::Only(canon)
                }
            };
            let mut query_ignore = Vec::new();
            for (j, n) in r.key.query_ignore.iter().enumerate() {
                let bare = n.strip_suffix('*').unwrap_or(n);
                let canon = uri::query_name(bare)
                    .ok()
                    .filter(|c| !c.is_empty() && !c.contains('*'))
                    .ok_or_else(|| {
                        self.err(
                            &f(&format!("key.query_ignore[{j}]")),
                            format!("{n:?} is not a name or a prefix* pattern"),
                        )
                    })?;
                let pattern = if n.ends_with('*') {
                    format!("{canon}*")
                } else {
                    canon
                };
                query_ignore.push(NamePattern::new(&pattern));
            }
            routes.push(Arc::new(Route {
                template: Arc::from(r.path.as_str()),
                upstream,
                cache: r.cache.unwrap_or(true),
                policy,
                key: KeySpec::new(query, query_ignore, headers),
                show_key: r.show_key.unwrap_or(false),
                strip_headers,
                tags: self.route_tags(&f("tags"), &r.path, r.tags.as_deref().unwrap_or(&[]))?,
                expose_tags: r.expose_tags.unwrap_or(false),
            }));
        }
        if routes.is_empty() {
            return Err(self.err("routes", "at least one route is required"));
        }

        let store = self.store(&raw.store, overrides)?;
        let limits = Limits {
            max_header_bytes: self.size(
                "limits.max_header_bytes",
                raw.limits.max_header_bytes.as_deref(),
                64 << 10,
            )? as usize,
            max_request_body: self.size(
                "limits.max_request_body",
                raw.limits.max_request_body.as_deref(),
                16 << 20,
            )? as usize,
            header_read_timeout: self.positive(
                "limits.header_read_timeout",
                raw.limits.header_read_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            idle_timeout: self.positive(
                "limits.idle_timeout",
                raw.limits.idle_timeout.as_deref(),
                Duration::from_secs(60),
            )?,
            request_timeout: self.positive(
                "limits.request_timeout",
                raw.limits.request_timeout.as_deref(),
                upstreams
                    .iter()
                    .map(|u| u.timeout)
                    .max()
                    .unwrap_or_default()
                    + Duration::from_secs(5),
            )?,
            max_connections: match raw.limits.max_connections {
                None => 10_000,
                Some(0) => return Err(self.err("limits.max_connections", "must be at least 1")),
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            },
            max_h2_streams: match raw.limits.max_h2_streams {
                None => 200,
                Some(0) => return Err(self.err("limits.max_h2_streams", "must be at least 1")),
                Some(n) => n,
            },
        };
        let tls = raw
            .tls
            .as_ref()
            .map(|t| self.listener_tls(t, listen))
            .transpose()?;
        let shutdown = Shutdown {
            grace: self.duration(
                "shutdown.grace",
                raw.shutdown.grace.as_deref(),
                Duration::from_secs(5),
            )?,
            timeout: self.duration(
                "shutdown.timeout",
                raw.shutdown.timeout.as_deref(),
                Duration::from_secs(30),
            )?,
        };
        let mut warnings = Vec::new();
        for u in &upstreams {
            if u.tls.as_ref().is_some_and(|t| t.insecure) {
                warnings.push(self.err(
                    &format!("upstreams.{}.tls.insecure_skip_verify", u.name),
                    "is true: the origin's certificate is not verified (anyone on the path can impersonate it)",
                ));
            }
        }
        if raw
            .store
            .redis
            .as_ref()
            .is_some_and(|r| r.pool_size.is_some())
        {
            warnings.push(self.err(
                "store.redis.pool_size",
                "is ignored: one multiplexed connection per worker thread carries its commands",
            ));
        }
        Ok(Config {
            listen,
            admin,
            log,
            upstreams,
            routes,
            store,
            limits,
            edge,
            hit_for_miss: self.duration(
                "defaults.hit_for_miss",
                d.hit_for_miss.as_deref(),
                Duration::from_secs(30),
            )?,
            refresh_timeout: self.duration(
                "defaults.refresh_timeout",
                d.refresh_timeout.as_deref(),
                Duration::from_secs(30),
            )?,
            warnings,
            tls,
            shutdown,
            tag_headers: match &raw.tag_headers {
                None => vec![
                    HeaderName::from_static("surrogate-key"),
                    HeaderName::from_static("cache-tag"),
                ],
                Some(names) => self.header_names("tag_headers", names)?,
            },
        })
    }

    /// Tag templates, each `{name}` checked against the path's parameters.
    fn route_tags(
        &self,
        field: &str,
        path: &str,
        tags: &[String],
    ) -> Result<Vec<String>, ConfigError> {
        let params: Vec<&str> = path
            .split('{')
            .skip(1)
            .filter_map(|p| p.split_once('}'))
            .map(|(name, _)| name.trim_start_matches('*'))
            .collect();
        for (j, tag) in tags.iter().enumerate() {
            if tag.trim().is_empty() || tag.contains([' ', ',']) {
                return Err(self.err(
                    &format!("{field}[{j}]"),
                    format!("{tag:?}: a tag is one word (no spaces or commas)"),
                ));
            }
            for part in tag.split('{').skip(1) {
                let Some((name, _)) = part.split_once('}') else {
                    return Err(self.err(&format!("{field}[{j}]"), format!("{tag:?}: unclosed {{")));
                };
                if !params.contains(&name) {
                    return Err(self.err(
                        &format!("{field}[{j}]"),
                        format!(
                            "{tag:?}: {{{name}}} is not a parameter of {path:?} (parameters: {})",
                            params.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(tags.to_vec())
    }

    /// A duration greater than zero (a zero timeout would close every connection).
    fn positive(
        &self,
        field: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(field, value, default)?;
        if d.is_zero() {
            return Err(self.err(field, "must be greater than 0"));
        }
        Ok(d)
    }

    /// A path from the config, relative to the config file's directory.
    fn path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        match self.file.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    fn listener_tls(
        &self,
        t: &raw::RawListenerTls,
        plain: SocketAddr,
    ) -> Result<ListenerTls, ConfigError> {
        let listen = self.addr(
            "tls.listen",
            t.listen.as_deref().unwrap_or("127.0.0.1:8443"),
        )?;
        if listen == plain && listen.port() != 0 {
            return Err(self.err(
                "tls.listen",
                format!("{listen} is also `listen`: give the TLS listener its own port"),
            ));
        }
        let (cert_file, key_file) = (self.path(&t.cert_file), self.path(&t.key_file));
        // Loaded here only to fail `check` and start-up early; the server loads its own.
        crate::tls::server_config(&cert_file, &key_file)
            .map_err(|e| self.err("tls.cert_file", e))?;
        Ok(ListenerTls {
            listen,
            cert_file,
            key_file,
        })
    }

    fn upstream_tls(
        &self,
        name: &str,
        authority: &Authority,
        t: Option<&raw::RawUpstreamTls>,
    ) -> Result<UpstreamTls, ConfigError> {
        let f = |field: &str| format!("upstreams.{name}.tls.{field}");
        let default = raw::RawUpstreamTls::default();
        let t = t.unwrap_or(&default);
        let ca_file = t.ca_file.as_deref().map(|p| self.path(p));
        let identity = match (&t.client_cert, &t.client_key) {
            (Some(c), Some(k)) => Some((self.path(c), self.path(k))),
            (None, None) => None,
            (Some(_), None) => {
                return Err(self.err(&f("client_cert"), "needs client_key beside it"))
            }
            (None, Some(_)) => {
                return Err(self.err(&f("client_key"), "needs client_cert beside it"))
            }
        };
        let insecure = t.insecure_skip_verify.unwrap_or(false);
        let options = crate::tls::ClientOptions {
            ca_file: ca_file.as_deref(),
            identity: identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            insecure_skip_verify: insecure,
        };
        let field = if identity.is_some() && ca_file.is_none() {
            f("client_cert")
        } else {
            f("ca_file")
        };
        let client = crate::tls::client_config(&options).map_err(|e| self.err(&field, e))?;
        let server_name = match &t.server_name {
            None => None,
            Some(n) => Some(
                rustls::pki_types::ServerName::try_from(n.clone()).map_err(|_| {
                    self.err(
                        &f("server_name"),
                        format!("{n:?} is not a DNS name or IP address"),
                    )
                })?,
            ),
        };
        // The URL's host must itself be a valid TLS name unless server_name replaces it.
        if server_name.is_none() {
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            if rustls::pki_types::ServerName::try_from(host).is_err() {
                return Err(self.err(
                    &format!("upstreams.{name}.url"),
                    format!("{host:?} is not a TLS server name; set tls.server_name"),
                ));
            }
        }
        Ok(UpstreamTls {
            client: Arc::new(client),
            server_name,
            insecure,
            client_auth: identity.is_some(),
        })
    }

    fn header_names(&self, field: &str, names: &[String]) -> Result<Vec<HeaderName>, ConfigError> {
        let mut out = Vec::new();
        for (j, h) in names.iter().enumerate() {
            out.push(HeaderName::try_from(h.as_str()).map_err(|_| {
                self.err(
                    &format!("{field}[{j}]"),
                    format!("{h:?} is not a header name"),
                )
            })?);
        }
        Ok(out)
    }

    fn edge(&self, raw: &RawConfig) -> Result<EdgePolicy, ConfigError> {
        let mut hosts = Vec::new();
        for (i, h) in raw.hosts.iter().flatten().enumerate() {
            let field = format!("hosts[{i}]");
            let (wild, name) = match h.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, h.as_str()),
            };
            let normal = edge::normalize_host(name, "http")
                .ok()
                .filter(|n| !n.contains(':') || n.starts_with('['))
                .ok_or_else(|| {
                    self.err(
                        &field,
                        format!("{h:?} is not a host name (expected e.g. api.example.com or *.example.com, no port)"),
                    )
                })?;
            hosts.push(if wild { format!("*.{normal}") } else { normal });
        }
        let mut trusted_proxies = Vec::new();
        for (i, c) in raw.trusted_proxies.iter().flatten().enumerate() {
            let net = c
                .parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    self.err(
                        &format!("trusted_proxies[{i}]"),
                        format!("{c:?} is not a CIDR (expected e.g. 10.0.0.0/8 or 127.0.0.1)"),
                    )
                })?;
            trusted_proxies.push(net);
        }
        Ok(EdgePolicy {
            hosts,
            trusted_proxies,
        })
    }

    fn upstream(&self, name: &str, u: &raw::RawUpstream) -> Result<Upstream, ConfigError> {
        let field = format!("upstreams.{name}.url");
        let uri: Uri = u.url.parse().map_err(|_| {
            self.err(
                &field,
                format!(
                    "{:?} is not a URL (expected e.g. http://127.0.0.1:3000)",
                    u.url
                ),
            )
        })?;
        let scheme = uri
            .scheme()
            .cloned()
            .filter(|s| *s == Scheme::HTTP || *s == Scheme::HTTPS)
            .ok_or_else(|| {
                self.err(
                    &field,
                    format!("{:?}: expected an http:// or https:// URL", u.url),
                )
            })?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| self.err(&field, format!("{:?} has no host", u.url)))?;
        if uri.query().is_some() {
            return Err(self.err(&field, format!("{:?} must not have a query", u.url)));
        }
        let tls = if scheme == Scheme::HTTPS {
            Some(self.upstream_tls(name, &authority, u.tls.as_ref())?)
        } else if u.tls.is_some() {
            return Err(self.err(
                &format!("upstreams.{name}.tls"),
                format!("applies to https:// upstreams only (url is {:?})", u.url),
            ));
        } else {
            None
        };
        let http2 = match &u.http2 {
            None => Http2::Auto,
            Some(raw::RawHttp2::Bool(true)) => Http2::Always,
            Some(raw::RawHttp2::Bool(false)) => Http2::Never,
            Some(raw::RawHttp2::Word(w)) if w == "auto" => Http2::Auto,
            Some(raw::RawHttp2::Word(w)) => {
                return Err(self.err(
                    &format!("upstreams.{name}.http2"),
                    format!("{w:?} is not a choice (expected true, false or auto)"),
                ))
            }
        };
        let host = match &u.host {
            None => None,
            Some(h) => Some(
                h.parse::<Authority>()
                    .ok()
                    .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
                    .ok_or_else(|| {
                        self.err(
                            &format!("upstreams.{name}.host"),
                            format!("{h:?} is not a host (expected e.g. api.example.com)"),
                        )
                    })?,
            ),
        };
        let protection = self.protection(name, u)?;
        Ok(Upstream {
            host,
            http2,
            tls,
            protection,
            name: name.to_string(),
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
            connect_timeout: self.duration(
                &format!("upstreams.{name}.connect_timeout"),
                u.connect_timeout.as_deref(),
                Duration::from_secs(1),
            )?,
            timeout: self.duration(
                &format!("upstreams.{name}.timeout"),
                u.timeout.as_deref(),
                Duration::from_secs(10),
            )?,
        })
    }

    fn protection(&self, name: &str, u: &raw::RawUpstream) -> Result<Protection, ConfigError> {
        let field = |f: &str| format!("upstreams.{name}.{f}");
        let max_concurrency = match u.max_concurrency {
            None => None,
            Some(n @ 1..=1_000_000) => Some(n as usize),
            Some(n) => {
                return Err(self.err(
                    &field("max_concurrency"),
                    format!("{n} is out of range (expected 1 to 1000000 requests in flight)"),
                ))
            }
        };
        let queue_timeout = self.duration(
            &field("queue_timeout"),
            u.queue_timeout.as_deref(),
            Duration::from_secs(1),
        )?;
        let rate_limit = match u.rate_limit.as_deref() {
            None => None,
            Some(s) => Some(parse_rate(s).ok_or_else(|| {
                self.err(
                    &field("rate_limit"),
                    format!("{s:?} is not a rate (expected e.g. 200/s, 600/m; at least 1)"),
                )
            })?),
        };
        let breaker = match &u.breaker {
            None => None,
            Some(b) => {
                let failures = match b.failures {
                    None => 5,
                    Some(n @ 1..=10_000) => n as u32,
                    Some(n) => {
                        return Err(self.err(
                            &field("breaker.failures"),
                            format!(
                                "{n} is out of range (expected 1 to 10000 consecutive failures)"
                            ),
                        ))
                    }
                };
                let open_field = field("breaker.open_for");
                let open_for =
                    self.duration(&open_field, b.open_for.as_deref(), Duration::from_secs(10))?;
                if open_for.is_zero() {
                    return Err(self.err(&open_field, "must be longer than 0s (expected e.g. 10s)"));
                }
                Some(BreakerSettings { failures, open_for })
            }
        };
        Ok(Protection {
            max_concurrency,
            queue_timeout,
            rate_limit,
            breaker,
        })
    }

    fn store(&self, s: &raw::RawStore, overrides: &Overrides) -> Result<StoreConfig, ConfigError> {
        let l1_raw = s.l1.as_ref();
        let l1 = L1Config {
            max_size: self.size(
                "store.l1.max_size",
                l1_raw.and_then(|l| l.max_size.as_deref()),
                64 << 20,
            )?,
            max_ttl: self.duration(
                "store.l1.max_ttl",
                l1_raw.and_then(|l| l.max_ttl.as_deref()),
                Duration::from_secs(2),
            )?,
        };
        let backend_name = if overrides.redis_url.is_some() {
            "redis"
        } else {
            s.backend.as_deref().unwrap_or("memory")
        };
        let backend = match backend_name {
            "memory" => Backend::Memory {
                max_size: self.size(
                    "store.memory.max_size",
                    s.memory.max_size.as_deref(),
                    256 << 20,
                )?,
            },
            "redis" => {
                let r = s.redis.as_ref();
                let target = if let Some(url) = &overrides.redis_url {
                    RedisTarget::Single(url.clone())
                } else if let Some(r) = r {
                    match (&r.url, &r.cluster, &r.sentinel) {
                        (Some(url), None, None) => RedisTarget::Single(url.clone()),
                        (None, Some(nodes), None) if !nodes.is_empty() => RedisTarget::Cluster(nodes.clone()),
                        (None, None, Some(sen)) if !sen.nodes.is_empty() => RedisTarget::Sentinel {
                            master: sen.master.clone(),
                            nodes: sen.nodes.clone(),
                        },
                        _ => {
                            return Err(self.err(
                                "store.redis",
                                "give exactly one of url, cluster (a non-empty list) or sentinel (master and nodes)",
                            ))
                        }
                    }
                } else {
                    return Err(self.err(
                        "store.redis",
                        "backend redis needs store.redis.url, cluster or sentinel",
                    ));
                };
                Backend::Redis(RedisConfig {
                    target,
                    timeout: self.duration(
                        "store.redis.timeout",
                        r.and_then(|r| r.timeout.as_deref()),
                        Duration::from_millis(50),
                    )?,
                    key_prefix: r
                        .and_then(|r| r.key_prefix.clone())
                        .unwrap_or_else(|| "cachegate:".to_string()),
                })
            }
            other => {
                return Err(self.err(
                    "store.backend",
                    format!("{other:?} is not a store (expected memory or redis)"),
                ))
            }
        };
        Ok(StoreConfig { backend, l1 })
    }
}

/// `500ms`, `30s`, `5m`, `1h`, `1d`; a bare `0` is zero.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// `200/s`, `600/m`, `10000/h`: at least one request per period.
pub fn parse_rate(s: &str) -> Option<RateLimit> {
    let (n, unit) = s.trim().split_once('/')?;
    let requests: u32 = n.trim().parse().ok().filter(|n| *n >= 1)?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" | "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return None,
    };
    Some(RateLimit { requests, per })
}

/// `512KiB`, `8MiB`, `1GiB`, `10MB`, or a plain number of bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests;
