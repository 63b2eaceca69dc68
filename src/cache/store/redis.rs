//! The shared store (L2): Redis single node, Sentinel or Cluster through redis-rs, one
//! hash per cache key, a `SET NX PX` lease, and a circuit breaker that fails fast.
//! `rediss://` URLs connect over TLS (rustls; `#insecure` skips certificate checks).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures_util::future::join_all;
use http::HeaderMap;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisFuture,
    RedisResult, TlsMode, Value,
};

use super::variants::pick;
use super::{Health, Lease, Store, StoreError, MAX_VARIANTS};
use crate::cache::entry::{self, FORMAT_VERSION};
use crate::cache::purge::{self, soften, Mode, Record, Selector};
use crate::cache::CacheEntry;
use crate::config::{RedisConfig, RedisTarget};

/// Consecutive failures (errors or timeouts) that open the breaker.
const BREAKER_THRESHOLD: u32 = 5;
/// How long an open breaker fails fast before one probe may try Redis again.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// A purge announces at most this many keys one by one; a larger one tells every L1 to
/// clear itself (one message instead of thousands, and L1 refills from L2).
const ANNOUNCE_KEYS_MAX: usize = 128;
/// The announcement (after the sender's id) that tells every L1 to drop everything.
/// Never a cache key: keys escape control characters.
pub const CLEAR_ALL: &str = "\0*";
/// SCAN's COUNT hint while a purge walks the namespace.
const SCAN_COUNT: usize = 500;
/// Commands a purge has in flight at once: one batch, bounded by the store's timeout.
const PURGE_BATCH: usize = 64;
/// A whole purge may take this long (each batch still gets only the store's timeout).
const PURGE_LIMIT: Duration = Duration::from_secs(30);
/// Establishing a connection may take longer than one command: it runs in the
/// background (callers fail fast meanwhile), so it never holds a request.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Stores `entry` as one field of the key's hash, indexes its `keep_until` in a sorted
/// set, drops dead and surplus variants, sets both keys to expire with the last variant,
/// and tells the other replicas to drop their L1 copy: all in one round trip, atomically.
/// KEYS: hash, index. ARGV: field, value, keep_until ms, now ms, max variants, channel
/// (empty: announce nothing, the caller does), message, and optionally the value the
/// field must still hold (a soft purge must not overwrite a newer entry); returns 0
/// when it does not. A `keep_until` already past drops the variant.
///
/// Race-free against purges (single node and Sentinel, where every key is on one node):
/// KEYS[3] is the purge log and ARGV[9] the time the fetch began (µs); purges logged since
/// are returned instead of writing, for the caller to decide (and write again with no
/// log key, or softened, or not at all). KEYS[4..] are the entry's tag sets: the cache
/// key (ARGV[10]) joins each, which expires no earlier than the entry.
const INSERT_LUA: &str = r#"
local h, z = KEYS[1], KEYS[2]
if ARGV[8] ~= '' and redis.call('HGET', h, ARGV[1]) ~= ARGV[8] then
  return 0
end
if KEYS[3] and KEYS[3] ~= '' then
  local newer = redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[9], '+inf')
  if #newer > 0 then
    return newer
  end
end
for i = 4, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[10])
  local left = redis.call('PTTL', KEYS[i])
  if left == -1 or (left >= 0 and tonumber(ARGV[4]) + left < tonumber(ARGV[3])) then
    redis.call('PEXPIREAT', KEYS[i], ARGV[3])
  end
end
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
if ARGV[6] ~= '' then
  redis.call('PUBLISH', ARGV[6], ARGV[7])
end
return 1
"#;

/// One tag set (Cluster, where it lives in another slot than the entry): KEYS: the set.
/// ARGV: cache key, keep_until ms, now ms. Membership is only ever added.
const TAG_LUA: &str = r#"
redis.call('SADD', KEYS[1], ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if left == -1 or (left >= 0 and tonumber(ARGV[3]) + left < tonumber(ARGV[2])) then
  redis.call('PEXPIREAT', KEYS[1], ARGV[2])
end
return 1
"#;

/// Logs a purge before it is applied. KEYS: the log. ARGV: score (µs), member, horizon
/// (µs; older records go), most records kept, the log's TTL (ms).
const RECORD_LUA: &str = r#"
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[4]) + 1))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
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

fn put(slot: &RwLock<Option<Handle>>, handle: Option<Handle>) {
    *write(slot) = handle;
}

