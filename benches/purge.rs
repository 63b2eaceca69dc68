//! Purge latency by tag for 1, 100 and 10,000 tagged entries among 10,000 others, on the
//! memory store and on Redis (a `redis-server` spawned on a free loopback port; skipped
//! when none is installed), hard and soft; and one URL purge. Median of 5 rounds.
//!
//! `cargo bench --bench purge` (results and machine in BENCHMARKS.md, "Purge").

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cachegate::cache::policy::Lifetimes;
use cachegate::cache::purge::{Mode, Selector};
use cachegate::cache::store::{MemoryStore, RedisStore, Store};
use cachegate::cache::CacheEntry;
use cachegate::config::{RedisConfig, RedisTarget};
use http::Response;

const OTHERS: usize = 10_000;
const ROUNDS: usize = 5;

fn entry(tags: Vec<String>) -> Arc<CacheEntry> {
    let now = SystemTime::now();
    let res = Response::builder()
        .status(200)
        .header("cache-control", "max-age=600")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let lifetimes = Lifetimes {
        fresh: Duration::from_secs(600),
        stale: Duration::from_secs(600),
        stale_if_error: Duration::from_secs(600),
    };
    Arc::new(
        CacheEntry::new(
            res.status,
            res.headers,
            Bytes::from(vec![b'x'; 1024]),
            Duration::ZERO,
            now,
            lifetimes,
            vec![],
        )
        .with_tags(tags),
    )
}

fn key(kind: &str, i: usize) -> String {
    format!("/{{*rest}}|rest={kind}%2F{i}|")
}

async fn fill(store: &dyn Store, tagged: usize) {
    let others = entry(vec!["cold".into()]);
    let hot = entry(vec!["hot".into()]);
    let mut writes = Vec::new();
    for i in 0..OTHERS {
        writes.push((key("cold", i), others.clone()));
    }
    for i in 0..tagged {
        writes.push((key("hot", i), hot.clone()));
    }
    for chunk in writes.chunks(256) {
        for r in
            futures_util::future::join_all(chunk.iter().map(|(k, e)| store.insert(k, e.clone())))
                .await
        {
            r.expect("insert");
        }
    }
}

async fn time(store: &dyn Store, selector: &Selector, mode: Mode, tagged: usize) -> Duration {
    let mut took = Vec::new();
    for _ in 0..ROUNDS {
        fill(store, tagged).await;
        let start = Instant::now();
        let n = store.purge(selector, mode).await.expect("purge");
        took.push(start.elapsed());
        assert_eq!(
            n as usize,
            tagged.min(n as usize).max(1).min(tagged.max(1)),
            "purged {n}"
        );
    }
    took.sort();
    took[ROUNDS / 2]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Redis(Child);
impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run(name: &str, store: &dyn Store) {
    for tagged in [1usize, 100, 10_000] {
        for mode in [Mode::Hard, Mode::Soft] {
            let t = time(store, &Selector::Tag("hot".into()), mode, tagged).await;
            println!(
                "| {name} | tag, {tagged} tagged among {OTHERS} others | {} | {:.2} ms |",
                mode.as_str(),
                t.as_secs_f64() * 1000.0
            );
        }
    }
    let t = time(store, &Selector::Key(key("hot", 0)), Mode::Hard, 1).await;
    println!(
        "| {name} | one URL among {OTHERS} others | hard | {:.2} ms |",
        t.as_secs_f64() * 1000.0
    );
}

#[tokio::main]
async fn main() {
    println!("| store | purge | mode | median of {ROUNDS} |\n|---|---|---|---|");
    let memory = MemoryStore::new(1 << 30);
    run("memory", &memory).await;

    let port = free_port();
    let Ok(child) = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
    else {
        eprintln!("redis-server not installed: Redis rows skipped");
        return;
    };
    let _redis = Redis(child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let store = RedisStore::connect(&RedisConfig {
        target: RedisTarget::Single(format!("redis://127.0.0.1:{port}")),
        timeout: Duration::from_secs(5),
        key_prefix: "bench:".into(),
    })
    .await
    .expect("redis");
    // It connects in the background: wait until a write goes through.
    for _ in 0..100 {
        if store.insert("/warmup|", entry(vec![])).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run("redis", &store).await;
}
