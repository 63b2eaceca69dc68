//! `cachegate purge`: one `POST {admin}/purge` with a JSON body, retried on connection
//! errors and 5xx (a purge is idempotent), never on 4xx; the exit code says which failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};

use super::{Base, HttpClient};

/// The answer is small JSON; anything larger is not cachegate's.
const MAX_ANSWER: usize = 1 << 20;

/// Purge cache entries on a running cachegate through its admin API.
#[derive(clap::Args, Debug)]
#[command(group(
    clap::ArgGroup::new("selector")
        .required(true)
        .multiple(true)
        .args(["urls", "tags", "routes", "prefixes", "all"])
))]
pub struct Args {
    /// Base URL of the admin listener, e.g. http://127.0.0.1:9090.
    #[arg(long, value_name = "URL", env = "CACHEGATE_ADMIN_URL")]
    pub admin: String,
    /// A URL's entries: a path with query (/users/42?fields=a) or an absolute URL (repeatable).
    #[arg(long = "url", value_name = "U")]
    pub urls: Vec<String>,
    /// Every entry carrying this tag (repeatable).
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Every entry of this route template, e.g. '/users/{id}' (repeatable).
    #[arg(long = "route", value_name = "R")]
    pub routes: Vec<String>,
    /// Every entry whose path starts with this (repeatable).
    #[arg(long = "prefix", value_name = "P")]
    pub prefixes: Vec<String>,
    /// Everything.
    #[arg(long)]
    pub all: bool,
    /// Mark stale instead of removing: the next request is served stale while one
    /// refresh runs.
    #[arg(long)]
    pub soft: bool,
    /// Print the server's JSON answer instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Read the admin token from this file (default: $CACHEGATE_ADMIN_TOKEN).
    #[arg(long, value_name = "F")]
    pub token_file: Option<PathBuf>,
    /// Retries after a connection error, a timeout or a 5xx (backoff 100ms, 200ms, ...).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub retries: u32,
    /// Time limit of one attempt.
    #[arg(long, default_value = "10s", value_parser = super::warm::parse_duration)]
    pub timeout: Duration,
}

/// How `cachegate purge` ends. 2 (usage) is also what clap exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Usage = 2,
    /// 401/403, or no token to send.
    Auth = 3,
    /// The server refused the request (400 and other 4xx): fix it, do not retry.
    Rejected = 4,
    /// Network or server error, after the retries.
    Failed = 5,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// What to do with one attempt's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Done(Exit),
    /// A 5xx (or no answer): try again while retries remain, else `Exit::Failed`.
    Retry,
}

/// Pure: the status decides.
pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Done(Exit::Ok),
        401 | 403 => Verdict::Done(Exit::Auth),
        400..=499 => Verdict::Done(Exit::Rejected),
        500..=599 => Verdict::Retry,
        _ => Verdict::Done(Exit::Failed),
    }
}

/// The wait before retry `n` (0-based): 100ms, 200ms, 400ms, ...
pub fn backoff(n: u32) -> Duration {
    Duration::from_millis(100u64 << n.min(10))
}

/// The JSON body of `POST /purge`.
pub fn body(args: &Args) -> String {
    serde_json::json!({
        "urls": args.urls,
        "tags": args.tags,
        "routes": args.routes,
        "prefixes": args.prefixes,
        "all": args.all,
        "soft": args.soft,
    })
    .to_string()
}

/// The one-line summary of a 200 answer,
/// e.g. `purged 3 entries (soft): urls 1, tags 2`.
pub fn summary(answer: &str) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_str(answer).map_err(|e| format!("answer is not JSON ({e}): {answer}"))?;
    let mode = v.get("mode").and_then(|m| m.as_str()).unwrap_or("hard");
    let (total, parts) = match v.get("purged") {
        Some(serde_json::Value::Object(per)) => {
            let mut parts = Vec::new();
            for name in ["urls", "tags", "routes", "prefixes", "all"] {
                if let Some(n) = per.get(name).and_then(|n| n.as_u64()) {
                    parts.push(format!("{name} {n}"));
                }
            }
            let sum = per.values().filter_map(|n| n.as_u64()).sum();
            let total = v.get("total").and_then(|t| t.as_u64()).unwrap_or(sum);
            (total, parts)
        }
        // The older answer: `{"purged":N,"mode":...}`.
        Some(n) if n.is_u64() => (n.as_u64().unwrap_or(0), Vec::new()),
        _ => return Err(format!("answer has no \"purged\": {answer}")),
    };
    let noun = if total == 1 { "entry" } else { "entries" };
    let mut out = format!("purged {total} {noun} ({mode})");
    if !parts.is_empty() {
        out.push_str(": ");
        out.push_str(&parts.join(", "));
    }
    Ok(out)
}

/// The reason a 4xx/5xx answer gives: `{"error": "..."}` or its text.
pub fn reason(answer: &str) -> String {
    serde_json::from_str::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| answer.trim().to_string())
}

