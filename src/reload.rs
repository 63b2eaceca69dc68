//! Hot reload: `SIGHUP`, a change of the config file (polled, debounced) and admin
//! `POST /reload` all re-read the file. A valid config is swapped in atomically
//! (`AppState::reload`); an invalid one is logged with its `FILE:LINE:COL: field: reason`
//! and the running config stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::app::AppState;
use crate::config::{Config, ConfigError, Overrides};

/// What a reload did.
#[derive(Debug)]
pub enum Outcome {
    /// Swapped in; notes name settings that need a restart to apply.
    Applied(Vec<String>),
    Rejected(ConfigError),
}

/// Re-reads `path` and swaps it in if it is valid.
pub fn reload(state: &AppState, path: &Path, trigger: &'static str) -> Outcome {
    match Config::load(path, &Overrides::from_env()) {
        Ok(config) => {
            for warning in &config.warnings {
                tracing::warn!(%warning, "config");
            }
            let notes = state.reload(config);
            for note in &notes {
                tracing::warn!(trigger, "config reloaded, but {note}");
            }
            tracing::info!(trigger, path = %path.display(), "config reloaded");
            crate::telemetry::record_reload("applied");
            Outcome::Applied(notes)
        }
        Err(error) => {
            tracing::error!(trigger, %error, "config reload rejected; the running config stays");
            crate::telemetry::record_reload("rejected");
            Outcome::Rejected(error)
        }
    }
}

/// Reloads on `SIGHUP` and when the file's modification time or size changes (checked
/// every `poll`; a change is applied once it has been stable for one poll, so an editor's
/// partial write is not read). Runs until the process ends.
pub async fn watch(state: Arc<AppState>, path: PathBuf, poll: Duration) {
    let stamp = |p: &Path| -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    let mut applied = stamp(&path);
    let mut pending: Option<(SystemTime, u64)> = None;
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let signalled = async {
            match hup.as_mut() {
                Some(s) => s.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<bool>();
        tokio::select! {
            true = signalled => {
                reload(&state, &path, "sighup");
                applied = stamp(&path);
                pending = None;
            }
            _ = tokio::time::sleep(poll) => {
                let now = stamp(&path);
                if now == applied {
                    pending = None;
                } else if now.is_some() && now == pending {
                    reload(&state, &path, "file");
                    applied = now;
                    pending = None;
                } else {
                    pending = now;
                }
            }
        }
    }
}
