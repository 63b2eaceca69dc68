//! RFC 9110 §14 range requests answered from a stored complete 200 (206 with the right
//! `Content-Range`, 416 when unsatisfiable, `If-Range`), and RFC 9111 §3.3/§3.4: a 206
//! from the origin is never stored as complete; a body shorter than its `Content-Length`
//! is never stored.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Origin, Proxy, Reply};

const BODY: &str = "0123456789";

async fn stored(origin: &Origin) -> Proxy {
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    assert_eq!(p.get("/r").await.body, BODY);
    p
}

async fn ten_bytes() -> Origin {
    Origin::start(|_| {
        Reply::ok(BODY)
            .header("etag", "\"ten\"")
            .header("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT")
    })
    .await
}

#[tokio::test]
async fn a_range_is_answered_from_the_stored_200() {
    let origin = ten_bytes().await;
    let p = stored(&origin).await;
    for (range, want, content_range) in [
        ("bytes=0-3", "0123", "bytes 0-3/10"),
        ("bytes=5-", "56789", "bytes 5-9/10"),
        ("bytes=-4", "6789", "bytes 6-9/10"),
        ("bytes=8-100", "89", "bytes 8-9/10"),
    ] {
        let r = p.get_with("/r", &[("range", range)]).await;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.body, want, "{range}");
        assert_eq!(r.header("content-range"), Some(content_range), "{range}");
        assert_eq!(
            r.header("content-length"),
            Some(want.len().to_string().as_str())
        );
        assert!(
            r.cache_status().starts_with("cachegate; hit"),
            "{}",
            r.cache_status()
        );
    }
    assert_eq!(origin.hits("/r"), 1);
}

#[tokio::test]
async fn a_range_on_a_miss_fetches_the_whole_response_and_stores_it() {
    let origin = ten_bytes().await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    let r = p.get_with("/m", &[("range", "bytes=2-4")]).await;
    assert_eq!((r.status, r.body.as_str()), (206, "234"));
    assert!(
        !origin.seen()[0].headers.contains_key("range"),
        "the cache asks for the whole response"
    );
    let full = p.get("/m").await;
    assert_eq!((full.status, full.body.as_str()), (200, BODY));
    assert!(full.cache_status().starts_with("cachegate; hit"));
}

#[tokio::test]
async fn an_unsatisfiable_range_is_416() {
    let origin = ten_bytes().await;
    let p = stored(&origin).await;
    for range in ["bytes=10-", "bytes=50-60", "bytes=-0"] {
        let r = p.get_with("/r", &[("range", range)]).await;
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.header("content-range"), Some("bytes */10"), "{range}");
    }
}

#[tokio::test]
async fn multiple_ranges_other_units_and_invalid_ranges_get_the_whole_200() {
    let origin = ten_bytes().await;
    let p = stored(&origin).await;
    for range in ["bytes=0-1,4-5", "items=0-1", "bytes=5-2"] {
        let r = p.get_with("/r", &[("range", range)]).await;
        assert_eq!((r.status, r.body.as_str()), (200, BODY), "{range}");
    }
}

#[tokio::test]
async fn if_range_applies_the_range_only_when_the_validator_matches() {
    let origin = ten_bytes().await;
    let p = stored(&origin).await;
    let r = p
        .get_with("/r", &[("range", "bytes=0-1"), ("if-range", "\"ten\"")])
        .await;
    assert_eq!((r.status, r.body.as_str()), (206, "01"));
    let r = p
        .get_with("/r", &[("range", "bytes=0-1"), ("if-range", "\"old\"")])
        .await;
    assert_eq!((r.status, r.body.as_str()), (200, BODY));
    let r = p
        .get_with(
            "/r",
            &[
                ("range", "bytes=0-1"),
                ("if-range", "Tue, 01 Jan 2030 00:00:00 GMT"),
            ],
        )
        .await;
    assert_eq!((r.status, r.body.as_str()), (206, "01"));
    let r = p
        .get_with(
            "/r",
            &[
                ("range", "bytes=0-1"),
                ("if-range", "Mon, 31 Dec 2029 00:00:00 GMT"),
            ],
        )
        .await;
    assert_eq!((r.status, r.body.as_str()), (200, BODY));
}

#[tokio::test]
async fn a_206_from_the_origin_is_never_stored() {
    let origin = Origin::start(|_| {
        Reply::ok("0123")
            .status(206)
            .header("content-range", "bytes 0-3/10")
            .header("cache-control", "max-age=60")
    })
    .await;
    let p = Proxy::simple(&origin.url(), "ttl: 60s, jitter: 0").await;
    let a = p.get("/p").await;
    assert_eq!(a.status, 206);
    assert!(!a.cache_status().contains("stored"), "{}", a.cache_status());
    let b = p.get("/p").await;
    assert_eq!(b.status, 206);
    assert!(
        !b.cache_status().starts_with("cachegate; hit"),
        "{}",
        b.cache_status()
    );
    assert_eq!(origin.hits("/p"), 2);
}

/// An origin that promises 100 bytes, sends 10 and closes the connection.
async fn short_body_origin() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ncache-control: max-age=60\r\n\r\n0123456789",
                    )
                    .await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, count)
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_never_stored() {
    let (url, count) = short_body_origin().await;
    let p = Proxy::simple(&url, "ttl: 60s, stale_if_error: 1h, jitter: 0").await;
    let first = p.get("/short").await;
    assert_ne!(
        (first.status, first.body.as_str()),
        (200, "0123456789"),
        "a truncated body is not passed off as complete"
    );
    assert!(
        !first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    let second = p.get("/short").await;
    assert!(
        !second.cache_status().starts_with("cachegate; hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(
        count.load(Ordering::SeqCst),
        2,
        "nothing was stored: the origin was asked again"
    );
}
