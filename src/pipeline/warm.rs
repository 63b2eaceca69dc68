//! `cachegate warm`: GET each URL through the proxy (so, with Redis, the whole fleet
//! gets the entry) and sort the answers by their `Cache-Status` (RFC 9211).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::uri::Authority;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Base, HttpClient};

/// The `Cache-Status` member this cache writes (`proxy::respond`).
const CACHE_NAME: &str = "cachegate";

/// Warm the cache: request each URL through the proxy and report what it did.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The proxy listener, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL", env = "CACHEGATE_PROXY_URL")]
    pub proxy: String,
    /// Read URLs from this file, one a line ('#' comments and blank lines skipped; '-' is
    /// standard input).
    #[arg(long, short = 'f', value_name = "FILE", conflicts_with = "urls")]
    pub file: Option<PathBuf>,
    /// Paths with query (/users/1?fields=a) or absolute URLs (their host is sent as Host).
    #[arg(value_name = "URL", required_unless_present = "file")]
    pub urls: Vec<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// At most this many requests started per second.
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// A request header, 'Name: value' (repeatable): the route's keyed headers.
    #[arg(short = 'H', long = "header", value_name = "'Name: value'", value_parser = parse_header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Time limit of one request.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print every URL with its class, not only the failures.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration (expected e.g. 200ms, 10s)"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim_end_matches("/s").parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate (expected requests per second, e.g. 50)"
        )),
    }
}

fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected 'Name: value'"))?;
    let name = HeaderName::try_from(name.trim())
        .map_err(|_| format!("{s:?}: {:?} is not a header name", name.trim()))?;
    let value = HeaderValue::try_from(value.trim())
        .map_err(|_| format!("{s:?}: the value has characters a header cannot carry"))?;
    Ok((name, value))
}

// === URL lists ===

/// One URL to warm: what the proxy is asked for, and the `Host` to ask with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As given, for messages.
    pub shown: String,
    pub path_and_query: String,
    pub host: Option<Authority>,
}

/// `/path?query` or `http(s)://host/path?query`.
pub fn target(s: &str) -> Result<Target, String> {
    let expected = "expected a path (/users/1) or an http(s) URL";
    if s.starts_with('/') {
        let uri: Uri = s.parse().map_err(|_| format!("{s:?}: {expected}"))?;
        if uri.authority().is_some() {
            return Err(format!("{s:?}: {expected}"));
        }
        return Ok(Target {
            shown: s.to_string(),
            path_and_query: s.to_string(),
            host: None,
        });
    }
    let uri: Uri = s.parse().map_err(|_| format!("{s:?}: {expected}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(authority)) => Ok(Target {
            shown: s.to_string(),
            path_and_query: uri
                .path_and_query()
                .map_or("/".to_string(), |pq| pq.as_str().to_string()),
            host: Some(authority.clone()),
        }),
        _ => Err(format!("{s:?}: {expected}")),
    }
}

/// A URL file: one a line; blank lines and lines starting with `#` skipped. Errors name
/// the line (`urls.txt:3: ...`).
pub fn parse_list(name: &str, text: &str) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(target(line).map_err(|e| format!("{name}:{}: {e}", i + 1))?);
    }
    Ok(out)
}

// === Classes ===

/// What one warm-up request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Fetched and stored, or a stale copy whose one refresh this request started.
    Stored,
    /// A fresh hit: nothing to do.
    Fresh,
    /// Answered, but not stored (bypass, no-store, private, hit-for-miss, ...).
    NotCacheable,
    /// A status other than 2xx/3xx/404/410, a network error, or the origin failing
    /// (stale-if-error).
    Failed,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Stored => "stored",
            Class::Fresh => "already fresh",
            Class::NotCacheable => "not cacheable",
            Class::Failed => "failed",
        }
    }
}

/// This cache's member of a `Cache-Status` field: the last one named `cachegate`
/// (members closer to the client come later), else the last one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Member {
    pub hit: bool,
    pub fwd: Option<String>,
    pub stored: bool,
    pub ttl: Option<i64>,
    pub detail: Option<String>,
}

pub fn member(field: &str) -> Option<Member> {
    use sfv::{BareItem, ListEntry};
    let list: sfv::List = sfv::Parser::new(field)
        .with_version(sfv::Version::Rfc8941)
        .parse()
        .ok()?;
    let items: Vec<&sfv::Item> = list
        .iter()
        .filter_map(|e| match e {
            ListEntry::Item(item) => Some(item),
            ListEntry::InnerList(_) => None,
        })
        .collect();
    let name = |item: &sfv::Item| match &item.bare_item {
        BareItem::Token(t) => t.as_str().to_string(),
        BareItem::String(s) => s.as_str().to_string(),
        _ => String::new(),
    };
    let ours = items
        .iter()
        .rev()
        .find(|i| name(i) == CACHE_NAME)
        .or(items.last())?;
    let text = |v: &BareItem| match v {
        BareItem::Token(t) => Some(t.as_str().to_string()),
        BareItem::String(s) => Some(s.as_str().to_string()),
        _ => None,
    };
    let mut m = Member::default();
    for (key, value) in &ours.params {
        match key.as_str() {
            "hit" => m.hit = value.as_boolean() == Some(true),
            "stored" => m.stored = value.as_boolean() == Some(true),
            "fwd" => m.fwd = text(value),
            "ttl" => m.ttl = value.as_integer().map(i64::from),
            "detail" => m.detail = text(value),
            _ => {}
        }
    }
    Some(m)
}

