//! Unpacking an untrusted archive into a staging directory, refusing anything that could
//! write outside it or exhaust the disk.
//!
//! The format is detected from magic bytes, never from a URL or file name: gzip (`1f 8b`),
//! zstd (`28 b5 2f fd`), or a plain tar (`ustar` at offset 257). Entries are then written one
//! by one by this module; `tar::Archive::unpack` is not used, because its safety rules are not
//! ours to choose.
//!
//! Rules, each checked before anything is written:
//! - Entry paths are relative with no `..`; `.` components are dropped.
//! - Every directory on the way to an entry must be a real directory (checked with
//!   `symlink_metadata`): a symlink planted by an earlier entry (`link -> /etc`, then
//!   `link/passwd`) is never followed. Files are created with `O_EXCL`, so a final component
//!   that is a symlink is never followed either; a duplicate entry replaces the earlier file or
//!   link, but never a directory.
//! - Symlink targets are relative and may only *start* with `..` components, no more of them
//!   than the link's depth below the root; the rest are plain names. By induction every link
//!   then resolves inside the root, even through other links, since a `..` only ever applies
//!   to a real directory. (`a/../b` is refused even though it looks harmless: `a` could be a
//!   link.)
//! - Hard links name an archive path (same rules as entry paths) that must already be a
//!   regular file in the staging tree; a hard link to a symlink would re-root it.
//! - Device, fifo, sparse and unknown entry types are refused.
//! - Sizes: every entry's header size (its data, even for types whose data is skipped) plus a
//!   fixed per-entry charge counts against `max_bytes`; an entry that would pass the limit is
//!   refused before it is written, and written bytes are counted again as they land.
//! - Metadata: the tar crate reads an entry's GNU long name and long link, its pax extended
//!   header and its sparse extension blocks into memory, whole, before it hands the entry over,
//!   and none of them is an entry of its own. So the decoded stream is metered: past the end of
//!   one entry's data, at most [`MAX_ENTRY_METADATA`] bytes (plus the next header) may be read
//!   before the next entry arrives, or the archive is refused as too large; and what was read
//!   is charged against `max_bytes` like the entries. (Unmetered, a 100 KB zstd artifact with a
//!   3 GiB long name made the agent allocate gigabytes, whatever `max_bytes` said.)
//!
//! Kept: the executable bit (files become 0755 or 0644; directories 0755). Dropped: owners,
//! other mode bits, mtimes, xattrs. Left out: old v7 tar archives without the `ustar` magic.

use super::error::ArtifactError;
use std::cell::Cell;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use tar::EntryType;

/// Charged to the size budget per entry (a tar header's size), so that millions of empty files
/// cannot get past a limit meant to bound disk use (inodes included).
const ENTRY_OVERHEAD: u64 = 512;
/// The buffer file data is copied through.
const COPY_BUF: usize = 128 * 1024;
/// How much of the stream is read ahead to detect the format: one tar header block.
const SNIFF_LEN: usize = 512;
/// The most metadata (long names and links, pax headers, sparse maps) one entry may bring. Real
/// archives need a few KiB at most (PATH_MAX is 4 KiB); a MiB leaves room for large xattrs.
pub const MAX_ENTRY_METADATA: u64 = 1 << 20;
/// A tar block: headers are one, data is padded to a multiple.
const BLOCK: u64 = 512;
/// How much of an entry path error messages show.
const SHOWN_PATH_CHARS: usize = 256;
/// Where a ustar/GNU tar header holds its magic.
const USTAR_MAGIC_AT: usize = 257;
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const USTAR_MAGIC: &[u8] = b"ustar";
/// Mode of unpacked files with (and without) an executable bit in the archive.
const EXEC_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;
/// Mode of unpacked directories (the store clears write bits on commit).
const DIR_MODE: u32 = 0o755;

/// The container formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Tar,
    TarGz,
    TarZst,
}

/// What an unpack wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    /// File data bytes written.
    pub bytes: u64,
}

/// Detects the format from the first bytes of an artifact.
pub fn detect(head: &[u8]) -> Result<Format, ArtifactError> {
    if head.starts_with(GZIP_MAGIC) {
        Ok(Format::TarGz)
    } else if head.starts_with(ZSTD_MAGIC) {
        Ok(Format::TarZst)
    } else if head.get(USTAR_MAGIC_AT..USTAR_MAGIC_AT + USTAR_MAGIC.len()) == Some(USTAR_MAGIC) {
        Ok(Format::Tar)
    } else {
        Err(ArtifactError::format(
            "not a .tar, .tar.gz or .tar.zst archive (unrecognized magic bytes)",
        ))
    }
}

