//! cachegate: a read-through caching reverse proxy for REST APIs that never lets a
//! cache stampede reach the origin.
//!
//! ```text
//! request -> route -> key -> store lookup (L1 -> Redis) --hit/stale--> respond
//!                                 |miss                 (stale: one refresh spawned)
//!                                 v
//!                  single flight (lock) --follower: wait for the leader's outcome
//!                                 |leader
//!                                 v
//!                  fleet lease (Redis) --held elsewhere: wait for that replica's entry
//!                                 |granted
//!                                 v
//!            fetch: origin -> policy (Cache-Control x route) -> store -> respond
//! ```
//!
//! # Layout
//! - `config`: `routes.yaml` in two stages (raw serde mirror, then validated `Config`).
//! - `app`: `AppState` = the `cache::Cache` (lives across reloads) + the config-derived
//!   `Runtime` (routes, upstream clients; swapped atomically), and the proxy router.
//! - `reload`: SIGHUP, file changes and admin `POST /reload` re-read the config.
//! - `server`: listeners (plain and TLS), connection limits, the layer stack, the drain.
//! - `conn`: what a request knows of its connection (`ConnectionInfo`: peer, TLS).
//! - `workers`: one single-threaded runtime per core; a connection is served to its end
//!   on one, with that worker's origin pool and Redis connection.
//! - `tls`: certificates and keys from PEM files, for the listener and HTTPS upstreams.
//! - `proxy`: the request path: `canonical` (the one canonical request the key and the
//!   upstream request come from), `route`, `key`, `fetch`, `origin`, `respond`,
//!   `refresh`, `upstream_guard` (concurrency, rate limit and breaker per upstream);
//!   `explain` (`cachegate key`).
//! - `cache`: `Cache` (store + single flight + lease + hit-for-miss), entries, pure policy, purge selectors, the single-flight lock, status enums
//!   and stores (memory; Redis with an L1 in front).
//! - `admin`: health, readiness, metrics and purges.
//! - `telemetry`: logs, OpenTelemetry traces and metric recorders.
//! - `error`: `ProxyError`, the one error type that becomes a response.
//! - `pipeline`: `cachegate purge` and `cachegate warm`, clients for deploy pipelines.
//! - `devorigin`: a small origin for the demo and load tests.

pub mod admin;
pub mod app;
pub mod cache;
pub mod config;
pub mod conn;
pub mod devorigin;
pub mod error;
pub mod pipeline;
pub mod proxy;
pub mod purge;
pub mod reload;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod workers;
