//! What the proxy may know about the client connection a request came on. `server`
//! inserts the connection's `ConnectionInfo` into every request's extensions.

use std::net::SocketAddr;
use std::sync::Arc;

/// The connection a request arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// Whether the client connected over TLS (the `tls:` listener): the true
    /// `X-Forwarded-Proto`.
    pub tls: bool,
    /// `peer` written out once per connection, for `X-Forwarded-For` and the access line
    /// (formatting an address cost more per request than the rest of the access line).
    pub text: Arc<PeerText>,
}

/// A peer address as text.
#[derive(Debug, PartialEq, Eq)]
pub struct PeerText {
    /// `192.0.2.1`, `2001:db8::1`.
    pub ip: Box<str>,
    /// `192.0.2.1:4242`, `[2001:db8::1]:4242`.
    pub addr: Box<str>,
}

impl PeerText {
    pub fn of(peer: SocketAddr) -> Self {
        PeerText {
            ip: peer.ip().to_string().into(),
            addr: peer.to_string().into(),
        }
    }
}

impl ConnectionInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let text = Arc::new(PeerText::of(peer));
        ConnectionInfo { peer, tls, text }
    }

    /// `"https"` or `"http"`, as `X-Forwarded-Proto` says it.
    pub fn proto(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}
