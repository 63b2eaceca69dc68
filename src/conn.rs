//! What the proxy may know about the client connection a request came on. `server`
//! inserts one `ConnectionInfo` per connection into every request's extensions (beside
//! axum's `ConnectInfo<SocketAddr>`).

use std::net::SocketAddr;

/// The connection a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// Whether the client connected over TLS (the `tls:` listener): the true
    /// `X-Forwarded-Proto`.
    pub tls: bool,
}

impl ConnectionInfo {
    /// `"https"` or `"http"`, as `X-Forwarded-Proto` says it.
    pub fn proto(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}
