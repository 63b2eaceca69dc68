//! Request URLs in one spelling per meaning: the canonical path (escapes, dot-segments)
//! and the canonical query (the route's selection, sorted). Pure, below both the
//! config (which spells configured names the same way) and the request path.

use crate::error::ProxyError;

use super::key::{NamePattern, QuerySpec};

// === paths and queries ===

/// Where a byte may appear unencoded in a canonical component.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Component {
    Path,
    Query,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn allowed(b: u8, c: Component) -> bool {
    // RFC 3986 pchar (unreserved, sub-delims, ':' '@') plus '/'; a query also allows '?'.
    unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
        || (c == Component::Query && b == b'?')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One spelling per meaning: `%XX` of an unreserved character decoded, other escapes
/// with uppercase hex, bytes outside the component's set escaped. Reserved characters
/// (`%2F`, `%26`, `%3D`, `%5C`, `%00`, ...) are never decoded: they are data.
fn normalize_escapes(raw: &str, c: Component, out: &mut String) -> Result<(), ProxyError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(ProxyError::BadRequest(
                    "malformed percent-encoding in the URL",
                ));
            };
            let v = hi << 4 | lo;
            if unreserved(v) {
                out.push(v as char);
            } else {
                out.push('%');
                out.push(HEX[usize::from(hi)] as char);
                out.push(HEX[usize::from(lo)] as char);
            }
            i += 3;
        } else if allowed(b, c) {
            out.push(b as char);
            i += 1;
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
            i += 1;
        }
    }
    Ok(())
}

/// The canonical form of a request path, used for route matching, the key and the URL
/// sent upstream: escapes normalised, dot-segments removed (RFC 3986 §5.2.4; `..` above
/// the root is an error). Empty segments (`//`) are kept: they are not merged, and since
/// the key and the upstream URL both come from this form, they agree.
pub fn path(raw: &str) -> Result<String, ProxyError> {
    if !raw.starts_with('/') {
        // `OPTIONS *` and the like: no route matches them.
        return Ok(raw.to_string());
    }
    let mut escaped = String::with_capacity(raw.len());
    normalize_escapes(raw, Component::Path, &mut escaped)?;
    if !escaped.contains("/.") {
        return Ok(escaped);
    }
    let segments: Vec<&str> = escaped[1..].split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(ProxyError::BadRequest("the path climbs above the root"));
                }
            }
            s => {
                out.push(s);
                continue;
            }
        }
        // `/a/.` and `/a/b/..` name a directory: keep the trailing slash.
        if i == last {
            out.push("");
        }
    }
    Ok(format!("/{}", out.join("/")))
}

/// The query as the origin receives it on the cache path, and as the key holds it: the
/// pairs the route selects, each spelled canonically, sorted by name then value.
/// `None` when nothing is left. `;` is not a separator (the whole pair is data, so a
/// pair cannot hide another from the key), nor is `+` a space.
pub fn query(
    raw: Option<&str>,
    select: &QuerySpec,
    ignore: &[NamePattern],
) -> Result<Option<String>, ProxyError> {
    let Some(raw) = raw.filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    if matches!(select, QuerySpec::Only(names) if names.is_empty()) {
        return Ok(None);
    }
    let mut pairs: Vec<(String, Option<String>)> = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (n, v) = match pair.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (pair, None),
        };
        let mut name = String::with_capacity(n.len());
        normalize_escapes(n, Component::Query, &mut name)?;
        let keep = match select {
            QuerySpec::All => true,
            QuerySpec::Only(names) => names.binary_search(&name).is_ok(),
        } && !ignore.iter().any(|p| p.matches(&name));
        if !keep {
            continue;
        }
        let value = match v {
            Some(v) => {
                let mut value = String::with_capacity(v.len());
                normalize_escapes(v, Component::Query, &mut value)?;
                Some(value)
            }
            None => None,
        };
        pairs.push((name, value));
    }
    if pairs.is_empty() {
        return Ok(None);
    }
    pairs.sort();
    let mut out = String::with_capacity(raw.len());
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        if let Some(v) = value {
            out.push('=');
            out.push_str(v);
        }
    }
    Ok(Some(out))
}

/// A query parameter name as configured, in the spelling `query` compares against.
pub fn query_name(name: &str) -> Result<String, ProxyError> {
    let mut out = String::with_capacity(name.len());
    normalize_escapes(name, Component::Query, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let check = |raw: &str, want: Result<&str, ()>| {
            assert_eq!(path(raw).map_err(|_| ()), want.map(str::to_string), "{raw}")
        };
        check("/", Ok("/"));
        check("/a/b", Ok("/a/b"));
        check("/a/./b", Ok("/a/b"));
        check("/a/x/../b", Ok("/a/b"));
        check("/a/b/.", Ok("/a/b/"));
        check("/a/b/..", Ok("/a/"));
        check("/..", Err(()));
        check("/a/../..", Err(()));
        check("/a/%2e%2E/b", Ok("/b"));
        check("/files/a%2fb", Ok("/files/a%2Fb"));
        check("/files/a%2Fb", Ok("/files/a%2Fb"));
        check("/files/a%5cb%00", Ok("/files/a%5Cb%00"));
        check("/%7Euser/%41", Ok("/~user/A"));
        check("/a//b", Ok("/a//b"));
        check("/a|b{c}", Ok("/a%7Cb%7Bc%7D"));
        check("/bad%zz", Err(()));
        check("/bad%4", Err(()));
        check("*", Ok("*"));
    }

    #[test]
    fn queries() {
        let all = QuerySpec::All;
        let check = |raw: Option<&str>, sel: &QuerySpec, ignore: &[&str], want: Option<&str>| {
            let ignore: Vec<NamePattern> = ignore.iter().map(|p| NamePattern::new(p)).collect();
            assert_eq!(
                query(raw, sel, &ignore).unwrap().as_deref(),
                want,
                "{raw:?}"
            )
        };
        check(None, &all, &[], None);
        check(Some(""), &all, &[], None);
        check(Some("b=2&a=1"), &all, &[], Some("a=1&b=2"));
        check(Some("a=2&a=1"), &all, &[], Some("a=1&a=2"));
        check(Some("q=%7E&r=~"), &all, &[], Some("q=~&r=~"));
        check(Some("q=%2f"), &all, &[], Some("q=%2F"));
        check(Some("a=1%26b=2"), &all, &[], Some("a=1%26b=2"));
        check(Some("a=1;b=2"), &all, &[], Some("a=1;b=2"));
        check(Some("q=a+b"), &all, &[], Some("q=a+b"));
        check(Some("flag&flag="), &all, &[], Some("flag&flag="));
        check(
            Some("utm_source=x&fbclid=1&page=2"),
            &all,
            &["utm_*", "fbclid"],
            Some("page=2"),
        );
        let only = QuerySpec::Only(vec!["a".into(), "fields".into()]);
        check(Some("fields=x&utm=1&a=2"), &only, &[], Some("a=2&fields=x"));
        check(Some("utm=x;a=evil&a=good"), &only, &[], Some("a=good"));
        check(Some("fi%65lds=x"), &only, &[], Some("fields=x"));
        check(Some("a=1"), &QuerySpec::Only(vec![]), &[], None);
        assert!(query(Some("a=%"), &all, &[]).is_err());
    }
}
