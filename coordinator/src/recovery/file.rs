//! The snapshot file `hotdeployctl snapshot save FILE` writes and `hotdeploy-coordinator
//! restore --from FILE` reads.
//!
//! Layout: one line naming the file and its format, one line of JSON header, then the state
//! exactly as the leader serialized it (the state machine's own snapshot format):
//!
//! ```text
//! hotdeploy-snapshot 1
//! {"format":1,"cluster_id":"9f2c…","index":4711,"term":5,"taken_at_ms":…,"taken_at":"2025-…Z",
//!  "node":2,"state_format":1,"command_format":2,"length":183211,"sha256":"…"}
//! <length bytes of state>
//! ```
//!
//! The first line lets anyone (and `file`, `head -2`) tell what the file is; the header names
//! the cluster, the raft index and term the state is at, the time it was taken, and the length
//! and sha256 of the state, so a truncated or damaged file is refused by name rather than
//! restored half. The state stays the leader's own bytes: what is restored is exactly what was
//! replicated.
//!
//! Writing is atomic: a temporary file next to the target, created with mode 0600 (the state
//! holds host names, addresses and the audit trail), written, fsynced, renamed over the target,
//! and the directory fsynced. A crash leaves the old file or the new one, never a mix.
//!
//! Left out: compression and encryption (pipe the file through your tools of choice), and
//! reading a file bigger than [`MAX_FILE_BYTES`].

use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The first line's word.
const MAGIC: &str = "hotdeploy-snapshot";
/// The file format this binary writes and reads.
pub const FILE_FORMAT: u32 = 1;
/// The largest snapshot file read (a state of 10,000 hosts is a few MB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// The longest first line or header accepted.
const MAX_LINE: usize = 64 << 10;

/// What the header says about the state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    /// The file format (the same as the first line's).
    pub format: u32,
    /// The cluster id, 16 hex digits.
    pub cluster_id: String,
    /// The raft index of the last entry the state includes.
    pub index: u64,
    /// The leader's raft term when it read the state.
    pub term: u64,
    /// When, Unix ms (and the same in RFC 3339, for people).
    pub taken_at_ms: u64,
    pub taken_at: String,
    /// The leader that read it.
    pub node: u64,
    /// The state machine's snapshot format.
    pub state_format: u32,
    /// The newest command format version whose entries made the state.
    pub command_format: u32,
    /// The length and sha256 (hex) of the state that follows.
    pub length: u64,
    pub sha256: String,
}

/// A snapshot file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub header: Header,
    pub state: Vec<u8>,
}

/// Why a snapshot file cannot be read or written.
#[derive(Debug, Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes; a snapshot file may be at most {MAX_FILE_BYTES} bytes")]
    TooBig { path: PathBuf, size: u64 },
    #[error(
        "not a hotdeploy snapshot file: it does not start with \"{MAGIC} <format>\" (write one \
         with `hotdeployctl snapshot save FILE`)"
    )]
    NotASnapshot,
    #[error(
        "snapshot file format {0} is unknown: this coordinator reads format {FILE_FORMAT}; \
         restore with the version of hotdeploy that wrote it, or a newer one"
    )]
    UnknownFormat(String),
    #[error("the snapshot file's header is damaged: {0}")]
    BadHeader(String),
    #[error(
        "the snapshot file is truncated: its header announces {expected} bytes of state, and \
         {got} follow"
    )]
    Truncated { expected: u64, got: u64 },
    #[error(
        "the snapshot file has {extra} bytes after the {expected} bytes of state its header \
         announces: it is damaged"
    )]
    TrailingBytes { expected: u64, extra: u64 },
    #[error(
        "the snapshot file is corrupt: the state's sha256 is {actual}, its header says {expected}"
    )]
    Corrupt { expected: String, actual: String },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

