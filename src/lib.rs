//! cachegate: a read-through caching reverse proxy for REST APIs that never lets a
//! cache stampede reach the origin.
//!
//! ```text
//! request -> route -> key -> store lookup --hit/stale--> respond (stale: refresh spawned)
//!                                 |miss
//!                                 v
//!                  single flight (lock) --follower: wait for the leader's outcome
//!                                 |leader
//!                                 v
//!                      origin -> policy (Cache-Control x route) -> store -> respond
//! ```
//!
//! # Layout
//! - `config`: `routes.yaml` in two stages (raw serde mirror, then validated `Config`).
//! - `app`: shared state (`AppState`) and the proxy router.
//! - `server`: listeners, the layer stack, graceful shutdown.
//! - `proxy`: the request path: `route`, `key`, `origin`, `respond`, `refresh`.
//! - `cache`: entries, pure policy, the single-flight lock, status enums and stores.
//! - `admin`: health, readiness and metrics.
//! - `telemetry`: logs and metric recorders.
//! - `error`: `ProxyError`, the one error type that becomes a response.
//! - `devorigin`: a small origin for the demo and load tests.

pub mod admin;
pub mod app;
pub mod cache;
pub mod config;
pub mod devorigin;
pub mod error;
pub mod proxy;
pub mod server;
pub mod telemetry;
