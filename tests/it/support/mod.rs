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
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
