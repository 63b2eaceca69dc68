//! Stale-while-revalidate: the request that finds a stale entry answers at once; the
//! key's single-flight permit moves into a spawned task that revalidates it, detached
//! from any client and bounded by its own timeout. With `early_refresh`, a hit on a
//! fresh entry may start the same refresh before the entry goes stale (XFetch).

use std::sync::Arc;
use std::time::SystemTime;

use tracing::Instrument;

use crate::app::AppState;
use crate::cache::policy;
use crate::cache::FetchRight;
use crate::cache::{CacheEntry, Fwd};
use crate::config::Route;

use super::{cache_request, fetch, Inbound, Shared};

/// On a hit of a fresh entry: with the route's `early_refresh`, refreshes it once it is
/// within XFetch's random horizon of its expiry (`policy::refresh_early`, the sample drawn
/// once per stored entry), through the same single refresh per
/// key (and fleet lease) as a stale entry, so a hot key is renewed before it goes stale.
pub fn maybe_early(
    state: &Arc<AppState>,
    route: &Arc<Route>,
    key: &str,
    entry: &Arc<CacheEntry>,
    inbound: &Inbound,
    now: SystemTime,
) {
    let Some(beta) = route.policy.early_refresh else {
        return;
    };
    let left = entry.fresh_until.duration_since(now).unwrap_or_default();
    // XFetch draws per request, so its chance of refreshing grows with the request
    // rate: at 16,000 hits/s every new entry was refreshed again within milliseconds
    // (4.75 origin requests per TTL in loadtests/compare.sh). Drawn once per stored
    // entry instead (a hash of its key and store time), the moment of the refresh is
    // still random, spread like XFetch's, but comes once per entry whatever the rate.
    let sample = entry_sample(key, entry);
    if !policy::refresh_early(entry.fetch_time, left, beta, sample) {
        return;
    }
    if spawn(state, route, key, entry.clone(), inbound) {
        let label = metrics::SharedString::from(Arc::clone(&route.template));
        metrics::counter!("cachegate_early_refreshes_total", "route" => label).increment(1);
    }
}

/// A uniform sample in (0, 1] fixed for one stored entry.
fn entry_sample(key: &str, entry: &CacheEntry) -> f64 {
    let stored = entry
        .stored_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), stored);
    // The top 53 bits as a fraction in [0, 1), then flipped into (0, 1].
    1.0 - (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Starts a background refresh of `key` unless one (or a miss fetch) is already running;
/// whether it started one.
pub fn spawn(
    state: &Arc<AppState>,
    route: &Arc<Route>,
    key: &str,
    stale: Arc<CacheEntry>,
    inbound: &Inbound,
) -> bool {
    let Some(permit) = state.cache.locks.try_lock(key) else {
        return false;
    };
    // An upstream at its limit (or with its breaker open) is not queued for: the entry
    // stays stale and a later request tries again. Dropping the lock lets it.
    let origin_permit = match inbound.rt.guard(route.upstream).try_admit() {
        Ok(p) => p,
        Err(rejected) => {
            tracing::debug!(route = %route.template, key, reason = rejected.reason.as_str(), "refresh skipped");
            crate::telemetry::record_refresh(&route.template, "skipped");
            return false;
        }
    };
    let state = state.clone();
    let route = route.clone();
    let key = key.to_string();
    let inbound = Inbound {
        rt: inbound.rt.clone(),
        parts: cache_request(inbound),
        fwd: inbound.fwd.clone(),
        upstream: inbound.upstream.clone(),
    };
    // Its own trace, linked to the request that found the entry stale: a refresh outlives
    // that request and is not part of its latency.
    let span = crate::telemetry::refresh_span(&route.template, &key);
    tokio::spawn(
        async move {
            // One refresh per key for the whole fleet: without the lease, another replica
            // is refreshing and this one keeps serving stale.
            let upstream_timeout = inbound.rt.origins.upstream(route.upstream).timeout;
            let right = state.cache.fetch_right(&key, upstream_timeout).await;
            match right {
                FetchRight::Elsewhere => return,
                // Another replica may have stored a fresh copy (and released its lease)
                // between our stale read and this lease: then there is nothing to refresh.
                FetchRight::Leased(_) => {
                    let headers = &inbound.upstream.headers;
                    if let Some(newer) = state
                        .cache
                        .newer_than(&key, headers, Some(stale.stored_at))
                        .await
                    {
                        state.cache.give_back(&key, right).await;
                        let status = newer.status;
                        permit.release(Shared::Entry(newer, status));
                        return;
                    }
                }
                FetchRight::Local => {}
            }
            let budget = inbound.rt.config.refresh_timeout;
            let refresh = fetch(
                &state,
                &route,
                &key,
                &inbound,
                Some(stale),
                Fwd::Stale,
                Some(origin_permit),
            );
            match tokio::time::timeout(budget, refresh).await {
                Ok(fetched) => {
                    crate::telemetry::record_refresh(
                        &route.template,
                        fetched.status.outcome_of_refresh(),
                    );
                    permit.release(fetched.shared);
                }
                Err(_) => {
                    tracing::warn!(route = %route.template, key, "background refresh timed out");
                    crate::telemetry::record_refresh(&route.template, "timeout");
                    // Dropping the permit wakes any waiter to compete again.
                }
            }
            state.cache.give_back(&key, right).await;
        }
        .instrument(span),
    );
    true
}
