//! The embedded store: moka, bounded by bytes, each key expiring at its last variant's
//! `keep_until`. One binary, nothing else to run.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::HeaderMap;
use moka::future::Cache;

use super::variants::{pick, variant_cache, with_variant, Variants};
use super::{Store, StoreError, Usage};
use crate::cache::purge::{soften, Mode, Selector};
use crate::cache::CacheEntry;

pub struct MemoryStore {
    cache: Cache<String, Variants>,
}

impl MemoryStore {
    pub fn new(max_bytes: u64) -> Self {
        // Kept while any variant can still be used; only size evicts earlier.
        let cache = variant_cache(max_bytes, CacheEntry::keep_until, Duration::MAX);
        MemoryStore { cache }
    }

    /// Entries held (approximate; moka applies writes lazily).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn lookup(
        &self,
        key: &str,
        request: &HeaderMap,
    ) -> Result<Option<Arc<CacheEntry>>, StoreError> {
        Ok(self
            .cache
            .get(key)
            .await
            .and_then(|variants| pick(&variants, request)))
    }

    async fn insert(&self, key: &str, entry: Arc<CacheEntry>) -> Result<(), StoreError> {
        let now = SystemTime::now();
        self.cache
            .entry_by_ref(key)
            .and_upsert_with(|old| {
                let old = old.map(|o| o.into_value());
                std::future::ready(with_variant(old.as_ref(), &entry, |e| e.keep_until() > now))
            })
            .await;
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.cache.remove(key).await.is_some())
    }

    async fn purge(&self, selector: &Selector, mode: Mode) -> Result<u64, StoreError> {
        let now = SystemTime::now();
        let selected: Vec<(Arc<String>, Variants)> = self
            .cache
            .iter()
            .filter(|(key, variants)| variants.iter().any(|e| selector.matches(key, e)))
            .collect();
        for (key, variants) in &selected {
            match mode {
                Mode::Hard => self.cache.invalidate(key.as_str()).await,
                Mode::Soft => {
                    let softened = variants
                        .iter()
                        .map(|e| {
                            if selector.matches(key, e) {
                                Arc::new(soften(e, now))
                            } else {
                                e.clone()
                            }
                        })
                        .collect();
                    self.cache.insert(key.to_string(), Arc::new(softened)).await;
                }
            }
        }
        Ok(selected.len() as u64)
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
