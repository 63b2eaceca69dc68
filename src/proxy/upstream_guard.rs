//! Origin protection per upstream: a bound on requests in flight (`max_concurrency`,
//! waited for up to `queue_timeout`), a token bucket (`rate_limit`) and a circuit
//! breaker. Every origin request (miss, refresh, pass-through) holds an `OriginPermit`
//! while it runs; a rejection is answered like an origin failure (a usable stale copy,
//! else 503 with `Retry-After`), without contacting the origin.

use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{BreakerSettings, Protection, RateLimit, Upstream};
use crate::error::ProxyError;
pub use crate::error::RejectReason;

/// A rejected origin request: why, and when the client may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub reason: RejectReason,
    pub retry_after: Duration,
}

impl From<Rejected> for ProxyError {
    fn from(r: Rejected) -> Self {
        ProxyError::origin_busy(r.reason, r.retry_after)
    }
}

/// What an origin exchange told the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any answer but a 5xx.
    Success,
    /// A connect error, a timeout, a broken exchange or a 5xx.
    Failure,
}

// === impl Breaker ===

/// The breaker's state machine: pure, the caller passes `now`.
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    state: BreakerState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everything else is rejected until it reports.
    HalfOpen,
}

/// The breaker's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Allowed,
    /// The one request let through after `open_for`; its outcome closes or re-opens.
    Probe,
    Rejected {
        retry_after: Duration,
    },
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Breaker {
            settings,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether requests are being turned away (open, or half-open with a probe out).
    pub fn is_open(&self) -> bool {
        !matches!(self.state, BreakerState::Closed { .. })
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            BreakerState::Closed { .. } => Admit::Allowed,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Admit::Probe
            }
            BreakerState::Open { until } => Admit::Rejected {
                retry_after: until - now,
            },
            // The probe answers within the upstream's timeout; a second later is a fair
            // guess for a retry.
            BreakerState::HalfOpen => Admit::Rejected {
                retry_after: Duration::from_secs(1),
            },
        }
    }

    /// The outcome of an admitted request (`probe`: it was the half-open probe).
    pub fn record(&mut self, outcome: Outcome, probe: bool, now: Instant) {
        let reopen = BreakerState::Open {
            until: now + self.settings.open_for,
        };
        self.state = match (self.state, outcome) {
            (BreakerState::HalfOpen, Outcome::Success) if probe => {
                BreakerState::Closed { failures: 0 }
            }
            (BreakerState::HalfOpen, Outcome::Failure) if probe => reopen,
            (BreakerState::Closed { .. }, Outcome::Success) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, Outcome::Failure) => {
                if failures + 1 >= self.settings.failures {
                    reopen
                } else {
                    BreakerState::Closed {
                        failures: failures + 1,
                    }
                }
            }
            // A request admitted before the breaker opened says nothing new.
            (state, _) => state,
        };
    }

    /// The probe went away without an answer (its client hung up): the next request
    /// probes instead, so the breaker cannot stay half-open.
    pub fn abandon_probe(&mut self, now: Instant) {
        if self.state == BreakerState::HalfOpen {
            self.state = BreakerState::Open { until: now };
        }
    }
}

// === impl Guard ===

