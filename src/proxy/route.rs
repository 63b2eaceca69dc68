//! Route templates (`/users/{id}`, `/{*rest}`) matched against request paths.

use crate::config::Route;

/// The compiled route table. Templates were validated when the config loaded.
pub struct RouteTable {
    router: matchit::Router<usize>,
}

/// A matched route: its index in `Config::routes` and the path parameters in template order.
#[derive(Debug, PartialEq, Eq)]
pub struct Matched {
    pub route: usize,
    pub params: Vec<(String, String)>,
}

impl RouteTable {
    pub fn new(routes: &[std::sync::Arc<Route>]) -> Self {
        let mut router = matchit::Router::new();
        for (i, r) in routes.iter().enumerate() {
            router
                .insert(&*r.template, i)
                .expect("route templates are validated by config::Config");
        }
        RouteTable { router }
    }

    pub fn find(&self, path: &str) -> Option<Matched> {
        let m = self.router.at(path).ok()?;
        Some(Matched {
            route: *m.value,
            params: m
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }
}