/// A slot's write lock; a panic elsewhere while holding it leaves a value still usable.
fn write(slot: &RwLock<Option<Handle>>) -> std::sync::RwLockWriteGuard<'_, Option<Handle>> {
    slot.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn get(slot: &RwLock<Option<Handle>>) -> Option<Handle> {
    match slot.read() {
        Ok(slot) => slot.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

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
    /// One more connection per connection worker (`crate::workers`), opened on that
    /// worker once `conn` is up, so its commands and the connection's driver task share
    /// a thread (through `conn` every command woke another thread and back). Dropped
    /// with `conn` whenever it is replaced; until a worker's own is up it uses `conn`.
    local: Vec<LocalConn>,
    /// Bumped whenever `conn` is replaced: a worker's connection opened across a
    /// replacement (perhaps to a demoted master) is not kept.
    generation: AtomicU64,
    /// One background connect at a time, however many callers notice the gap.
    connecting: AtomicBool,
    breaker: Breaker,
    insert_script: redis::Script,
    remove_script: redis::Script,
    release_script: redis::Script,
    tag_script: redis::Script,
    record_script: redis::Script,
}

/// A worker's own connection and whether one is being opened.
#[derive(Default)]
struct LocalConn {
    conn: RwLock<Option<Handle>>,
    opening: AtomicBool,
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
        install_crypto_provider();
        validate(&config.target)?;
        let inner = Arc::new(Inner {
            target: config.target.clone(),
            timeout: config.timeout,
            namespace: format!("{}v{}:", config.key_prefix, FORMAT_VERSION),
            channel: format!("{}invalidate", config.key_prefix),
            node_id: format!("{:016x}", rand::random::<u64>()),
            conn: RwLock::new(None),
            local: (0..crate::workers::count())
                .map(|_| LocalConn::default())
                .collect(),
            connecting: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            breaker: Breaker::new(),
            insert_script: redis::Script::new(INSERT_LUA),
            remove_script: redis::Script::new(REMOVE_LUA),
            release_script: redis::Script::new(RELEASE_LUA),
            tag_script: redis::Script::new(TAG_LUA),
            record_script: redis::Script::new(RECORD_LUA),
        });
        // The gauge moves on the breaker's transitions only (not per command).
        crate::telemetry::record_breaker_component("store:redis", false);
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

    /// Stores `entry` unless a purge logged since its fetch began covers it: then it is
    /// stored stale (a soft purge) or not at all (hard). Returns that purge's mode.
    /// Single node and Sentinel check the log in the write's own script, so no purge
    /// can fall between check and write. In a Cluster the log lives in another slot:
    /// the write goes first, the log is read after it, and a covered write is undone
    /// (visible for one round trip at most).
    pub async fn insert_checked(
        &self,
        key: &str,
        entry: Arc<CacheEntry>,
    ) -> Result<Option<Mode>, StoreError> {
        let inner = &self.inner;
        let now = SystemTime::now();
        if millis(entry.keep_until()) <= millis(now) {
            return Ok(None);
        }
        let since = entry.fetched_since();
        if inner.is_cluster() {
            let value = entry::encode(&entry);
            inner.write(key, &entry, &value, None).await?;
            inner.join_tags(key, &entry).await?;
            let covered = inner.purged_since(key, &entry, since).await?;
            if let Some(mode) = covered {
                inner.undo(key, &entry, &value, mode).await?;
            }
            return Ok(covered);
        }
        let mut log_since = purge::micros(since);
        let mut seen: Vec<Record> = Vec::new();
        // Each retry reads only purges newer than those it has seen; bounded, and a
        // write that keeps racing purges is dropped (a later request fetches again).
        for _ in 0..3 {
            let value = entry::encode(&entry);
            match inner.write(key, &entry, &value, Some(log_since)).await? {
                Written::Done => return Ok(None),
                Written::Purges(records) => {
                    log_since = records
                        .iter()
                        .map(|r| purge::micros(r.at) + 1)
                        .max()
                        .unwrap_or(log_since + 1)
                        .max(log_since + 1);
                    seen.extend(records);
                    if let Some(mode) = purge::covering(&seen, key, &entry, since) {
                        if let Some(soft) = purge::apply(&entry, Some(mode), SystemTime::now()) {
                            let value = entry::encode(&soft);
                            inner.write(key, &soft, &value, None).await?;
                        }
                        return Ok(Some(mode));
                    }
                }
            }
        }
        Ok(Some(Mode::Hard))
    }

    /// Every live variant of `key` (for L1 to keep the whole set).
    pub async fn lookup_all(&self, key: &str) -> Result<Vec<Arc<CacheEntry>>, StoreError> {
        let span = crate::telemetry::store_lookup_span("l2");
        let hash = self.inner.entry_key(key);
        let values: Vec<Vec<u8>> = self
            .inner
            .run("lookup", |mut c| async move {
                redis::cmd("HVALS").arg(hash).query_async(&mut c).await
            })
            .await
            .inspect_err(|_| crate::telemetry::record_result(&span, "error"))?;
        let now = SystemTime::now();
        let found: Vec<_> = values
            .iter()
            // Undecodable bytes (corrupt, foreign) read as a miss, never as an error.
            .filter_map(|v| entry::decode(v))
            .filter(|e| e.keep_until() > now)
            .map(Arc::new)
            .collect();
        crate::telemetry::record_result(&span, if found.is_empty() { "miss" } else { "hit" });
        Ok(found)
    }
}

/// What one batch of a purge found in a key: the fields of its live variants the
/// selector reaches, with the bytes each held when read.
struct Selected {
    key: String,
    variants: Vec<(String, Vec<u8>, CacheEntry)>,
}

/// The distinct masters in a `CLUSTER SLOTS` reply, as the cluster client addresses them.
fn masters_of(slots: &Value) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = Vec::new();
    let Value::Array(ranges) = slots else {
        return out;
    };
    for range in ranges {
        let Value::Array(items) = range else { continue };
        let Some(Value::Array(master)) = items.get(2) else {
            continue;
        };
        let (Some(host), Some(port)) = (master.first(), master.get(1)) else {
            continue;
        };
        let host: Option<String> = redis::from_redis_value_ref(host).ok();
        let port: Option<u16> = redis::from_redis_value_ref(port).ok();
        if let (Some(host), Some(port)) = (host, port) {
            if !out.iter().any(|(h, p)| *h == host && *p == port) {
                out.push((host, port));
            }
        }
    }
    out
}

