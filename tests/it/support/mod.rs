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
