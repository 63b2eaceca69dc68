//! Cache keys: the route template, its path parameters and the query parameters the
//! route selects. Selected request headers and the response's `Vary` pick a variant
//! within the key (see `cache::entry`), so one purge or invalidation reaches them all.

use std::borrow::Cow;

use http::HeaderName;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

/// What a route puts in its keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySpec {
    /// Query parameter names, sorted; others are ignored.
    pub query: Vec<String>,
    /// Request headers that select a variant, sorted.
    pub headers: Vec<HeaderName>,
}

impl KeySpec {
    pub fn new(mut query: Vec<String>, mut headers: Vec<HeaderName>) -> Self {
        query.sort();
        query.dedup();
        headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        headers.dedup();
        KeySpec { query, headers }
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

/// The key of a request: `GET /users/{id}|id=42|fields=name`.
pub fn cache_key(
    template: &str,
    params: &[(String, String)],
    query: Option<&str>,
    spec: &KeySpec,
) -> String {
    let mut key = String::with_capacity(template.len() + 32);
    key.push_str(template);
    key.push('|');
    for (i, (name, value)) in params.iter().enumerate() {
        if i > 0 {
            key.push('&');
        }
        // In a path `+` is itself, unlike in a query.
        push_pair(
            &mut key,
            name,
            &percent_decode_str(value).decode_utf8_lossy(),
        );
    }
    key.push('|');
    if !spec.query.is_empty() {
        // Names are compared before values are decoded: unselected pairs (tracking
        // parameters and the like) cost no allocation.
        let mut selected: Vec<(Cow<'_, str>, Cow<'_, str>)> = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (n, v) = p.split_once('=').unwrap_or((p, ""));
                let name = decode(n);
                spec.query
                    .binary_search_by(|q| q.as_str().cmp(&name))
                    .is_ok()
                    .then(|| (name, decode(v)))
            })
            .collect();
        selected.sort();
        for (i, (name, value)) in selected.iter().enumerate() {
            if i > 0 {
                key.push('&');
            }
            push_pair(&mut key, name, value);
        }
    }
    key
}

/// The route template a key was built for.
pub fn template_of(key: &str) -> &str {
    key.split('|').next().unwrap_or(key)
}

/// The request path a key stands for: its template with the parameters put back.
/// `None` when the key is not of this format.
pub fn path_of(key: &str) -> Option<String> {
    let mut parts = key.split('|');
    let template = parts.next()?;
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
    let mut path = template.to_string();
    for (name, value) in params {
        for pattern in [format!("{{*{name}}}"), format!("{{{name}}}")] {
            path = path.replace(&pattern, &value);
        }
    }
    Some(path)
}

fn push_pair(key: &mut String, name: &str, value: &str) {
    key.extend(utf8_percent_encode(name, COMPONENT));
    key.push('=');
    key.extend(utf8_percent_encode(value, COMPONENT));
}

/// Decodes `%XX` and `+` so equivalent spellings share a key; borrows when there is
/// nothing to decode.
fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let s = s.replace('+', " ");
    Cow::Owned(percent_decode_str(&s).decode_utf8_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(q: &[&str]) -> KeySpec {
        KeySpec::new(q.iter().map(|s| s.to_string()).collect(), vec![])
    }

    fn params(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn keys_select_sorted_query_and_ignore_the_rest() {
        let s = spec(&["fields", "b"]);
        let p = params(&[("id", "42")]);
        let check = |q: Option<&str>, want: &str| {
            assert_eq!(cache_key("/users/{id}", &p, q, &s), want, "{q:?}")
        };
        check(None, "/users/{id}|id=42|");
        check(Some("fields=name&utm=x"), "/users/{id}|id=42|fields=name");
        check(Some("utm=y&fields=name"), "/users/{id}|id=42|fields=name");
        check(Some("fields=a%2Cb"), "/users/{id}|id=42|fields=a,b");
        check(Some("fields=a,b&b=2"), "/users/{id}|id=42|b=2&fields=a,b");
        check(Some("b=2&fields=a,b"), "/users/{id}|id=42|b=2&fields=a,b");
    }

    #[test]
    fn paths_are_recovered_from_keys() {
        let s = spec(&["a"]);
        let k = cache_key(
            "/users/{id}/posts/{*rest}",
            &params(&[("id", "4|2"), ("rest", "a/b%20c+d")]),
            Some("a=1"),
            &s,
        );
        assert_eq!(template_of(&k), "/users/{id}/posts/{*rest}");
        assert_eq!(path_of(&k).as_deref(), Some("/users/4|2/posts/a/b c+d"));
    }

    #[test]
    fn separators_in_values_cannot_forge_another_key() {
        let s = spec(&["a"]);
        let k1 = cache_key("/x/{id}", &params(&[("id", "1|a=2")]), None, &s);
        let k2 = cache_key("/x/{id}", &params(&[("id", "1")]), Some("a=2"), &s);
        assert_ne!(k1, k2);
        let k3 = cache_key("/x", &[], Some("a=1%26a%3D2"), &s);
        let k4 = cache_key("/x", &[], Some("a=1&a=2"), &s);
        assert_ne!(k3, k4);
    }
}