impl SnapshotFile {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_string(&self.header).unwrap_or_default();
        let mut out = format!("{MAGIC} {FILE_FORMAT}\n{header}\n").into_bytes();
        out.extend_from_slice(&self.state);
        out
    }

    /// Parses and checks a file's bytes: its name and format, its header, and the state's
    /// length and sha256. (The state itself is checked when it is restored.)
    pub fn decode(bytes: &[u8]) -> Result<Self, FileError> {
        let (first, rest) = line(bytes).ok_or(FileError::NotASnapshot)?;
        let format = match first.split_once(' ') {
            Some((MAGIC, format)) => format,
            _ => return Err(FileError::NotASnapshot),
        };
        if format != FILE_FORMAT.to_string() {
            return Err(FileError::UnknownFormat(format.chars().take(32).collect()));
        }
        let (header, state) = line(rest)
            .ok_or_else(|| FileError::BadHeader("the header line is missing or too long".into()))?;
        let header: Header =
            serde_json::from_str(header).map_err(|e| FileError::BadHeader(e.to_string()))?;
        if header.format != FILE_FORMAT {
            return Err(FileError::BadHeader(format!(
                "it names format {}, the first line {FILE_FORMAT}",
                header.format
            )));
        }
        let got = state.len() as u64;
        if got < header.length {
            return Err(FileError::Truncated {
                expected: header.length,
                got,
            });
        }
        if got > header.length {
            return Err(FileError::TrailingBytes {
                expected: header.length,
                extra: got - header.length,
            });
        }
        let actual = sha256_hex(state);
        if !actual.eq_ignore_ascii_case(&header.sha256) {
            return Err(FileError::Corrupt {
                expected: header.sha256.clone(),
                actual,
            });
        }
        Ok(Self {
            header,
            state: state.to_vec(),
        })
    }

    /// Reads and checks the file at `path`.
    pub fn read(path: &Path) -> Result<Self, FileError> {
        let io = |source| FileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_FILE_BYTES {
            return Err(FileError::TooBig {
                path: path.to_path_buf(),
                size,
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::decode(&bytes)
    }

    /// Writes the file to `path` atomically, mode 0600 (module docs).
    pub fn write(&self, path: &Path) -> Result<(), FileError> {
        write_atomically(path, &self.encode())
    }
}

/// The first line of `bytes` (without its newline) and what follows, if there is a newline
/// within [`MAX_LINE`] bytes and the line is UTF-8.
fn line(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = bytes.iter().take(MAX_LINE).position(|b| *b == b'\n')?;
    let text = std::str::from_utf8(&bytes[..end]).ok()?;
    Some((text, &bytes[end + 1..]))
}

/// Writes `bytes` to `path` through a temporary file in the same directory (mode 0600),
/// fsynced and renamed into place; then fsyncs the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let io = |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a file name",
            ))
        })?;
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> SnapshotFile {
        let state = br#"{"format":1,"state":{}}"#.to_vec();
        SnapshotFile {
            header: Header {
                format: FILE_FORMAT,
                cluster_id: "00000000deadbeef".into(),
                index: 42,
                term: 3,
                taken_at_ms: 1_700_000_000_000,
                taken_at: "2023-11-14T22:13:20Z".into(),
                node: 2,
                state_format: 1,
                command_format: 2,
                length: state.len() as u64,
                sha256: sha256_hex(&state),
            },
            state,
        }
    }

    #[test]
    fn a_file_round_trips_and_names_what_it_holds() {
        let f = sample();
        let bytes = f.encode();
        assert!(bytes.starts_with(b"hotdeploy-snapshot 1\n{\"format\":1,\"cluster_id\""));
        assert_eq!(SnapshotFile::decode(&bytes).unwrap(), f);
    }

    #[test]
    fn damaged_files_are_refused_by_name() {
        let good = sample().encode();
        let err = |bytes: &[u8]| SnapshotFile::decode(bytes).unwrap_err().to_string();
        assert!(err(b"").contains("not a hotdeploy snapshot"));
        assert!(err(b"{\"hosts\": []}\n").contains("not a hotdeploy snapshot"));
        assert!(err(b"hotdeploy-snapshot 7\n{}\n").contains("format 7 is unknown"));
        assert!(err(b"hotdeploy-snapshot 1\nnot json\n").contains("header is damaged"));
        // Truncated anywhere: in the state, or in the header.
        let cut = err(&good[..good.len() - 5]);
        assert!(
            cut.contains("truncated") && cut.contains("announces"),
            "{cut}"
        );
        assert!(err(&good[..30]).contains("header"));
        let mut longer = good.clone();
        longer.extend_from_slice(b"xx");
        assert!(err(&longer).contains("2 bytes after"));
        // One flipped byte of state.
        let mut flipped = good.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x20;
        assert!(err(&flipped).contains("corrupt"), "{}", err(&flipped));
    }

    #[test]
    fn writing_is_atomic_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.snap");
        std::fs::write(&path, b"an older backup").unwrap();
        sample().write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(SnapshotFile::read(&path).unwrap(), sample());
        // Nothing left behind but the file itself.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("backup.snap")]);
        // A directory that does not exist: a clear error naming the path.
        let missing = dir.path().join("no/such/dir/b.snap");
        let e = sample().write(&missing).unwrap_err().to_string();
        assert!(e.contains("no/such/dir/b.snap"), "{e}");
    }
}
