//! TLS fixtures: a throwaway CA with a server and a client certificate made by the
//! `openssl` CLI, an HTTPS origin that counts what reaches it (optionally demanding a
//! client certificate), and HTTPS clients that trust the CA.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::JoinHandle;

use super::origin::{Reply, Seen};

/// `ca.pem`; `server.pem`/`server.key` for 127.0.0.1, localhost and origin.test;
/// `client.pem`/`client.key` (clientAuth); all signed by the CA. Deleted on drop.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::Builder::new()
            .prefix("cachegate-certs-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=cachegate test CA",
            ],
        );
        for (name, san, usage) in [
            (
                "server",
                "IP:127.0.0.1,DNS:localhost,DNS:origin.test",
                "serverAuth",
            ),
            ("client", "DNS:client.test", "clientAuth"),
        ] {
            std::fs::write(
                d.join(format!("{name}.ext")),
                format!(
                    "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
                     keyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
                ),
            )
            .unwrap();
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={name}"),
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &format!("{name}.pem"),
                    "-extfile",
                    &format!("{name}.ext"),
                ],
            );
        }
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The path as YAML wants it (quoted).
    pub fn yaml(&self, name: &str) -> String {
        format!("{:?}", self.path(name).display().to_string())
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path("ca.pem")).unwrap()
    }

    fn chain(&self, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let certs = CertificateDer::pem_file_iter(self.path(&format!("{name}.pem")))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap();
        (certs, key)
    }

    /// The CA as a rustls root store.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        roots
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is needed by the TLS tests ({e}): apt-get install openssl")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the HTTPS origin saw of one request, beyond `Seen`.
#[derive(Clone, Debug)]
pub struct TlsSeen {
    pub version: http::Version,
    /// `Host`, or the HTTP/2 `:authority`.
    pub host: String,
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

#[derive(Default)]
struct Counters {
    per_path: Mutex<HashMap<String, usize>>,
    seen: Mutex<Vec<(Seen, TlsSeen)>>,
}

/// An HTTPS origin on a free loopback port with the server certificate of `certs`.
pub struct TlsOrigin {
    pub addr: std::net::SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

pub struct TlsOriginOptions {
    /// Refuse handshakes without a client certificate signed by the CA.
    pub require_client_cert: bool,
    /// ALPN offered: both by default; `["http/1.1"]` for an HTTP/1.1-only origin.
    pub alpn: Vec<&'static str>,
}

impl Default for TlsOriginOptions {
    fn default() -> Self {
        TlsOriginOptions {
            require_client_cert: false,
            alpn: vec!["h2", "http/1.1"],
        }
    }
}

impl TlsOrigin {
    pub async fn start(
        certs: &Certs,
        options: TlsOriginOptions,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> TlsOrigin {
        let (chain, key) = certs.chain("server");
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if options.require_client_cert {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(certs.roots()),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let handler: Handler = Arc::new(handler);
        let task = tokio::spawn({
            let counters = counters.clone();
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, counters, handler) =
                        (acceptor.clone(), counters.clone(), handler.clone());
                    tokio::spawn(async move {
                        // A refused handshake (no client certificate) ends here.
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |req| {
                            let (counters, handler) = (counters.clone(), handler.clone());
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    handle(req, &counters, &handler).await,
                                )
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            }
        });
        TlsOrigin {
            addr,
            counters,
            task,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn hits(&self, path: &str) -> usize {
        self.counters
            .per_path
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn seen(&self) -> Vec<(Seen, TlsSeen)> {
        self.counters.seen.lock().unwrap().clone()
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: http::Request<Incoming>,
    counters: &Counters,
    handler: &Handler,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let n = {
        let mut per_path = counters.per_path.lock().unwrap();
        let n = per_path.entry(path.clone()).or_default();
        *n += 1;
        *n - 1
    };
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let seen = Seen {
        method: req.method().clone(),
        path,
        query: req.uri().query().map(str::to_string),
        headers: req.headers().clone(),
        n,
        body: bytes::Bytes::new(),
    };
    let tls_seen = TlsSeen {
        version: req.version(),
        host,
    };
    counters.seen.lock().unwrap().push((seen.clone(), tls_seen));
    let reply = handler(&seen);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = Response::new(Body::from(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    for (k, v) in reply.headers {
        resp.headers_mut()
            .append(http::HeaderName::try_from(k).unwrap(), v.parse().unwrap());
    }
    resp
}

/// A reqwest client trusting the test CA; `http1_only` forbids ALPN h2.
pub fn https_client(certs: &Certs, http1_only: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&certs.ca_pem()).unwrap());
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}
