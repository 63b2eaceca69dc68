//! Stored bytes of a cache entry (`cache::entry::encode` / `decode`): what the Redis store
//! pays per write and per L2 read.
//!
//! `cargo bench --bench entry_codec` (results and machine in BENCHMARKS.md).

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cachegate::cache::entry::{decode, encode};
use cachegate::cache::policy::Lifetimes;
use cachegate::cache::CacheEntry;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderName, Response};

fn entry(body_size: usize) -> CacheEntry {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let res = Response::builder()
        .status(200)
        .header("date", httpdate::fmt_http_date(now))
        .header("content-type", "application/json")
        .header(
            "cache-control",
            "public, max-age=60, stale-while-revalidate=30",
        )
        .header("etag", "\"5f2b-1700000000\"")
        .header("last-modified", httpdate::fmt_http_date(now))
        .header("vary", "Accept-Encoding")
        .header("surrogate-key", "user-42 users")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    CacheEntry::new(
        res.status,
        res.headers,
        Bytes::from(vec![b'x'; body_size]),
        Duration::ZERO,
        now,
        Lifetimes {
            fresh: Duration::from_secs(60),
            stale: Duration::from_secs(300),
            stale_if_error: Duration::from_secs(3600),
        },
        vec![(
            HeaderName::from_static("accept-encoding"),
            Some("gzip".to_owned()),
        )],
    )
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("entry");
    for size in [70usize, 16 * 1024, 1 << 20] {
        let e = entry(size);
        let bytes = encode(&e);
        assert!(decode(&bytes).is_some());
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode", size), &e, |b, e| {
            b.iter(|| encode(black_box(e)))
        });
        g.bench_with_input(BenchmarkId::new("decode", size), &bytes, |b, bytes| {
            b.iter(|| decode(black_box(bytes)))
        });
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
