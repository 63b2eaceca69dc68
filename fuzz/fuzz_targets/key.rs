//! A route, a path and a query through `canonical::cache_request`: no panic; the key
//! starts with the route's template; the upstream path is the canonical path.
//! Input lines: the route template, the request path, the raw query, the `key.query`
//! names (comma-separated; no line: every parameter).
#![no_main]

use std::path::Path;

use cachegate::config::{Config, Overrides};
use cachegate::proxy::canonical::{self, Forwarding};
use cachegate::proxy::key;
use cachegate::proxy::route::RouteTable;
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let mut lines = input.splitn(4, '\n');
    let template = lines.next().unwrap_or("");
    let raw_path = lines.next().unwrap_or("");
    let raw_query = lines.next().unwrap_or("");
    let query = match lines.next() {
        Some(names) => {
            let names: Vec<String> = names.split(',').map(|n| format!("{n:?}")).collect();
            format!("query: [{}], ", names.join(", "))
        }
        None => String::new(),
    };
    let yaml = format!(
        "upstreams:\n  o: {{ url: \"http://127.0.0.1:9\" }}\nroutes:\n  - path: {template:?}\n    upstream: o\n    key: {{ {query}query_ignore: [utm_*] }}\n"
    );
    let Ok(config) = Config::parse(&yaml, Path::new("fuzz.yaml"), &Overrides::default()) else {
        return;
    };
    let table = RouteTable::new(&config.routes);
    let Ok(path) = canonical::path(raw_path) else { return };
    let Some(m) = table.find(&path) else { return };
    let route = &config.routes[m.route];
    let fwd = Forwarding {
        host: Some("api.example.com".into()),
        proto: "http",
        for_chain: None,
    };
    let query = (!raw_query.is_empty()).then_some(raw_query);
    let Ok((k, upstream)) =
        canonical::cache_request(route, &m.params, path.clone(), query, &HeaderMap::new(), &fwd)
    else {
        return;
    };
    assert!(k.starts_with(&format!("{}|", route.template)), "{k:?}");
    assert!(upstream.path_and_query.starts_with(&path));
    if !route.template.contains('|') {
        assert_eq!(key::template_of(&k), &*route.template);
    }
});
