//! Issue 11's fault suite: sustained traffic from the test itself (8 tasks for 3 s over
//! 5 hot and 50 cold keys, through the real router) while one fault is injected: Redis
//! killed, paused or full; the origin slow, failing, resetting, truncating or trickling.
//! Each test checks what a user would notice: no failed request that a stored entry
//! could have answered, no short or foreign body ever served, one origin request per
//! key at a time, and that new keys are stored again once the fault is over. The
//! figures go to stderr as one `FAULT ...` line per fault (docs/reliability.md).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachegate::cache::store::Health;

use crate::support::fleet::eventually;
use crate::support::origin::{BodyFault, Seen};
use crate::support::redis::RedisServer;
use crate::support::{proxy, Origin, Proxy, Reply};

const HOT: usize = 5;
const COLD: usize = 50;
const TASKS: usize = 8;
const LOAD_FOR: Duration = Duration::from_secs(3);
/// The fault starts this long into the load and lasts `FAULT_FOR`: long enough for
/// every hot key to pass its 1 s TTL while the fault is on.
const FAULT_AT: Duration = Duration::from_millis(500);
const FAULT_FOR: Duration = Duration::from_secs(2);
const BODY_LEN: usize = 8 * 1024;
/// The upstream's `timeout`: the slow and trickling origins take longer than this.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(1);
/// Windows wide enough that every entry stored during a test stays usable.
const DEFAULTS: &str = "ttl: 1s, stale: 30s, stale_if_error: 60s, jitter: 0";
/// Generous for a loaded two-core machine; the breaker opens after five of them.
const REDIS_TIMEOUT: &str = "100ms";
const L1: &str = "{ max_size: 16MiB, max_ttl: 1s }";

/// The body for `path` at `version`: `"{path} v{version};"` repeated to 8 KiB, so a
/// short, mixed or foreign body never passes for a whole one.
fn body_for(path: &str, version: usize) -> String {
    let unit = format!("{path} v{version};");
    unit.repeat(BODY_LEN / unit.len() + 1)[..BODY_LEN].to_string()
}

/// Whether `body` is a whole body for `path` (any version).
fn is_whole(path: &str, body: &str) -> bool {
    let Some(rest) = body.strip_prefix(&format!("{path} v")) else {
        return false;
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .is_ok_and(|version| body == body_for(path, version))
}

// === the origin ===

/// What the origin does right now; the test flips it on and off.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Healthy = 0,
    /// Headers after twice the upstream timeout.
    Slow,
    Errors,
    Reset,
    Truncate,
    /// 512 bytes every 150 ms: 8 KiB take 2.4 s, past the 1 s timeout.
    Trickle,
}

#[derive(Clone, Default)]
struct Switch(Arc<AtomicU8>);

impl Switch {
    fn set(&self, mode: Mode) {
        self.0.store(mode as u8, Ordering::SeqCst);
    }

    fn get(&self) -> Mode {
        match self.0.load(Ordering::SeqCst) {
            1 => Mode::Slow,
            2 => Mode::Errors,
            3 => Mode::Reset,
            4 => Mode::Truncate,
            5 => Mode::Trickle,
            _ => Mode::Healthy,
        }
    }
}

/// An origin answering `body_for(path, n)` (n: the requests it saw for the path before),
/// broken the way the switch says.
async fn origin(switch: &Switch) -> Origin {
    let switch = switch.clone();
    Origin::start(move |s: &Seen| {
        let body = body_for(&s.path, s.n);
        match switch.get() {
            Mode::Healthy => Reply::ok(body),
            // cachegate gives up after its timeout; the origin notices the closed
            // connection a little later (at its next write, for a trickle): the
            // request stops counting as in flight when cachegate stops waiting.
            Mode::Slow => Reply::ok(body)
                .delay(UPSTREAM_TIMEOUT * 2)
                .client_gives_up(UPSTREAM_TIMEOUT),
            Mode::Errors => Reply::ok("oops").status(500),
            Mode::Reset => Reply::ok(body).fault(BodyFault::Reset),
            Mode::Truncate => Reply::ok(body).fault(BodyFault::Truncate),
            Mode::Trickle => Reply::ok(body)
                .fault(BodyFault::Trickle {
                    chunk: 512,
                    every: Duration::from_millis(150),
                })
                .client_gives_up(UPSTREAM_TIMEOUT),
        }
    })
    .await
}