/// Unpacks the archive read from `reader` into `dest`, an existing empty directory, writing at
/// most `max_bytes`. On error, `dest` may hold a partial tree for the caller to remove; nothing
/// outside it has been touched.
pub fn unpack(
    mut reader: impl Read,
    dest: &Path,
    max_bytes: u64,
) -> Result<UnpackStats, ArtifactError> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    (&mut reader)
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| ArtifactError::io("read artifact", e))?;
    let format = detect(&head)?;
    let stream = Cursor::new(head).chain(reader);
    let decoded: Box<dyn Read + '_> = match format {
        Format::Tar => Box::new(stream),
        Format::TarGz => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Format::TarZst => Box::new(
            zstd::stream::read::Decoder::new(stream)
                .map_err(|e| ArtifactError::format(format!("zstd: {e}")))?,
        ),
    };
    let meter = Rc::new(Meter {
        pos: Cell::new(0),
        allowed: Cell::new(BLOCK + MAX_ENTRY_METADATA),
        tripped: Cell::new(false),
    });
    Unpacker {
        dest,
        limit: max_bytes,
        used: 0,
        stats: UnpackStats::default(),
        buf: vec![0; COPY_BUF],
    }
    .run(
        Metered {
            inner: decoded,
            meter: meter.clone(),
        },
        &meter,
    )
}

/// How far the tar reader has got in the decoded stream, and how far it may go.
struct Meter {
    /// Decoded bytes handed to the tar reader so far.
    pos: Cell<u64>,
    /// Reading past this position fails.
    allowed: Cell<u64>,
    /// Whether a read failed for that reason.
    tripped: Cell<bool>,
}

/// The decoded stream, read under a [`Meter`]. The tar reader reads exactly what it needs (a
/// header, an entry's data, the padding it skips), so `pos` is its position in the archive.
struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = &self.meter;
        let room = m.allowed.get().saturating_sub(m.pos.get());
        if room == 0 && !buf.is_empty() {
            m.tripped.set(true);
            return Err(io::Error::other(
                "archive metadata before an entry exceeds its limit",
            ));
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        m.pos.set(m.pos.get() + n as u64);
        Ok(n)
    }
}

struct Unpacker<'a> {
    dest: &'a Path,
    limit: u64,
    used: u64,
    stats: UnpackStats,
    /// The copy buffer for file data, [`COPY_BUF`] bytes, reused for every entry.
    buf: Vec<u8>,
}

