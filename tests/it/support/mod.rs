//! Test fixtures: an origin that counts what reaches it, a cachegate in-process on a
//! free loopback port (or the real binary), and a small HTTP client.

#![allow(dead_code)]

pub mod edge;
pub mod fleet;
pub mod origin;
pub mod proxy;
pub mod redis;
pub mod tls;

pub use origin::{Origin, Reply};
pub use proxy::{Proxy, Resp};

/// A loopback port that is free now (for a process the test starts; Redis servers take
/// `redis::free_port`, which also keeps clear of 6379 and of the cluster bus port).
///
/// Picked from 10000-19999, below the kernel's ephemeral range (32768 and up here) and
/// below `redis::free_port`'s: a port the kernel handed out for binding to port 0 could
/// be handed to another test's outgoing connection before the process binds it, and the
/// process then failed to start (seen in CI, once in a few hundred starts).
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = 10_000 + rand::random::<u16>() % 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 10000-19999");
}
