//! One integration test binary (links once). Each module is one behaviour, tested
//! through real sockets: a real origin written for the test, the real router or binary.

mod support;

mod cli;
mod coalescing;
mod drain;
mod early_refresh;
mod faults;
mod fleet;
mod fleet_purge;
mod forwarding;
mod key_properties;
mod keys;
mod limits;
mod memory_bound;
mod metrics;
mod origin_protection;
mod pipeline_cli;
mod poisoning;
mod purge;
mod purge_api;
mod redis_store;
mod redis_tls;
mod reload;
mod rfc9110_interim;
mod rfc9110_ranges;
mod rfc9111_freshness;
mod rfc9111_invalidation;
mod rfc9111_request_directives;
mod rfc9111_response_directives;
mod rfc9111_validation;
mod rfc9111_vary;
mod rfc9211_cache_status;
mod rfc9213_targeted;
mod stale;
mod storability;
mod telemetry;
mod tls_listener;
mod tls_origin;
mod traces;
