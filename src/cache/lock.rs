//! Single flight per key inside one process: the first caller gets a `Permit` (the
//! leader fetches), later callers get a `Waiter` that receives the leader's outcome.
//! A permit dropped without `release` (panic, cancelled request) wakes its waiters with
//! `None`, so they compete again instead of hanging.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// A table with more slots than this, three quarters empty, is shrunk: a burst of distinct
/// misses would otherwise leave its peak capacity allocated for the life of the process.
const SHRINK_ABOVE: usize = 1024;

/// The lock table. A std `Mutex` because it is never held across an `.await`.
///
/// It holds one flight per key being fetched right now, so its size follows the fetches
/// in flight (each bounded by the upstream timeout), not the keys ever seen; after a burst
/// it gives its slots back (`SHRINK_ABOVE`).
pub struct Locks<T> {
    flights: Mutex<HashMap<String, Arc<Flight<T>>>>,
}

struct Flight<T> {
    tx: watch::Sender<Option<T>>,
}

pub enum Lock<T> {
    Leader(Permit<T>),
    Follower(Waiter<T>),
}

/// The right (and duty) to fetch one key. Release it with the outcome.
pub struct Permit<T> {
    locks: Arc<Locks<T>>,
    key: String,
    flight: Arc<Flight<T>>,
}

pub struct Waiter<T> {
    rx: watch::Receiver<Option<T>>,
}

/// Why a waiter got no outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    /// The leader gave up without an outcome; compete again.
    Abandoned,
    /// The wait took longer than allowed.
    TimedOut,
}

impl<T: Clone + Send + Sync + 'static> Locks<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Locks {
            flights: Mutex::new(HashMap::new()),
        })
    }

    /// Leader if nobody is fetching `key`, follower otherwise.
    pub fn lock(self: &Arc<Self>, key: &str) -> Lock<T> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = flights.get(key) {
            return Lock::Follower(Waiter {
                rx: flight.tx.subscribe(),
            });
        }
        let (tx, _) = watch::channel(None);
        let flight = Arc::new(Flight { tx });
        flights.insert(key.to_string(), flight.clone());
        Lock::Leader(Permit {
            locks: self.clone(),
            key: key.to_string(),
            flight,
        })
    }

    /// A permit only if nobody is fetching `key` (background refreshes never wait).
    pub fn try_lock(self: &Arc<Self>, key: &str) -> Option<Permit<T>> {
        match self.lock(key) {
            Lock::Leader(p) => Some(p),
            Lock::Follower(_) => None,
        }
    }

    /// Keys being fetched right now.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Slots the table has allocated (for the test that it shrinks after a burst).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .capacity()
    }
}

impl<T> Permit<T> {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Hands `outcome` to every waiter and frees the key.
    pub fn release(self, outcome: T) {
        self.flight.tx.send_replace(Some(outcome));
        // Drop removes the flight; waiters already hold the outcome.
    }
}

impl<T> Drop for Permit<T> {
    fn drop(&mut self) {
        let mut flights = self.locks.flights.lock().unwrap_or_else(|e| e.into_inner());
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            flights.remove(&self.key);
            let (len, capacity) = (flights.len(), flights.capacity());
            if capacity > SHRINK_ABOVE && len < capacity / 4 {
                flights.shrink_to(len * 2);
            }
        }
        // The sender drops with the last Arc; a waiter that saw no value reads Abandoned.
    }
}

impl<T: Clone> Waiter<T> {
    /// The leader's outcome, waiting at most `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Result<T, WaitError> {
        let wait = self.rx.wait_for(|v| v.is_some());
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(v)) => Ok(v.clone().expect("wait_for returned a Some")),
            Ok(Err(_)) => Err(WaitError::Abandoned),
            Err(_) => Err(WaitError::TimedOut),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_leader_many_followers_share_the_outcome() {
        let locks = Locks::<u32>::new();
        let fetches = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (locks, fetches, barrier) = (locks.clone(), fetches.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                match locks.lock("k") {
                    Lock::Leader(p) => {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        p.release(7);
                        7
                    }
                    Lock::Follower(w) => w.wait(Duration::from_secs(5)).await.unwrap(),
                }
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 7);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(locks.in_flight(), 0);
    }

    #[tokio::test]
    async fn dropped_permit_wakes_waiters_as_abandoned() {
        let locks = Locks::<u32>::new();
        let Lock::Leader(permit) = locks.lock("k") else {
            panic!("first caller leads")
        };
        let Lock::Follower(waiter) = locks.lock("k") else {
            panic!("second caller follows")
        };
        assert!(locks.try_lock("k").is_none());
        drop(permit);
        assert_eq!(
            waiter.wait(Duration::from_secs(1)).await,
            Err(WaitError::Abandoned)
        );
        assert!(locks.try_lock("k").is_some(), "the key is free again");
    }

    #[tokio::test]
    async fn the_table_gives_back_its_slots_after_a_burst() {
        let locks = Locks::<u32>::new();
        let permits: Vec<_> = (0..20_000)
            .map(|i| locks.try_lock(&format!("k{i}")).unwrap())
            .collect();
        assert!(locks.capacity() >= 20_000);
        drop(permits);
        assert_eq!(locks.in_flight(), 0);
        assert!(locks.capacity() <= SHRINK_ABOVE * 2, "{}", locks.capacity());
    }

    #[tokio::test]
    async fn waits_are_bounded() {
        let locks = Locks::<u32>::new();
        let _permit = locks.try_lock("k").unwrap();
        let Lock::Follower(waiter) = locks.lock("k") else {
            panic!()
        };
        assert_eq!(
            waiter.wait(Duration::from_millis(20)).await,
            Err(WaitError::TimedOut)
        );
    }
}
