//! The shared store (L2): Redis single node, Sentinel or Cluster through redis-rs, one
//! hash per cache key, a `SET NX PX` lease, and a circuit breaker that fails fast.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use http::HeaderMap;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::{Health, Lease, Store, StoreError, MAX_VARIANTS};
use crate::cache::entry::{self, FORMAT_VERSION};
use crate::cache::CacheEntry;
use crate::config::{RedisConfig, RedisTarget};

/// Consecutive failures (errors or timeouts) that open the breaker.
const BREAKER_THRESHOLD: u32 = 5;
/// How long an open breaker fails fast before one probe may try Redis again.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// Establishing a connection may take longer than one command: it runs in the
/// background (callers fail fast meanwhile), so it never holds a request.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Stores `entry` as one field of the key's hash, indexes its `keep_until` in a sorted
/// set, drops dead and surplus variants, sets both keys to expire with the last variant,
/// and tells the other replicas to drop their L1 copy: all in one round trip, atomically.
/// KEYS: hash, index. ARGV: field, value, keep_until ms, now ms, max variants, channel,
/// message.
const INSERT_LUA: &str = r#"
local h, z = KEYS[1], KEYS[2]
redis.call('HSET', h, ARGV[1], ARGV[2])
redis.call('ZADD', z, ARGV[3], ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. ARGV[4])
for _, f in ipairs(dead) do
  redis.call('HDEL', h, f)
  redis.call('ZREM', z, f)
end
local extra = redis.call('ZCARD', z) - tonumber(ARGV[5])
if extra > 0 then
  for _, f in ipairs(redis.call('ZRANGE', z, 0, extra)) do
    if extra > 0 and f ~= ARGV[1] then
      redis.call('HDEL', h, f)
      redis.call('ZREM', z, f)
      extra = extra - 1
    end
  end
end
local last = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', h, last[2])
  redis.call('PEXPIREAT', z, last[2])
end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
"#;

/// KEYS: hash, index. ARGV: channel, message. Returns how many keys were deleted.
const REMOVE_LUA: &str = r#"
local n = redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return n
"#;

/// Compare-and-delete: only the holder's token releases a lease.
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// The L2 store. Cheap to share: everything lives behind one `Arc`.
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    target: RedisTarget,
    timeout: Duration,
    /// `{prefix}v1:`: the format version in the namespace keeps formats apart.
    namespace: String,
    /// Where replaced and removed keys are announced to every replica's L1.
    channel: String,
    /// Tags this process's own announcements, so its L1 can skip them.
    node_id: String,
    /// The live connection; None while (re)connecting. Cloned out per command
    /// (redis-rs connections are multiplexed handles), so the lock is held for nanoseconds.
    conn: RwLock<Option<Handle>>,
    /// One background connect at a time, however many callers notice the gap.
    connecting: AtomicBool,
    breaker: Breaker,
    insert_script: redis::Script,
    remove_script: redis::Script,
    release_script: redis::Script,
}