/// One upstream's protection. Lives across config reloads while the upstream's
/// settings are unchanged (`Guard::reuse`), so in-flight permits keep counting.
pub struct Guard {
    upstream: String,
    settings: Protection,
    /// Permits are owned (`Arc`) so they can move into a spawned fetch and into a
    /// streaming response body.
    semaphore: Option<Arc<Semaphore>>,
    limiter: Option<DefaultDirectRateLimiter>,
    /// A std Mutex: held for a state transition only, never across an await.
    breaker: Option<Mutex<Breaker>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("upstream", &self.upstream)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Guard {
    pub fn new(upstream: &Upstream) -> Arc<Self> {
        let settings = upstream.protection.clone();
        let guard = Guard {
            upstream: upstream.name.clone(),
            semaphore: settings
                .max_concurrency
                .map(|n| Arc::new(Semaphore::new(n))),
            limiter: settings
                .rate_limit
                .map(|r| governor::RateLimiter::direct(quota(r))),
            breaker: settings.breaker.map(|b| Mutex::new(Breaker::new(b))),
            settings,
        };
        if guard.breaker.is_some() {
            crate::telemetry::record_breaker_open(&guard.upstream, false);
        }
        Arc::new(guard)
    }

    /// The guards for `upstreams` (indexed like them): `old`'s guard for an upstream of
    /// the same name and settings (its permits and breaker state carry over), else new.
    pub fn reuse(upstreams: &[Upstream], old: &[Arc<Guard>]) -> Vec<Arc<Guard>> {
        upstreams
            .iter()
            .map(|u| {
                old.iter()
                    .find(|g| g.upstream == u.name && g.settings == u.protection)
                    .cloned()
                    .unwrap_or_else(|| Guard::new(u))
            })
            .collect()
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The breaker's state, when the upstream has one.
    pub fn breaker_state(&self) -> Option<BreakerState> {
        self.breaker.as_ref().map(|b| self.with(b, |b| b.state()))
    }

    fn with<R>(&self, breaker: &Mutex<Breaker>, f: impl FnOnce(&mut Breaker) -> R) -> R {
        let mut b = match breaker.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let was_open = b.is_open();
        let r = f(&mut b);
        if b.is_open() != was_open {
            crate::telemetry::record_breaker_open(&self.upstream, b.is_open());
            if b.is_open() {
                tracing::warn!(upstream = %self.upstream, state = ?b.state(), "origin breaker opened");
            } else {
                tracing::info!(upstream = %self.upstream, "origin breaker closed");
            }
        }
        r
    }

    /// A permit to send one request to the origin, waiting up to `queue_timeout` for a
    /// rate-limit token and a slot (a miss or a pass-through). Breaker first (an open
    /// upstream answers at once), then the token bucket, then the concurrency bound.
    pub async fn admit(self: &Arc<Self>) -> Result<OriginPermit, Rejected> {
        let deadline = tokio::time::Instant::now() + self.settings.queue_timeout;
        let result = async {
            let mut permit = self.breaker_admit()?;
            if let Some(limiter) = &self.limiter {
                // Bounded: each turn takes a token, or sleeps until one is due, or gives up.
                while let Err(not_until) = limiter.check() {
                    let due = not_until.wait_time_from(DefaultClock::default().now());
                    if tokio::time::Instant::now() + due > deadline {
                        return Err(Rejected {
                            reason: RejectReason::RateLimit,
                            retry_after: due,
                        });
                    }
                    tokio::time::sleep(due).await;
                }
            }
            if let Some(semaphore) = &self.semaphore {
                let slot = tokio::time::timeout_at(deadline, semaphore.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .ok_or(QUEUE_TIMEOUT)?;
                permit._slot = Some(slot);
            }
            Ok(permit)
        }
        .await;
        self.count(result)
    }

    /// A permit only if one is free now (a background refresh: skipped, never queued).
    pub fn try_admit(self: &Arc<Self>) -> Result<OriginPermit, Rejected> {
        let result = (|| {
            let mut permit = self.breaker_admit()?;
            if let Some(limiter) = &self.limiter {
                if let Err(not_until) = limiter.check() {
                    return Err(Rejected {
                        reason: RejectReason::RateLimit,
                        retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                    });
                }
            }
            if let Some(semaphore) = &self.semaphore {
                permit._slot = Some(
                    semaphore
                        .clone()
                        .try_acquire_owned()
                        .map_err(|_| QUEUE_TIMEOUT)?,
                );
            }
            Ok(permit)
        })();
        self.count(result)
    }

    /// The breaker's part of an admission: a permit (marked if it is the probe) or a
    /// rejection. A permit dropped later in the admission abandons the probe.
    fn breaker_admit(self: &Arc<Self>) -> Result<OriginPermit, Rejected> {
        let mut permit = OriginPermit {
            guard: self.clone(),
            probe: false,
            reported: false,
            _slot: None,
        };
        if let Some(breaker) = &self.breaker {
            match self.with(breaker, |b| b.admit(Instant::now())) {
                Admit::Allowed => {}
                Admit::Probe => permit.probe = true,
                Admit::Rejected { retry_after } => {
                    return Err(Rejected {
                        reason: RejectReason::BreakerOpen,
                        retry_after,
                    })
                }
            }
        }
        Ok(permit)
    }

    fn count(&self, result: Result<OriginPermit, Rejected>) -> Result<OriginPermit, Rejected> {
        if let Err(rejected) = &result {
            crate::telemetry::record_origin_rejected(&self.upstream, rejected.reason.as_str());
        }
        result
    }
}

/// A slot did not free up in time; a second is a fair guess for a retry.
const QUEUE_TIMEOUT: Rejected = Rejected {
    reason: RejectReason::QueueTimeout,
    retry_after: Duration::from_secs(1),
};

/// `/readyz` lines for the upstreams whose breaker is not closed, e.g.
/// `upstream api: breaker open`.
pub fn open_upstreams(guards: &[Arc<Guard>]) -> String {
    let mut out = String::new();
    for g in guards {
        let state = match g.breaker_state() {
            Some(BreakerState::Open { .. }) => "open",
            Some(BreakerState::HalfOpen) => "half-open",
            _ => continue,
        };
        out.push_str(&format!("upstream {}: breaker {state}\n", g.upstream));
    }
    out
}

fn quota(rate: RateLimit) -> Quota {
    let n = NonZeroU32::new(rate.requests).unwrap_or(NonZeroU32::MIN);
    // A full bucket holds one period's worth: `200/s` admits a burst of 200.
    Quota::with_period(rate.per / n.get())
        .unwrap_or_else(|| Quota::per_second(n))
        .allow_burst(n)
}

// === impl OriginPermit ===

/// Held while one origin request runs (until its response body is read or streamed
/// out); dropping it frees the upstream's slot. `report` tells the breaker how the
/// exchange went.
pub struct OriginPermit {
    guard: Arc<Guard>,
    probe: bool,
    reported: bool,
    _slot: Option<OwnedSemaphorePermit>,
}

impl OriginPermit {
    pub fn report(&mut self, outcome: Outcome) {
        if self.reported {
            return;
        }
        self.reported = true;
        if let Some(breaker) = &self.guard.breaker {
            let probe = self.probe;
            self.guard
                .with(breaker, |b| b.record(outcome, probe, Instant::now()));
        }
    }

    /// The outcome of a response with `status`.
    pub fn report_status(&mut self, status: http::StatusCode) {
        self.report(if status.is_server_error() {
            Outcome::Failure
        } else {
            Outcome::Success
        });
    }
}

impl Drop for OriginPermit {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            if let Some(breaker) = &self.guard.breaker {
                self.guard
                    .with(breaker, |b| b.abandon_probe(Instant::now()));
            }
        }
    }
}

/// A response body that keeps its origin request's permit until it ends, so a
/// streamed pass-through counts as in flight while the origin is still sending.
pub struct Held<B> {
    inner: B,
    _permit: OriginPermit,
}

impl<B> Held<B> {
    pub fn new(inner: B, permit: OriginPermit) -> Self {
        Held {
            inner,
            _permit: permit,
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, open_for: u64) -> Breaker {
        Breaker::new(BreakerSettings {
            failures,
            open_for: Duration::from_secs(open_for),
        })
    }

    #[test]
    fn opens_after_n_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut b = breaker(3, 10);
        b.record(Outcome::Failure, false, t0);
        b.record(Outcome::Failure, false, t0);
        b.record(Outcome::Success, false, t0);
        b.record(Outcome::Failure, false, t0);
        b.record(Outcome::Failure, false, t0);
        assert_eq!(b.admit(t0), Admit::Allowed, "a success resets the count");
        b.record(Outcome::Failure, false, t0);
        assert!(b.is_open());
        assert_eq!(
            b.admit(t0 + Duration::from_secs(4)),
            Admit::Rejected {
                retry_after: Duration::from_secs(6)
            }
        );
    }

