//! The embedded store: moka, bounded by bytes, each key expiring at its last variant's
//! `keep_until`. One binary, nothing else to run.
//!
//! Purges are indexed, not scanned: a URL purge touches its own key, a tag purge the keys
//! its tag index names (verified against what they hold). Route, prefix and everything
//! walk the cache. A purge log makes writes race-free: a fetch that began before a purge
//! covering it never lands fresh after the purge.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::HeaderMap;
use moka::future::Cache;

use super::variants::{pick, variant_cache, with_variant, Variants};
use super::{Store, StoreError, Usage};
use crate::cache::purge::{self, soften, Mode, PurgeLog, Selector};
use crate::cache::CacheEntry;

pub struct MemoryStore {
    cache: Cache<String, Variants>,
    log: PurgeLog,
    tags: Mutex<TagIndex>,
}

/// Tag -> keys that carried it when written. Members are only added on writes, so no
/// write can lose another's membership; a purge verifies each member against what it
/// holds. Members whose entry went stay until the index is rebuilt from the cache, when
/// it holds twice as many members as the cache has keys (amortised, under the lock
/// writers take after writing).
#[derive(Default)]
struct TagIndex {
    keys: HashMap<Arc<str>, HashSet<Arc<str>>>,
    members: usize,
}

impl TagIndex {
    fn add(&mut self, key: &str, tags: &[String]) {
        let key: Arc<str> = Arc::from(key);
        for tag in tags {
            let set = match self.keys.get_mut(tag.as_str()) {
                Some(set) => set,
                None => self.keys.entry(Arc::from(tag.as_str())).or_default(),
            };
            if set.insert(key.clone()) {
                self.members += 1;
            }
        }
    }
}

impl MemoryStore {
    pub fn new(max_bytes: u64) -> Self {
        // Kept while any variant can still be used; only size evicts earlier.
        let cache = variant_cache("memory", max_bytes, CacheEntry::keep_until, Duration::MAX);
        MemoryStore {
            cache,
            log: PurgeLog::default(),
            tags: Mutex::new(TagIndex::default()),
        }
    }

