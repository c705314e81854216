//! Making sled's writes durable: `fdatasync`/`fsync` of every file sled 0.34 wrote.
//!
//! # Why sled's own flush is not enough
//!
//! sled 0.34 (`Db::flush`) writes its log buffers to the file `db` with `pwrite` and then calls
//! `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on the written range
//! (`pagecache/iobuf.rs`, `IoBufs::write_to_log`). That call starts and waits for the write-out
//! of those pages, and nothing more:
//!
//! - it issues no cache flush, so the data may sit in the disk's volatile write cache;
//! - it writes no metadata: when the write extends the file (sled's log grows a segment at a
//!   time), the new file size is not journaled, and after a power loss the file can end before
//!   the data that was "flushed".
//!
//! Other files sled writes get less:
//!
//! - **blobs**: a page larger than a quarter segment (about 128 KiB; a snapshot payload, a big
//!   node) is written to its own file `blobs/<lsn>` with plain `write`s, never synced, in a
//!   directory that is never synced (`pagecache/blob_io.rs`, `write_blob`). The log holds only a
//!   pointer to it. If the blob is lost, recovery logs a "dangling blob pointer" and skips the
//!   page: the write is silently gone (`pagecache/iterator.rs`).
//! - **`conf`**: written once when the database is created, never synced; nor is the directory
//!   that holds it (`config.rs`, `write_config`), nor `blobs/` when it is created.
//! - **`snap.<lsn>`**: sled's own page-table snapshot is written to `snap.<lsn>.generating`,
//!   `sync_all`ed, renamed into place, and the older ones deleted, without syncing the directory
//!   (`pagecache/snapshot.rs`, `write_snapshot`).
//! - sled's flusher thread calls `sync_all` on `db` every 500 ms (`flusher.rs`): real, but
//!   after the Ready has already been acknowledged.
//!
//! Raft's safety needs an acknowledged entry, vote or term to survive a power loss, as etcd's
//! WAL does with `fdatasync`. So after every `Db::flush` that must be durable,
//! [`SledFiles::sync`] makes it so:
//!
//! 1. every blob file that appeared since the last sync is `fdatasync`ed, and then, if the set of
//!    blobs changed, the `blobs/` directory is `fsync`ed;
//! 2. every other new file at the top of the database directory (`conf`, `snap.*`) is
//!    `fdatasync`ed, and then, if the listing changed, the directory itself is `fsync`ed;
//! 3. `db` is `fdatasync`ed: a cache flush, and the file size when it grew.
//!
//! Blobs come first so that a log record that points at a blob is never durable before the blob.
//! Finding new files costs two directory listings per sync (a few microseconds; both
//! directories hold a handful of entries), which is far cheaper than an `fsync` per file, and
//! needs no hook into sled. A file is known by its name *and length*: sled's flusher thread may
//! be writing a blob (while it relocates pages) at the moment of a listing, and a blob that grew
//! since it was synced is synced again. A blob that sled deletes between the listing and its
//! sync is skipped: sled deletes only blobs no page references any more.
//!
//! At [`SledFiles::open`] every file present is synced once, together with the database
//! directory, the data dir that holds it and the data dir's parent: sled may just have created
//! them, and a crash of an earlier run may have left writes unsynced.
//!
//! # What it leaves out
//!
//! - Deleted files: sled deletes blobs and old snapshots that nothing references; a deletion lost
//!   in a crash leaves a stray file, never lost data. A listing change caused by a deletion still
//!   syncs the directory, but nothing waits for a deletion.
//! - `syncfs`: it would flush every other writer on the file system too.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// sled's log file, inside the database directory.
const LOG_FILE: &str = "db";
/// sled's blob directory, inside the database directory.
const BLOB_DIR: &str = "blobs";

/// How many sync calls the raft storage made, by kind. Cumulative since the storage was opened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncCounts {
    /// Durable storage writes (each one sync of sled's files).
    pub syncs: u64,
    /// `fdatasync` of sled's log file `db`.
    pub log_fdatasyncs: u64,
    /// `fdatasync` of other files (blobs, `conf`, `snap.*`).
    pub file_fdatasyncs: u64,
    /// `fsync` of a directory.
    pub dir_fsyncs: u64,
}