impl Unpacker<'_> {
    fn run(mut self, decoded: impl Read, meter: &Meter) -> Result<UnpackStats, ArtifactError> {
        let mut archive = tar::Archive::new(decoded);
        let tar_err = |e: io::Error| {
            if meter.tripped.get() {
                ArtifactError::TooLarge {
                    what: "the metadata (long names, pax headers) of one archive entry".into(),
                    limit: MAX_ENTRY_METADATA,
                }
            } else {
                ArtifactError::format(format!("tar: {e}"))
            }
        };
        let entries = archive.entries().map_err(tar_err)?;
        let mut seen = 0u64;
        // Where the previous entry's (padded) data ended.
        let mut prev_end = 0u64;
        for entry in entries {
            let entry = entry.map_err(tar_err)?;
            seen += 1;
            let metadata = entry.raw_header_position().saturating_sub(prev_end);
            if metadata > 0 {
                let at = shown_path(&entry.path_bytes());
                self.charge(
                    || format!("the unpacked archive (at the metadata of entry {at:?})"),
                    metadata,
                )?;
            }
            prev_end = entry
                .raw_file_position()
                .saturating_add(entry.size().div_ceil(BLOCK).saturating_mul(BLOCK));
            meter
                .allowed
                .set(prev_end.saturating_add(BLOCK + MAX_ENTRY_METADATA));
            self.entry(entry)?;
        }
        if seen == 0 {
            return Err(ArtifactError::format("the archive has no entries"));
        }
        Ok(self.stats)
    }

    fn charge(&mut self, what: impl FnOnce() -> String, bytes: u64) -> Result<(), ArtifactError> {
        match self.used.checked_add(bytes) {
            Some(total) if total <= self.limit => {
                self.used = total;
                Ok(())
            }
            _ => Err(ArtifactError::TooLarge {
                what: what(),
                limit: self.limit,
            }),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ArtifactError> {
        let shown = shown_path(&entry.path_bytes());
        let size = entry.size();
        let ty = entry.header().entry_type();
        let limit = self.limit;
        self.charge(
            || {
                if size > limit {
                    format!("archive entry {shown:?} ({size} bytes)")
                } else {
                    format!("the unpacked archive (at entry {shown:?})")
                }
            },
            size.saturating_add(ENTRY_OVERHEAD),
        )?;

        match ty {
            EntryType::XGlobalHeader => return Ok(()),
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(ArtifactError::unsafe_entry(
                    shown,
                    "device and fifo entries are not allowed",
                ));
            }
            EntryType::GNUSparse => {
                return Err(ArtifactError::format(format!(
                    "entry {shown:?}: sparse files are not supported"
                )));
            }
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link => {}
            other => {
                return Err(ArtifactError::unsafe_entry(
                    shown,
                    format!("unsupported entry type {:?}", other.as_byte() as char),
                ));
            }
        }

        let raw_path = entry
            .path()
            .map_err(|e| ArtifactError::format(format!("entry {shown:?}: {e}")))?
            .into_owned();
        let rel = archive_path(&raw_path).map_err(|r| ArtifactError::unsafe_entry(&shown, r))?;
        if rel.as_os_str().is_empty() {
            // `./` itself: the root exists already; anything else with no name is nonsense.
            return if ty == EntryType::Directory {
                Ok(())
            } else {
                Err(ArtifactError::unsafe_entry(shown, "empty path"))
            };
        }
        self.ensure_parents(&rel, &shown)?;
        let target = self.dest.join(&rel);
        let is_dir = self.clear_final(&target, ty == EntryType::Directory, &shown)?;

        match ty {
            EntryType::Directory => {
                if !is_dir {
                    DirBuilder::new()
                        .mode(DIR_MODE)
                        .create(&target)
                        .map_err(|e| io_err("create directory", &target, e))?;
                    self.stats.dirs += 1;
                }
            }
            EntryType::Symlink => {
                let link = link_target(&entry, &shown)?;
                symlink_target_ok(&rel, &link)
                    .map_err(|r| ArtifactError::unsafe_entry(&shown, r))?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|e| io_err("create symlink", &target, e))?;
                self.stats.links += 1;
            }
            EntryType::Link => {
                let link = link_target(&entry, &shown)?;
                let src = self.hardlink_source(&rel, &link, &shown)?;
                fs::hard_link(&src, &target).map_err(|e| io_err("create hard link", &target, e))?;
                self.stats.links += 1;
            }
            _ => {
                let exec = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(if exec { EXEC_MODE } else { FILE_MODE })
                    .open(&target)
                    .map_err(|e| io_err("create", &target, e))?;
                let written = copy_bounded(&mut entry, &mut out, size, &mut self.buf)
                    .map_err(|e| io_err("write", &target, e))?;
                if written != size {
                    return Err(ArtifactError::format(format!(
                        "entry {shown:?}: {written} bytes of data, header says {size}"
                    )));
                }
                self.stats.files += 1;
                self.stats.bytes += written;
            }
        }
        Ok(())
    }

    /// Walks (creating as needed) the directories above `rel`, refusing any that is not a real
    /// directory.
    fn ensure_parents(&mut self, rel: &Path, shown: &str) -> Result<(), ArtifactError> {
        let mut cur = self.dest.to_path_buf();
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        for comp in parent.components() {
            cur.push(comp);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(m) => {
                    let what = if m.file_type().is_symlink() {
                        "a symlink"
                    } else {
                        "not a directory"
                    };
                    return Err(ArtifactError::unsafe_entry(
                        shown,
                        format!("its parent {} is {what}", display_rel(self.dest, &cur)),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    DirBuilder::new()
                        .mode(DIR_MODE)
                        .create(&cur)
                        .map_err(|e| io_err("create directory", &cur, e))?;
                    self.stats.dirs += 1;
                }
                Err(e) => return Err(io_err("stat", &cur, e)),
            }
        }
        Ok(())
    }

    /// Makes room for a new entry at `target`: removes an earlier file or link there (never
    /// following it). Returns whether a real directory is already there, which only a
    /// directory entry may meet.
    fn clear_final(
        &self,
        target: &Path,
        entry_is_dir: bool,
        shown: &str,
    ) -> Result<bool, ArtifactError> {
        match fs::symlink_metadata(target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("stat", target, e)),
            Ok(m) if m.is_dir() => {
                if entry_is_dir {
                    Ok(true)
                } else {
                    Err(ArtifactError::unsafe_entry(
                        shown,
                        "would replace a directory",
                    ))
                }
            }
            Ok(_) => {
                fs::remove_file(target).map_err(|e| io_err("replace", target, e))?;
                Ok(false)
            }
        }
    }

    /// The existing regular file a hard link entry points at.
    fn hardlink_source(
        &self,
        rel: &Path,
        link: &Path,
        shown: &str,
    ) -> Result<PathBuf, ArtifactError> {
        let unsafe_link = |r: String| {
            ArtifactError::unsafe_entry(shown, format!("hard link to {}: {r}", link.display()))
        };
        let src_rel = archive_path(link).map_err(unsafe_link)?;
        if src_rel.as_os_str().is_empty() || src_rel == rel {
            return Err(unsafe_link("not a file in the archive".into()));
        }
        let mut cur = self.dest.to_path_buf();
        let count = src_rel.components().count();
        for (i, comp) in src_rel.components().enumerate() {
            cur.push(comp);
            let meta = fs::symlink_metadata(&cur)
                .map_err(|_| unsafe_link("no such file earlier in the archive".into()))?;
            if i + 1 == count {
                if !meta.is_file() {
                    return Err(unsafe_link("not a regular file".into()));
                }
            } else if !meta.is_dir() {
                return Err(unsafe_link(
                    "goes through something that is not a directory".into(),
                ));
            }
        }
        Ok(cur)
    }
}

