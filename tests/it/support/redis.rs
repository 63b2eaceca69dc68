//! Real `redis-server` processes for the store tests: a single node (plain, with a
//! password, or TLS-only), a 3-master Cluster and a Sentinel set (optionally with a
//! password on its data nodes), each on free loopback ports in its own temp dir, killed
//! on drop.

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
    /// `requirepass`: the fixture's own commands authenticate with it.
    password: Option<String>,
    /// TLS only (`--port 0 --tls-port`), with a self-signed certificate.
    tls: bool,
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
    command_as(port, None, cmd)
}

/// Sends one inline command, after `AUTH password` when there is one, and returns the
/// raw reply to the command (or the refusal of the AUTH).
fn command_as(port: u16, password: Option<&str>, cmd: &str) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    let mut request = String::new();
    if let Some(password) = password {
        request.push_str(&format!("AUTH {password}\r\n"));
    }
    request.push_str(&format!("{cmd}\r\n"));
    s.write_all(request.as_bytes()).ok()?;
    let mut authenticating = password.is_some();
    let mut reply = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if authenticating {
            let Some(eol) = reply.windows(2).position(|w| w == b"\r\n") else {
                continue;
            };
            if !reply.starts_with(b"+OK") {
                break; // the refusal is the answer
            }
            reply.drain(..eol + 2);
            authenticating = false;
        }
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
        Self::launch(extra, None, false)
    }

    /// A node that requires `password` (`requirepass`, the `default` user's password),
    /// with extra arguments (`--user ...` for ACL users).
    pub fn start_with_password(password: &str, extra: &[&str]) -> RedisServer {
        let mut args = vec!["--requirepass", password];
        args.extend_from_slice(extra);
        Self::launch(&args, Some(password), false)
    }

    /// A node that speaks TLS only, with a self-signed certificate for 127.0.0.1 made by
    /// the `openssl` CLI (also its own CA); clients need not present a certificate.
    pub fn start_tls() -> RedisServer {
        Self::start_tls_with(&[])
    }

    /// A TLS-only node with extra arguments.
    pub fn start_tls_with(extra: &[&str]) -> RedisServer {
        Self::launch(extra, None, true)
    }

    fn launch(extra: &[&str], password: Option<&str>, tls: bool) -> RedisServer {
        require("redis-server");
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("cachegate-redis-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let port_text = port.to_string();
        let listen: Vec<&str> = if tls {
            self_signed_certificate(&dir);
            vec![
                "--port",
                "0",
                "--tls-port",
                &port_text,
                "--tls-cert-file",
                "cert.pem",
                "--tls-key-file",
                "key.pem",
                "--tls-ca-cert-file",
                "cert.pem",
                "--tls-auth-clients",
                "no",
            ]
        } else {
            vec!["--port", &port_text]
        };
        let mut args: Vec<String> = listen.iter().map(|s| s.to_string()).collect();
        args.extend(
            [
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
            .map(|s| s.to_string()),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = RedisServer {
            port,
            args,
            dir,
            child: None,
            password: password.map(str::to_string),
            tls,
        };
        server.spawn();
        server
    }

    /// A sentinel watching `master_port` as `name`, authenticating to the data nodes
    /// with `auth_pass` when they require one (the sentinel itself has no password).
    pub fn sentinel(
        name: &str,
        master_port: u16,
        quorum: u32,
        auth_pass: Option<&str>,
    ) -> RedisServer {
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
                 sentinel parallel-syncs {name} 1\n{}",
                dir.display(),
                auth_pass
                    .map(|p| format!("sentinel auth-pass {name} {p}\n"))
                    .unwrap_or_default()
            ),
        )
        .expect("write sentinel.conf");
        let mut server = RedisServer {
            port,
            args: vec![conf.display().to_string(), "--sentinel".into()],
            dir,
            child: None,
            password: None,
            tls: false,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        // Argument errors go to stderr before the log file opens: keep them to explain
        // a server that exits at once.
        let stderr = std::fs::File::create(self.dir.join("stderr.log")).expect("stderr.log");
        let child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server: {e}: apt-get install redis-server"));
        self.child = Some(child);
        let port = self.port;
        let (tls, password) = (self.tls, self.password.clone());
        let (dir, child) = (self.dir.clone(), self.child.as_mut().expect("just spawned"));
        wait_until(
            &format!("redis-server on port {port} to answer"),
            Duration::from_secs(10),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    let said = ["stderr.log", "redis.log"]
                        .iter()
                        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join("\n");
                    if tls {
                        panic!(
                            "redis-server exited ({status}) with TLS options; is it built \
                             with TLS support (BUILD_TLS=yes; Debian's redis-server 7 is)? \
                             It said:\n{said}"
                        );
                    }
                    panic!("redis-server exited ({status}); it said:\n{said}");
                }
                if tls {
                    // Accepting TCP on the TLS port is enough; the handshake is the test's.
                    TcpStream::connect_timeout(
                        &([127, 0, 0, 1], port).into(),
                        Duration::from_millis(200),
                    )
                    .is_ok()
                } else {
                    command_as(port, password.as_deref(), "PING")
                        .is_some_and(|r| r.starts_with("+PONG"))
                }
            },
        );
    }

    /// The URL cachegate is given: `rediss://...#insecure` (self-signed) for TLS, with
    /// the `default` user's password when there is one.
    pub fn url(&self) -> String {
        let auth = match &self.password {
            Some(p) => format!("default:{p}@"),
            None => String::new(),
        };
        if self.tls {
            format!("rediss://{auth}127.0.0.1:{}/#insecure", self.port)
        } else {
            format!("redis://{auth}127.0.0.1:{}", self.port)
        }
    }

    /// One inline command (authenticated when the node has a password), its raw reply;
    /// through `redis-cli` for a TLS node (its reply as redis-cli prints it).
    pub fn command(&self, cmd: &str) -> Option<String> {
        if self.tls {
            let args: Vec<&str> = cmd.split_whitespace().collect();
            return Some(self.cli(&args)).filter(|r| !r.is_empty());
        }
        command_as(self.port, self.password.as_deref(), cmd)
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

    /// SIGSTOP: the process stays, its sockets stay open, nothing answers (commands
    /// time out rather than fail).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after `pause`: it answers what queued up, then carries on.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {signal} {pid}");
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// One command through `redis-cli`, its output trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        require("redis-cli");
        let mut cli = Command::new("redis-cli");
        cli.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(p) = &self.password {
            cli.args(["-a", p, "--no-auth-warning"]);
        }
        if self.tls {
            cli.args(["--tls", "--insecure"]);
        }
        let out = cli.args(args).output().expect("redis-cli");
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

/// `cert.pem` (self-signed for 127.0.0.1, its own CA) and `key.pem` in `dir`.
fn self_signed_certificate(dir: &std::path::Path) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is needed by the TLS store test ({e}): apt-get install openssl")
        });
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    /// TLS: the one certificate every node presents and trusts (cluster bus and
    /// replication verify the peer against the node's own CA file).
    _certs: Option<tempfile::TempDir>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::start_opts(false)
    }

    /// Every node TLS-only, the cluster bus and replication over TLS too.
    pub fn start_tls() -> RedisCluster {
        Self::start_opts(true)
    }

    fn start_opts(tls: bool) -> RedisCluster {
        require("redis-cli");
        // `--cluster create` can wait forever for the nodes to agree when the machine is
        // loaded; a bounded attempt with fresh nodes is more reliable than waiting.
        for attempt in 1..=3 {
            if let Some(cluster) = Self::try_start(Duration::from_secs(20), tls) {
                return cluster;
            }
            eprintln!("cluster create attempt {attempt} timed out; retrying with new nodes");
        }
        panic!("could not create a Redis Cluster in 3 attempts");
    }

    fn try_start(limit: Duration, tls: bool) -> Option<RedisCluster> {
        let certs = tls.then(|| {
            let dir = tempfile::Builder::new()
                .prefix("cachegate-certs-")
                .tempdir()
                .expect("temp dir");
            self_signed_certificate(dir.path());
            dir
        });
        let cert_args: Vec<String> = match &certs {
            Some(dir) => {
                let cert = dir.path().join("cert.pem").display().to_string();
                let key = dir.path().join("key.pem").display().to_string();
                ["--tls-cert-file", &cert, "--tls-key-file", &key]
                    .into_iter()
                    .chain(["--tls-ca-cert-file", &cert])
                    .map(str::to_string)
                    .collect()
            }
            None => Vec::new(),
        };
        let node = || {
            let args = [
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
            ];
            if tls {
                let mut args = args.to_vec();
                args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
                // After the node's own certificate arguments: the last one counts.
                args.extend(cert_args.iter().map(String::as_str));
                RedisServer::start_tls_with(&args)
            } else {
                RedisServer::start_with(&args)
            }
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
            .args(if tls {
                &["--tls", "--insecure"][..]
            } else {
                &[]
            })
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
        let cluster = RedisCluster {
            masters,
            replicas,
            _certs: certs,
        };
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
                    n.command("CLUSTER INFO")
                        .is_some_and(|i| i.contains("cluster_state:ok"))
                })
        });
    }

    fn sorted(self) -> RedisCluster {
        let RedisCluster {
            masters,
            replicas,
            _certs,
        } = self;
        let (mut m, mut r) = (Vec::new(), Vec::new());
        for n in masters.into_iter().chain(replicas) {
            let role = n.command("ROLE").unwrap_or_default();
            if role.contains("master") {
                m.push(n);
            } else {
                r.push(n);
            }
        }
        RedisCluster {
            masters: m,
            replicas: r,
            _certs,
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
        Self::start_with_password(None)
    }

    /// With `password`, master and replica require it (and use it to replicate), the
    /// sentinels know it (`sentinel auth-pass`) but have none of their own.
    pub fn start_with_password(password: Option<&str>) -> RedisSentinel {
        let node = |extra: &[&str]| match password {
            Some(p) => {
                let mut args = vec!["--masterauth", p];
                args.extend_from_slice(extra);
                RedisServer::start_with_password(p, &args)
            }
            None => RedisServer::start_with(extra),
        };
        let master = node(&[]);
        let replica = node(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        wait_until("the replica to sync", Duration::from_secs(10), || {
            replica
                .command("INFO replication")
                .is_some_and(|i| i.contains("master_link_status:up"))
        });
        let sentinels: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::sentinel(Self::NAME, master.port, 2, password))
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

    /// Sentinel node URLs carry the data nodes' password, as `default:PASS` (which a
    /// sentinel without a password of its own accepts).
    pub fn store_yaml(&self, timeout: &str, l1: &str) -> String {
        let auth = match &self.master.password {
            Some(p) => format!("default:{p}@"),
            None => String::new(),
        };
        let nodes = self
            .sentinels
            .iter()
            .map(|s| format!("redis://{auth}127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "store:\n  backend: redis\n  redis:\n    sentinel: {{ master: {}, nodes: [{nodes}] }}\n    timeout: {timeout}\n  l1: {l1}\n",
            Self::NAME
        )
    }
}

/// A Redis key (or pattern) in cachegate's default namespace for this build's entry
/// format: `cachegate:v{FORMAT_VERSION}:` + `rest`.
pub fn ns(rest: &str) -> String {
    format!(
        "cachegate:v{}:{rest}",
        cachegate::cache::entry::FORMAT_VERSION
    )
}
