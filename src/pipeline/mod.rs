//! Deploy-pipeline commands: `cachegate purge` (the admin purge API) and `cachegate warm`
//! (requests through the proxy). Client side only: they speak HTTP to a running cachegate.
//!
//! Each command splits into plain decisions (`purge::verdict`, `warm::classify`, the
//! URL-list parser) that unit tests check without I/O, and one async `run`.

pub mod purge;
pub mod warm;

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// HTTP/1.1 over `http://` or `https://` (rustls, the system's roots).
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One pooled client; `pool` idle connections kept (the warm-up's concurrency).
pub(crate) fn client(pool: usize) -> Result<HttpClient, String> {
    let tls = crate::tls::client_config(&crate::tls::ClientOptions::default())?;
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(pool)
        .build(https))
}

/// A base URL given on the command line (`--admin`, `--proxy`): `http(s)://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    scheme: Scheme,
    authority: Authority,
    /// Without a trailing `/`; empty for the root.
    prefix: String,
}

impl Base {
    pub fn parse(flag: &str, s: &str) -> Result<Base, String> {
        let bad = |why: &str| format!("{flag} {s:?}: {why} (expected e.g. http://127.0.0.1:9090)");
        let uri: Uri = s.parse().map_err(|_| bad("not a URL"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            Some(_) => return Err(bad("only http and https are supported")),
            None => return Err(bad("no scheme")),
        };
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        if uri.query().is_some() {
            return Err(bad("a base URL takes no query"));
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Base {
            scheme,
            authority,
            prefix,
        })
    }

    /// `path_and_query` (starting with `/`) under this base.
    pub fn join(&self, path_and_query: &str) -> Result<Uri, String> {
        let pq: PathAndQuery = format!("{}{path_and_query}", self.prefix)
            .parse()
            .map_err(|_| format!("{path_and_query:?} is not a valid path"))?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| e.to_string())
    }
}

/// An error with its causes, `a: b: c` (hyper's outer errors say little on their own).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Builds the runtime a pipeline command runs on and runs it to its exit code.
pub fn block_on(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(fut),
        Err(e) => {
            eprintln!("cachegate: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_join_paths() {
        let check = |base: &str, path: &str, want: &str| {
            let b = Base::parse("--admin", base).unwrap();
            assert_eq!(b.join(path).unwrap().to_string(), want);
        };
        check(
            "http://127.0.0.1:9090",
            "/purge",
            "http://127.0.0.1:9090/purge",
        );
        check(
            "http://127.0.0.1:9090/",
            "/purge",
            "http://127.0.0.1:9090/purge",
        );
        check(
            "https://cache.example/ops/",
            "/purge",
            "https://cache.example/ops/purge",
        );
        check("http://h", "/a?b=1", "http://h/a?b=1");
        for bad in ["127.0.0.1:9090", "ftp://h", "http://h/?x=1", "not a url"] {
            let e = Base::parse("--admin", bad).unwrap_err();
            assert!(e.starts_with("--admin "), "{e}");
        }
    }
}