/// An I/O error while syncing, with the path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct SyncError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The files of one sled database and what of them is known to be durable.
#[derive(Debug)]
pub(crate) struct SledFiles {
    dir: PathBuf,
    log: File,
    /// Names and lengths in `blobs/` already synced.
    blobs: Listing,
    /// Names and lengths at the top of `dir` already synced (files) or seen (directories).
    top: Listing,
    counts: SyncCounts,
    /// Every file this instance synced, for tests that check nothing was missed.
    #[cfg(test)]
    synced: std::collections::BTreeSet<PathBuf>,
}

impl SledFiles {
    /// Takes over the sled database in `dir` (already opened by sled, so its files exist) and
    /// syncs everything in it once, plus `dir`'s parent and grandparent directories.
    pub(crate) fn open(dir: &Path) -> Result<Self, SyncError> {
        let log_path = dir.join(LOG_FILE);
        let log = File::open(&log_path).map_err(|source| SyncError {
            what: "cannot open sled's log file",
            path: log_path,
            source,
        })?;
        let mut files = SledFiles {
            dir: dir.to_path_buf(),
            log,
            blobs: Listing::new(),
            top: Listing::new(),
            counts: SyncCounts::default(),
            #[cfg(test)]
            synced: std::collections::BTreeSet::new(),
        };
        files.sync()?;
        // sled may just have created `dir` (and the caller its data dir).
        for ancestor in dir.ancestors().skip(1).take(2) {
            if ancestor.as_os_str().is_empty() {
                break;
            }
            files.sync_dir(ancestor)?;
        }
        Ok(files)
    }

    /// Makes everything sled has written so far durable (see the module docs). Call it right
    /// after `Db::flush` returned.
    pub(crate) fn sync(&mut self) -> Result<(), SyncError> {
        self.counts.syncs += 1;
        let blob_dir = self.dir.join(BLOB_DIR);
        let blobs = list(&blob_dir)?;
        if blobs != self.blobs {
            for (name, _) in changed(&blobs, &self.blobs) {
                self.sync_file(&blob_dir.join(&name))?;
            }
            if names_differ(&blobs, &self.blobs) {
                self.sync_dir(&blob_dir)?;
            }
            self.blobs = blobs;
        }

        let top = list(&self.dir)?;
        if top != self.top {
            let dir = self.dir.clone();
            for (name, len) in changed(&top, &self.top) {
                // `db` is synced below; a directory (`blobs`) only needs its entry in `dir`.
                if name != LOG_FILE && len.is_some() {
                    self.sync_file(&dir.join(&name))?;
                }
            }
            if names_differ(&top, &self.top) {
                self.sync_dir(&dir)?;
            }
            self.top = top;
        }

        self.log.sync_data().map_err(|source| SyncError {
            what: "cannot fdatasync",
            path: self.dir.join(LOG_FILE),
            source,
        })?;
        self.counts.log_fdatasyncs += 1;
        #[cfg(test)]
        self.synced.insert(self.dir.join(LOG_FILE));
        Ok(())
    }

    pub(crate) fn counts(&self) -> SyncCounts {
        self.counts
    }

    /// Every file synced so far (tests only).
    #[cfg(test)]
    pub(crate) fn synced(&self) -> &std::collections::BTreeSet<PathBuf> {
        &self.synced
    }