/// A connection to whatever the target is; both kinds multiplex, so a clone is a handle.
#[derive(Clone)]
enum Handle {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Handle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Handle::Node(c) => c.req_packed_command(cmd),
            Handle::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Handle::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Handle::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Handle::Node(c) => c.get_db(),
            Handle::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisStore {
    /// Connects to the configured target. An unreachable Redis is not fatal: the store
    /// starts degraded (misses, origin traffic) and connects when Redis appears.
    pub async fn connect(config: &RedisConfig) -> anyhow::Result<RedisStore> {
        validate(&config.target)?;
        let inner = Arc::new(Inner {
            target: config.target.clone(),
            timeout: config.timeout,
            namespace: format!("{}v{}:", config.key_prefix, FORMAT_VERSION),
            channel: format!("{}invalidate", config.key_prefix),
            node_id: format!("{:016x}", rand::random::<u64>()),
            conn: RwLock::new(None),
            connecting: AtomicBool::new(false),
            breaker: Breaker::new(),
            insert_script: redis::Script::new(INSERT_LUA),
            remove_script: redis::Script::new(REMOVE_LUA),
            release_script: redis::Script::new(RELEASE_LUA),
        });
        match inner.open().await {
            Ok(handle) => inner.set_conn(Some(handle)),
            Err(error) => {
                tracing::warn!(%error, "redis unreachable at startup; serving from the origin until it is back");
            }
        }
        Ok(RedisStore { inner })
    }

    /// The pub/sub channel that carries L1 invalidations.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// This process's tag on the invalidations it publishes.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// A dedicated pub/sub connection (subscriptions cannot share the multiplexed one).
    pub async fn pubsub(&self) -> RedisResult<PubSub> {
        let limit = self.inner.connect_timeout();
        let open = async {
            match &self.inner.target {
                RedisTarget::Single(url) => Client::open(url.as_str())?.get_async_pubsub().await,
                RedisTarget::Sentinel { .. } => {
                    self.inner.sentinel_master().await?.get_async_pubsub().await
                }
                // Cluster pub/sub is broadcast to every node: any reachable one will do.
                RedisTarget::Cluster(nodes) => {
                    let mut last = None;
                    for url in nodes {
                        match Client::open(url.as_str()) {
                            Ok(client) => match client.get_async_pubsub().await {
                                Ok(pubsub) => return Ok(pubsub),
                                Err(e) => last = Some(e),
                            },
                            Err(e) => last = Some(e),
                        }
                    }
                    Err(last.unwrap_or_else(|| {
                        redis::RedisError::from((
                            redis::ErrorKind::InvalidClientConfig,
                            "no cluster nodes",
                        ))
                    }))
                }
            }
        };
        match tokio::time::timeout(limit, open).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "pub/sub connect timed out",
            ))),
        }
    }

    /// Every live variant of `key` (for L1 to keep the whole set).
    pub async fn lookup_all(&self, key: &str) -> Result<Vec<Arc<CacheEntry>>, StoreError> {
        let hash = self.inner.entry_key(key);
        let values: Vec<Vec<u8>> = self
            .inner
            .run("lookup", |mut c| async move {
                redis::cmd("HVALS").arg(hash).query_async(&mut c).await
            })
            .await?;
        let now = SystemTime::now();
        Ok(values
            .iter()
            // Undecodable bytes (corrupt, foreign) read as a miss, never as an error.
            .filter_map(|v| entry::decode(v))
            .filter(|e| e.keep_until() > now)
            .map(Arc::new)
            .collect())
    }
}

fn validate(target: &RedisTarget) -> anyhow::Result<()> {
    let urls: Vec<&String> = match target {
        RedisTarget::Single(url) => vec![url],
        RedisTarget::Cluster(nodes) => nodes.iter().collect(),
        RedisTarget::Sentinel { nodes, .. } => nodes.iter().collect(),
    };
    for url in urls {
        Client::open(url.as_str())
            .map_err(|e| anyhow::anyhow!("store.redis: {url:?} is not a redis URL: {e}"))?;
    }
    Ok(())
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A variant's field in the key's hash: the hash of its vary record, so the same
/// request headers replace the same variant.
fn variant_id(entry: &CacheEntry) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (name, value) in &entry.vary {
        h.update(name.as_str().as_bytes());
        match value {
            Some(v) => {
                h.update(&[1]);
                h.update(v.as_bytes());
            }
            None => h.update(&[0]),
        }
        h.update(&[0xff]);
    }
    format!("{:016x}", h.digest())
}

impl Inner {
    /// `{ns}{<xxh3 of key>}`: the braces make a Redis Cluster hash tag, so the variants,
    /// their index and the lease of one cache key share a slot. The key itself may
    /// contain braces (route templates); only the first `{...}` counts, which is ours.
    fn tag(&self, key: &str) -> String {
        format!(
            "{}{{{:016x}}}",
            self.namespace,
            xxhash_rust::xxh3::xxh3_64(key.as_bytes())
        )
    }