/// Normalises an archive path: relative, no `..`, `.` dropped.
fn archive_path(raw: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for comp in raw.components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains '..'".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute path".into());
            }
        }
    }
    Ok(out)
}

/// Checks a symlink target (see the module docs): relative, only leading `..`, no more of
/// them than the link's depth.
fn symlink_target_ok(rel: &Path, target: &Path) -> Result<(), String> {
    if target.as_os_str().is_empty() {
        return Err("symlink with an empty target".into());
    }
    let depth = rel.parent().map_or(0, |p| p.components().count());
    let mut ups = 0usize;
    let mut seen_name = false;
    for comp in target.components() {
        match comp {
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("symlink to absolute path {}", target.display()));
            }
            Component::CurDir => {}
            Component::ParentDir if seen_name => {
                return Err(format!(
                    "symlink target {} has '..' after a name (it could traverse another link)",
                    target.display()
                ));
            }
            Component::ParentDir => {
                ups += 1;
                if ups > depth {
                    return Err(format!(
                        "symlink target {} escapes the release",
                        target.display()
                    ));
                }
            }
            Component::Normal(_) => seen_name = true,
        }
    }
    Ok(())
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, shown: &str) -> Result<PathBuf, ArtifactError> {
    entry
        .link_name()
        .map_err(|e| ArtifactError::format(format!("entry {shown:?}: {e}")))?
        .map(|p| p.into_owned())
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| ArtifactError::unsafe_entry(shown, "link with an empty target"))
}

/// Copies at most `limit` bytes (an entry's reader stops at its size anyway; this makes the
/// bound independent of that), through `buf`: `io::copy`'s 8 KiB stack buffer made one
/// `write(2)` (and one trip through the decompressor) per 8 KiB of release data.
fn copy_bounded(
    src: &mut impl Read,
    dst: &mut impl Write,
    limit: u64,
    buf: &mut [u8],
) -> io::Result<u64> {
    let mut src = src.take(limit);
    let mut total = 0u64;
    loop {
        let n = match src.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// An entry path as error messages show it: lossy UTF-8, cut to [`SHOWN_PATH_CHARS`], so that
/// a hostile name cannot blow up a log line or a gRPC status.
fn shown_path(raw: &[u8]) -> String {
    let full = String::from_utf8_lossy(raw);
    if full.chars().count() <= SHOWN_PATH_CHARS {
        return full.into_owned();
    }
    let mut cut: String = full.chars().take(SHOWN_PATH_CHARS).collect();
    cut.push('…');
    cut
}

fn io_err(what: &str, path: &Path, e: io::Error) -> ArtifactError {
    ArtifactError::io(
        format!("{what} {}", shown_path(path.as_os_str().as_bytes())),
        e,
    )
}

fn display_rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}
