//! RFC 9110 §15.2 interim responses: an origin's `103 Early Hints` or stray `100
//! Continue` before the final response. hyper's client reads past them, so cachegate
//! neither passes them on nor stores them; the final response is cached as usual. The
//! origin here is a raw socket, since a test server built on hyper cannot send a 103.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::Proxy;

/// An origin that answers every request with `interim` then a cacheable 200, one request
/// per connection; returns its URL and a request counter.
async fn interim_origin(interim: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        // Bounded: the tests below send at most a few requests.
        for _ in 0..16 {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let answer = format!(
                "{interim}HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncache-control: max-age=60\r\n\
                 connection: close\r\n\r\nfinal"
            );
            let _ = conn.write_all(answer.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
    });
    (url, count)
}

#[tokio::test]
async fn interim_responses_from_the_origin_are_neither_passed_on_nor_stored() {
    for interim in [
        "HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n",
        "HTTP/1.1 100 Continue\r\n\r\n",
        "HTTP/1.1 103 Early Hints\r\nlink: </a.js>; rel=preload\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </b.js>; rel=preload\r\n\r\n",
    ] {
        let (url, count) = interim_origin(interim).await;
        let p = Proxy::simple(&url, "ttl: 60s, jitter: 0").await;
        let first = p.get("/i").await;
        assert_eq!((first.status, first.body.as_str()), (200, "final"), "{interim:?}");
        assert_eq!(
            first.header("link"),
            None,
            "the 103's fields are not merged into the final response"
        );
        let second = p.get("/i").await;
        assert_eq!((second.status, second.body.as_str()), (200, "final"));
        assert!(
            second.cache_status().starts_with("cachegate; hit"),
            "the final response was stored: {}",
            second.cache_status()
        );
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
