//! L1 (moka, in this process) in front of L2 (Redis, shared by the fleet). Hits on fresh
//! entries never touch the network; Redis pub/sub keeps every replica's L1 honest.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::StreamExt;
use http::HeaderMap;
use moka::future::Cache;

use super::redis::{RedisStore, CLEAR_ALL};
use super::variants::{pick, variant_cache, with_variant, Variants};
use super::{Health, Lease, Store, StoreError, Usage};
use crate::cache::purge::{Mode, Selector};
use crate::cache::CacheEntry;
use crate::config::L1Config;

/// How often the subscription is checked for life, and how long a check may take.
const HEARTBEAT: Duration = Duration::from_secs(1);

pub struct TieredStore {
    l1: Cache<String, Variants>,
    l2: Arc<RedisStore>,
    shared: Arc<Shared>,
    /// The subscriber task; it ends with the store.
    subscriber: tokio::task::JoinHandle<()>,
}

/// State the subscriber task and the request path both touch.
struct Shared {
    /// Bumped on every invalidation heard (and on a lost subscription). A lookup that
    /// read L2 before an invalidation arrived must not put what it read into L1, or a
    /// purge racing with the read would be undone.
    epoch: AtomicU64,
    /// Whether invalidations can reach us right now. While not, L1 is not filled from
    /// L2: a replica must not keep copies it would not hear about.
    subscribed: AtomicBool,
}

impl TieredStore {
    pub fn new(l1: &L1Config, l2: RedisStore) -> TieredStore {
        // Never past an entry's soft TTL: stale serving goes to L2, where the fleet-wide
        // lease decides who refreshes.
        let cache = variant_cache("l1", l1.max_size, |e| e.fresh_until, l1.max_ttl);
        let l2 = Arc::new(l2);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
        });
        let subscriber = tokio::spawn(subscribe(l2.clone(), cache.clone(), shared.clone()));
        TieredStore {
            l1: cache,
            l2,
            shared,
            subscriber,
        }
    }

    /// Whether invalidations are being received (tests wait for it before relying on L1).
    pub fn subscribed(&self) -> bool {
        self.shared.subscribed.load(Ordering::Acquire)
    }

    fn fresh(entries: &[Arc<CacheEntry>], now: SystemTime) -> Vec<Arc<CacheEntry>> {
        entries
            .iter()
            .filter(|e| e.fresh_until > now)
            .cloned()
            .collect()
    }
}

