//! The variants of one key as held in this process (the memory store and the L1 in
//! front of Redis): copy-on-write sets in a moka cache bounded by bytes, each key
//! expiring with the last of its variants.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use moka::future::Cache;
use moka::Expiry;

use super::MAX_VARIANTS;
use crate::cache::CacheEntry;

/// The variants of one key, newest first. Replaced whole on every write (copy-on-write),
/// so readers never see a half-updated set.
pub type Variants = Arc<Vec<Arc<CacheEntry>>>;

/// A byte-bounded cache of variant sets; a key lives until the latest `deadline` of its
/// variants, and never longer than `cap`.
pub fn variant_cache(
    max_bytes: u64,
    deadline: fn(&CacheEntry) -> SystemTime,
    cap: Duration,
) -> Cache<String, Variants> {
    Cache::builder()
        .max_capacity(max_bytes)
        .weigher(|key: &String, v: &Variants| {
            let bytes = key.len() + v.iter().map(|e| e.weight()).sum::<usize>();
            u32::try_from(bytes).unwrap_or(u32::MAX)
        })
        .expire_after(Until { deadline, cap })
        .build()
}

/// The variant a request selects (its vary record matches).
pub fn pick(variants: &[Arc<CacheEntry>], request: &HeaderMap) -> Option<Arc<CacheEntry>> {
    variants.iter().find(|e| e.matches(request)).cloned()
}

/// `entry` in front of the `old` variants it does not replace (another vary record) that
/// `keep` still wants, at most `MAX_VARIANTS` in all.
pub fn with_variant(
    old: Option<&Variants>,
    entry: &Arc<CacheEntry>,
    keep: impl Fn(&CacheEntry) -> bool,
) -> Variants {
    let mut variants = vec![entry.clone()];
    if let Some(old) = old {
        variants.extend(
            old.iter()
                .filter(|e| e.vary != entry.vary && keep(e))
                .take(MAX_VARIANTS - 1)
                .cloned(),
        );
    }
    Arc::new(variants)
}

struct Until {
    deadline: fn(&CacheEntry) -> SystemTime,
    cap: Duration,
}

impl Until {
    fn ttl(&self, v: &Variants) -> Option<Duration> {
        let until = v.iter().map(|e| (self.deadline)(e)).max()?;
        let left = until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Some(left.min(self.cap))
    }
}

impl Expiry<String, Variants> for Until {
    fn expire_after_create(&self, _: &String, v: &Variants, _: Instant) -> Option<Duration> {
        self.ttl(v)
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &Variants,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.ttl(v)
    }
}
