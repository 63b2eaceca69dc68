//! The Cache-Control parsers and the freshness decision on any response fields
//! (`Expires`, `Date`, `Age`, targeted fields, ...), as the fetch path runs them: no
//! panic. Input: a status line (`200`), then `name: value` lines.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use cachegate::cache::policy::{self, Directives, RequestDirectives};
use cachegate::config::{Config, Overrides};
use http::{HeaderMap, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "cache-control",
    "expires",
    "date",
    "age",
    "last-modified",
    "cdn-cache-control",
    "surrogate-control",
    "pragma",
    "vary",
    "etag",
];

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let yaml = "upstreams:\n  o: { url: \"http://127.0.0.1:9\" }\ntargets: [cdn-cache-control]\n\
                    routes:\n  - path: /{*rest}\n    upstream: o\n";
        Config::parse(yaml, Path::new("fuzz.yaml"), &Overrides::default()).expect("valid")
    })
}

fuzz_target!(|input: &[u8]| {
    let mut lines = input.split(|b| *b == b'\n');
    let status: u16 = lines
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(200);
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => (&line[..i], line[i + 1..].trim_ascii()),
            None => (&b""[..], line),
        };
        // Known names, so the interesting fields are hit; anything else picks one.
        let name = NAMES
            .iter()
            .find(|n| n.as_bytes().eq_ignore_ascii_case(name))
            .unwrap_or(&NAMES[name.len() % NAMES.len()]);
        let Ok(v) = HeaderValue::from_bytes(value) else { continue };
        headers.append(*name, v);
    }
    let _ = RequestDirectives::parse(&headers);
    let _ = Directives::parse(&headers);
    for v in headers.get_all("expires") {
        if let Ok(s) = v.to_str() {
            let _ = httpdate::parse_http_date(s);
        }
    }
    let Ok(status) = StatusCode::from_u16(100 + status % 500) else { return };
    let route = &config().routes[0];
    let request = http::Request::get("http://origin/x").body(()).expect("static");
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let request = request.into_parts().0;
    let evaluation = policy::evaluate(&route.policy, &request, status, &headers, now, 0.5);
    let _ = evaluation.initial_age;
});
