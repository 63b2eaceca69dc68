//! Real `redis-server` processes for the store tests: a single node, a 3-master Cluster
//! and a Sentinel set, each on free loopback ports in its own temp dir, killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `redis-server` (a node, a cluster node or a sentinel) that can be killed and
/// brought back on the same port.
pub struct RedisServer {
    pub port: u16,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
}

/// The binaries are system packages; say how to get them instead of a bare ENOENT.
fn require(binary: &str) {
    match Command::new(binary).arg("--version").output() {
        Ok(_) => {}
        Err(e) => panic!(
            "{binary} is needed by the Redis store tests ({e}): \
             apt-get install redis-server redis-tools"
        ),
    }
}

/// A port that is free now and whose cluster bus port (+10000) is free too. Never the
/// well-known 6379 (a shared server may run there) nor its neighbours.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = 20_000 + (rand::random::<u16>() % 25_000);
        if (6370..=6390).contains(&port) {
            continue;
        }
        let ok = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok();
        if ok {
            return port;
        }
    }
    panic!("no free loopback port pair found");
}

/// Sends one inline command and returns the raw reply.
fn command(port: u16, cmd: &str) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if complete(&reply) {
            break;
        }
    }
    Some(String::from_utf8_lossy(&reply).into_owned())
}

/// Whether a RESP reply is whole: a line, or a bulk string of its announced length.
fn complete(reply: &[u8]) -> bool {
    let Some(eol) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    if reply.first() != Some(&b'$') {
        return true;
    }
    let len: i64 = std::str::from_utf8(&reply[1..eol])
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    len < 0 || reply.len() >= eol + 2 + len as usize + 2
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

impl RedisServer {
    /// A plain node on a free port.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// A node with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        require("redis-server");
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("cachegate-redis-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().expect("utf-8 temp dir"),
            "--logfile",
            "redis.log",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = RedisServer {
            port,
            args,
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    /// A sentinel watching `master_port` as `name`.
    pub fn sentinel(name: &str, master_port: u16, quorum: u32) -> RedisServer {
        require("redis-server");
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("cachegate-sentinel-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile sentinel.log\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} {quorum}\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir.display()
            ),
        )
        .expect("write sentinel.conf");
        let mut server = RedisServer {
            port,
            args: vec![conf.display().to_string(), "--sentinel".into()],
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server: {e}: apt-get install redis-server"));
        self.child = Some(child);
        let port = self.port;
        wait_until(
            &format!("redis-server on port {port} to answer PING"),
            Duration::from_secs(10),
            || command(port, "PING").is_some_and(|r| r.starts_with("+PONG")),
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no goodbye to clients, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port with the same arguments (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// One command through `redis-cli`, its output trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        require("redis-cli");
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A `store:` block that puts cachegate on this node.
    pub fn store_yaml(&self, timeout: &str, l1: &str) -> String {
        format!(
            "store:\n  backend: redis\n  redis:\n    url: {}\n    timeout: {timeout}\n  l1: {l1}\n",
            self.url()
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three masters, each with one replica, created with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
    pub replicas: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        require("redis-cli");
        // `--cluster create` can wait forever for the nodes to agree when the machine is
        // loaded; a bounded attempt with fresh nodes is more reliable than waiting.
        for attempt in 1..=3 {
            if let Some(cluster) = Self::try_start(Duration::from_secs(20)) {
                return cluster;
            }
            eprintln!("cluster create attempt {attempt} timed out; retrying with new nodes");
        }
        panic!("could not create a Redis Cluster in 3 attempts");
    }

    fn try_start(limit: Duration) -> Option<RedisCluster> {
        let node = || {
            RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                // Fast failover for the tests: a replica takes over a second after
                // its master stops answering, whatever its replication lag.
                "--cluster-node-timeout",
                "1000",
                "--cluster-replica-validity-factor",
                "0",
            ])
        };
        let masters: Vec<RedisServer> = (0..3).map(|_| node()).collect();
        let replicas: Vec<RedisServer> = (0..3).map(|_| node()).collect();
        let addrs: Vec<String> = masters
            .iter()
            .chain(&replicas)
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli --cluster create");
        let deadline = Instant::now() + limit;
        loop {
            match create.try_wait() {
                Ok(Some(status)) => {
                    assert!(status.success(), "redis-cli --cluster create failed");
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    let _ = create.kill();
                    let _ = create.wait();
                    return None;
                }
            }
        }
        let cluster = RedisCluster { masters, replicas };
        cluster.wait_ok(Duration::from_secs(20));
        // `--cluster create` may pair nodes differently from the order given: read
        // back which nodes ended up masters.
        Some(cluster.sorted())
    }

    /// Waits until every running node reports `cluster_state:ok`.
    pub fn wait_ok(&self, limit: Duration) {
        wait_until("cluster_state:ok on every node", limit, || {
            self.masters
                .iter()
                .chain(&self.replicas)
                .filter(|n| n.running())
                .all(|n| {
                    command(n.port, "CLUSTER INFO").is_some_and(|i| i.contains("cluster_state:ok"))
                })
        });
    }

    fn sorted(self) -> RedisCluster {
        let RedisCluster { masters, replicas } = self;
        let (mut m, mut r) = (Vec::new(), Vec::new());
        for n in masters.into_iter().chain(replicas) {
            let role = command(n.port, "ROLE").unwrap_or_default();
            if role.contains("master") {
                m.push(n);
            } else {
                r.push(n);
            }
        }
        RedisCluster {
            masters: m,
            replicas: r,
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.masters.iter().map(|n| n.url()).collect()
    }

    pub fn store_yaml(&self, timeout: &str, l1: &str) -> String {
        let nodes = self.urls().join(", ");
        format!(
            "store:\n  backend: redis\n  redis:\n    cluster: [{nodes}]\n    timeout: {timeout}\n  l1: {l1}\n"
        )
    }
}

/// A master, one replica and three sentinels (quorum 2) watching them as `mymaster`.
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
}

impl RedisSentinel {
    pub const NAME: &'static str = "mymaster";

    pub fn start() -> RedisSentinel {
        let master = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        wait_until("the replica to sync", Duration::from_secs(10), || {
            command(replica.port, "INFO replication")
                .is_some_and(|i| i.contains("master_link_status:up"))
        });
        let sentinels: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::sentinel(Self::NAME, master.port, 2))
            .collect();
        // Sentinels find the replica and each other through the master; wait until
        // each knows both so a failover can be agreed on.
        wait_until(
            "sentinels to discover the set",
            Duration::from_secs(30),
            || {
                sentinels.iter().all(|s| {
                    let info = command(s.port, "INFO sentinel").unwrap_or_default();
                    info.contains("slaves=1") && info.contains("sentinels=3")
                })
            },
        );
        RedisSentinel {
            master,
            replica,
            sentinels,
        }
    }

    pub fn store_yaml(&self, timeout: &str, l1: &str) -> String {
        let nodes = self
            .sentinels
            .iter()
            .map(|s| s.url())
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "store:\n  backend: redis\n  redis:\n    sentinel: {{ master: {}, nodes: [{nodes}] }}\n    timeout: {timeout}\n  l1: {l1}\n",
            Self::NAME
        )
    }
}
