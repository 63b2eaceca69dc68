//! The process's state: what survives a reload (`AppState`) and what a reload
//! replaces (`Runtime`).

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::cache::store::{self, Store};
use crate::cache::{Cache, Shared};
use crate::config::Config;
use crate::error::ProxyError;
use crate::proxy::origin::Origins;
use crate::proxy::route::RouteTable;
use crate::proxy::upstream_guard::Guard;
use crate::proxy::{canonical, key};

/// Everything derived from the config: swapped whole, atomically, on reload. A request
/// holds the `Arc<Runtime>` it started with until it finishes, so in-flight requests
/// finish on their config while new ones use the new routes, TTLs and upstreams.
pub struct Runtime {
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub origins: Origins,
    /// Origin protection, indexed like `config.upstreams`. Carried over from the previous
    /// runtime for upstreams whose protection settings did not change, so a reload
    /// neither resets the breaker nor forgets the requests in flight.
    pub guards: Vec<Arc<Guard>>,
}

impl Runtime {
    pub fn new(config: Config) -> Self {
        Self::after(config, &[])
    }

    /// The runtime for `config`, keeping the guards in `previous` that still apply.
    pub fn after(config: Config, previous: &[Arc<Guard>]) -> Self {
        Runtime {
            routes: RouteTable::new(&config.routes),
            origins: Origins::new(&config.upstreams),
            guards: Guard::reuse(&config.upstreams, previous),
            config: Arc::new(config),
        }
    }

    /// The guard of upstream `index` (as routes name it).
    pub fn guard(&self, index: usize) -> &Arc<Guard> {
        &self.guards[index]
    }

    /// The cache key a path (with query) maps to, if its route caches: the key a GET
    /// for it would have (the same canonical path and query).
    pub fn key_for(&self, path_and_query: &str) -> Option<String> {
        let uri = path_and_query.parse::<http::Uri>().ok()?;
        let path = canonical::path(uri.path()).ok()?;
        let m = self.routes.find(&path)?;
        let route = &self.config.routes[m.route];
        if !route.cache {
            return None;
        }
        let query =
            canonical::query(uri.query(), &route.key.query, &route.key.query_ignore).ok()?;
        Some(key::cache_key(&route.template, &m.params, query.as_deref()))
    }
}

/// The token from `Authorization: Bearer TOKEN`.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The process's state: what lives across reloads (the cache: store, single-flight
/// table, lease, hit-for-miss) and the current `Runtime`.
pub struct AppState {
    pub cache: Cache<Shared>,
    /// Swapped by `reload`; read once per request (`runtime()`), an atomic load.
    runtime: ArcSwap<Runtime>,
    /// The file the config came from, for reloads (unset: started from a string).
    config_path: std::sync::OnceLock<std::path::PathBuf>,
    /// What else a reload re-reads (the TLS listener's certificate), registered by the
    /// layers that own it so this module does not depend on them.
    reload_hooks: std::sync::Mutex<Vec<ReloadHook>>,
}

/// Called with each new config after it is swapped in; an error keeps what it reloads.
pub type ReloadHook = Box<dyn Fn(&Config) -> Result<(), String> + Send + Sync>;

impl AppState {
    /// Builds the state with the store the config names.
    pub async fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let store = store::build(&config.store).await?;
        Ok(Self::with_store(config, store))
    }

    pub fn with_store(config: Config, store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(AppState {
            cache: Cache::new(store, config.hit_for_miss),
            runtime: ArcSwap::from_pointee(Runtime::new(config)),
            config_path: std::sync::OnceLock::new(),
            reload_hooks: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Names the file reloads re-read (once, at start-up).
    pub fn set_config_path(&self, path: std::path::PathBuf) {
        let _ = self.config_path.set(path);
    }

    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.get().map(|p| p.as_path())
    }

    /// Registers something a reload must re-read besides the config.
    pub fn on_reload(&self, hook: ReloadHook) {
        if let Ok(mut hooks) = self.reload_hooks.lock() {
            hooks.push(hook);
        }
    }

    /// The config-derived state new requests use.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Swaps in `config` (already validated). Settings that live with the process are
    /// kept as they were, and the returned notes say which ones need a restart.
    pub fn reload(&self, config: Config) -> Vec<String> {
        let old = self.runtime();
        let mut notes = Vec::new();
        let was = &old.config;
        if config.listen != was.listen {
            notes.push(format!(
                "listen {} -> {}: needs a restart",
                was.listen, config.listen
            ));
        }
        if config.admin.listen != was.admin.listen {
            notes.push("admin.listen changed: needs a restart".to_string());
        }
        if format!("{:?}", config.store) != format!("{:?}", was.store) {
            notes.push("store changed: needs a restart (entries and connections kept)".to_string());
        }
        if config.hit_for_miss != was.hit_for_miss {
            notes.push("defaults.hit_for_miss changed: needs a restart".to_string());
        }
        if let Ok(hooks) = self.reload_hooks.lock() {
            for hook in hooks.iter() {
                if let Err(e) = hook(&config) {
                    notes.push(e);
                }
            }
        }
        self.runtime
            .store(Arc::new(Runtime::after(config, &old.guards)));
        notes
    }

    /// Whether `presented` is the admin token. Constant-time in the token's length, so
    /// response times do not reveal a matching prefix.
    pub fn admin_token_ok(&self, presented: Option<&str>) -> Result<(), ProxyError> {
        let runtime = self.runtime();
        let Some(expected) = runtime.config.admin.token.as_deref() else {
            return Err(ProxyError::PurgeDisabled);
        };
        let presented = presented.unwrap_or("").as_bytes();
        let expected = expected.as_bytes();
        let mut diff = presented.len() ^ expected.len();
        for (i, b) in expected.iter().enumerate() {
            diff |= usize::from(b ^ presented.get(i).copied().unwrap_or(0));
        }
        if diff == 0 {
            Ok(())
        } else {
            Err(ProxyError::Unauthorized)
        }
    }

    /// Invalidates the entry a same-origin URL (`Location`, `Content-Location`) names:
    /// a relative reference, or an absolute one whose host is the request's `host`
    /// (RFC 9111 §4.4: never another origin's entries).
    pub async fn invalidate_url(&self, url: &str, host: Option<&str>) {
        let Ok(uri) = url.parse::<http::Uri>() else {
            return;
        };
        if let Some(authority) = uri.authority() {
            if host.is_none_or(|h| !h.eq_ignore_ascii_case(authority.as_str())) {
                return;
            }
        }
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        if let Some(key) = self.runtime().key_for(target) {
            self.cache.invalidate(&key).await;
        }
    }
}