/// cachegate in front of `origin`; `upstream`: more settings for the upstream (e.g. a
/// breaker), `store_yaml`: a `store:` block.
async fn cachegate_with(origin: &Origin, upstream: &str, store_yaml: &str) -> Proxy {
    let yaml = format!(
        "listen: 127.0.0.1:0\nupstreams:\n  origin: {{ url: \"{}\", connect_timeout: 500ms, timeout: {}ms{upstream} }}\n\
         defaults: {{ {DEFAULTS} }}\nroutes:\n  - path: /{{*rest}}\n    upstream: origin\n{store_yaml}",
        origin.url(),
        UPSTREAM_TIMEOUT.as_millis()
    );
    Proxy::start(&yaml).await
}

async fn cachegate(origin: &Origin, store_yaml: &str) -> Proxy {
    cachegate_with(origin, "", store_yaml).await
}

// === the load ===

fn hot(i: usize) -> String {
    format!("/hot/{i}")
}

fn cold(i: usize) -> String {
    format!("/cold/{i}")
}

/// What the load saw.
#[derive(Default)]
struct Figures {
    sent: AtomicUsize,
    /// Failed (non-200 or a transport error) although an entry was stored for the key
    /// before the request was sent.
    failed: AtomicUsize,
    /// Failed with nothing stored for the key yet: the origin's fault, passed on.
    unservable: AtomicUsize,
    /// A 200 whose body is not the whole body of its key.
    corrupt: AtomicUsize,
    stale: AtomicUsize,
    /// The first few failures and corrupt bodies, for the assertion message.
    examples: Mutex<Vec<String>>,
    /// When a 200 for each key was first received: from then on an entry exists.
    stored: Mutex<HashMap<String, Instant>>,
}

impl Figures {
    fn note(&self, what: String) {
        let mut examples = self.examples.lock().unwrap();
        if examples.len() < 5 {
            examples.push(what);
        }
    }

    fn get(&self, n: &AtomicUsize) -> usize {
        n.load(Ordering::SeqCst)
    }
}