    /// `fdatasync`s a file; one that vanished in the meantime is skipped (sled deletes only what
    /// nothing references any more).
    fn sync_file(&mut self, path: &Path) -> Result<(), SyncError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(SyncError {
                    what: "cannot open for fdatasync",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        file.sync_data().map_err(|source| SyncError {
            what: "cannot fdatasync",
            path: path.to_path_buf(),
            source,
        })?;
        self.counts.file_fdatasyncs += 1;
        #[cfg(test)]
        self.synced.insert(path.to_path_buf());
        Ok(())
    }

    fn sync_dir(&mut self, path: &Path) -> Result<(), SyncError> {
        File::open(path)
            .and_then(|d| d.sync_all())
            .map_err(|source| SyncError {
                what: "cannot fsync directory",
                path: path.to_path_buf(),
                source,
            })?;
        self.counts.dir_fsyncs += 1;
        #[cfg(test)]
        self.synced.insert(path.to_path_buf());
        Ok(())
    }
}

/// A directory's entries: name, and length for a regular file (`None` for anything else).
type Listing = BTreeMap<OsString, Option<u64>>;

/// The entries of a directory. An entry that vanishes while it is listed is left out.
fn list(dir: &Path) -> Result<Listing, SyncError> {
    let err = |source| SyncError {
        what: "cannot list",
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Listing::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(e)),
        };
        names.insert(entry.file_name(), meta.is_file().then_some(meta.len()));
    }
    Ok(names)
}

/// Entries of `now` that are new or changed length since `before`.
fn changed(now: &Listing, before: &Listing) -> Vec<(OsString, Option<u64>)> {
    now.iter()
        .filter(|(name, len)| before.get(*name) != Some(len))
        .map(|(name, len)| (name.clone(), *len))
        .collect()
}

/// Whether an entry was created or removed (what a directory fsync makes durable).
fn names_differ(a: &Listing, b: &Listing) -> bool {
    a.len() != b.len() || a.keys().zip(b.keys()).any(|(x, y)| x != y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn fake_db(dir: &Path) {
        std::fs::create_dir_all(dir.join(BLOB_DIR)).unwrap();
        std::fs::write(dir.join(LOG_FILE), b"log").unwrap();
    }

    /// A blob seen half-written (sled's flusher thread may write one while a listing runs) is
    /// synced again once it has grown; an unchanged one is not synced twice.
    #[test]
    fn a_blob_that_grows_after_its_sync_is_synced_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("raft");
        fake_db(&dir);
        let mut files = SledFiles::open(&dir).unwrap();
        let blob = dir.join(BLOB_DIR).join("4096");
        let mut f = std::fs::File::create(&blob).unwrap();
        f.write_all(b"half").unwrap();

        let c0 = files.counts();
        files.sync().unwrap();
        let c1 = files.counts();
        assert_eq!(c1.file_fdatasyncs - c0.file_fdatasyncs, 1, "new blob");
        assert_eq!(c1.dir_fsyncs - c0.dir_fsyncs, 1, "blobs/ names a new file");

        files.sync().unwrap();
        let c2 = files.counts();
        assert_eq!(c2.file_fdatasyncs, c1.file_fdatasyncs, "nothing changed");
        assert_eq!(c2.dir_fsyncs, c1.dir_fsyncs, "nothing changed");
        assert_eq!(c2.log_fdatasyncs - c1.log_fdatasyncs, 1, "the log, always");

        f.write_all(b" and the rest").unwrap();
        files.sync().unwrap();
        let c3 = files.counts();
        assert_eq!(c3.file_fdatasyncs - c2.file_fdatasyncs, 1, "the grown blob");
        assert_eq!(
            c3.dir_fsyncs, c2.dir_fsyncs,
            "same names: no directory sync"
        );

        std::fs::remove_file(&blob).unwrap();
        files.sync().unwrap();
        assert_eq!(files.counts().dir_fsyncs - c3.dir_fsyncs, 1, "a removal");
    }

    /// New files at the top (sled's `snap.*`) are synced, and so is the directory.
    #[test]
    fn a_new_top_level_file_and_its_directory_are_synced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("raft");
        fake_db(&dir);
        let mut files = SledFiles::open(&dir).unwrap();
        let snap = dir.join("snap.0000000000001000");
        std::fs::write(&snap, b"pagetable").unwrap();
        files.sync().unwrap();
        assert!(files.synced().contains(&snap));
        assert!(files.synced().contains(&dir));
    }
}
