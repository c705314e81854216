//! Garbage collection of old releases, and removal of crash debris.
//!
//! `gc` bounds disk use: it keeps at most `keep_releases` staged releases, deleting the oldest
//! first, but never `current`, `previous`, or an id the caller protects (a release staged for a
//! pending deploy). When those alone exceed the bound, it keeps them all and deletes the rest.
//! A release is deleted by renaming it to `.trash-<id>-<nonce>` first (so it stops being
//! staged in one atomic step), then removing its digest file and the tree.
//!
//! `clean_debris` runs at agent start, when no stage can be in flight. Everything in
//! `releases/` whose name starts with `.staging-`, `.download-` or `.trash-`, temporary
//! `*.tmp-*` files, digest files without a directory, and `current.tmp-*` / `previous.tmp-*`
//! links in the root are what a crash mid-operation leaves; all of it is removed.

use super::error::{IoContext, StoreError};
use super::fsops::{fsync_dir, nonce, remove_tree, NONCE_LEN};
use super::links::{CURRENT, PREVIOUS};
use super::staging::{DOWNLOAD_PREFIX, STAGING_PREFIX};
use super::{ReleaseStore, SHA256_SUFFIX, SIG_SUFFIX};
use std::collections::HashSet;
use std::fs;

/// The prefix of a release being deleted.
const TRASH_PREFIX: &str = ".trash-";
/// The infix of every temporary name the store creates for an atomic rename.
const TMP_INFIX: &str = ".tmp-";

impl ReleaseStore {
    /// Keeps at most `keep_releases` staged releases; never deletes current, previous, or any
    /// id in `protect`. Returns the removed ids, oldest first.
    pub fn gc(&self, protect: &[&str]) -> Result<Vec<String>, StoreError> {
        let _lock = self.lock()?;
        // A broken link fails gc rather than letting it guess what is safe to delete.
        self.current()?;
        self.previous()?;
        let entries = self.list()?;
        let keep: HashSet<&str> = protect.iter().copied().collect();
        let mut excess = entries.len().saturating_sub(self.keep_releases);
        let mut removed = Vec::new();
        for entry in &entries {
            if excess == 0 {
                break;
            }
            if entry.current || entry.previous || keep.contains(entry.id.as_str()) {
                continue;
            }
            self.remove_release(&entry.id)?;
            removed.push(entry.id.clone());
            excess -= 1;
        }
        Ok(removed)
    }

    fn remove_release(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.release_dir(id);
        let trash = self
            .releases
            .join(format!("{TRASH_PREFIX}{id}-{}", nonce()));
        fs::rename(&dir, &trash)
            .ctx(|| format!("rename {} to {}", dir.display(), trash.display()))?;
        let sha = self.sha256_path(id);
        fs::remove_file(&sha).ctx(|| format!("remove {}", sha.display()))?;
        let sig = self.sig_path(id);
        match fs::remove_file(&sig) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io(format!("remove {}", sig.display()), e))
            }
            _ => {}
        }
        fsync_dir(&self.releases)?;
        remove_tree(&trash)?;
        tracing::info!(release = id, "old release removed");
        Ok(())
    }

    /// Removes what a crash leaves behind. Call it at agent start, before any stage.
    pub fn clean_debris(&self) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let dir = fs::read_dir(&self.releases)
            .ctx(|| format!("read directory {}", self.releases.display()))?;
        for entry in dir {
            let entry = entry.ctx(|| format!("read directory {}", self.releases.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let debris = [STAGING_PREFIX, DOWNLOAD_PREFIX, TRASH_PREFIX]
                .iter()
                .any(|p| name.starts_with(p))
                || (!is_dir && is_tmp_name(&name))
                || (!is_dir
                    && [SHA256_SUFFIX, SIG_SUFFIX].iter().any(|suffix| {
                        name.strip_suffix(suffix)
                            .is_some_and(|id| !self.release_dir(id).is_dir())
                    }));
            if debris {
                tracing::warn!(path = %entry.path().display(), "removing release-store debris");
                remove_tree(&entry.path())?;
            }
        }
        let root =
            fs::read_dir(&self.root).ctx(|| format!("read directory {}", self.root.display()))?;
        for entry in root {
            let entry = entry.ctx(|| format!("read directory {}", self.root.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_link_tmp = is_tmp_name(&name)
                && [CURRENT, PREVIOUS]
                    .iter()
                    .any(|l| name.starts_with(&format!("{l}{TMP_INFIX}")));
            if is_link_tmp && entry.file_type().is_ok_and(|t| t.is_symlink()) {
                tracing::warn!(path = %entry.path().display(), "removing release-store debris");
                let path = entry.path();
                fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?;
            }
        }
        fsync_dir(&self.releases)?;
        fsync_dir(&self.root)
    }
}

/// Whether `name` is a temporary name from `fsops::write_atomic` or a link swap:
/// `<name>.tmp-<16 hex digits>`. Digest files end in `.sha256` and release directories are
/// skipped by the caller, so no staged release can match.
fn is_tmp_name(name: &str) -> bool {
    name.len() > TMP_INFIX.len() + NONCE_LEN
        && name.is_char_boundary(name.len() - NONCE_LEN - TMP_INFIX.len())
        && {
            let (head, nonce) = name.split_at(name.len() - NONCE_LEN);
            head.ends_with(TMP_INFIX) && nonce.bytes().all(|b| b.is_ascii_hexdigit())
        }
}
