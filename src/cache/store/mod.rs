//! Where entries live. A narrow trait so the request path does not care whether the
//! bytes are in this process or in Redis.

pub mod memory;

use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderMap;

use super::CacheEntry;

pub use memory::MemoryStore;

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

    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;
}

/// At most this many variants per key: a route that varies on a high-cardinality header
/// keeps the newest ones instead of growing without bound.
pub const MAX_VARIANTS: usize = 16;
