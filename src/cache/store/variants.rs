//! The variants of one key as held in this process (the memory store and the L1 in
//! front of Redis): copy-on-write sets in a moka cache bounded by bytes, each key
//! expiring with the last of its variants.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use moka::future::Cache;
use moka::Expiry;

use super::MAX_VARIANTS;
use crate::cache::entry::alloc;
use crate::cache::CacheEntry;

/// Heap bytes moka keeps per key besides the key's text and the set: its node, the
/// `Arc`s around key and value entry, deque and timer-wheel nodes, hash-table slots and
/// frequency-sketch growth. Measured (with margin) by `tests::the_weigher_covers_what_the_cache_allocates`.
pub const PER_KEY: usize = 512;

/// The variants of one key, newest first. Replaced whole on every write (copy-on-write),
/// so readers never see a half-updated set.
pub type Variants = Arc<Vec<Arc<CacheEntry>>>;

/// A byte-bounded cache of variant sets; a key lives until the latest `deadline` of its
/// variants, and never longer than `cap`.
pub fn variant_cache(
    tier: &'static str,
    max_bytes: u64,
    deadline: fn(&CacheEntry) -> SystemTime,
    cap: Duration,
) -> Cache<String, Variants> {
    Cache::builder()
        .max_capacity(max_bytes)
        .eviction_listener(move |_, _, cause| {
            if cause == moka::notification::RemovalCause::Size {
                crate::telemetry::record_eviction(tier);
            }
        })
        .weigher(|key: &String, v: &Variants| u32::try_from(weight(key, v)).unwrap_or(u32::MAX))
        .expire_after(Until { deadline, cap })
        .build()
}

/// Heap bytes one key costs the cache: moka's bookkeeping, the key, the set, and every
/// variant (`CacheEntry::weight`). An entry shared by an old and a new set is counted in
/// each while both exist, which only overstates.
pub fn weight(key: &str, variants: &Variants) -> usize {
    let set = alloc(2 * size_of::<usize>() + size_of::<Vec<()>>())
        + alloc(variants.capacity() * size_of::<usize>());
    PER_KEY + alloc(key.len()) + set + variants.iter().map(|e| e.weight()).sum::<usize>()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::counting::live;
    use crate::cache::policy::Lifetimes;
    use bytes::Bytes;
    use http::StatusCode;

    fn entry(n: usize) -> Arc<CacheEntry> {
        let resp = http::Response::builder()
            .header("content-type", "application/json")
            .header("cache-control", "max-age=600")
            .header("etag", format!("\"{n}\""))
            .body(())
            .unwrap();
        Arc::new(CacheEntry::new(
            StatusCode::OK,
            resp.headers().clone(),
            Bytes::from(vec![b'x'; 100 + n % 64]),
            Duration::ZERO,
            SystemTime::now(),
            Lifetimes {
                fresh: Duration::from_secs(600),
                stale: Duration::ZERO,
                stale_if_error: Duration::ZERO,
            },
            Vec::new(),
        ))
    }

    #[tokio::test]
    async fn the_weigher_covers_what_the_cache_allocates() {
        for keys in [1_000, 10_000] {
            let cache = variant_cache("memory", 1 << 40, CacheEntry::keep_until, Duration::MAX);
            cache.run_pending_tasks().await;
            let start = live();
            let sets: Vec<(String, Variants)> = (0..keys)
                .map(|n| {
                    (
                        format!("/items/{{id}}|id={n}|"),
                        with_variant(None, &entry(n), |_| true),
                    )
                })
                .collect();
            let built = live() - start;
            for (key, set) in sets {
                cache.insert(key, set).await;
            }
            cache.run_pending_tasks().await;
            let held = usize::try_from(live() - start).unwrap() as u64;
            let counted = cache.weighted_size();
            let moka = (held as f64 - built as f64) / keys as f64;
            eprintln!(
                "{keys} keys: held {held} B, counted {counted} B; moka's share {moka:.0} B per key"
            );
            assert_eq!(cache.entry_count(), keys as u64);
            assert!(
                counted >= held,
                "{keys} keys: counted {counted} < {held} held"
            );
            // moka's fixed tables (segments, deques) are spread over the keys: at 1,000
            // keys they come to ~500 B each and now and then more, so its per-key share
            // is judged where they are amortised. The whole is bounded at every size.
            assert!(
                keys < 10_000 || moka <= PER_KEY as f64,
                "{keys} keys: moka holds {moka:.0} B per key"
            );
            // Pessimistic for tiny entries (well-known header names are counted, though
            // they cost nothing), not by more than this.
            assert!(
                counted <= 2 * held,
                "{keys} keys: counted {counted} for {held} held"
            );
        }
    }

    #[tokio::test]
    async fn the_bound_holds_for_the_counted_bytes() {
        let max = 256 << 10;
        let cache = variant_cache("memory", max, CacheEntry::keep_until, Duration::MAX);
        for n in 0..5_000 {
            let e = entry(n);
            cache
                .insert(format!("/k/{n}"), with_variant(None, &e, |_| true))
                .await;
        }
        cache.run_pending_tasks().await;
        assert!(cache.weighted_size() <= max, "{}", cache.weighted_size());
        assert!(cache.entry_count() > 0);
    }
}