/// `text` with Redis glob metacharacters escaped, to match itself in `SCAN MATCH`.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// rustls needs a process-wide crypto provider for the first `rediss://` handshake, and
/// redis-rs builds it without choosing one. rustls falls back on its crate features only
/// while exactly one provider is compiled in, so ring is installed explicitly: a
/// dependency that also enables aws-lc-rs must not break TLS. Here rather than in
/// `main`, so every user of the store (tests included) gets it. Another part of the
/// process may have installed one first: that one serves.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// How to reach the master the sentinels name: the way the first sentinel node URL
/// reaches its sentinel. Its TLS mode (`rediss://`, `#insecure`), its credentials and
/// its db carry over to the master. (A sentinel without a password of its own accepts
/// `redis://default:PASS@host`: `AUTH default PASS` succeeds for a `nopass` user, while
/// the one-argument `AUTH PASS` is refused.)
fn sentinel_master_info(nodes: &[String]) -> RedisResult<SentinelNodeConnectionInfo> {
    let Some(first) = nodes.first() else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "no sentinel nodes",
        )));
    };
    let info = first.as_str().into_connection_info()?;
    let mut node = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(info.redis_settings().clone());
    if let ConnectionAddr::TcpTls { insecure, .. } = info.addr() {
        node = node.set_tls_mode(if *insecure {
            TlsMode::Insecure
        } else {
            TlsMode::Secure
        });
    }
    Ok(node)
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

