//! `canonical::query` with every selection: no panic; idempotent; pairs sorted.
//! Input lines: the raw query, the `key.query` names (comma-separated), the
//! `query_ignore` patterns (comma-separated).
#![no_main]

use cachegate::proxy::canonical;
use cachegate::proxy::key::{NamePattern, QuerySpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let mut lines = input.splitn(3, '\n');
    let raw = lines.next().unwrap_or("");
    let only = lines.next().unwrap_or("");
    let ignore: Vec<NamePattern> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .filter(|p| !p.is_empty())
        .map(NamePattern::new)
        .collect();
    let mut names: Vec<String> = only
        .split(',')
        .filter_map(|n| canonical::query_name(n).ok())
        .collect();
    names.sort();
    names.dedup();
    for select in [QuerySpec::All, QuerySpec::Only(names.clone())] {
        let Ok(q) = canonical::query(Some(raw), &select, &ignore) else {
            continue;
        };
        let Some(q) = q else { continue };
        let again = canonical::query(Some(&q), &select, &ignore).expect("canonical is valid");
        assert_eq!(again.as_deref(), Some(q.as_str()), "{raw:?}");
        let pairs: Vec<(&str, Option<&str>)> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (p, None),
            })
            .collect();
        assert!(pairs.windows(2).all(|w| w[0] <= w[1]), "unsorted {q:?}");
        assert!(!q.contains('|'), "a separator of the key in {q:?}");
    }
});
