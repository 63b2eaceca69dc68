//! Cache keys: the route template, its path parameters and the query parameters the
//! route selects. Selected request headers and the response's `Vary` pick a variant
//! within the key (see `cache::entry`), so one purge or invalidation reaches them all.

use http::HeaderName;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

/// Which query parameters a route keys (and forwards on the cache path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum QuerySpec {
    /// Every parameter (the default): nothing the origin sees is left out of the key.
    #[default]
    All,
    /// Only these names, sorted; the others are neither keyed nor forwarded.
    Only(Vec<String>),
}

/// A query parameter name, or a `prefix*` pattern (`utm_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    name: String,
    prefix: bool,
}

impl NamePattern {
    pub fn new(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some(prefix) => NamePattern {
                name: prefix.to_string(),
                prefix: true,
            },
            None => NamePattern {
                name: pattern.to_string(),
                prefix: false,
            },
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        if self.prefix {
            name.starts_with(&self.name)
        } else {
            name == self.name
        }
    }
}

/// What a route puts in its keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySpec {
    pub query: QuerySpec,
    /// Removed from the key and from the forwarded URL (`key.query_ignore`).
    pub query_ignore: Vec<NamePattern>,
    /// Request headers that select a variant, sorted.
    pub headers: Vec<HeaderName>,
}

impl KeySpec {
    pub fn new(
        query: QuerySpec,
        query_ignore: Vec<NamePattern>,
        mut headers: Vec<HeaderName>,
    ) -> Self {
        let query = match query {
            QuerySpec::All => QuerySpec::All,
            QuerySpec::Only(mut names) => {
                names.sort();
                names.dedup();
                QuerySpec::Only(names)
            }
        };
        headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        headers.dedup();
        KeySpec {
            query,
            query_ignore,
            headers,
        }
    }
}

/// Characters escaped inside key components so the separators stay unambiguous.
const COMPONENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'%')
    .add(b'&')
    .add(b'=')
    .add(b'|')
    .add(b'?');

/// The key of a canonical request: `/users/{id}|id=42|fields=name`. `params` are the
/// canonical (still percent-encoded) path parameters and `query` the canonical query
/// (see `canonical`), so a key names exactly one upstream request line.
pub fn cache_key(template: &str, params: &[(String, String)], query: Option<&str>) -> String {
    let query = query.unwrap_or("");
    let mut key = String::with_capacity(template.len() + 32 + query.len());
    key.push_str(template);
    key.push('|');
    for (i, (name, value)) in params.iter().enumerate() {
        if i > 0 {
            key.push('&');
        }
        push_pair(&mut key, name, value);
    }
    key.push('|');
    // The canonical query holds no `|` (it is escaped), so the last component needs no
    // escaping of its own.
    key.push_str(query);
    key
}

/// The route template a key was built for.
pub fn template_of(key: &str) -> &str {
    key.split('|').next().unwrap_or(key)
}

/// The request path a key stands for: its template with the parameters put back.
/// `None` when the key is not of this format.
pub fn path_of(key: &str) -> Option<String> {
    let template = template_of(key);
    let params = params_of(key)?;
    let mut path = template.to_string();
    for (name, value) in params {
        for pattern in [format!("{{*{name}}}"), format!("{{{name}}}")] {
            path = path.replace(&pattern, &value);
        }
    }
    Some(path)
}

/// The path parameters a key was built with, decoded.
pub fn params_of(key: &str) -> Option<Vec<(String, String)>> {
    let mut parts = key.split('|');
    parts.next()?;
    let params: Vec<(String, String)> = parts
        .next()?
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (n, v) = p.split_once('=')?;
            // Key components are percent-encoded only (never `+`).
            let unescape = |c: &str| percent_decode_str(c).decode_utf8_lossy().into_owned();
            Some((unescape(n), unescape(v)))
        })
        .collect();
    Some(params)
}

fn push_pair(key: &mut String, name: &str, value: &str) {
    key.extend(utf8_percent_encode(name, COMPONENT));
    key.push('=');
    key.extend(utf8_percent_encode(value, COMPONENT));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn keys_hold_params_and_the_canonical_query() {
        let p = params(&[("id", "42")]);
        assert_eq!(cache_key("/users/{id}", &p, None), "/users/{id}|id=42|");
        assert_eq!(
            cache_key("/users/{id}", &p, Some("b=2&fields=a,b")),
            "/users/{id}|id=42|b=2&fields=a,b"
        );
    }

    #[test]
    fn paths_are_recovered_from_keys() {
        let k = cache_key(
            "/users/{id}/posts/{*rest}",
            &params(&[("id", "4|2"), ("rest", "a/b%20c+d")]),
            Some("a=1"),
        );
        assert_eq!(template_of(&k), "/users/{id}/posts/{*rest}");
        assert_eq!(path_of(&k).as_deref(), Some("/users/4|2/posts/a/b%20c+d"));
    }

    #[test]
    fn separators_in_values_cannot_forge_another_key() {
        let k1 = cache_key("/x/{id}", &params(&[("id", "1|a=2")]), None);
        let k2 = cache_key("/x/{id}", &params(&[("id", "1")]), Some("a=2"));
        assert_ne!(k1, k2);
        let two = cache_key("/x/{a}/{b}", &params(&[("a", "1&b=2"), ("b", "3")]), None);
        let other = cache_key("/x/{a}/{b}", &params(&[("a", "1"), ("b", "2&b=3")]), None);
        assert_ne!(two, other);
        let encoded = cache_key("/f/{*p}", &params(&[("p", "a%2Fb")]), None);
        let plain = cache_key("/f/{*p}", &params(&[("p", "a/b")]), None);
        assert_ne!(encoded, plain, "an encoded separator is another resource");
    }

    #[test]
    fn name_patterns() {
        assert!(NamePattern::new("utm_*").matches("utm_source"));
        assert!(!NamePattern::new("utm_*").matches("xutm_source"));
        assert!(NamePattern::new("fbclid").matches("fbclid"));
        assert!(!NamePattern::new("fbclid").matches("fbclid2"));
    }
}
