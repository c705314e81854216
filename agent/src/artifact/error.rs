//! Errors of the artifact pipeline, and which of them are worth retrying.
//!
//! A fetch can fail because a network or a server hiccuped; trying again later may work, so
//! `Fetch` is retryable. Every other failure is a property of the artifact, its spec or the
//! local disk (a wrong checksum stays wrong), so retrying would only repeat it: the deploy
//! should fail with the message. Messages name the URL, entry path or limit involved.

use crate::store::StoreError;
use thiserror::Error;

/// Why a release could not be staged.
#[derive(Debug, Error)]
pub enum ArtifactError {
    /// The artifact could not be downloaded or read.
    #[error("cannot fetch {url}: {message}")]
    Fetch { url: String, message: String },
    /// The download, one entry, or the unpacked total exceeds the size limit.
    #[error("{what} exceeds the size limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    /// The artifact's sha256 is not the one the release spec names.
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    Checksum { expected: String, actual: String },
    /// Policy requires a signature and the release has none.
    #[error("release is not signed, and signatures are required")]
    SignatureMissing,
    /// The signature is malformed, or does not verify under any trusted key.
    #[error("invalid signature: {reason}")]
    SignatureInvalid { reason: String },
    /// A signature must be checked but no trusted key is configured.
    #[error("release is signed but no trusted keys are configured to check it")]
    UntrustedKey,
    /// An archive entry that could write outside the release or is not a plain file, directory
    /// or link.
    #[error("unsafe archive entry {path:?}: {reason}")]
    UnsafeEntry { path: String, reason: String },
    /// Not a .tar, .tar.gz or .tar.zst, or a corrupt one.
    #[error("bad artifact format: {message}")]
    Format { message: String },
    /// The release id is already staged from a different artifact.
    #[error("release {id:?} is already staged from a different artifact (sha256 {existing})")]
    ReleaseConflict { id: String, existing: String },
    /// The release spec itself is unusable (bad id, bad hex, bad URL scheme).
    #[error("invalid release spec: {message}")]
    InvalidSpec { message: String },
    /// A trusted key in the config cannot be used.
    #[error("invalid trusted key {entry}: {message}")]
    BadKey { entry: String, message: String },
    /// A local file-system call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The release store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ArtifactError {
    /// Whether trying the same stage again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Fetch { .. })
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn unsafe_entry(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::UnsafeEntry {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn format(message: impl Into<String>) -> Self {
        Self::Format {
            message: message.into(),
        }
    }
}