    /// Entries held (approximate; moka applies writes lazily).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    fn index(&self, key: &str, entry: &CacheEntry) {
        if entry.tags.is_empty() {
            return;
        }
        let mut index = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        index.add(key, &entry.tags);
        if index.members > 1024 + 2 * self.cache.entry_count() as usize {
            let mut fresh = TagIndex::default();
            for (k, variants) in self.cache.iter() {
                for e in variants.iter() {
                    fresh.add(&k, &e.tags);
                }
            }
            *index = fresh;
        }
    }

    async fn upsert(&self, key: &str, entry: &Arc<CacheEntry>, now: SystemTime) {
        self.cache
            .entry_by_ref(key)
            .and_upsert_with(|old| {
                let old = old.map(|o| o.into_value());
                std::future::ready(with_variant(old.as_ref(), entry, |e| e.keep_until() > now))
            })
            .await;
    }

    /// Applies `mode` to the variants of `key` that `selector` reaches; whether any did.
    async fn purge_key(&self, key: &str, selector: &Selector, mode: Mode, now: SystemTime) -> bool {
        let Some(variants) = self.cache.get(key).await else {
            return false;
        };
        if !variants.iter().any(|e| selector.matches(key, e)) {
            return false;
        }
        match mode {
            Mode::Hard => self.cache.invalidate(key).await,
            Mode::Soft => {
                let softened = variants
                    .iter()
                    .map(|e| {
                        if selector.matches(key, e) && e.fresh_until > now {
                            Arc::new(soften(e, now))
                        } else {
                            e.clone()
                        }
                    })
                    .collect();
                self.cache.insert(key.to_string(), Arc::new(softened)).await;
            }
        }
        true
    }

    /// The keys a purge must look at.
    fn candidates(&self, selector: &Selector) -> Vec<String> {
        match selector {
            Selector::Key(key) => vec![key.clone()],
            Selector::Tag(tag) => {
                let index = self.tags.lock().unwrap_or_else(|e| e.into_inner());
                index
                    .keys
                    .get(tag.as_str())
                    .map(|keys| keys.iter().map(|k| k.to_string()).collect())
                    .unwrap_or_default()
            }
            _ => self
                .cache
                .iter()
                .filter(|(key, _)| selector.matches_key(key) != Some(false))
                .map(|(key, _)| key.to_string())
                .collect(),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn lookup(
        &self,
        key: &str,
        request: &HeaderMap,
    ) -> Result<Option<Arc<CacheEntry>>, StoreError> {
        let span = crate::telemetry::store_lookup_span("memory");
        let found = self
            .cache
            .get(key)
            .await
            .and_then(|variants| pick(&variants, request));
        let result = if found.is_some() { "hit" } else { "miss" };
        crate::telemetry::record_store_op("memory", "lookup", result);
        crate::telemetry::record_result(&span, result);
        Ok(found)
    }

    async fn insert(&self, key: &str, entry: Arc<CacheEntry>) -> Result<(), StoreError> {
        let now = SystemTime::now();
        // Checked before the write (the usual case: nothing is written that a purge
        // covers) and after it: a purge logged in between either sees the write when it
        // walks the cache, or is seen here and undone.
        let Some(entry) = purge::apply(&entry, self.log.covering(key, &entry), now) else {
            return Ok(());
        };
        crate::telemetry::record_store_op("memory", "insert", "ok");
        // Cache first, index second: a rebuild of the index walks the cache.
        self.upsert(key, &entry, now).await;
        self.index(key, &entry);
        if let Some(mode) = self.log.covering(key, &entry) {
            self.purge_key(key, &Selector::Key(key.to_string()), mode, now)
                .await;
        }
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.cache.remove(key).await.is_some())
    }

    async fn purge(&self, selector: &Selector, mode: Mode) -> Result<u64, StoreError> {
        let now = SystemTime::now();
        self.log.record(selector, mode, now);
        if *selector == Selector::All && mode == Mode::Hard {
            // The tag index stays: a write racing this purge may already be in it, and the
            // members left dangling go with the next rebuild.
            let n = self.cache.iter().count() as u64;
            self.cache.invalidate_all();
            return Ok(n);
        }
        let mut purged = 0;
        for key in self.candidates(selector) {
            if self.purge_key(&key, selector, mode, now).await {
                purged += 1;
            }
        }
        Ok(purged)
    }

    async fn usage(&self) -> Option<Usage> {
        self.cache.run_pending_tasks().await;
        Some(Usage {
            tier: "memory",
            bytes: self.cache.weighted_size(),
            entries: self.cache.entry_count(),
        })
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::Lifetimes;

    fn entry(tags: &[&str]) -> Arc<CacheEntry> {
        let now = SystemTime::now();
        let res = http::Response::builder()
            .status(200)
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let lifetimes = Lifetimes {
            fresh: Duration::from_secs(60),
            stale: Duration::from_secs(60),
            stale_if_error: Duration::ZERO,
        };
        let body = bytes::Bytes::from(vec![b'x'; 2000]);
        let e = CacheEntry::new(
            res.status,
            res.headers,
            body,
            Duration::ZERO,
            now,
            lifetimes,
            vec![],
        );
        Arc::new(e.with_tags(tags.iter().map(|t| t.to_string())))
    }

    #[tokio::test]
    async fn churn_past_the_bound_keeps_the_tag_index_usable() {
        let store = MemoryStore::new(256 << 10);
        for i in 0..2000 {
            store
                .insert(&format!("/k|i={i}|"), entry(&["t1"]))
                .await
                .unwrap();
        }
        let purged = store
            .purge(&Selector::Tag("t1".into()), Mode::Hard)
            .await
            .unwrap();
        assert!(
            purged > 0 && purged < 2000,
            "only what is still held: {purged}"
        );
        let index = store.tags.lock().unwrap();
        assert!(
            index.members <= 1024 + 2 * 2000,
            "the index stays bounded: {}",
            index.members
        );
    }
}