/// A purge log member: `<nonce>|<record>`.
fn decode_logged(member: &str) -> Option<Record> {
    Record::decode(member.split_once('|')?.1)
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

/// What the insert script did.
enum Written {
    Done,
    /// Not written: these purges were logged since the fetch began.
    Purges(Vec<Record>),
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

    /// The purge log: one sorted set for the namespace (`Record`s by time).
    fn log_key(&self) -> String {
        format!("{}purges", self.namespace)
    }

    /// The set of cache keys whose entries carried `tag` when written.
    fn tag_key(&self, tag: &str) -> String {
        format!("{}tag:{tag}", self.namespace)
    }

    fn is_cluster(&self) -> bool {
        matches!(self.target, RedisTarget::Cluster(_))
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}:lock:{key}", self.tag(key))
    }

    /// The cache key an entry hash stands for, from the hash's name; None for any other
    /// key of the namespace (indexes, leases) or a foreign one.
    fn cache_key_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        let rest = name
            .strip_prefix(self.namespace.as_str())?
            .strip_prefix('{')?;
        let (hash, rest) = rest.split_at_checked(16)?;
        if !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        rest.strip_prefix("}:e:")
    }

    /// What a purge walks: every entry hash of the namespace (of one route, when that
    /// is the selector).
    fn scan_pattern(&self, selector: &Selector) -> String {
        let mut pattern = glob_escape(&self.namespace);
        pattern.push_str("{*}:e:");
        if let Selector::Route(template) = selector {
            pattern.push_str(&glob_escape(template));
            pattern.push('|');
        }
        pattern.push('*');
        pattern
    }

    fn message(&self, key: &str) -> String {
        format!("{}{key}", self.node_id)
    }

    fn connect_timeout(&self) -> Duration {
        (self.timeout * 4).max(MIN_CONNECT_TIMEOUT)
    }

    /// Replaces the connection; the workers' own go with it (a failover or a dead
    /// socket concerns them too) and are opened again once it is back.
    fn set_conn(&self, handle: Option<Handle>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        put(&self.conn, handle);
        for local in &self.local {
            put(&local.conn, None);
        }
    }

    fn conn(&self) -> Option<Handle> {
        get(&self.conn)
    }

    /// The connection for a command on this thread: the worker's own when it is up,
    /// else the shared one (opening the worker's own in the background, on the worker).
    fn conn_here(self: &Arc<Self>) -> Option<Handle> {
        let shared = self.conn()?;
        let Some(local) = crate::workers::current().and_then(|w| self.local.get(w)) else {
            return Some(shared);
        };
        if let Some(own) = get(&local.conn) {
            return Some(own);
        }
        if !local.opening.swap(true, Ordering::AcqRel) {
            let weak: Weak<Inner> = Arc::downgrade(self);
            let worker = crate::workers::current();
            let generation = self.generation.load(Ordering::Acquire);
            tokio::spawn(async move {
                let Some(inner) = weak.upgrade() else { return };
                let Some(local) = worker.and_then(|w| inner.local.get(w)) else {
                    return;
                };
                if let Ok(handle) = inner.open().await {
                    // Under the slot's lock: `set_conn` bumps the generation before it
                    // clears the slots, so a replacement either is seen here or clears
                    // what is stored.
                    let mut slot = write(&local.conn);
                    if inner.generation.load(Ordering::Acquire) == generation {
                        *slot = Some(handle);
                    }
                }
                local.opening.store(false, Ordering::Release);
            });
        }
        Some(shared)
    }

    async fn sentinel_master(&self) -> RedisResult<Client> {
        let RedisTarget::Sentinel { master, nodes } = &self.target else {
            unreachable!("sentinel_master on a non-sentinel target");
        };
        let mut sentinel = SentinelClient::build(
            nodes.clone(),
            master.clone(),
            Some(sentinel_master_info(nodes)?),
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
        let refused = if !self.breaker.allow() {
            Some("circuit open")
        } else if self.conn().is_none() {
            self.failed();
            self.reconnect();
            Some("not connected")
        } else {
            None
        };
        let handle = match (refused, self.conn_here()) {
            (None, Some(handle)) => handle,
            (refused, _) => {
                crate::telemetry::record_store_op("l2", op, "error");
                return Err(fail(refused.unwrap_or("not connected").into()));
            }
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, command(handle)).await;
        crate::telemetry::record_store_duration("l2", op, started.elapsed());
        let ok = matches!(outcome, Ok(Ok(_)));
        crate::telemetry::record_store_op("l2", op, if ok { "ok" } else { "error" });
        self.settle(outcome, fail)
    }

    /// The breaker's and the connection's view of one command's outcome.
    fn settle<T>(
        self: &Arc<Self>,
        outcome: Result<RedisResult<T>, tokio::time::error::Elapsed>,
        fail: impl Fn(String) -> StoreError,
    ) -> Result<T, StoreError> {
        match outcome {
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

    /// Purges what `selector` reaches and announces it to every replica's L1; the
    /// number of keys touched. A purge that stops part way (Redis failing, the overall
    /// bound) still announces what it did, then fails.
    async fn purge(self: &Arc<Self>, selector: &Selector, mode: Mode) -> Result<u64, StoreError> {
        self.record(selector, mode).await?;
        let mut touched = Vec::new();
        let outcome = match selector {
            Selector::Key(key) => {
                self.purge_keys(selector, mode, vec![key.clone()], &mut touched)
                    .await
            }
            Selector::Tag(tag) => self.purge_tagged(selector, tag, mode, &mut touched).await,
            _ => self.scan_and_purge(selector, mode, &mut touched).await,
        };
        let announced = self.announce(&touched).await;
        if let Err(mut error) = outcome {
            error.message = format!(
                "{} ({} keys purged before it)",
                error.message,
                touched.len()
            );
            return Err(error);
        }
        announced.map_err(|mut error| {
            error.message = format!(
                "{} keys purged, but the replicas' L1 may keep them up to max_ttl: {}",
                touched.len(),
                error.message
            );
            error
        })?;
        Ok(touched.len() as u64)
    }

    /// One run of the insert script. With `log_since` (single node, Sentinel) it checks
    /// the purge log and joins the tag sets in the same script.
    async fn write(
        self: &Arc<Self>,
        key: &str,
        entry: &CacheEntry,
        value: &[u8],
        log_since: Option<u64>,
    ) -> Result<Written, StoreError> {
        let now = SystemTime::now();
        let keep_until = millis(entry.keep_until());
        let mut invocation = self.insert_script.prepare_invoke();
        invocation.key(self.entry_key(key)).key(self.index_key(key));
        if !self.is_cluster() {
            invocation.key(log_since.map(|_| self.log_key()).unwrap_or_default());
            for tag in &entry.tags {
                invocation.key(self.tag_key(tag));
            }
        }
        invocation
            .arg(variant_id(entry))
            .arg(value)
            .arg(keep_until)
            .arg(millis(now))
            .arg(MAX_VARIANTS)
            .arg(self.channel.as_str())
            .arg(self.message(key))
            .arg("")
            .arg(log_since.unwrap_or(0))
            .arg(key);
        let reply: Value = self
            .run("insert", |mut c| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        Ok(match reply {
            Value::Array(items) => Written::Purges(
                items
                    .iter()
                    .filter_map(|v| match v {
                        Value::BulkString(b) => std::str::from_utf8(b).ok(),
                        _ => None,
                    })
                    .filter_map(decode_logged)
                    .collect(),
            ),
            _ => Written::Done,
        })
    }

    /// Cluster: adds `key` to each of its entry's tag sets (each in its own slot).
    async fn join_tags(self: &Arc<Self>, key: &str, entry: &CacheEntry) -> Result<(), StoreError> {
        if entry.tags.is_empty() {
            return Ok(());
        }
        let now = millis(SystemTime::now());
        let keep = millis(entry.keep_until());
        let sets: Vec<String> = entry.tags.iter().map(|t| self.tag_key(t)).collect();
        let script = &self.tag_script;
        self.run("insert", |c| {
            let sets = &sets;
            async move {
                join_all(sets.iter().map(|set| {
                    let mut c = c.clone();
                    async move {
                        script
                            .key(set)
                            .arg(key)
                            .arg(keep)
                            .arg(now)
                            .invoke_async::<i64>(&mut c)
                            .await
                    }
                }))
                .await
                .into_iter()
                .collect::<RedisResult<Vec<i64>>>()
            }
        })
        .await
        .map(drop)
    }

    /// Cluster: the strongest purge logged since `since` that covers the entry.
    async fn purged_since(
        self: &Arc<Self>,
        key: &str,
        entry: &CacheEntry,
        since: SystemTime,
    ) -> Result<Option<Mode>, StoreError> {
        let log = self.log_key();
        let from = purge::micros(since);
        let members: Vec<String> = self
            .run("insert", |mut c| {
                let log = &log;
                async move {
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(log)
                        .arg(from)
                        .arg("+inf")
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        let records: Vec<Record> = members.iter().filter_map(|m| decode_logged(m)).collect();
        Ok(purge::covering(&records, key, entry, since))
    }

    /// Cluster: takes back a write a purge covered: removed (hard) or rewritten stale
    /// unless it changed since (soft).
    async fn undo(
        self: &Arc<Self>,
        key: &str,
        entry: &CacheEntry,
        written: &[u8],
        mode: Mode,
    ) -> Result<(), StoreError> {
        let (hash, index) = (self.entry_key(key), self.index_key(key));
        let (channel, message) = (self.channel.as_str(), self.message(key));
        match mode {
            Mode::Hard => {
                let script = &self.remove_script;
                self.run("insert", |mut c| async move {
                    script
                        .key(&hash)
                        .key(&index)
                        .arg(channel)
                        .arg(&message)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await
                .map(drop)
            }
            Mode::Soft => {
                let now = SystemTime::now();
                let soft = soften(entry, now);
                let value = entry::encode(&soft);
                let script = &self.insert_script;
                self.run("insert", |mut c| async move {
                    script
                        .key(&hash)
                        .key(&index)
                        .arg(variant_id(&soft))
                        .arg(&value)
                        .arg(millis(soft.keep_until()))
                        .arg(millis(now))
                        .arg(MAX_VARIANTS)
                        .arg(channel)
                        .arg(&message)
                        .arg(written)
                        .invoke_async::<Value>(&mut c)
                        .await
                })
                .await
                .map(drop)
            }
        }
    }

    /// Logs a purge before it is applied, so a write racing it can see it.
    async fn record(self: &Arc<Self>, selector: &Selector, mode: Mode) -> Result<(), StoreError> {
        let now = SystemTime::now();
        let record = Record {
            at: now,
            selector: selector.clone(),
            mode,
        };
        let member = format!("{:016x}|{}", rand::random::<u64>(), record.encode());
        let score = purge::micros(now);
        let horizon = score.saturating_sub(purge::LOG_KEEP.as_micros() as u64);
        let log = self.log_key();
        let script = &self.record_script;
        self.run("purge", |mut c| async move {
            script
                .key(&log)
                .arg(score)
                .arg(&member)
                .arg(horizon)
                .arg(purge::LOG_MAX)
                .arg(purge::LOG_KEEP.as_millis() as u64)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .map(drop)
    }

    /// A tag purge: the keys of the tag's set (SSCAN, batch by batch), each verified
    /// against the entries it holds.
    async fn purge_tagged(
        self: &Arc<Self>,
        selector: &Selector,
        tag: &str,
        mode: Mode,
        touched: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let deadline = Instant::now() + PURGE_LIMIT;
        let set = self.tag_key(tag);
        let mut seen: HashSet<String> = HashSet::new();
        let mut cursor = 0u64;
        loop {
            if Instant::now() >= deadline {
                return Err(StoreError {
                    op: "purge",
                    message: format!("stopped after {PURGE_LIMIT:?}"),
                });
            }
            let (next, keys): (u64, Vec<String>) = self
                .run("purge", |mut c| {
                    let set = &set;
                    async move {
                        redis::cmd("SSCAN")
                            .arg(set)
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(SCAN_COUNT)
                            .query_async(&mut c)
                            .await
                    }
                })
                .await?;
            let keys: Vec<String> = keys
                .into_iter()
                .filter(|k| seen.insert(k.clone()))
                .collect();
            for batch in keys.chunks(PURGE_BATCH) {
                self.purge_keys(selector, mode, batch.to_vec(), touched)
                    .await?;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(());
            }
        }
    }

    /// Walks the namespace on every master (SCAN, batch by batch) and purges the keys
    /// selected there.
    async fn scan_and_purge(
        self: &Arc<Self>,
        selector: &Selector,
        mode: Mode,
        touched: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let deadline = Instant::now() + PURGE_LIMIT;
        let pattern = self.scan_pattern(selector);
        // SCAN may return a key twice; each is purged (and counted) once.
        let mut seen: HashSet<String> = HashSet::new();
        for node in self.scan_nodes().await? {
            let mut cursor = 0u64;
            loop {
                if Instant::now() >= deadline {
                    return Err(StoreError {
                        op: "purge",
                        message: format!("stopped after {PURGE_LIMIT:?}"),
                    });
                }
                let (next, names) = self.scan(node.as_ref(), cursor, &pattern).await?;
                let keys: Vec<String> = names
                    .iter()
                    .filter_map(|name| std::str::from_utf8(name).ok())
                    .filter_map(|name| self.cache_key_of(name))
                    .filter(|key| selector.matches_key(key) != Some(false))
                    .filter(|key| seen.insert(key.to_string()))
                    .map(str::to_string)
                    .collect();
                for batch in keys.chunks(PURGE_BATCH) {
                    self.purge_keys(selector, mode, batch.to_vec(), touched)
                        .await?;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Where to SCAN: the one connection (None), or each master of a Cluster.
    async fn scan_nodes(self: &Arc<Self>) -> Result<Vec<Option<(String, u16)>>, StoreError> {
        if !matches!(self.target, RedisTarget::Cluster(_)) {
            return Ok(vec![None]);
        }
        let slots = self
            .run("purge", |c| async move {
                match c {
                    Handle::Cluster(mut c) => {
                        c.route_command(
                            redis::cmd("CLUSTER").arg("SLOTS").clone(),
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                        )
                        .await
                    }
                    Handle::Node(mut c) => {
                        redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await
                    }
                }
            })
            .await?;
        let masters = masters_of(&slots);
        if masters.is_empty() {
            return Err(StoreError {
                op: "purge",
                message: "CLUSTER SLOTS named no master".into(),
            });
        }
        Ok(masters.into_iter().map(Some).collect())
    }

    /// One SCAN step on `node` (None: the connection's node).
    async fn scan(
        self: &Arc<Self>,
        node: Option<&(String, u16)>,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<Vec<u8>>), StoreError> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        self.run("purge", |c| async move {
            match (c, node) {
                (Handle::Cluster(mut c), Some((host, port))) => {
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    });
                    Ok(redis::from_redis_value(
                        c.route_command(cmd, routing).await?,
                    )?)
                }
                (mut c, _) => cmd.query_async(&mut c).await,
            }
        })
        .await
    }

    /// Purges one batch of candidate keys: reads them when the selector or the mode
    /// needs their entries, then deletes (hard) or rewrites the selected variants stale
    /// (soft). Keys it touched are appended to `touched`.
    async fn purge_keys(
        self: &Arc<Self>,
        selector: &Selector,
        mode: Mode,
        keys: Vec<String>,
        touched: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let by_key = keys.iter().all(|k| selector.matches_key(k) == Some(true));
        if mode == Mode::Hard && by_key {
            let deleted = self.delete(&keys).await?;
            touched.extend(
                keys.into_iter()
                    .zip(deleted)
                    .filter(|(_, n)| *n > 0)
                    .map(|(k, _)| k),
            );
            return Ok(());
        }
        let selected = self.read_selected(selector, keys).await?;
        match mode {
            Mode::Hard => {
                let keys: Vec<String> = selected.into_iter().map(|s| s.key).collect();
                let deleted = self.delete(&keys).await?;
                touched.extend(
                    keys.into_iter()
                        .zip(deleted)
                        .filter(|(_, n)| *n > 0)
                        .map(|(k, _)| k),
                );
            }
            Mode::Soft => {
                self.soften_all(&selected).await?;
                touched.extend(selected.into_iter().map(|s| s.key));
            }
        }
        Ok(())
    }

    /// `DEL` each key's hash and index; how many of the two each had.
    async fn delete(self: &Arc<Self>, keys: &[String]) -> Result<Vec<i64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let commands: Vec<Cmd> = keys
            .iter()
            .map(|k| {
                redis::cmd("DEL")
                    .arg(self.entry_key(k))
                    .arg(self.index_key(k))
                    .clone()
            })
            .collect();
        self.run("purge", |c| async move {
            join_all(commands.iter().map(|cmd| {
                let mut c = c.clone();
                async move { cmd.query_async::<i64>(&mut c).await }
            }))
            .await
            .into_iter()
            .collect()
        })
        .await
    }

    /// The keys among `keys` with at least one live variant `selector` reaches.
    async fn read_selected(
        self: &Arc<Self>,
        selector: &Selector,
        keys: Vec<String>,
    ) -> Result<Vec<Selected>, StoreError> {
        let hashes: Vec<String> = keys.iter().map(|k| self.entry_key(k)).collect();
        let all: Vec<Vec<(String, Vec<u8>)>> = self
            .run("purge", |c| async move {
                join_all(hashes.iter().map(|h| {
                    let mut c = c.clone();
                    async move {
                        let fields: std::collections::HashMap<String, Vec<u8>> =
                            redis::cmd("HGETALL").arg(h).query_async(&mut c).await?;
                        Ok(fields.into_iter().collect())
                    }
                }))
                .await
                .into_iter()
                .collect()
            })
            .await?;
        let now = SystemTime::now();
        Ok(keys
            .into_iter()
            .zip(all)
            .filter_map(|(key, fields)| {
                let variants: Vec<(String, Vec<u8>, CacheEntry)> = fields
                    .into_iter()
                    .filter_map(|(field, raw)| {
                        // Undecodable bytes are nobody's entry: a purge leaves them.
                        let e = entry::decode(&raw)?;
                        (e.keep_until() > now && selector.matches(&key, &e))
                            .then_some((field, raw, e))
                    })
                    .collect();
                (!variants.is_empty()).then_some(Selected { key, variants })
            })
            .collect())
    }

    /// Rewrites each selected variant stale through the insert script (same TTL and
    /// index logic as an insert), unless it changed since it was read.
    async fn soften_all(self: &Arc<Self>, selected: &[Selected]) -> Result<(), StoreError> {
        let now = SystemTime::now();
        let mut writes = Vec::new();
        for s in selected {
            for (field, raw, e) in &s.variants {
                if e.fresh_until < now {
                    continue; // already stale: nothing to change
                }
                let soft = soften(e, now);
                writes.push((
                    self.entry_key(&s.key),
                    self.index_key(&s.key),
                    field.clone(),
                    entry::encode(&soft),
                    millis(soft.keep_until()),
                    raw.clone(),
                ));
            }
        }
        let script = &self.insert_script;
        for batch in writes.chunks(PURGE_BATCH) {
            self.run("purge", |c| async move {
                join_all(batch.iter().map(|(hash, index, field, value, keep, old)| {
                    let mut c = c.clone();
                    async move {
                        script
                            .key(hash)
                            .key(index)
                            .arg(field)
                            .arg(value)
                            .arg(keep)
                            .arg(millis(now))
                            .arg(MAX_VARIANTS)
                            .arg("")
                            .arg("")
                            .arg(old)
                            .invoke_async::<i64>(&mut c)
                            .await
                    }
                }))
                .await
                .into_iter()
                .collect::<RedisResult<Vec<i64>>>()
            })
            .await?;
        }
        Ok(())
    }

    /// Tells every replica's L1 to drop `keys` (or everything, when there are many).
    async fn announce(self: &Arc<Self>, keys: &[String]) -> Result<(), StoreError> {
        let messages: Vec<String> = if keys.len() > ANNOUNCE_KEYS_MAX {
            vec![self.message(CLEAR_ALL)]
        } else {
            keys.iter().map(|k| self.message(k)).collect()
        };
        let channel = self.channel.as_str();
        for batch in messages.chunks(PURGE_BATCH) {
            self.run("purge", |c| async move {
                join_all(batch.iter().map(|m| {
                    let mut c = c.clone();
                    async move {
                        redis::cmd("PUBLISH")
                            .arg(channel)
                            .arg(m)
                            .query_async::<i64>(&mut c)
                            .await
                    }
                }))
                .await
                .into_iter()
                .collect::<RedisResult<Vec<i64>>>()
            })
            .await?;
        }
        Ok(())
    }

    fn failed(self: &Arc<Self>) {
        if self.breaker.failed() {
            crate::telemetry::record_breaker_component("store:redis", true);
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
        Ok(pick(&self.lookup_all(key).await?, request))
    }

    async fn insert(&self, key: &str, entry: Arc<CacheEntry>) -> Result<(), StoreError> {
        self.insert_checked(key, entry).await.map(drop)
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

    /// Key: one hash, no scan. Route, prefix, tag: SCAN of the namespace on every
    /// master, selected by key name (route, prefix) or by the entries' tags, in batches
    /// each bounded by the store's timeout, the whole by `PURGE_LIMIT`.
    async fn purge(&self, selector: &Selector, mode: Mode) -> Result<u64, StoreError> {
        self.inner.purge(selector, mode).await
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
                crate::telemetry::record_breaker_component("store:redis", false);
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

    fn test_inner() -> Inner {
        Inner {
            target: RedisTarget::Single("redis://127.0.0.1:1".into()),
            timeout: Duration::from_millis(50),
            namespace: "cg:v1:".into(),
            channel: "cg:invalidate".into(),
            node_id: "0".repeat(16),
            conn: RwLock::new(None),
            local: Vec::new(),
            connecting: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            breaker: Breaker::new(),
            insert_script: redis::Script::new(INSERT_LUA),
            remove_script: redis::Script::new(REMOVE_LUA),
            release_script: redis::Script::new(RELEASE_LUA),
            tag_script: redis::Script::new(TAG_LUA),
            record_script: redis::Script::new(RECORD_LUA),
        }
    }

    #[test]
    fn keys_of_one_cache_key_share_a_hash_tag_even_with_braces_in_the_key() {
        let inner = test_inner();
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

    #[test]
    fn a_purge_reads_cache_keys_back_from_entry_hash_names_only() {
        let inner = test_inner();
        let key = "/users/{id}|id=1|";
        assert_eq!(inner.cache_key_of(&inner.entry_key(key)), Some(key));
        assert_eq!(inner.cache_key_of(&inner.index_key(key)), None);
        assert_eq!(inner.cache_key_of(&inner.lock_key(key)), None);
        // An index whose key text contains ":e:" matches the SCAN pattern, not the parse.
        assert_eq!(inner.cache_key_of(&inner.index_key("/a}:e:b|")), None);
        assert_eq!(
            inner.cache_key_of("other:v1:{0123456789abcdef}:e:/x|"),
            None
        );
        assert_eq!(inner.cache_key_of("cg:v1:{0123456789abcdeg}:e:/x|"), None);

        assert_eq!(
            inner.scan_pattern(&Selector::Tag("t".into())),
            "cg:v1:{*}:e:*"
        );
        assert_eq!(
            inner.scan_pattern(&Selector::Route("/{*rest}".into())),
            "cg:v1:{*}:e:/{\\*rest}|*"
        );
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn masters_come_from_cluster_slots_once_each() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |a: i64, b: i64, master: Value, replica: Value| {
            Value::Array(vec![Value::Int(a), Value::Int(b), master, replica])
        };
        let slots = Value::Array(vec![
            range(0, 100, node("10.0.0.1", 7000), node("10.0.0.4", 7003)),
            range(101, 200, node("10.0.0.2", 7001), node("10.0.0.5", 7004)),
            range(201, 300, node("10.0.0.1", 7000), node("10.0.0.4", 7003)),
        ]);
        assert_eq!(
            masters_of(&slots),
            vec![
                ("10.0.0.1".to_string(), 7000),
                ("10.0.0.2".to_string(), 7001)
            ]
        );
        assert!(masters_of(&Value::Nil).is_empty());
    }
}
