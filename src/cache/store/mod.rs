//! Where entries live. A narrow trait so the request path does not care whether the
//! bytes are in this process or in Redis.

pub mod memory;
pub mod redis;
pub mod tiered;
pub mod variants;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderMap;

use super::purge::{Mode, Selector};
use super::CacheEntry;

pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use tiered::TieredStore;

use crate::config::{Backend, StoreConfig};

/// The store the config names.
pub async fn build(config: &StoreConfig) -> anyhow::Result<Arc<dyn Store>> {
    match &config.backend {
        Backend::Memory { max_size } => Ok(Arc::new(MemoryStore::new(*max_size))),
        Backend::Redis(redis) => {
            let l2 = RedisStore::connect(redis).await?;
            if config.l1.max_size == 0 {
                return Ok(Arc::new(l2));
            }
            Ok(Arc::new(TieredStore::new(&config.l1, l2)))
        }
    }
}

/// A store failure. Never fails a request: callers treat it as a miss or a skipped write.
#[derive(Debug, thiserror::Error)]
#[error("store {op} failed: {message}")]
pub struct StoreError {
    pub op: &'static str,
    pub message: String,
}

/// The cache's storage. A key holds one or more variants (one per set of `Vary` values).
///
/// Contracts shared by every implementation:
/// - entries past `CacheEntry::keep_until` may be dropped at any time;
/// - undecodable stored bytes read as a miss, never as an error;
/// - methods never block on a failing backend longer than its configured timeout.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The variant of `key` whose vary record matches `request`.
    async fn lookup(
        &self,
        key: &str,
        request: &HeaderMap,
    ) -> Result<Option<Arc<CacheEntry>>, StoreError>;

    /// Stores `entry`, replacing the variant of `key` with the same vary record.
    async fn insert(&self, key: &str, entry: Arc<CacheEntry>) -> Result<(), StoreError>;

    /// Removes every variant of `key`; true when something was there.
    async fn remove(&self, key: &str) -> Result<bool, StoreError>;

    /// Removes (hard) or marks stale (soft) every entry `selector` reaches; returns how
    /// many keys it touched. Fleet stores make the purge visible to every replica.
    async fn purge(&self, selector: &Selector, mode: Mode) -> Result<u64, StoreError> {
        let _ = (selector, mode);
        Err(StoreError {
            op: "purge",
            message: format!("the {} store cannot purge yet", self.name()),
        })
    }

    /// Takes the fleet-wide right to fetch `key` for at most `ttl`, so one replica of a
    /// fleet asks the origin while the others wait for (or keep serving) the entry.
    /// Stores local to one process grant it at once: the in-process lock suffices.
    async fn acquire_lease(&self, _key: &str, _ttl: Duration) -> Result<Lease, StoreError> {
        Ok(Lease::Granted(None))
    }

    /// Gives a granted lease back (compare-and-delete on its token).
    async fn release_lease(&self, _key: &str, _token: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// What the store keeps in this process, as its bound counts it; None when it keeps
    /// nothing here. Brings moka's lazy counters up to date first: call it on a metrics
    /// scrape, not per request.
    async fn usage(&self) -> Option<Usage> {
        None
    }

    /// Whether the backend is usable right now (readiness, logs).
    fn health(&self) -> Health {
        Health::Ok
    }

    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;
}

/// The counted size of an in-process tier (`cachegate_store_bytes{tier}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// `memory` (the memory store) or `l1` (in front of Redis).
    pub tier: &'static str,
    /// Sum of the weights (`variants::weight`), which `max_size` bounds.
    pub bytes: u64,
    /// Keys held.
    pub entries: u64,
}

/// The answer to `acquire_lease`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// This process fetches; release with the token (None: nothing to release).
    Granted(Option<String>),
    /// Another replica is fetching.
    Held,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// The backend is failing; requests are served from the origin (and L1).
    Degraded,
}

/// At most this many variants per key: a route that varies on a high-cardinality header
/// keeps the newest ones instead of growing without bound.
pub const MAX_VARIANTS: usize = 16;
