//! `cachegate key`: what a request is keyed by and exactly what the origin would
//! receive for it, computed by the same functions the request path runs.

use std::fmt::Write;
use std::net::SocketAddr;

use axum::body::Body;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::canonical::{self, EdgePolicy, Peer, FORWARDED_VARIANT};
use super::origin;
use super::route::RouteTable;
use crate::cache::entry::vary_values;
use crate::config::Config;

/// Describes a GET for `url` (a path with query, or an absolute URL whose host is the
/// request's `Host`) with `headers`, from a client at `client`.
pub fn describe(
    config: &Config,
    url: &str,
    headers: &[(String, String)],
    client: SocketAddr,
) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let mut request = HeaderMap::new();
    if let Some(a) = uri.authority() {
        request.insert(
            http::header::HOST,
            HeaderValue::try_from(a.as_str()).map_err(|e| e.to_string())?,
        );
    }
    for (name, value) in headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| format!("{name:?} is not a header name"))?;
        let value =
            HeaderValue::try_from(value.as_str()).map_err(|_| format!("{value:?}: bad value"))?;
        request.append(name, value);
    }
    let origin_form: http::Uri = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e| format!("{e}"))?;
    let path = canonical::path(origin_form.path()).map_err(|e| format!("answered 400: {e}"))?;
    let peer = Peer::new(Some(client), false);
    let edge: &EdgePolicy = &config.edge;
    let fwd = canonical::forwarding(&origin_form, &request, &peer, edge)
        .map_err(|e| format!("answered {}: {e}", e.status().as_u16()))?;
    let routes = RouteTable::new(&config.routes);
    let m = routes
        .find(&path)
        .ok_or_else(|| format!("answered 404: no route matches {path:?}"))?;
    let route = &config.routes[m.route];
    let upstream = &config.upstreams[route.upstream];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "route:    {} (upstream {}, {})",
        route.template,
        upstream.name,
        if route.cache {
            "cached"
        } else {
            "cache: false"
        }
    );
    let (path_and_query, headers) = if route.cache {
        let (key, to_origin) =
            canonical::cache_request(route, &m.params, path, origin_form.query(), &request, &fwd)
                .map_err(|e| format!("answered 400: {e}"))?;
        let _ = writeln!(out, "key:      {key}");
        // How traces name it (spans carry the hash, never the key).
        let _ = writeln!(out, "key hash: {}", crate::telemetry::key_hash(&key));
        // Every header a response's Vary could select, as the variant would record it.
        let mut names: Vec<HeaderName> = FORWARDED_VARIANT.to_vec();
        let vary = canonical::honoured_vary(route);
        for n in route.key.headers.iter().chain(vary) {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let variant: Vec<String> = vary_values(&to_origin.headers, &names)
            .into_iter()
            .filter_map(|(n, v)| v.map(|v| format!("{n}={v}")))
            .collect();
        let _ = writeln!(
            out,
            "variant:  {} (key headers and Vary select from these)",
            variant.join(" ")
        );
        (to_origin.path_and_query, to_origin.headers)
    } else {
        let path_and_query = match origin_form.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        (path_and_query, canonical::pass_headers(request, route))
    };
    let req = origin::outbound(
        upstream,
        Method::GET,
        &path_and_query,
        headers,
        &fwd,
        Body::empty(),
    );
    let _ = writeln!(out, "upstream: {} {}", req.method(), req.uri());
    let mut lines: Vec<String> = req
        .headers()
        .iter()
        .map(|(k, v)| format!("  {k}: {}", v.to_str().unwrap_or("<binary>")))
        .collect();
    lines.sort();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    Ok(out)
}