/// Pure: the status and `Cache-Status` decide.
pub fn classify(status: u16, cache_status: Option<&str>) -> Class {
    if !matches!(status, 200..=399 | 404 | 410) {
        return Class::Failed;
    }
    let Some(m) = cache_status.and_then(member) else {
        return Class::NotCacheable;
    };
    if m.detail.as_deref() == Some("stale-if-error") {
        return Class::Failed;
    }
    if m.hit {
        let stale =
            m.detail.as_deref() == Some("stale-while-revalidate") || m.ttl.is_some_and(|t| t < 0);
        return if stale { Class::Stored } else { Class::Fresh };
    }
    if m.stored {
        Class::Stored
    } else {
        Class::NotCacheable
    }
}

/// The four counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub stored: usize,
    pub fresh: usize,
    pub not_cacheable: usize,
    pub failed: usize,
}

impl Tally {
    pub fn add(&mut self, class: Class) {
        match class {
            Class::Stored => self.stored += 1,
            Class::Fresh => self.fresh += 1,
            Class::NotCacheable => self.not_cacheable += 1,
            Class::Failed => self.failed += 1,
        }
    }

    pub fn counts(&self) -> String {
        format!(
            "{} stored, {} already fresh, {} not cacheable, {} failed",
            self.stored, self.fresh, self.not_cacheable, self.failed
        )
    }
}

// === The run ===

/// One request's outcome: its class and a note for the log line.
struct Done {
    shown: String,
    class: Class,
    note: String,
}

async fn warm_one(
    client: HttpClient,
    req: Request<Full<Bytes>>,
    limit: Duration,
) -> (Class, String) {
    let fetch = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| super::error_chain(&e))?;
        let status = resp.status().as_u16();
        let cache_status = resp
            .headers()
            .get_all("cache-status")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        // Read the body to its end: the proxy stores what it fully sent, and the
        // connection goes back to the pool.
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(|e| format!("reading the body: {}", super::error_chain(&e)))?;
        }
        Ok::<_, String>((status, cache_status))
    };
    match tokio::time::timeout(limit, fetch).await {
        Err(_) => (Class::Failed, format!("no answer within {limit:?}")),
        Ok(Err(e)) => (Class::Failed, e),
        Ok(Ok((status, cs))) => {
            let class = classify(status, (!cs.is_empty()).then_some(cs.as_str()));
            let note = if cs.is_empty() {
                format!("{status}, no Cache-Status (is --proxy a cachegate listener?)")
            } else {
                format!("{status}, {cs}")
            };
            (class, note)
        }
    }
}

fn load(args: &Args) -> Result<Vec<Target>, String> {
    let targets = match &args.file {
        Some(path) if path.as_os_str() == "-" => {
            let text = std::io::read_to_string(std::io::stdin())
                .map_err(|e| format!("standard input: {e}"))?;
            parse_list("-", &text)?
        }
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--file {}: {e}", path.display()))?;
            parse_list(&path.display().to_string(), &text)?
        }
        None => args
            .urls
            .iter()
            .map(|u| target(u))
            .collect::<Result<_, _>>()?,
    };
    if targets.is_empty() {
        return Err("no URLs to warm".into());
    }
    Ok(targets)
}

fn progress(len: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} {per_sec:.dim} {elapsed} {msg}")
    {
        bar.set_style(style);
    }
    bar
}

