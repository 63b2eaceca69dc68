//! What the cache knows: entries, the pure policy that decides them, the single-flight
//! lock, and the stores. Nothing here depends on axum.

pub mod access;
pub mod entry;
pub mod lock;
pub mod policy;
pub mod purge;
pub mod status;
pub mod store;

pub use access::{Cache, FetchRight, Shared};
pub use entry::CacheEntry;
pub use status::{CacheStatus, Detail, Fwd};
