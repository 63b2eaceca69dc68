//! Shared state and the proxy router.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use http::HeaderMap;

use crate::cache::lock::Locks;
use crate::cache::purge::{Mode, Selector};
use crate::cache::store::{self, Lease, Store};
use crate::cache::CacheEntry;
use crate::config::Config;
use crate::error::ProxyError;
use crate::proxy::origin::Origins;
use crate::proxy::route::RouteTable;
use crate::proxy::{self, canonical, key, Shared};

/// Who fetches a key, fleet-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchRight {
    /// This process, with nothing to give back (a store local to the process, or a
    /// failing one).
    Local,
    /// This process, holding the fleet lease until `AppState::give_back`.
    Leased(String),
    /// Another replica is fetching.
    Elsewhere,
}

/// Everything a request needs, shared by all of them.
pub struct AppState {
    pub config: Arc<Config>,
    pub routes: RouteTable,
    /// Behind a trait object so the request path is the same for every backend.
    pub store: Arc<dyn Store>,
    /// One origin fetch per key per process; its outcome is handed to the waiters
    /// directly, so coalescing holds even when the store is failing.
    pub locks: Arc<Locks<Shared>>,
    pub origins: Origins,
    /// Keys whose last response was not storable: they skip the single flight for a
    /// while instead of queueing every request behind the previous one (hit-for-miss).
    pub hit_for_miss: moka::sync::Cache<String, ()>,
}

impl AppState {
    /// Builds the state with the store the config names.
    pub async fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let store = store::build(&config.store).await?;
        Ok(Self::with_store(config, store))
    }

    pub fn with_store(config: Config, store: Arc<dyn Store>) -> Arc<Self> {
        let hit_for_miss = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(config.hit_for_miss.max(Duration::from_millis(1)))
            .build();
        Arc::new(AppState {
            routes: RouteTable::new(&config.routes),
            origins: Origins::new(&config.upstreams),
            locks: Locks::new(),
            store,
            hit_for_miss,
            config: Arc::new(config),
        })
    }

    /// A store failure reads as a miss.
    pub async fn lookup(&self, key: &str, request: &HeaderMap) -> Option<Arc<CacheEntry>> {
        match self.store.lookup(key, request).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%error, key, "store lookup failed; treating as a miss");
                crate::telemetry::record_store_error("lookup");
                None
            }
        }
    }

    /// A store failure skips the write; the response is still served.
    pub async fn store_entry(&self, key: &str, entry: Arc<CacheEntry>) -> bool {
        match self.store.insert(key, entry).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, key, "store write failed; response served uncached");
                crate::telemetry::record_store_error("insert");
                false
            }
        }
    }

    pub async fn invalidate(&self, key: &str) {
        if let Err(error) = self.store.remove(key).await {
            tracing::warn!(%error, key, "store remove failed");
            crate::telemetry::record_store_error("remove");
        }
    }

    /// Who may fetch `key` now, fleet-wide. A store failure makes it this process (in-
    /// process coalescing still holds).
    pub async fn fetch_right(&self, key: &str, upstream_timeout: Duration) -> FetchRight {
        // Longer than the fetch it guards, so it does not lapse while the origin works.
        let ttl = upstream_timeout + Duration::from_secs(2);
        match self.store.acquire_lease(key, ttl).await {
            Ok(Lease::Granted(Some(token))) => FetchRight::Leased(token),
            Ok(Lease::Granted(None)) => FetchRight::Local,
            Ok(Lease::Held) => FetchRight::Elsewhere,
            Err(error) => {
                tracing::warn!(%error, key, "lease failed; fetching without it");
                crate::telemetry::record_store_error("lease");
                FetchRight::Local
            }
        }
    }

    /// Gives a fleet lease back once the fetch it guarded is done.
    pub async fn give_back(&self, key: &str, right: FetchRight) {
        let FetchRight::Leased(token) = right else {
            return;
        };
        if let Err(error) = self.store.release_lease(key, &token).await {
            tracing::warn!(%error, key, "lease release failed; it will expire");
            crate::telemetry::record_store_error("release");
        }
    }

    /// An entry for `key` stored after `than` (any entry when `than` is `None`): what
    /// another replica stored while this one was deciding to fetch.
    pub async fn newer_than(
        &self,
        key: &str,
        request: &HeaderMap,
        than: Option<SystemTime>,
    ) -> Option<Arc<CacheEntry>> {
        let entry = self.store.lookup(key, request).await.ok()??;
        than.is_none_or(|t| entry.stored_at > t).then_some(entry)
    }

    /// Waits (bounded) for another replica's fetch of `key` to land in the store: an
    /// entry stored after `newer_than`, or any entry when there was none.
    pub async fn wait_for_entry(
        &self,
        key: &str,
        request: &HeaderMap,
        newer_than: Option<SystemTime>,
        max_wait: Duration,
    ) -> Option<Arc<CacheEntry>> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut interval = Duration::from_millis(5);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_millis(50));
            match self.store.lookup(key, request).await {
                Ok(Some(entry)) if newer_than.is_none_or(|t| entry.stored_at > t) => {
                    return Some(entry)
                }
                // The holder's entry cannot reach us through a failed store: stop
                // waiting and fetch (in-process coalescing still holds).
                Err(_) if self.store.health() == store::Health::Degraded => return None,
                _ => {}
            }
        }
        None
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

    /// Applies a purge to the store; the count of keys it reached.
    pub async fn purge(
        &self,
        selector: &Selector,
        mode: Mode,
    ) -> Result<u64, crate::cache::store::StoreError> {
        let purged = self.store.purge(selector, mode).await;
        tracing::info!(?selector, ?mode, ?purged, "purge");
        purged
    }

    /// Whether `presented` is the admin token. Constant-time in the token's length, so
    /// response times do not reveal a matching prefix.
    pub fn admin_token_ok(&self, presented: Option<&str>) -> Result<(), ProxyError> {
        let Some(expected) = self.config.admin.token.as_deref() else {
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
        if let Some(key) = self.key_for(target) {
            self.invalidate(&key).await;
        }
    }
}

/// The proxy router: every path and method goes to the cache path.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new().fallback(proxy::handle).with_state(state)
}