/// The token: `--token-file` (trimmed), else `$CACHEGATE_ADMIN_TOKEN`.
fn token(args: &Args) -> Result<String, String> {
    let token = match &args.token_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("--token-file {}: {e}", path.display()))?
            .trim()
            .to_string(),
        None => std::env::var("CACHEGATE_ADMIN_TOKEN").unwrap_or_default(),
    };
    if token.is_empty() {
        return Err(match &args.token_file {
            Some(path) => format!("--token-file {}: the file is empty", path.display()),
            None => "no admin token: set CACHEGATE_ADMIN_TOKEN or give --token-file".into(),
        });
    }
    Ok(token)
}

/// One attempt: the status and body, or why there was none.
async fn attempt(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
    limit: Duration,
) -> Result<(u16, String), String> {
    let send = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| super::error_chain(&e))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(limit, send).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

pub async fn run(args: Args) -> ExitCode {
    run_inner(args).await.into()
}

async fn run_inner(args: Args) -> Exit {
    let fail = |code: Exit, msg: &str| {
        eprintln!("cachegate purge: {msg}");
        code
    };
    let url = match Base::parse("--admin", &args.admin).and_then(|b| b.join("/purge")) {
        Ok(u) => u,
        Err(e) => return fail(Exit::Usage, &e),
    };
    let token = match token(&args) {
        Ok(t) => t,
        Err(e) => return fail(Exit::Auth, &e),
    };
    let Ok(mut bearer) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return fail(
            Exit::Auth,
            "the admin token has characters a header cannot carry",
        );
    };
    bearer.set_sensitive(true);
    let client = match super::client(1) {
        Ok(c) => c,
        Err(e) => return fail(Exit::Failed, &format!("TLS set-up: {e}")),
    };
    let body = Bytes::from(body(&args));
    let mut retry = 0;
    loop {
        let req = Request::post(url.clone())
            .header(AUTHORIZATION, bearer.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(Full::new(body.clone()));
        let req = match req {
            Ok(r) => r,
            Err(e) => return fail(Exit::Usage, &e.to_string()),
        };
        let problem = match attempt(&client, req, args.timeout).await {
            Ok((status, answer)) => match verdict(status) {
                Verdict::Done(Exit::Ok) => {
                    if args.json {
                        println!("{}", answer.trim_end());
                        return Exit::Ok;
                    }
                    return match summary(&answer) {
                        Ok(line) => {
                            println!("{line}");
                            Exit::Ok
                        }
                        Err(e) => fail(Exit::Failed, &e),
                    };
                }
                Verdict::Done(code) => {
                    if args.json && !answer.trim().is_empty() {
                        println!("{}", answer.trim_end());
                    }
                    let what = match code {
                        Exit::Auth => "not authorised",
                        Exit::Rejected => "rejected",
                        _ => "unexpected answer",
                    };
                    return fail(code, &format!("{what} ({status}): {}", reason(&answer)));
                }
                Verdict::Retry => format!("server error ({status}): {}", reason(&answer)),
            },
            Err(e) => format!("{url}: {e}"),
        };
        if retry >= args.retries {
            let tries = retry + 1;
            return fail(
                Exit::Failed,
                &format!("{problem} (gave up after {tries} attempts)"),
            );
        }
        let wait = backoff(retry);
        eprintln!(
            "cachegate purge: {problem}; retry {} of {} in {wait:?}",
            retry + 1,
            args.retries
        );
        tokio::time::sleep(wait).await;
        retry += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_decides_retry_and_exit_code() {
        let check = |status, want| assert_eq!(verdict(status), want, "{status}");
        check(200, Verdict::Done(Exit::Ok));
        check(401, Verdict::Done(Exit::Auth));
        check(403, Verdict::Done(Exit::Auth));
        check(400, Verdict::Done(Exit::Rejected));
        check(404, Verdict::Done(Exit::Rejected));
        check(500, Verdict::Retry);
        check(503, Verdict::Retry);
        check(302, Verdict::Done(Exit::Failed));
        assert_eq!(
            (0..4).map(backoff).collect::<Vec<_>>(),
            [100, 200, 400, 800].map(Duration::from_millis)
        );
    }

    #[test]
    fn summaries_name_each_selector() {
        let check = |answer: &str, want: &str| assert_eq!(summary(answer).unwrap(), want);
        check(
            r#"{"mode":"soft","purged":{"urls":1,"tags":2},"total":3}"#,
            "purged 3 entries (soft): urls 1, tags 2",
        );
        check(
            r#"{"mode":"hard","purged":{"all":1},"total":1}"#,
            "purged 1 entry (hard): all 1",
        );
        check(r#"{"purged":0,"mode":"hard"}"#, "purged 0 entries (hard)");
        assert!(summary("purged").is_err());
        assert_eq!(
            reason(r#"{"error":"routes[0]: no route"}"#),
            "routes[0]: no route"
        );
        assert_eq!(
            reason("a valid admin token is required\n"),
            "a valid admin token is required"
        );
    }
}
