//! What a purge selects, and how it is applied to an entry. Pure: stores call
//! `Selector::matches` on what they hold.

use std::time::{Duration, SystemTime};

use super::CacheEntry;

/// Which entries a purge reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// One cache key (every variant of one URL).
    Key(String),
    /// Every key of one route template, e.g. `/users/{id}`.
    Route(String),
    /// Every entry carrying this surrogate key (`Surrogate-Key` / `Cache-Tag`).
    Tag(String),
    /// Every entry whose request path starts with this prefix, e.g. `/users/42/`.
    Prefix(String),
}

/// Hard purges remove; soft purges mark stale, so the next request is served at once
/// while one refresh runs (and stale-if-error still protects against a failing origin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Hard,
    Soft,
}

impl Selector {
    /// Whether the entry stored under `key` is selected.
    pub fn matches(&self, key: &str, entry: &CacheEntry) -> bool {
        match self {
            Selector::Key(k) => k == key,
            Selector::Route(template) => crate::proxy::key::template_of(key) == template,
            Selector::Tag(tag) => entry.tags.iter().any(|t| t == tag),
            Selector::Prefix(prefix) => crate::proxy::key::path_of(key)
                .is_some_and(|path| path.starts_with(prefix.as_str())),
        }
    }

    /// Whether `key` is selected, decided from the key alone; `None` when only the
    /// entry can tell (tags). Lets a shared store select keys by name before reading
    /// (or without reading) what they hold.
    pub fn matches_key(&self, key: &str) -> Option<bool> {
        match self {
            Selector::Key(k) => Some(k == key),
            Selector::Route(template) => Some(crate::proxy::key::template_of(key) == template),
            Selector::Tag(_) => None,
            Selector::Prefix(prefix) => Some(
                crate::proxy::key::path_of(key)
                    .is_some_and(|path| path.starts_with(prefix.as_str())),
            ),
        }
    }

    /// True when matching needs no entry (the key alone decides).
    pub fn by_key_only(&self) -> bool {
        !matches!(self, Selector::Tag(_))
    }
}

/// The entry as a soft purge leaves it: stale from `now`, its stale windows kept.
pub fn soften(entry: &CacheEntry, now: SystemTime) -> CacheEntry {
    let mut e = entry.clone();
    let past = now.checked_sub(Duration::from_millis(1)).unwrap_or(now);
    e.fresh_until = e.fresh_until.min(past);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_key_decides_every_selector_but_tags_from_the_key() {
        let key = "/users/{id}/posts/{*rest}|id=42&rest=a%2Fb|";
        assert_eq!(Selector::Key(key.into()).matches_key(key), Some(true));
        assert_eq!(Selector::Key("/x|".into()).matches_key(key), Some(false));
        let route = Selector::Route("/users/{id}/posts/{*rest}".into());
        assert_eq!(route.matches_key(key), Some(true));
        assert_eq!(
            Selector::Route("/users/{id}".into()).matches_key(key),
            Some(false)
        );
        assert_eq!(
            Selector::Prefix("/users/42/".into()).matches_key(key),
            Some(true)
        );
        assert_eq!(
            Selector::Prefix("/users/4/".into()).matches_key(key),
            Some(false)
        );
        assert_eq!(Selector::Tag("users".into()).matches_key(key), None);
    }
}