impl Drop for TieredStore {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

/// Listens for invalidations for as long as the store lives. Losing the subscription
/// clears L1 (we may miss messages from now on), and so does regaining it (we may have
/// missed some in between).
async fn subscribe(l2: Arc<RedisStore>, l1: Cache<String, Variants>, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(50);
    let own = l2.node_id().to_string();
    loop {
        let mut pubsub = match l2.pubsub().await {
            Ok(p) => p,
            Err(error) => {
                tracing::debug!(%error, "redis subscribe failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(error) = pubsub.subscribe(l2.channel()).await {
            tracing::debug!(%error, "redis subscribe failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        }
        backoff = Duration::from_millis(50);
        shared.epoch.fetch_add(1, Ordering::AcqRel);
        l1.invalidate_all();
        shared.subscribed.store(true, Ordering::Release);
        tracing::debug!(channel = l2.channel(), "subscribed to L1 invalidations");

        let (mut sink, mut messages) = pubsub.split();
        // A silently dead link (no RST, e.g. a partition) never ends the stream: a
        // periodic PING that goes unanswered counts as losing the subscription.
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { break };
                    let payload = msg.get_payload_bytes();
                    // `<16 hex digits of the sender><cache key>`; anything else is not ours.
                    let (Some(sender), Some(key)) = (payload.get(..16), payload.get(16..)) else {
                        continue;
                    };
                    if sender == own.as_bytes() {
                        continue;
                    }
                    let Ok(key) = std::str::from_utf8(key) else {
                        continue;
                    };
                    shared.epoch.fetch_add(1, Ordering::AcqRel);
                    if key == CLEAR_ALL {
                        // A purge too large to announce key by key.
                        l1.invalidate_all();
                    } else {
                        l1.invalidate(key).await;
                    }
                }
                _ = heartbeat.tick() => {
                    let ping = tokio::time::timeout(HEARTBEAT, sink.ping::<redis::Value>());
                    if !matches!(ping.await, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        shared.subscribed.store(false, Ordering::Release);
        shared.epoch.fetch_add(1, Ordering::AcqRel);
        l1.invalidate_all();
        tracing::warn!("lost the redis invalidation subscription; L1 cleared, resubscribing");
    }
}

#[async_trait]
impl Store for TieredStore {
    async fn lookup(
        &self,
        key: &str,
        request: &HeaderMap,
    ) -> Result<Option<Arc<CacheEntry>>, StoreError> {
        let now = SystemTime::now();
        let span = crate::telemetry::store_lookup_span("l1");
        if let Some(variants) = self.l1.get(key).await {
            if let Some(e) = variants
                .iter()
                .find(|e| e.fresh_until > now && e.matches(request))
            {
                crate::telemetry::record_store_op("l1", "lookup", "hit");
                crate::telemetry::record_result(&span, "hit");
                return Ok(Some(e.clone()));
            }
        }
        crate::telemetry::record_store_op("l1", "lookup", "miss");
        crate::telemetry::record_result(&span, "miss");
        drop(span);
        let epoch = self.shared.epoch.load(Ordering::Acquire);
        let all = self.l2.lookup_all(key).await?;
        let found = pick(&all, request);
        let fresh = Self::fresh(&all, now);
        if !fresh.is_empty()
            && self.subscribed()
            && self.shared.epoch.load(Ordering::Acquire) == epoch
        {
            self.l1.insert(key.to_string(), Arc::new(fresh)).await;
        }
        Ok(found)
    }

    async fn insert(&self, key: &str, entry: Arc<CacheEntry>) -> Result<(), StoreError> {
        // L2 first: once L1 has it, this replica's readers see it, and the fleet should
        // not be behind this replica. An invalidation heard from here on (another
        // replica's purge) must not be undone by putting the entry into L1.
        let epoch = self.shared.epoch.load(Ordering::Acquire);
        let written = self.l2.insert_checked(key, entry.clone()).await;
        if let Ok(Some(_)) = written {
            // A purge covered it: L2 has it stale or not at all, L1 must not have it.
            self.l1.invalidate(key).await;
            return Ok(());
        }
        let now = SystemTime::now();
        if entry.fresh_until > now && self.shared.epoch.load(Ordering::Acquire) == epoch {
            self.l1
                .entry_by_ref(key)
                .and_upsert_with(|old| {
                    let old = old.map(|o| o.into_value());
                    std::future::ready(with_variant(old.as_ref(), &entry, |e| e.fresh_until > now))
                })
                .await;
            if self.shared.epoch.load(Ordering::Acquire) != epoch {
                // An invalidation arrived while L1 was written: it may have been for
                // this key and applied before the write. Drop the copy to be sure.
                self.l1.invalidate(key).await;
            }
            // While Redis fails, L1 still serves what this replica fetched (bounded by
            // `max_ttl`), so the write is not lost to this replica's readers.
            if let Err(error) = written {
                tracing::debug!(%error, key, "L2 write failed; kept in L1 only");
            }
            return Ok(());
        }
        written.map(drop)
    }

    async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        let in_l1 = self.l1.remove(key).await.is_some();
        let removed = self.l2.remove(key).await?;
        Ok(removed || in_l1)
    }

    /// L2 first (it announces to the other replicas), then this replica's L1, which
    /// drops what the selector reaches either way: L1 holds fresh copies only, so a soft
    /// purge is served stale from L2 next. Also when L2 failed, so this replica at least
    /// is purged; the error still reaches the caller.
    async fn purge(&self, selector: &Selector, mode: Mode) -> Result<u64, StoreError> {
        let purged = self.l2.purge(selector, mode).await;
        // A lookup that read L2 before the purge must not refill L1 after it.
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        if let Selector::Key(key) = selector {
            self.l1.invalidate(key.as_str()).await;
            return purged;
        }
        let local: Vec<Arc<String>> = self
            .l1
            .iter()
            .filter(|(key, variants)| variants.iter().any(|e| selector.matches(key, e)))
            .map(|(key, _)| key)
            .collect();
        for key in local {
            self.l1.invalidate(key.as_str()).await;
        }
        purged
    }

    async fn acquire_lease(&self, key: &str, ttl: Duration) -> Result<Lease, StoreError> {
        self.l2.acquire_lease(key, ttl).await
    }

    async fn release_lease(&self, key: &str, token: &str) -> Result<(), StoreError> {
        self.l2.release_lease(key, token).await
    }

    async fn usage(&self) -> Option<Usage> {
        self.l1.run_pending_tasks().await;
        Some(Usage {
            tier: "l1",
            bytes: self.l1.weighted_size(),
            entries: self.l1.entry_count(),
        })
    }

    fn health(&self) -> Health {
        self.l2.health()
    }

    fn name(&self) -> &'static str {
        "redis+l1"
    }
}
