//! Staging: the scratch names a release is built under, and the commit that publishes it.
//!
//! A stage writes into `releases/.staging-<id>-<nonce>/` (and downloads to
//! `releases/.download-<id>-<nonce>`), both inside `releases/` so that the final rename never
//! crosses a file system. [`ReleaseStore::commit`] then:
//! 1. clears the write bits of the tree and fsyncs every file and directory in it;
//! 2. under the store lock, refuses an id already staged from another digest (or, for the
//!    same digest, drops the new copy: a concurrent stage won the race);
//! 3. writes `releases/<id>.sha256` atomically;
//! 4. renames the staging directory to `releases/<id>` and fsyncs `releases/`.
//!
//! A crash between 3 and 4 leaves a digest file without a directory: not staged, and removed
//! by `clean_debris`. The nonce keeps two concurrent stages of one id from sharing a directory.

use super::error::{IoContext, StoreError};
use super::fsops::{fsync_dir, fsync_tree, make_readonly_tree, nonce, remove_tree, write_atomic};
use super::{check_id, ReleaseStore};
use std::fs;
use std::path::{Path, PathBuf};

/// The prefix of an unpack in progress.
pub(crate) const STAGING_PREFIX: &str = ".staging-";
/// The prefix of an artifact being fetched.
pub(crate) const DOWNLOAD_PREFIX: &str = ".download-";

impl ReleaseStore {
    /// Creates a fresh, empty `releases/.staging-<id>-<nonce>/` and returns its path.
    pub fn new_staging_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        check_id(id)?;
        let dir = self
            .releases
            .join(format!("{STAGING_PREFIX}{id}-{}", nonce()));
        fs::create_dir(&dir).ctx(|| format!("create staging directory {}", dir.display()))?;
        Ok(dir)
    }

    /// A fresh path `releases/.download-<id>-<nonce>` for fetching an artifact into. Nothing
    /// is created.
    pub fn new_download_path(&self, id: &str) -> Result<PathBuf, StoreError> {
        check_id(id)?;
        Ok(self
            .releases
            .join(format!("{DOWNLOAD_PREFIX}{id}-{}", nonce())))
    }

    /// Publishes a complete staging directory as release `id`, staged from the artifact with
    /// digest `sha256` (hex). Returns the release directory. On error the staging directory is
    /// left for the caller to [`discard`](ReleaseStore::discard).
    pub fn commit(&self, id: &str, staging: &Path, sha256: &str) -> Result<PathBuf, StoreError> {
        check_id(id)?;
        let sha256 = sha256.to_ascii_lowercase();
        make_readonly_tree(staging)?;
        fsync_tree(staging)?;

        let _lock = self.lock()?;
        let dest = self.release_dir(id);
        if fs::symlink_metadata(&dest).is_ok() {
            let existing = self
                .release_sha256(id)
                .unwrap_or_else(|| "(unknown: no digest file)".into());
            if existing == sha256 {
                remove_tree(staging)?;
                return Ok(dest);
            }
            return Err(StoreError::Conflict {
                id: id.into(),
                existing,
                requested: sha256,
            });
        }
        write_atomic(&self.sha256_path(id), format!("{sha256}\n").as_bytes())?;
        if let Err(e) = fs::rename(staging, &dest) {
            // Without its directory the digest file would be debris; take it back now.
            let _ = fs::remove_file(self.sha256_path(id));
            return Err(StoreError::io(
                format!("rename {} to {}", staging.display(), dest.display()),
                e,
            ));
        }
        fsync_dir(&self.releases)?;
        tracing::info!(release = id, sha256 = %sha256, "release staged");
        Ok(dest)
    }

    /// Removes a staging directory or download file (read-only or not). Missing is fine.
    pub fn discard(&self, path: &Path) -> Result<(), StoreError> {
        remove_tree(path)
    }
}
