//! The release store: unpacked releases under a service root, and the `current` and
//! `previous` links that say which one is live (DESIGN §4, "Release store").
//!
//! Layout under the root:
//!
//! ```text
//! releases/<id>/                      an unpacked release; read-only once staged
//! releases/<id>.sha256                the artifact digest it was staged from (hex)
//! releases/<id>.sig                   the release's signature (base64), when it came with one
//! releases/.staging-<id>-<nonce>/     an unpack in progress
//! releases/.download-<id>-<nonce>     an artifact being fetched
//! releases/.trash-<id>-<nonce>/       a release being deleted by gc
//! releases/.lock                      serialises commits, link swaps, gc and debris cleanup
//! current  -> releases/<id>           the live release
//! previous -> releases/<id>           the last good release, for fast rollback
//! ```
//!
//! Invariants:
//! - A release is *staged* when both `releases/<id>/` and `releases/<id>.sha256` exist. The
//!   digest file is written first and the directory is renamed into place last, after every
//!   file and directory in it is fsynced, so a staged release is always complete.
//! - `current` and `previous` only ever point at staged releases, and are swapped with a
//!   `rename(2)` of a fresh symlink, so they never dangle and never point at a partial release.
//! - Everything whose name starts with `.` in `releases/` (except `.lock`) is crash debris once
//!   no stage is running, which is why release ids may not start with `.`.
//!
//! What it leaves out: it does not fetch or unpack (see `crate::artifact`), and it trusts that
//! one agent owns a service root; the lock file guards against concurrent tasks or a stray
//! second store instance, not against an operator editing the tree by hand.

mod error;
mod fsops;
mod gc;
mod links;
mod staging;

pub use error::StoreError;

use error::IoContext;
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// The directory under the root that holds releases.
const RELEASES_DIR: &str = "releases";
/// The lock file inside `releases/`; its name starts with `.` so no release id can clash.
const LOCK_FILE: &str = ".lock";
/// The suffix of the digest file next to each release directory.
const SHA256_SUFFIX: &str = ".sha256";
/// The suffix of the signature file next to a release directory.
const SIG_SUFFIX: &str = ".sig";
/// The longest signature file read back (base64 of 64 bytes is 88 characters).
const MAX_SIG_FILE: u64 = 1024;

/// One staged release, as listed by [`ReleaseStore::list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseEntry {
    pub id: String,
    /// When it was committed (the digest file's mtime), in ms since the Unix epoch.
    pub staged_at_ms: u64,
    /// `current` points at it.
    pub current: bool,
    /// `previous` points at it.
    pub previous: bool,
}

/// The release store of one service root. Cloning is cheap (paths only); clones share the
/// on-disk lock.
#[derive(Debug, Clone)]
pub struct ReleaseStore {
    root: PathBuf,
    releases: PathBuf,
    keep_releases: usize,
}

impl ReleaseStore {
    /// Opens (creating if needed) the store at `root`. `keep_releases` bounds what
    /// [`ReleaseStore::gc`] keeps.
    pub fn open(root: &Path, keep_releases: usize) -> Result<Self, StoreError> {
        let releases = root.join(RELEASES_DIR);
        fs::create_dir_all(&releases).ctx(|| format!("create {}", releases.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
            releases,
            keep_releases,
        })
    }

    /// The service root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `releases/`.
    pub fn releases_dir(&self) -> &Path {
        &self.releases
    }

    /// Where release `id` lives once staged (whether or not it is).
    pub fn release_dir(&self, id: &str) -> PathBuf {
        self.releases.join(id)
    }

    fn sha256_path(&self, id: &str) -> PathBuf {
        self.releases.join(format!("{id}{SHA256_SUFFIX}"))
    }

    /// Whether `id` is fully staged: its directory and its digest file both exist.
    pub fn has_release(&self, id: &str) -> bool {
        check_id(id).is_ok()
            && fs::symlink_metadata(self.release_dir(id)).is_ok_and(|m| m.is_dir())
            && fs::symlink_metadata(self.sha256_path(id)).is_ok_and(|m| m.is_file())
    }

    /// The artifact digest (lower-case hex) release `id` was staged from, if it is staged.
    pub fn release_sha256(&self, id: &str) -> Option<String> {
        if !self.has_release(id) {
            return None;
        }
        let text = fs::read_to_string(self.sha256_path(id)).ok()?;
        let hex = text.trim().to_ascii_lowercase();
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
    }

    fn sig_path(&self, id: &str) -> PathBuf {
        self.releases.join(format!("{id}{SIG_SUFFIX}"))
    }

    /// The signature (base64) release `id` was staged or deployed with, if any. Kept so that a
    /// signature can be checked at every use, not only at staging.
    pub fn release_signature(&self, id: &str) -> Option<String> {
        if !self.has_release(id) {
            return None;
        }
        use std::io::Read;
        let mut text = String::new();
        File::open(self.sig_path(id))
            .ok()?
            .take(MAX_SIG_FILE)
            .read_to_string(&mut text)
            .ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_owned())
    }

    /// Records the signature of a staged release (atomically; replaces an earlier one).
    pub fn set_release_signature(&self, id: &str, signature_b64: &str) -> Result<(), StoreError> {
        check_id(id)?;
        let _lock = self.lock()?;
        if !self.has_release(id) {
            return Err(StoreError::NotStaged { id: id.into() });
        }
        fsops::write_atomic(
            &self.sig_path(id),
            format!("{}\n", signature_b64.trim()).as_bytes(),
        )?;
        fsops::fsync_dir(&self.releases)
    }

    /// Every staged release, oldest first. A broken `current` or `previous` link marks no
    /// release (the listing is how an operator investigates one); `current()` reports it.
    pub fn list(&self) -> Result<Vec<ReleaseEntry>, StoreError> {
        let current = self.current().ok().flatten();
        let previous = self.previous().ok().flatten();
        let mut out = Vec::new();
        let dir = fs::read_dir(&self.releases)
            .ctx(|| format!("read directory {}", self.releases.display()))?;
        for entry in dir {
            let entry = entry.ctx(|| format!("read directory {}", self.releases.display()))?;
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !entry.file_type().is_ok_and(|t| t.is_dir()) || !self.has_release(&id) {
                continue;
            }
            let staged_at_ms = fs::metadata(self.sha256_path(&id))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            out.push(ReleaseEntry {
                current: current.as_deref() == Some(id.as_str()),
                previous: previous.as_deref() == Some(id.as_str()),
                id,
                staged_at_ms,
            });
        }
        out.sort_by(|a, b| (a.staged_at_ms, &a.id).cmp(&(b.staged_at_ms, &b.id)));
        Ok(out)
    }

    /// Takes the store lock, blocking until it is free. Held while committing, swapping links,
    /// collecting garbage and cleaning debris, each of which is short.
    fn lock(&self) -> Result<Flock<File>, StoreError> {
        let path = self.releases.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx(|| format!("open lock file {}", path.display()))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| StoreError::io(format!("lock {}", path.display()), errno.into()))
    }
}

/// Checks a release id: the common charset (DESIGN §7), and no leading `.`, which the store
/// reserves for its own temporary names.
pub(crate) fn check_id(id: &str) -> Result<(), StoreError> {
    hotdeploy_common::names::check_release(id).map_err(|e| StoreError::InvalidId {
        id: id.chars().take(80).collect(),
        reason: e.rule.to_string(),
    })?;
    if id.starts_with('.') {
        return Err(StoreError::InvalidId {
            id: id.to_string(),
            reason: "must not start with '.' (reserved for the store's temporary names)".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