/// One GET as a client would judge it.
async fn request(client: &reqwest::Client, base: &str, path: &str, figures: &Figures) {
    let had_entry = figures.stored.lock().unwrap().contains_key(path);
    figures.sent.fetch_add(1, Ordering::SeqCst);
    let answer = async {
        let r = client
            .get(format!("{base}{path}"))
            .header("host", proxy::TEST_HOST)
            .send()
            .await
            .map_err(|e| format!("{e}"))?;
        let status = r.status().as_u16();
        let cache_status = r
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = r.text().await.map_err(|e| format!("body: {e}"))?;
        Ok::<_, String>((status, cache_status, body))
    };
    match answer.await {
        Ok((200, cache_status, body)) => {
            if !is_whole(path, &body) {
                figures.corrupt.fetch_add(1, Ordering::SeqCst);
                let head: String = body.chars().take(40).collect();
                figures.note(format!(
                    "{path}: corrupt body ({} bytes, {head:?}; {cache_status})",
                    body.len()
                ));
            }
            if cache_status.contains("ttl=-") || cache_status.contains("fwd=stale") {
                figures.stale.fetch_add(1, Ordering::SeqCst);
            }
            figures
                .stored
                .lock()
                .unwrap()
                .entry(path.to_string())
                .or_insert_with(Instant::now);
        }
        other => {
            let what = match other {
                Ok((status, cache_status, _)) => format!("status {status} ({cache_status})"),
                Err(e) => e,
            };
            if had_entry {
                figures.failed.fetch_add(1, Ordering::SeqCst);
                figures.note(format!("{path}: {what}"));
            } else {
                figures.unservable.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// Stores the hot keys, then runs `TASKS` loops for `LOAD_FOR` (80 % hot keys, 20 %
/// cold ones) while `fault` runs; returns once both are done and what `fault` gave.
async fn under_load<T>(p: &Proxy, fault: impl Future<Output = T>) -> (Arc<Figures>, T) {
    let figures = Arc::new(Figures::default());
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = p.url("");
    for i in 0..HOT {
        request(&client, &base, &hot(i), &figures).await;
    }
    assert_eq!(
        figures.stored.lock().unwrap().len(),
        HOT,
        "the hot keys are stored before the fault"
    );
    let started = Instant::now();
    let deadline = started + LOAD_FOR;
    let workers: Vec<_> = (0..TASKS)
        .map(|_| {
            let (client, base, figures) = (client.clone(), base.clone(), figures.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let pick = rand::random::<u32>() as usize;
                    let path = if pick % 5 == 0 {
                        // Cold keys come into use one by one over the run (one every
                        // 60 ms), so some are first asked for before the fault, some
                        // during it and some after.
                        let arrived = started.elapsed().as_millis() as usize * COLD
                            / LOAD_FOR.as_millis() as usize;
                        cold(pick / 5 % (arrived + 1).min(COLD))
                    } else {
                        hot(pick / 5 % HOT)
                    };
                    request(&client, &base, &path, &figures).await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    let after = fault.await;
    for w in workers {
        w.await.unwrap();
    }
    (figures, after)
}

/// The origin broken as `mode` from `FAULT_AT` for `FAULT_FOR`.
async fn origin_fault(switch: &Switch, mode: Mode) {
    tokio::time::sleep(FAULT_AT).await;
    switch.set(mode);
    tokio::time::sleep(FAULT_FOR).await;
    switch.set(Mode::Healthy);
}

// === the verdict ===

/// Prints the figures and checks the promises. `origin_down`: the origin itself was
/// broken, so a key with nothing stored may fail; with a healthy origin every request
/// must succeed.
async fn verdict(name: &str, figures: &Figures, origin: &Origin, p: &Proxy, origin_down: bool) {
    let f = figures;
    eprintln!(
        "FAULT {name} sent={} failed={} stale={} origin={} unservable={} corrupt={} max_in_flight_per_key={}",
        f.get(&f.sent),
        f.get(&f.failed),
        f.get(&f.stale),
        origin.total(),
        f.get(&f.unservable),
        f.get(&f.corrupt),
        origin.max_in_flight_per_path()
    );
    let examples = f.examples.lock().unwrap().clone();
    assert_eq!(f.get(&f.corrupt), 0, "{name}: corrupt bodies: {examples:?}");
    assert_eq!(
        f.get(&f.failed),
        0,
        "{name}: requests failed although an entry was stored: {examples:?}"
    );
    if !origin_down {
        assert_eq!(
            f.get(&f.unservable),
            0,
            "{name}: with a healthy origin every request succeeds"
        );
    }
    assert!(
        f.get(&f.sent) > 200,
        "{name}: the load ran ({} requests)",
        f.get(&f.sent)
    );
    assert_eq!(
        origin.max_in_flight_per_path(),
        1,
        "{name}: one origin request per key at a time"
    );
    recovers(name, p).await;
}

/// After the fault: a new key is fetched, stored and then hit, and a hot key is fresh
/// again, within 10 s and without a restart.
async fn recovers(name: &str, p: &Proxy) {
    let mut attempt = 0;
    let stored = eventually(Duration::from_secs(10), async || {
        attempt += 1;
        let path = format!("/recover/{attempt}");
        let first = p.get(&path).await;
        let stored = first.status == 200
            && is_whole(&path, &first.body)
            && first.cache_status().contains("stored")
            && !first.cache_status().contains("store-error");
        stored
            && p.get(&path)
                .await
                .cache_status()
                .starts_with("cachegate; hit")
    })
    .await;
    assert!(stored, "{name}: new keys are stored again after the fault");
    let fresh = eventually(Duration::from_secs(10), async || {
        let r = p.get(&hot(0)).await;
        r.status == 200
            && is_whole(&hot(0), &r.body)
            && r.cache_status().starts_with("cachegate; hit")
            && !r.cache_status().contains("ttl=-")
    })
    .await;
    assert!(fresh, "{name}: the hot keys are refreshed after the fault");
}

/// With Redis: the store is healthy again and new entries reach Redis itself, not only
/// L1.
async fn recovers_in_redis(name: &str, p: &Proxy, redis: &RedisServer) {
    let healthy = eventually(Duration::from_secs(10), async || {
        p.get("/recover/probe").await;
        p.state.cache.store.health() == Health::Ok
    })
    .await;
    assert!(healthy, "{name}: the Redis store is healthy again");
    let mut attempt = 0;
    let in_redis = eventually(Duration::from_secs(10), async || {
        attempt += 1;
        let path = format!("/recover/redis-{attempt}");
        assert_eq!(p.get(&path).await.status, 200);
        let found = tokio::task::block_in_place(|| {
            redis.cli(&["--scan", "--pattern", &format!("*:e:*redis-{attempt}|*")])
        });
        !found.is_empty()
    })
    .await;
    assert!(in_redis, "{name}: new entries are written to Redis again");
}

// === origin faults (memory store) ===

async fn origin_test(name: &str, mode: Mode) {
    origin_test_with(name, mode, "").await;
}

async fn origin_test_with(name: &str, mode: Mode, upstream: &str) {
    let switch = Switch::default();
    let origin = origin(&switch).await;
    let p = cachegate_with(&origin, upstream, "").await;
    let (figures, ()) = under_load(&p, origin_fault(&switch, mode)).await;
    assert!(
        figures.get(&figures.stale) > 0,
        "{name}: the hot keys were served stale during the fault"
    );
    verdict(name, &figures, &origin, &p, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_slower_than_its_timeout() {
    origin_test("origin_slow", Mode::Slow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_answering_500() {
    origin_test("origin_500", Mode::Errors).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_answering_500_behind_the_breaker() {
    // The same outage with the upstream's breaker on: once open, stale copies answer
    // without a refresh being sent, so the failing origin sees far fewer requests.
    let breaker = ", breaker: { failures: 5, open_for: 1s }";
    origin_test_with("origin_500_breaker", Mode::Errors, breaker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_resetting_mid_body() {
    origin_test("origin_reset_mid_body", Mode::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_sending_truncated_bodies() {
    origin_test("origin_truncated_body", Mode::Truncate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_trickling_slower_than_its_timeout() {
    origin_test("origin_trickle", Mode::Trickle).await;
}

// === Redis faults (the origin is healthy) ===

async fn redis_proxy(redis: &RedisServer) -> (Origin, Proxy) {
    let origin = origin(&Switch::default()).await;
    let p = cachegate(&origin, &redis.store_yaml(REDIS_TIMEOUT, L1)).await;
    (origin, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted() {
    let redis = RedisServer::start();
    let (origin, p) = redis_proxy(&redis).await;
    let (figures, redis) = under_load(&p, async move {
        let mut redis = redis;
        tokio::time::sleep(FAULT_AT).await;
        tokio::task::block_in_place(|| redis.kill());
        tokio::time::sleep(FAULT_FOR).await;
        tokio::task::block_in_place(|| redis.restart());
        redis
    })
    .await;
    verdict("redis_killed", &figures, &origin, &p, false).await;
    recovers_in_redis("redis_killed", &p, &redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_paused_with_sigstop() {
    let redis = RedisServer::start();
    let (origin, p) = redis_proxy(&redis).await;
    let (figures, ()) = under_load(&p, async {
        tokio::time::sleep(FAULT_AT).await;
        redis.pause();
        tokio::time::sleep(FAULT_FOR).await;
        redis.resume();
    })
    .await;
    verdict("redis_paused", &figures, &origin, &p, false).await;
    recovers_in_redis("redis_paused", &p, &redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_full_with_noeviction() {
    let redis = RedisServer::start_with(&[
        "--maxmemory-policy",
        "noeviction",
        "--enable-debug-command",
        "local",
    ]);
    let (origin, p) = redis_proxy(&redis).await;
    let (figures, ()) = under_load(&p, async {
        tokio::time::sleep(FAULT_AT).await;
        tokio::task::block_in_place(|| fill(&redis));
        tokio::time::sleep(FAULT_FOR).await;
        // The operator raises the limit; the filler stays.
        tokio::task::block_in_place(|| redis.cli(&["CONFIG", "SET", "maxmemory", "0"]));
    })
    .await;
    verdict("redis_full", &figures, &origin, &p, false).await;
    recovers_in_redis("redis_full", &p, &redis).await;
}

/// Fills Redis past a `maxmemory` just above what it holds: every write is refused
/// with OOM from here on.
fn fill(redis: &RedisServer) {
    let info = redis.cli(&["INFO", "memory"]);
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO memory");
    let limit = (used + (512 << 10)).to_string();
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", &limit]), "OK");
    assert_eq!(
        redis.cli(&["DEBUG", "POPULATE", "50000", "filler", "64"]),
        "OK"
    );
    let refused = redis.cli(&["SET", "probe", "x"]);
    assert!(refused.contains("OOM"), "Redis is full: {refused}");
}

// === the bug the suite found ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_share_a_body_cut_short_instead_of_each_retrying() {
    // Before the fix, every request coalesced behind a leader whose body broke went to
    // the origin on its own (a pass-through streaming the same broken body).
    for fault in [BodyFault::Reset, BodyFault::Truncate] {
        let origin = Origin::start(move |s: &Seen| {
            Reply::ok(body_for(&s.path, s.n))
                .delay(Duration::from_millis(300))
                .fault(fault)
        })
        .await;
        let p = cachegate(&origin, "").await;
        let resps = p.burst(20, "/cut", &[]).await;
        assert!(
            resps.iter().all(|r| r.status == 502),
            "{fault:?}: {:?}",
            resps.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        assert_eq!(origin.hits("/cut"), 1, "{fault:?}: one origin request");
    }
}
