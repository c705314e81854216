//! Errors of the release store.
//!
//! Every variant names the path or release it is about, so that an operator reading a failed
//! deploy's message knows which file to look at without reproducing it. Store errors are local
//! (disk, permissions, a tampered root): retrying does not fix them, so callers treat them as
//! final.

use std::path::PathBuf;
use thiserror::Error;

/// A release-store operation that failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A file-system call failed; `context` says what the store was doing.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A release id that cannot name a directory in `releases/`.
    #[error("invalid release id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },
    /// The release is not fully staged, so a link may not point at it.
    #[error("release {id:?} is not staged")]
    NotStaged { id: String },
    /// `current` or `previous` points at a release that is not (fully) staged.
    #[error("{link} points at {target}, which is not a staged release")]
    Dangling { link: &'static str, target: PathBuf },
    /// `current` or `previous` is not a symlink of the form `releases/<id>`.
    #[error("{link} is not a symlink to releases/<id> (found {found})")]
    BadLink { link: &'static str, found: String },
    /// The id is already staged from a different artifact.
    #[error("release {id:?} is already staged with sha256 {existing}, not {requested}")]
    Conflict {
        id: String,
        existing: String,
        requested: String,
    },
}

impl StoreError {
    /// Wraps an I/O error with what the store was doing.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds a context line to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::io(context(), e))
    }
}
