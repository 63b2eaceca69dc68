//! `Cache`: the one handle the request path uses to reach stored entries, the
//! single-flight table, the fleet lease and hit-for-miss. It lives across config
//! reloads (entries and connections survive them); what a reload replaces lives in
//! `app::Runtime`. Store failures are absorbed here: a lookup reads as a miss, a write is
//! skipped, a failed lease is granted locally.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use tracing::Instrument;

use super::entry::alloc;
use super::lock::Locks;
use super::purge::{Mode, Selector};
use super::store::{self, Lease, Store, StoreError};
use super::CacheEntry;
use crate::error::ProxyError;

/// Hit-for-miss remembers keys, not responses; bounded by bytes (about 13,000 keys of
/// 100 bytes) so a flood of distinct uncacheable URLs cannot grow it. Part of the fixed
/// baseline beside `max_size` (README, "Sizing memory").
const HIT_FOR_MISS_BYTES: u64 = 8 << 20;

/// What a fetch leader hands to the requests that waited for it.
#[derive(Clone, Debug)]
pub enum Shared {
    /// A storable response: every waiter answers from it.
    Entry(Arc<CacheEntry>, StatusCode),
    /// Not storable (private, too large, ...): waiters go to the origin themselves.
    Uncacheable,
    /// The origin failed. Waiters serve their stale copy if they may; otherwise they
    /// retry the origin when it answered (a 5xx) or return the error when it did not.
    Failed {
        fwd_status: Option<StatusCode>,
        error: ProxyError,
    },
}

/// Who fetches a key, fleet-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchRight {
    /// This process, with nothing to give back (a store local to the process, or a
    /// failing one).
    Local,
    /// This process, holding the fleet lease until `Cache::give_back`.
    Leased(String),
    /// Another replica is fetching.
    Elsewhere,
}

/// The cache as the request path sees it. `T` is what a flight's leader hands to its
/// waiters (the proxy's outcome type).
pub struct Cache<T> {
    /// Behind a trait object so the request path is the same for every backend.
    pub store: Arc<dyn Store>,
    /// One origin fetch per key per process; its outcome is handed to the waiters
    /// directly, so coalescing holds even when the store is failing.
    pub locks: Arc<Locks<T>>,
    /// Keys whose last response was not storable: they skip the single flight for a
    /// while instead of queueing every request behind the previous one (hit-for-miss).
    /// Bounded by bytes; its TTL is set at start-up.
    pub hit_for_miss: moka::sync::Cache<String, ()>,
}

impl<T: Clone + Send + Sync + 'static> Cache<T> {
    pub fn new(store: Arc<dyn Store>, hit_for_miss_ttl: Duration) -> Self {
        let hit_for_miss = moka::sync::Cache::builder()
            .max_capacity(HIT_FOR_MISS_BYTES)
            .weigher(|key: &String, _: &()| {
                u32::try_from(store::variants::PER_KEY + alloc(key.len())).unwrap_or(u32::MAX)
            })
            .time_to_live(hit_for_miss_ttl.max(Duration::from_millis(1)))
            .build();
        Cache {
            store,
            locks: Locks::new(),
            hit_for_miss,
        }
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
        let span = crate::telemetry::store_write_span(self.store.name());
        match self.store.insert(key, entry).instrument(span.clone()).await {
            Ok(()) => true,
            Err(error) => {
                crate::telemetry::record_result(&span, "error");
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
        let span = crate::telemetry::lease_span();
        let right = self
            .store
            .acquire_lease(key, ttl)
            .instrument(span.clone())
            .await;
        let result = match &right {
            Ok(Lease::Granted(_)) => "granted",
            Ok(Lease::Held) => "held_elsewhere",
            Err(_) => "error",
        };
        crate::telemetry::record_lease(result);
        crate::telemetry::record_result(&span, result);
        match right {
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

    /// Applies a purge to the store; the count of keys it reached.
    pub async fn purge(&self, selector: &Selector, mode: Mode) -> Result<u64, StoreError> {
        let purged = self.store.purge(selector, mode).await;
        tracing::info!(?selector, ?mode, ?purged, "purge");
        purged
    }
}