    /// The full key text follows the tag, so two keys whose hashes collide stay apart.
    fn entry_key(&self, key: &str) -> String {
        format!("{}:e:{key}", self.tag(key))
    }

    fn index_key(&self, key: &str) -> String {
        format!("{}:x:{key}", self.tag(key))
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}:lock:{key}", self.tag(key))
    }

    fn message(&self, key: &str) -> String {
        format!("{}{key}", self.node_id)
    }

    fn connect_timeout(&self) -> Duration {
        (self.timeout * 4).max(MIN_CONNECT_TIMEOUT)
    }

    fn set_conn(&self, handle: Option<Handle>) {
        match self.conn.write() {
            Ok(mut slot) => *slot = handle,
            Err(poisoned) => *poisoned.into_inner() = handle,
        }
    }

    fn conn(&self) -> Option<Handle> {
        match self.conn.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    async fn sentinel_master(&self) -> RedisResult<Client> {
        let RedisTarget::Sentinel { master, nodes } = &self.target else {
            unreachable!("sentinel_master on a non-sentinel target");
        };
        let mut sentinel = SentinelClient::build(
            nodes.clone(),
            master.clone(),
            None,
            SentinelServerType::Master,
        )?;
        sentinel.async_get_client().await
    }

    /// A new connection to the target (for Sentinel: to whichever node is master now).
    async fn open(&self) -> RedisResult<Handle> {
        let limit = self.connect_timeout();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(limit))
            .set_response_timeout(Some(self.timeout));
        let open = async {
            match &self.target {
                RedisTarget::Single(url) => Ok(Handle::Node(
                    Client::open(url.as_str())?
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )),
                RedisTarget::Sentinel { .. } => Ok(Handle::Node(
                    self.sentinel_master()
                        .await?
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )),
                RedisTarget::Cluster(nodes) => {
                    let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                        .connection_timeout(limit)
                        .response_timeout(self.timeout)
                        // Our own timeout bounds every command; the library's retries
                        // only ride out MOVED/ASK and a failover inside it.
                        .retries(2)
                        .min_retry_wait(5)
                        .max_retry_wait(50)
                        .build()?;
                    Ok(Handle::Cluster(client.get_async_connection().await?))
                }
            }
        };
        match tokio::time::timeout(limit, open).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))),
        }
    }

    /// Replaces a lost connection in the background; callers fail fast meanwhile.
    fn reconnect(self: &Arc<Self>) {
        self.set_conn(None);
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(self);
        tokio::spawn(async move {
            let Some(inner) = weak.upgrade() else { return };
            match inner.open().await {
                Ok(handle) => {
                    tracing::info!("redis connection re-established");
                    inner.set_conn(Some(handle));
                }
                Err(error) => tracing::debug!(%error, "redis reconnect failed"),
            }
            inner.connecting.store(false, Ordering::Release);
        });
    }

    /// One command (or script) through the breaker and the timeout.
    async fn run<T, F, Fut>(self: &Arc<Self>, op: &'static str, command: F) -> Result<T, StoreError>
    where
        F: FnOnce(Handle) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let fail = |message: String| StoreError { op, message };
        if !self.breaker.allow() {
            return Err(fail("circuit open".into()));
        }
        let Some(handle) = self.conn() else {
            self.failed();
            self.reconnect();
            return Err(fail("not connected".into()));
        };
        match tokio::time::timeout(self.timeout, command(handle)).await {
            Ok(Ok(value)) => {
                self.breaker.succeeded();
                Ok(value)
            }
            Ok(Err(error)) => {
                // A dead socket, or a demoted master after a Sentinel failover, needs a
                // new connection (Sentinel names the new master then).
                if error.is_io_error()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                    || error.is_unrecoverable_error()
                    || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                {
                    self.reconnect();
                }
                self.failed();
                Err(fail(error.to_string()))
            }
            Err(_) => {
                self.failed();
                Err(fail(format!("timed out after {:?}", self.timeout)))
            }
        }
    }

    fn failed(self: &Arc<Self>) {
        if self.breaker.failed() {
            // The connection that kept failing is suspect (a half-open TCP socket never
            // errors): the probe after the cooldown uses a fresh one.
            self.reconnect();
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn lookup(
        &self,
        key: &str,
        request: &HeaderMap,
    ) -> Result<Option<Arc<CacheEntry>>, StoreError> {
        Ok(self
            .lookup_all(key)
            .await?
            .into_iter()
            .find(|e| e.matches(request)))
    }

    async fn insert(&self, key: &str, entry: Arc<CacheEntry>) -> Result<(), StoreError> {
        let inner = &self.inner;
        let now = SystemTime::now();
        let keep_until = millis(entry.keep_until());
        if keep_until <= millis(now) {
            return Ok(());
        }
        let (hash, index) = (inner.entry_key(key), inner.index_key(key));
        let (field, value) = (variant_id(&entry), entry::encode(&entry));
        let (channel, message) = (inner.channel.clone(), inner.message(key));
        let script = &inner.insert_script;
        inner
            .run("insert", |mut c| async move {
                script
                    .key(hash)
                    .key(index)
                    .arg(field)
                    .arg(value)
                    .arg(keep_until)
                    .arg(millis(now))
                    .arg(MAX_VARIANTS)
                    .arg(channel)
                    .arg(message)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(drop)
    }

    async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let (hash, index) = (inner.entry_key(key), inner.index_key(key));
        let (channel, message) = (inner.channel.clone(), inner.message(key));
        let script = &inner.remove_script;
        let removed: i64 = inner
            .run("remove", |mut c| async move {
                script
                    .key(hash)
                    .key(index)
                    .arg(channel)
                    .arg(message)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(removed > 0)
    }

    async fn acquire_lease(&self, key: &str, ttl: Duration) -> Result<Lease, StoreError> {
        let lock = self.inner.lock_key(key);
        let token = format!("{:032x}", rand::random::<u128>());
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let set: Option<String> = self
            .inner
            .run("lease", |mut c| {
                let token = token.clone();
                async move {
                    redis::cmd("SET")
                        .arg(lock)
                        .arg(token)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(match set {
            Some(_) => Lease::Granted(Some(token)),
            None => Lease::Held,
        })
    }

    async fn release_lease(&self, key: &str, token: &str) -> Result<(), StoreError> {
        let lock = self.inner.lock_key(key);
        let script = &self.inner.release_script;
        let token = token.to_string();
        self.inner
            .run("release", |mut c| async move {
                script
                    .key(lock)
                    .arg(token)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(drop)
    }

    fn health(&self) -> Health {
        // Not connected counts too: with L1 absorbing the traffic the breaker may not
        // have seen enough failures yet, but nothing reaches Redis.
        if self.inner.breaker.is_closed() && self.inner.conn().is_some() {
            Health::Ok
        } else {
            Health::Degraded
        }
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// Closed -> open after `BREAKER_THRESHOLD` consecutive failures; open fails fast for
/// `BREAKER_COOLDOWN`, then lets one probe through (half-open); its success closes it,
/// its failure opens it again.
struct Breaker {
    state: Mutex<BreakerState>,
}

#[derive(Debug, Clone, Copy)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out. `since` bounds it: a probe whose caller went away (cancelled
    /// request) must not keep the breaker half-open forever.
    HalfOpen {
        since: Instant,
    },
}

impl Breaker {
    fn new() -> Self {
        Breaker {
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BreakerState) -> R) -> R {
        match self.state.lock() {
            Ok(mut state) => f(&mut state),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    fn is_closed(&self) -> bool {
        self.with(|s| matches!(s, BreakerState::Closed { .. }))
    }

    /// Whether a call may go to Redis now.
    fn allow(&self) -> bool {
        self.with(|s| match *s {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if Instant::now() >= until => {
                *s = BreakerState::HalfOpen {
                    since: Instant::now(),
                };
                true
            }
            BreakerState::HalfOpen { since } if since.elapsed() >= BREAKER_COOLDOWN => {
                *s = BreakerState::HalfOpen {
                    since: Instant::now(),
                };
                true
            }
            _ => false,
        })
    }

    fn succeeded(&self) {
        self.with(|s| {
            if !matches!(s, BreakerState::Closed { .. }) {
                tracing::warn!("redis circuit closed: the store is healthy again");
            }
            *s = BreakerState::Closed { failures: 0 };
        })
    }

    /// Counts a failure; true when it opened the breaker.
    fn failed(&self) -> bool {
        self.with(|s| {
            let open = match *s {
                BreakerState::Closed { failures } if failures + 1 >= BREAKER_THRESHOLD => {
                    tracing::warn!(
                        failures = failures + 1,
                        "redis circuit open: failing fast, serving from L1 and the origin"
                    );
                    true
                }
                BreakerState::Closed { failures } => {
                    *s = BreakerState::Closed {
                        failures: failures + 1,
                    };
                    false
                }
                BreakerState::HalfOpen { .. } => {
                    tracing::debug!("redis probe failed; circuit stays open");
                    true
                }
                BreakerState::Open { .. } => false,
            };
            if open {
                *s = BreakerState::Open {
                    until: Instant::now() + BREAKER_COOLDOWN,
                };
            }
            open
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_consecutive_failures_and_probes_after_cooldown() {
        let b = Breaker::new();
        for _ in 0..BREAKER_THRESHOLD - 1 {
            assert!(b.allow());
            assert!(!b.failed());
        }
        b.succeeded();
        for _ in 0..BREAKER_THRESHOLD - 1 {
            assert!(!b.failed());
        }
        assert!(b.failed(), "the threshold-th consecutive failure opens it");
        assert!(!b.allow() && !b.is_closed());
        b.with(|s| {
            *s = BreakerState::Open {
                until: Instant::now(),
            }
        });
        assert!(b.allow(), "one probe after the cooldown");
        assert!(!b.allow(), "only one");
        assert!(b.failed(), "a failed probe reopens");
        b.with(|s| {
            *s = BreakerState::Open {
                until: Instant::now(),
            }
        });
        assert!(b.allow());
        b.succeeded();
        assert!(b.is_closed() && b.allow());
    }

    #[test]
    fn keys_of_one_cache_key_share_a_hash_tag_even_with_braces_in_the_key() {
        let inner = Inner {
            target: RedisTarget::Single("redis://127.0.0.1:1".into()),
            timeout: Duration::from_millis(50),
            namespace: "cg:v1:".into(),
            channel: "cg:invalidate".into(),
            node_id: "0".repeat(16),
            conn: RwLock::new(None),
            connecting: AtomicBool::new(false),
            breaker: Breaker::new(),
            insert_script: redis::Script::new(INSERT_LUA),
            remove_script: redis::Script::new(REMOVE_LUA),
            release_script: redis::Script::new(RELEASE_LUA),
        };
        let key = "GET /users/{id}|id=1";
        let tag = |k: &str| {
            let start = k.find('{').unwrap();
            let end = start + k[start..].find('}').unwrap();
            k[start..=end].to_string()
        };
        let e = inner.entry_key(key);
        assert!(e.starts_with("cg:v1:{"), "{e}");
        assert_eq!(tag(&e), tag(&inner.lock_key(key)));
        assert_eq!(tag(&e), tag(&inner.index_key(key)));
        assert_ne!(tag(&e), tag(&inner.entry_key("GET /users/{id}|id=2")));
        assert_eq!(tag(&e).len(), 18, "16 hex digits in braces");
    }
}
