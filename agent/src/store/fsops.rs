//! File-system primitives the store is built from: durable writes, read-only trees, removal of
//! read-only trees, and nonces for temporary names.
//!
//! Durability here means the POSIX recipe: fsync a file's data, then fsync the directory that
//! holds its name. A rename is durable only after its parent directory is fsynced. The walkers
//! never follow symlinks (they use `symlink_metadata`), so a link inside a release can neither
//! make them chmod nor delete anything outside it. Symlinks themselves are not fsynced (Linux
//! cannot open them); fsyncing their directory makes them durable.

use super::error::{IoContext, StoreError};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The write bits (user, group, other) cleared from a staged release.
const WRITE_BITS: u32 = 0o222;

/// The length of [`nonce`]'s output.
pub(crate) const NONCE_LEN: usize = 16;

/// A random suffix for temporary names. 64 bits make a clash between two concurrent writers
/// of the same name vanishingly unlikely; a clash would only fail a `create_new` anyway.
pub(crate) fn nonce() -> String {
    // NONCE_LEN hex digits.
    format!("{:016x}", rand::random::<u64>())
}

/// Fsyncs a directory, making the names created, renamed or removed in it durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("fsync directory {}", dir.display()))
}

/// Writes `contents` to `path` durably and atomically: a temporary file next to it, fsync,
/// rename over `path`, fsync the directory. Readers see the old contents or the new, never a
/// torn file.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!("{name}.tmp-{}", nonce()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .ctx(|| format!("create {}", tmp.display()))?;
        f.write_all(contents)
            .and_then(|()| f.sync_all())
            .ctx(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, path).ctx(|| format!("rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    fsync_dir(parent)
}

/// Fsyncs every regular file and directory under `root` (children before parents), so that
/// a rename of `root` publishes a tree that is entirely on disk.
pub(crate) fn fsync_tree(root: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(root).ctx(|| format!("read directory {}", root.display()))? {
        let entry = entry.ctx(|| format!("read directory {}", root.display()))?;
        let path = entry.path();
        let ty = entry
            .file_type()
            .ctx(|| format!("stat {}", path.display()))?;
        if ty.is_dir() {
            fsync_tree(&path)?;
        } else if ty.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .ctx(|| format!("fsync {}", path.display()))?;
        }
    }
    fsync_dir(root)
}

/// Clears the write bits of every file and directory under `root`, `root` included, children
/// first (a read-only directory could not be walked into for a chmod of its children as a
/// non-root user). Symlinks are skipped: chmod would follow them.
pub(crate) fn make_readonly_tree(root: &Path) -> Result<(), StoreError> {
    set_write_bits(root, false)
}

/// Restores the owner's write bit on every directory under `root`, parents first, so that the
/// tree can be removed by a non-root agent.
fn make_dirs_writable(root: &Path) -> Result<(), StoreError> {
    set_write_bits(root, true)
}

fn set_write_bits(root: &Path, writable: bool) -> Result<(), StoreError> {
    let meta = fs::symlink_metadata(root).ctx(|| format!("stat {}", root.display()))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    let chmod = |mode: u32| {
        fs::set_permissions(root, Permissions::from_mode(mode))
            .ctx(|| format!("chmod {}", root.display()))
    };
    if meta.is_dir() {
        if writable {
            chmod(mode | 0o700)?;
        }
        for entry in fs::read_dir(root).ctx(|| format!("read directory {}", root.display()))? {
            let entry = entry.ctx(|| format!("read directory {}", root.display()))?;
            let path = entry.path();
            if writable {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    set_write_bits(&path, true)?;
                }
            } else {
                set_write_bits(&path, false)?;
            }
        }
        if !writable {
            chmod(mode & !WRITE_BITS)?;
        }
    } else if !writable && meta.is_file() {
        chmod(mode & !WRITE_BITS)?;
    }
    Ok(())
}

/// Removes a tree that may hold read-only directories. A missing tree is not an error.
pub(crate) fn remove_tree(root: &Path) -> Result<(), StoreError> {
    match fs::symlink_metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(format!("stat {}", root.display()), e)),
        Ok(m) if !m.is_dir() => {
            return fs::remove_file(root).ctx(|| format!("remove {}", root.display()));
        }
        Ok(_) => {}
    }
    make_dirs_writable(root)?;
    fs::remove_dir_all(root).ctx(|| format!("remove {}", root.display()))
}
