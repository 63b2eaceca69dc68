//! What a purge selects, how it is applied to an entry, and the log that keeps a fetch
//! which started before a purge from storing its answer as fresh after it. Pure: stores
//! call `Selector::matches` on what they hold and `PurgeLog::covering` at write time.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::CacheEntry;

/// Which entries a purge reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// One cache key (every variant of one URL).
    Key(String),
    /// Every key of one route template, e.g. `/users/{id}`.
    Route(String),
    /// Every entry carrying this surrogate key (`Surrogate-Key` / `Cache-Tag`, or a
    /// route's `tags:`).
    Tag(String),
    /// Every entry whose request path starts with this prefix, e.g. `/users/42/`.
    Prefix(String),
    /// Everything.
    All,
}

/// Hard purges remove; soft purges mark stale, so the next request is served at once
/// while one refresh runs (and stale-if-error still protects against a failing origin).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Soft,
    #[default]
    Hard,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Hard => "hard",
            Mode::Soft => "soft",
        }
    }
}

impl Selector {
    /// Whether the entry stored under `key` is selected.
    pub fn matches(&self, key: &str, entry: &CacheEntry) -> bool {
        match self {
            Selector::Tag(tag) => entry.tags.iter().any(|t| t == tag),
            _ => self.matches_key(key) == Some(true),
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
            Selector::All => Some(true),
        }
    }

    /// True when matching needs no entry (the key alone decides).
    pub fn by_key_only(&self) -> bool {
        !matches!(self, Selector::Tag(_))
    }

    /// `kind:value`, the form the Redis purge log keeps (`Selector::decode` reads it).
    pub fn encode(&self) -> String {
        match self {
            Selector::Key(k) => format!("k:{k}"),
            Selector::Route(r) => format!("r:{r}"),
            Selector::Tag(t) => format!("t:{t}"),
            Selector::Prefix(p) => format!("p:{p}"),
            Selector::All => "a:".to_string(),
        }
    }

    pub fn decode(text: &str) -> Option<Selector> {
        let (kind, value) = text.split_at_checked(2)?;
        let value = value.to_string();
        Some(match kind {
            "k:" => Selector::Key(value),
            "r:" => Selector::Route(value),
            "t:" => Selector::Tag(value),
            "p:" => Selector::Prefix(value),
            "a:" => Selector::All,
            _ => return None,
        })
    }
}

/// One purge as the log remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub at: SystemTime,
    pub selector: Selector,
    pub mode: Mode,
}

impl Record {
    /// `at_us|mode|selector`: one member of the Redis purge log (prefixed there by a
    /// nonce so two equal purges in one microsecond stay two members).
    pub fn encode(&self) -> String {
        format!(
            "{}|{}|{}",
            micros(self.at),
            self.mode.as_str(),
            self.selector.encode()
        )
    }

    pub fn decode(text: &str) -> Option<Record> {
        let mut parts = text.splitn(3, '|');
        let at = parts.next()?.parse::<u64>().ok()?;
        let mode = match parts.next()? {
            "hard" => Mode::Hard,
            "soft" => Mode::Soft,
            _ => return None,
        };
        let selector = Selector::decode(parts.next()?)?;
        Some(Record {
            at: SystemTime::UNIX_EPOCH + Duration::from_micros(at),
            selector,
            mode,
        })
    }
}

/// The strongest purge among `records` that covers an entry fetched from `since`:
/// one made at or after the fetch started whose selector reaches the entry.
pub fn covering<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    key: &str,
    entry: &CacheEntry,
    since: SystemTime,
) -> Option<Mode> {
    records
        .into_iter()
        .filter(|r| r.at >= since && r.selector.matches(key, entry))
        .map(|r| r.mode)
        .max()
}

/// How long purges are remembered: longer than any fetch may take (fetches are bounded
/// by the upstream timeouts, minutes at most).
pub const LOG_KEEP: Duration = Duration::from_secs(600);
/// At most this many purges are remembered; past it the oldest go, and a fetch older
/// than the newest forgotten one is treated as purged (hard), which only costs a refetch.
pub const LOG_MAX: usize = 10_000;

/// The purges of the last `LOG_KEEP`, for a store local to this process.
#[derive(Debug, Default)]
pub struct PurgeLog {
    inner: Mutex<LogInner>,
}

#[derive(Debug, Default)]
struct LogInner {
    records: VecDeque<Record>,
    /// When the newest record dropped for room was made.
    forgotten: Option<SystemTime>,
}

impl PurgeLog {
    /// Remembers a purge; call it before applying the purge.
    pub fn record(&self, selector: &Selector, mode: Mode, at: SystemTime) {
        let mut log = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let horizon = at.checked_sub(LOG_KEEP).unwrap_or(SystemTime::UNIX_EPOCH);
        while log.records.front().is_some_and(|r| r.at < horizon) {
            log.records.pop_front();
        }
        if log.records.len() >= LOG_MAX {
            let dropped = log.records.pop_front().map(|r| r.at);
            log.forgotten = dropped.max(log.forgotten);
        }
        log.records.push_back(Record {
            at,
            selector: selector.clone(),
            mode,
        });
    }

    /// The strongest purge that covers `entry` (see `covering`).
    pub fn covering(&self, key: &str, entry: &CacheEntry) -> Option<Mode> {
        let since = entry.fetched_since();
        let log = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if log.forgotten.is_some_and(|f| f >= since) {
            return Some(Mode::Hard);
        }
        // Newest last: stop at the first record made before the fetch began.
        let newer = log.records.iter().rev().take_while(|r| r.at >= since);
        covering(newer, key, entry, since)
    }
}

/// What a write does about a purge that covers it: hard, nothing is stored; soft, the
/// entry is stored stale.
pub fn apply(
    entry: &std::sync::Arc<CacheEntry>,
    purged: Option<Mode>,
    now: SystemTime,
) -> Option<std::sync::Arc<CacheEntry>> {
    match purged {
        None => Some(entry.clone()),
        Some(Mode::Soft) => Some(std::sync::Arc::new(soften(entry, now))),
        Some(Mode::Hard) => None,
    }
}

/// Microseconds since the epoch: exact as a Redis sorted-set score (below 2^53).
pub fn micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The entry as a soft purge leaves it: stale from `now`, its stale windows kept.
///
/// The stale windows keep their length from the new end of freshness, so an entry that
/// may not be served stale at all (`must-revalidate`: no window) is not served stale
/// after a soft purge either.
pub fn soften(entry: &CacheEntry, now: SystemTime) -> CacheEntry {
    let mut e = entry.clone();
    let past = now.checked_sub(Duration::from_millis(1)).unwrap_or(now);
    if e.fresh_until <= past {
        return e;
    }
    let window = |until: SystemTime| until.duration_since(entry.fresh_until).unwrap_or_default();
    e.stale_until = e.stale_until.min(past + window(entry.stale_until));
    e.error_until = e.error_until.min(past + window(entry.error_until));
    e.fresh_until = past;
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
