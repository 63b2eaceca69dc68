//! Purges as deploy pipelines ask for them: the JSON body of `POST /purge` (admin
//! listener), the older query-string form, and `PURGE <url>` on the proxy listener all
//! become one `PurgeRequest`, resolved against the running routes into store selectors,
//! applied, and answered with what each selector purged. Below both `admin` and `proxy`.

use std::time::Instant;

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::app::{AppState, Runtime};
use crate::cache::purge::{Mode, Selector};

/// The JSON body of `POST /purge`. Every field is optional; at least one selector must
/// be given. Unknown fields are refused (a typo must not become a no-op).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Paths with query (`/users/42?fields=a`) or absolute URLs of a served host.
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Route templates as written in routes.yaml (`/users/{id}`).
    #[serde(default)]
    pub routes: Vec<String>,
    /// Path prefixes (`/users/42/`).
    #[serde(default)]
    pub prefixes: Vec<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub soft: bool,
}

/// Why a purge request was refused: 400 with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected(pub String);

/// Selectors resolved against the running config, grouped as asked.
#[derive(Debug)]
pub struct Plan {
    pub groups: Vec<(&'static str, Vec<Selector>)>,
    pub mode: Mode,
}

impl PurgeRequest {
    /// Parses a JSON body; errors name the problem (unknown field, wrong type, line).
    pub fn from_json(body: &[u8]) -> Result<PurgeRequest, Rejected> {
        serde_json::from_slice(body).map_err(|e| Rejected(format!("invalid purge request: {e}")))
    }

    /// Parses `url=..&route=..&tag=..&prefix=..&mode=soft|hard&all=true`; each selector
    /// may repeat.
    pub fn from_query(query: &str) -> Result<PurgeRequest, Rejected> {
        let mut req = PurgeRequest::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(&value.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            match name {
                "url" => req.urls.push(value),
                "route" => req.routes.push(value),
                "tag" => req.tags.push(value),
                "prefix" => req.prefixes.push(value),
                "all" => req.all = value != "false" && value != "0",
                "mode" => {
                    req.soft = match value.as_str() {
                        "hard" => false,
                        "soft" => true,
                        _ => return Err(Rejected("mode: expected hard or soft".into())),
                    }
                }
                _ => {
                    return Err(Rejected(format!(
                        "unknown parameter {name:?}: expected url, tag, route, prefix, all or mode"
                    )))
                }
            }
        }
        Ok(req)
    }

    /// The selectors this request stands for, checked against the running routes.
    pub fn plan(&self, rt: &Runtime) -> Result<Plan, Rejected> {
        let mode = if self.soft { Mode::Soft } else { Mode::Hard };
        let mut groups = Vec::new();
        if self.all {
            groups.push(("all", vec![Selector::All]));
        }
        if !self.urls.is_empty() {
            let keys = self
                .urls
                .iter()
                .map(|u| url_key(rt, u).map(Selector::Key))
                .collect::<Result<_, _>>()?;
            groups.push(("urls", keys));
        }
        if !self.tags.is_empty() {
            if let Some(t) = self.tags.iter().find(|t| t.is_empty()) {
                return Err(Rejected(format!("tags: {t:?} is empty")));
            }
            groups.push((
                "tags",
                self.tags.iter().cloned().map(Selector::Tag).collect(),
            ));
        }
        if !self.routes.is_empty() {
            let known: Vec<&str> = rt
                .config
                .routes
                .iter()
                .filter(|r| r.cache)
                .map(|r| &*r.template)
                .collect();
            for r in &self.routes {
                if !known.contains(&r.as_str()) {
                    return Err(Rejected(format!(
                        "routes: {r:?} is not a caching route; known: {}",
                        known.join(", ")
                    )));
                }
            }
            groups.push((
                "routes",
                self.routes.iter().cloned().map(Selector::Route).collect(),
            ));
        }
        if !self.prefixes.is_empty() {
            if let Some(p) = self.prefixes.iter().find(|p| !p.starts_with('/')) {
                return Err(Rejected(format!("prefixes: {p:?} must start with /")));
            }
            groups.push((
                "prefixes",
                self.prefixes
                    .iter()
                    .cloned()
                    .map(Selector::Prefix)
                    .collect(),
            ));
        }
        if groups.is_empty() {
            return Err(Rejected(
                "nothing to purge: give urls, tags, routes, prefixes or all".into(),
            ));
        }
        Ok(Plan { groups, mode })
    }
}

/// The cache key a purge URL names: a path with query, or an absolute URL whose host
/// this proxy serves (as for requests: `edge.hosts`, when set).
fn url_key(rt: &Runtime, url: &str) -> Result<String, Rejected> {
    let uri = url
        .parse::<http::Uri>()
        .map_err(|e| Rejected(format!("urls: {url:?} is not a URL: {e}")))?;
    if let Some(authority) = uri.authority() {
        let proto = uri.scheme_str().unwrap_or("http");
        let host = crate::proxy::edge::normalize_host(authority.as_str(), proto)
            .map_err(|_| Rejected(format!("urls: {url:?} has an invalid host")))?;
        let edge = &rt.config.edge;
        if !edge.hosts.is_empty() && !edge.allows(&host) {
            return Err(Rejected(format!(
                "urls: {url:?}: host {host} is not served here"
            )));
        }
    } else if !url.starts_with('/') {
        return Err(Rejected(format!(
            "urls: {url:?} must be a path or an absolute URL"
        )));
    }
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    rt.key_for(target)
        .ok_or_else(|| Rejected(format!("urls: {url:?}: no caching route matches it")))
}

/// Applies `plan`; the JSON answer (200), or the store's failure (503).
pub async fn execute(state: &AppState, plan: &Plan) -> Response {
    let started = Instant::now();
    let mut counts = Vec::new();
    let mut total = 0;
    for (name, selectors) in &plan.groups {
        let mut n = 0;
        for selector in selectors {
            match state.cache.purge(selector, plan.mode).await {
                Ok(purged) => n += purged,
                Err(error) => {
                    crate::telemetry::record_purge(name, plan.mode.as_str(), 0);
                    return json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({
                            "error": format!("the store could not apply the purge; try again ({error})"),
                            "purged_before_failure": total + n,
                        }),
                    );
                }
            }
        }
        crate::telemetry::record_purge(name, plan.mode.as_str(), n);
        counts.push((*name, n));
        total += n;
    }
    let purged: serde_json::Map<String, serde_json::Value> = counts
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({
            "mode": plan.mode.as_str(),
            "purged": purged,
            "total": total,
            "took_ms": started.elapsed().as_secs_f64() * 1000.0,
        }),
    )
}

/// Checks the token, resolves and applies `request`.
pub async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    request: Result<PurgeRequest, Rejected>,
) -> Response {
    if let Err(e) = state.admin_token_ok(crate::app::bearer(headers)) {
        return e.into_response();
    }
    let plan = request.and_then(|r| r.plan(&state.runtime()));
    match plan {
        Ok(plan) => execute(state, &plan).await,
        Err(Rejected(message)) => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": message }),
        ),
    }
}

/// Whether a `PURGE` asks for a soft purge: `Purge-Mode: soft`, or
/// `Fastly-Soft-Purge: 1` as pipelines written for Fastly send it.
pub fn soft_requested(headers: &HeaderMap) -> bool {
    headers
        .get("purge-mode")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"soft"))
        || headers
            .get("fastly-soft-purge")
            .is_some_and(|v| v.as_bytes() == b"1")
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    let mut body = value.to_string();
    body.push('\n');
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
