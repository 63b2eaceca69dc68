//! Configuration errors that point at the input: `FILE:LINE:COL: field: what is wrong`.

use std::fmt;
use std::path::PathBuf;

/// A problem with `routes.yaml`, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column; `None` when the error is not tied to a place (unreadable file).
    pub position: Option<(usize, usize)>,
    /// Dotted path of the offending field, e.g. `routes[2].ttl`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}