    #[test]
    fn half_opens_with_one_probe_after_open_for() {
        let t0 = Instant::now();
        let mut b = breaker(1, 10);
        b.record(Outcome::Failure, false, t0);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(later), Admit::Probe);
        assert!(
            matches!(b.admit(later), Admit::Rejected { .. }),
            "one probe"
        );
        // A request admitted before the breaker opened does not decide it.
        b.record(Outcome::Success, false, later);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(Outcome::Success, true, later);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        assert_eq!(b.admit(later), Admit::Allowed);
    }

    #[test]
    fn a_failed_probe_reopens_for_open_for() {
        let t0 = Instant::now();
        let mut b = breaker(1, 10);
        b.record(Outcome::Failure, false, t0);
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(b.admit(t1), Admit::Probe);
        b.record(Outcome::Failure, true, t1);
        assert_eq!(
            b.admit(t1 + Duration::from_secs(1)),
            Admit::Rejected {
                retry_after: Duration::from_secs(9)
            }
        );
        assert_eq!(b.admit(t1 + Duration::from_secs(10)), Admit::Probe);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_request_probe() {
        let t0 = Instant::now();
        let mut b = breaker(1, 10);
        b.record(Outcome::Failure, false, t0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(t1), Admit::Probe);
        b.abandon_probe(t1);
        assert_eq!(b.admit(t1), Admit::Probe);
    }

    fn upstreams(protection: &str) -> Vec<Upstream> {
        let src = format!(
            "upstreams:\n  a: {{ url: \"http://127.0.0.1:1\", {protection} }}\n  b: {{ url: \"http://127.0.0.1:2\" }}\n\
             routes:\n  - path: /x\n    upstream: a\n"
        );
        let o = crate::config::Overrides::default();
        crate::config::Config::parse(&src, std::path::Path::new("t.yaml"), &o)
            .unwrap()
            .upstreams
    }

    #[test]
    fn a_reload_keeps_the_guards_of_unchanged_upstreams() {
        let before = upstreams("max_concurrency: 2");
        let old = Guard::reuse(&before, &[]);
        let same = Guard::reuse(&upstreams("max_concurrency: 2"), &old);
        assert!(Arc::ptr_eq(&old[0], &same[0]) && Arc::ptr_eq(&old[1], &same[1]));
        let changed = Guard::reuse(&upstreams("max_concurrency: 3"), &old);
        assert!(
            !Arc::ptr_eq(&old[0], &changed[0]),
            "new settings, new guard"
        );
        assert!(Arc::ptr_eq(&old[1], &changed[1]));
    }

    #[tokio::test]
    async fn a_refresh_never_waits_and_a_miss_waits_up_to_queue_timeout() {
        let guards = Guard::reuse(&upstreams("max_concurrency: 1, queue_timeout: 50ms"), &[]);
        let g = &guards[0];
        let held = g.try_admit().expect("a free slot");
        assert_eq!(g.try_admit().err(), Some(QUEUE_TIMEOUT));
        assert_eq!(g.admit().await.err(), Some(QUEUE_TIMEOUT));
        drop(held);
        assert!(g.admit().await.is_ok(), "the slot is free again");
        // Without settings nothing is ever rejected.
        assert!(guards[1].try_admit().is_ok() && guards[1].try_admit().is_ok());
    }

    #[test]
    fn quota_admits_a_burst_of_one_period() {
        let q = quota(RateLimit {
            requests: 200,
            per: Duration::from_secs(1),
        });
        assert_eq!(q.burst_size().get(), 200);
        assert_eq!(q.replenish_interval(), Duration::from_millis(5));
    }
}