pub async fn run(args: Args) -> ExitCode {
    let usage = |msg: &str| {
        eprintln!("cachegate warm: {msg}");
        ExitCode::from(2)
    };
    let base = match Base::parse("--proxy", &args.proxy) {
        Ok(b) => b,
        Err(e) => return usage(&e),
    };
    let targets = match load(&args) {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let mut requests = Vec::with_capacity(targets.len());
    for t in targets {
        let uri = match base.join(&t.path_and_query) {
            Ok(u) => u,
            Err(e) => return usage(&format!("{}: {e}", t.shown)),
        };
        let mut req = Request::get(uri);
        if let Some(host) = &t.host {
            req = req.header(HOST, host.as_str());
        }
        let mut req = match req.body(Full::new(Bytes::new())) {
            Ok(r) => r,
            Err(e) => return usage(&format!("{}: {e}", t.shown)),
        };
        // -H comes last: `-H 'Host: api.example.com'` names the host for paths.
        for (name, value) in &args.headers {
            if name == HOST {
                req.headers_mut().insert(name.clone(), value.clone());
            } else {
                req.headers_mut().append(name.clone(), value.clone());
            }
        }
        requests.push((t.shown, req));
    }
    let concurrency = args.concurrency as usize;
    let client = match super::client(concurrency) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cachegate warm: TLS set-up: {e}");
            return ExitCode::FAILURE;
        }
    };

    let started = Instant::now();
    let bar = progress(requests.len());
    let total = requests.len();
    let mut tally = Tally::default();
    let record = |done: Done, tally: &mut Tally| {
        tally.add(done.class);
        bar.inc(1);
        bar.set_message(tally.counts());
        if done.class == Class::Failed || args.verbose {
            let line = format!("{}: {} ({})", done.class.as_str(), done.shown, done.note);
            bar.suspend(|| eprintln!("{line}"));
        }
    };
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut ticker = args.rate.map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut running = JoinSet::new();
    for (shown, req) in requests {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        while let Some(Ok(done)) = running.try_join_next() {
            record(done, &mut tally);
        }
        let (client, limit) = (client.clone(), args.timeout);
        running.spawn(async move {
            let _permit = permit;
            let (class, note) = warm_one(client, req, limit).await;
            Done { shown, class, note }
        });
    }
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok(done) => record(done, &mut tally),
            Err(e) => record(
                Done {
                    shown: "?".into(),
                    class: Class::Failed,
                    note: e.to_string(),
                },
                &mut tally,
            ),
        }
    }
    bar.finish_and_clear();
    println!(
        "warmed {total} URLs in {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        tally.counts()
    );
    if tally.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_decides_the_class() {
        let check = |status, cs: Option<&str>, want: Class| {
            assert_eq!(classify(status, cs), want, "{status} {cs:?}")
        };
        use Class::*;
        check(
            200,
            Some("cachegate; fwd=miss; fwd-status=200; stored; ttl=4"),
            Stored,
        );
        check(
            200,
            Some("cachegate; fwd=stale; fwd-status=200; stored; ttl=60; detail=revalidated"),
            Stored,
        );
        check(200, Some("cachegate; hit; ttl=4"), Fresh);
        check(200, Some("cachegate; hit; collapsed; ttl=4"), Fresh);
        check(
            200,
            Some("cachegate; hit; ttl=-1; detail=stale-while-revalidate"),
            Stored,
        );
        check(
            200,
            Some("cachegate; fwd=bypass; fwd-status=200"),
            NotCacheable,
        );
        check(
            200,
            Some("cachegate; fwd=miss; fwd-status=200; detail=no-store"),
            NotCacheable,
        );
        check(
            200,
            Some("cachegate; fwd=stale; fwd-status=503; detail=stale-if-error"),
            Failed,
        );
        check(
            404,
            Some("cachegate; fwd=miss; fwd-status=404; stored; ttl=9"),
            Stored,
        );
        check(502, Some("cachegate; fwd=miss; fwd-status=502"), Failed);
        check(500, None, Failed);
        check(200, None, NotCacheable);
        // The member closest to the client that is ours, whatever sits before or after.
        check(
            200,
            Some("origin-cache; hit, cachegate; fwd=miss; stored, cdn; fwd=miss"),
            Stored,
        );
        check(
            200,
            Some("cachegate; fwd=miss; stored; key=\"/a,b\", cachegate; hit; ttl=3"),
            Fresh,
        );
        check(200, Some("not a field ;;"), NotCacheable);
    }

    #[test]
    fn url_lists_skip_comments_and_name_bad_lines() {
        let list = parse_list(
            "urls.txt",
            "# hot paths\n/users/1\n\n  /users/2?fields=a  \nhttps://api.example.com/x\n",
        )
        .unwrap();
        let got: Vec<_> = list
            .iter()
            .map(|t| {
                (
                    t.path_and_query.as_str(),
                    t.host.as_ref().map(|h| h.as_str()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("/users/1", None),
                ("/users/2?fields=a", None),
                ("/x", Some("api.example.com")),
            ]
        );
        let e = parse_list("urls.txt", "/ok\nusers/3\n").unwrap_err();
        assert!(
            e.starts_with("urls.txt:2: \"users/3\": expected a path"),
            "{e}"
        );
        assert!(target("ftp://h/x").is_err());
    }

    #[test]
    fn headers_and_rates_parse() {
        let (n, v) = parse_header("X-Api-Version: 3").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-api-version", "3"));
        assert!(parse_header("no colon").is_err());
        assert_eq!(parse_rate("50").unwrap(), 50.0);
        assert_eq!(parse_rate("2.5/s").unwrap(), 2.5);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
