//! Connection workers: one single-threaded runtime per core. An accepted connection is
//! handed to the worker with the fewest open connections and lives there to its end: its
//! requests, the origin connections they use (`current` picks the worker's own client
//! pool) and the refreshes they start all run on that one thread. On a work-stealing
//! runtime the same miss woke the other worker about once per request (the client
//! connection's task on one thread, the pooled origin connection's on the other); here a
//! miss wakes nobody (BENCHMARKS.md section 14).
//!
//! Each worker also gets its own Redis connection (`cache::store::redis`). Everything
//! else (accept loops, the admin listener, the shared Redis connection and pub/sub,
//! signals) stays on the process's main runtime.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;
use tokio::sync::watch;

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker running on this thread (`0..count()`), or `None` off the workers.
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// How many workers a server starts: the cores this process may use (a cgroup CPU quota
/// counts), or `CACHEGATE_WORKERS`.
pub fn count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        configured().ok().flatten().unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    })
}

/// `CACHEGATE_WORKERS` when set: a whole number from 1 to 1024, or an error naming it
/// (`main` refuses to start on one).
pub fn configured() -> Result<Option<usize>, String> {
    match std::env::var("CACHEGATE_WORKERS") {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err("CACHEGATE_WORKERS: not a number of workers".to_string())
        }
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(Some(n)),
            _ => Err(format!(
                "CACHEGATE_WORKERS={v:?}: expected a whole number from 1 to 1024"
            )),
        },
    }
}

/// The running workers; dropping them stops their threads (what still runs there is
/// dropped), so a server drops them only after its drain.
pub struct Workers {
    workers: Vec<Worker>,
    stop: watch::Sender<bool>,
}

struct Worker {
    handle: Handle,
    /// Connections now open on it.
    load: Arc<AtomicUsize>,
}

/// Decrements its worker's connection count when the connection ends.
pub struct Placed(Arc<AtomicUsize>);

impl Drop for Placed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `count()` worker threads.
    pub fn start() -> std::io::Result<Workers> {
        let (stop, stop_rx) = watch::channel(false);
        let mut workers = Vec::with_capacity(count());
        for index in 0..count() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let mut stop_rx = stop_rx.clone();
            std::thread::Builder::new()
                .name(format!("cachegate-worker-{index}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(index)));
                    runtime.block_on(async move {
                        let _ = stop_rx.wait_for(|stop| *stop).await;
                    });
                })?;
            workers.push(Worker {
                handle,
                load: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(Workers { workers, stop })
    }

    /// Runs `connection` on the least loaded worker; `Placed` (given to it) keeps the
    /// count until the connection ends.
    pub fn spawn<F, Fut>(&self, connection: F)
    where
        F: FnOnce(Placed) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
            .expect("at least one worker");
        worker.load.fetch_add(1, Ordering::Relaxed);
        let placed = Placed(worker.load.clone());
        // Built on the worker's thread, so what it registers (the socket, its timers)
        // belongs to that worker's runtime.
        worker.handle.spawn(async move { connection(placed).await });
    }
}

impl Drop for Workers {
    /// The threads end on their own once told (not joined: this may run on a runtime).
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn connections_go_to_the_least_loaded_worker_and_know_it() {
        let workers = Workers::start().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (hold, held) = watch::channel(false);
        // Two long connections, then a short one: with two or more workers the first two
        // land on different workers, and each task sees the worker it runs on.
        for _ in 0..2 {
            let (tx, mut held) = (tx.clone(), held.clone());
            workers.spawn(move |placed| async move {
                tx.send(current()).unwrap();
                let _ = held.wait_for(|go| *go).await;
                drop(placed);
            });
        }
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let second = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(first.is_some() && second.is_some());
        if count() >= 2 {
            assert_ne!(first, second);
        }
        assert_eq!(current(), None, "the test thread is no worker");
        let _ = hold.send(true);
        drop(held);
    }
}
