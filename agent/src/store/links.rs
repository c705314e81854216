//! The `current` and `previous` links: reading them, and swapping them atomically.
//!
//! A link is a symlink in the service root with the relative target `releases/<id>` (relative
//! so that the root can be moved or bind-mounted elsewhere). A swap creates
//! `<name>.tmp-<nonce>`, renames it over `<name>` — `rename(2)` replaces the old link in one
//! step, so a reader resolves either the old release or the new one, never nothing — and then
//! fsyncs the root so the swap survives a crash.
//!
//! Reading is strict: a link that is not a symlink, points anywhere but `releases/<id>`, or
//! points at a release that is not fully staged is an error, never silently "no release".

use super::error::{IoContext, StoreError};
use super::fsops::{fsync_dir, nonce};
use super::{check_id, ReleaseStore, RELEASES_DIR};
use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path};

/// The live release's link.
pub(crate) const CURRENT: &str = "current";
/// The last good release's link.
pub(crate) const PREVIOUS: &str = "previous";

impl ReleaseStore {
    /// The id `current` points at, or `None` when there is no `current` yet.
    pub fn current(&self) -> Result<Option<String>, StoreError> {
        self.read_link(CURRENT)
    }

    /// The id `previous` points at, or `None` when there is no `previous` yet.
    pub fn previous(&self) -> Result<Option<String>, StoreError> {
        self.read_link(PREVIOUS)
    }

    /// Points `current` at `id` atomically. Refuses an id that is not fully staged.
    pub fn set_current(&self, id: &str) -> Result<(), StoreError> {
        self.swap_link(CURRENT, id)
    }

    /// Points `previous` at `id` atomically. Refuses an id that is not fully staged.
    pub fn set_previous(&self, id: &str) -> Result<(), StoreError> {
        self.swap_link(PREVIOUS, id)
    }

    fn read_link(&self, name: &'static str) -> Result<Option<String>, StoreError> {
        let path = self.root.join(name);
        let target = match fs::read_link(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == ErrorKind::InvalidInput => {
                return Err(StoreError::BadLink {
                    link: name,
                    found: "not a symlink".into(),
                });
            }
            Err(e) => return Err(StoreError::io(format!("read link {}", path.display()), e)),
        };
        let id = link_id(&target).ok_or_else(|| StoreError::BadLink {
            link: name,
            found: target.display().to_string(),
        })?;
        if !self.has_release(&id) {
            return Err(StoreError::Dangling { link: name, target });
        }
        Ok(Some(id))
    }

    fn swap_link(&self, name: &'static str, id: &str) -> Result<(), StoreError> {
        check_id(id)?;
        // The lock keeps gc from removing `id` between the check and the rename.
        let _lock = self.lock()?;
        if !self.has_release(id) {
            return Err(StoreError::NotStaged { id: id.into() });
        }
        let link = self.root.join(name);
        let tmp = self.root.join(format!("{name}.tmp-{}", nonce()));
        let target = Path::new(RELEASES_DIR).join(id);
        std::os::unix::fs::symlink(&target, &tmp)
            .ctx(|| format!("create symlink {}", tmp.display()))?;
        if let Err(e) = fs::rename(&tmp, &link) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io(
                format!("rename {} over {}", tmp.display(), link.display()),
                e,
            ));
        }
        fsync_dir(&self.root)?;
        tracing::info!(link = name, release = id, "release link swapped");
        Ok(())
    }
}

/// The id in a link target of the exact form `releases/<id>`.
fn link_id(target: &Path) -> Option<String> {
    let mut parts = target.components();
    let (Some(Component::Normal(dir)), Some(Component::Normal(id)), None) =
        (parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let id = id.to_str()?;
    (dir == RELEASES_DIR && check_id(id).is_ok()).then(|| id.to_string())
}
