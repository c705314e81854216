//! Durable raft-rs storage over sled: the raft log, hard state, conf state and the latest
//! snapshot's metadata in one sled tree, and the snapshot's payload in a second one.
//!
//! # What
//!
//! [`SledStorage`] implements [`raft::Storage`] for raft-rs 0.7. The Ready loop (DESIGN §2)
//! persists through it: [`SledStorage::append_and_persist`] writes a Ready's entries and hard
//! state in one sled batch and then makes it durable (sled's flush, then `fdatasync`/`fsync` of
//! every file sled wrote: see `sled_files`, because sled's flush alone is only a
//! `sync_file_range`), so a crash, power loss included, leaves either all of a Ready or none of
//! it. [`SledStorage::create_snapshot`] records the serialized state machine at `applied`
//! and compacts the log in that same batch, and [`SledStorage::apply_snapshot`] installs a
//! snapshot received from the leader.
//!
//! # Layout
//!
//! Numbers inside keys are big-endian `u64`, so that sled's byte order is numeric order and a
//! range scan over `e/` walks the log in index order.
//!
//! The main tree (the `Db`'s default tree) holds everything raft reads and writes per Ready:
//!
//! | key | value |
//! |---|---|
//! | `e/<index>` | protobuf `eraftpb::Entry` |
//! | `m/hardstate` | protobuf `eraftpb::HardState` |
//! | `m/confstate` | protobuf `eraftpb::ConfState` |
//! | `m/truncated` | index u64be ‖ term u64be of the last entry dropped by compaction or a snapshot |
//! | `m/cluster_id` | u64be |
//! | `m/snapshot` | the latest snapshot's record: `0x01` ‖ payload length u64be ‖ payload sha256 (32 bytes) ‖ protobuf `eraftpb::SnapshotMetadata` (index, term, conf state) |
//! | `s/...` | reserved for state-machine rows; never touched here |
//!
//! The `snapshots` tree holds only snapshot payloads (the serialized state machine):
//!
//! | key | value |
//! |---|---|
//! | `<index>` u64be ‖ sha256 of the payload (40 bytes) | the payload, as handed to `create_snapshot` or received from the leader |
//!
//! Exactly one payload is live: the one `m/snapshot` names by (index, sha256). Anything else in
//! the tree is debris of an interrupted snapshot and is deleted (after each snapshot, and by
//! [`SledStorage::open`]). The sha256 in the key makes a re-snapshot at the same index write a
//! different key unless the bytes are identical, so the live payload is never overwritten.
//!
//! ## Why the payload has its own tree
//!
//! DESIGN §2 asks for one sled tree, so that each write is one atomic batch. The payload (about
//! 2 MB with 10,000 hosts) used to sit in `m/snapshot`, in the same sled page as
//! `m/hardstate`, which every Ready rewrites. sled 0.34 stores a page that large as a blob file
//! and writes a whole new blob each time it rewrites (consolidates) the page, and frees old
//! blobs lazily: the data dir grew quadratically with the state (430–460 MiB for 10,000
//! hosts, from about 10 snapshots). In its own tree, the payload is written once per snapshot.
//!
//! Atomicity is kept: the payload is written and flushed *before* the one atomic main-tree batch
//! that references it (`m/snapshot`, together with the compaction, `m/truncated`, the conf state
//! and the commit). A crash before that batch leaves an unreferenced payload, which `open`
//! deletes; after it, the referenced payload is already durable. Older payloads are deleted only
//! after the batch is flushed. So at every instant the main tree names a complete, durable
//! payload, and its length and sha256 catch a payload that is missing, torn or not the one
//! named: [`StorageError::Corrupt`], never a silently empty state machine.
//!
//! A store written by the earlier layout (the whole `eraftpb::Snapshot` in `m/snapshot`) is
//! migrated by `open`, in the same order.
//!
//! # Invariants
//!
//! ("Flush" below always means `durable_flush`: sled's `flush`, then the syncs.)
//!
//! - The log is contiguous: `e/` holds exactly the indices `truncated.index + 1 ..= last_index`.
//!   [`SledStorage::open`] checks both ends and refuses a store that breaks this.
//! - `first_index() == truncated.index + 1`, and `term(truncated.index)` answers from
//!   `m/truncated` after the entry itself is gone, as raft-rs requires for matching.
//! - Whenever a snapshot is stored, `truncated == (snapshot.index, snapshot.term)`: the snapshot
//!   and the compaction are written in the same batch, so a restart that restores the state
//!   machine from `m/snapshot` finds the log starting right after it.
//! - The stored commit is never below the stored snapshot's index, so a restart with
//!   `Config.applied = snapshot.index` never trips raft-rs's `applied > commit` panic.
//! - Every write is one atomic write on the main tree made durable by `durable_flush` (sled's
//!   `flush()`, then the syncs of `sled_files`): a `sled::Batch`,
//!   or a plain insert when it touches one key (sled's batch costs extra synced log records; a
//!   one-key write is atomic anyway). A snapshot payload is written and flushed just before,
//!   see above. Only after both succeed is the in-memory [`Meta`] cache updated, under a write
//!   lock that also keeps readers from seeing a half-applied state. Any error is returned; the
//!   caller treats it as fatal (DESIGN §2).
//! - One exception to "entries and hard state in one batch": when a Ready's hard state differs
//!   from the stored one only in its commit index, the entries are written and synced first and
//!   the hard state right after, unsynced. A commit index need not be durable (a restarted node
//!   learns it again from the leader), and written after the entries it can never point past
//!   the durable log. On a follower this halves the synced work of each append.
//! - `m/snapshot` always names a payload present in the `snapshots` tree with that length and
//!   sha256; `open` checks it.
//!
//! # Bootstrap
//!
//! raft-rs's `MemStorage::new_with_conf_state` only stores a ConfState and starts the log at
//! index 1 with `term(0) == 0`. Its own comment says real systems choose the other way: start
//! every node from a snapshot at a non-zero index. We do that. [`SledStorage::initialize`] writes
//! a snapshot at ([`BOOTSTRAP_INDEX`], [`BOOTSTRAP_TERM`]) holding the voters, with empty data
//! (the empty state machine). As a result, a node added later starts blank, needs index 1 from
//! the leader, finds it compacted, and receives a snapshot. It never replays a log whose
//! first configuration it never saw.
//!
//! # Restart and membership (the driver's side of the contract)
//!
//! - Restart: restore the state machine from [`SledStorage::latest_snapshot`] (empty data means
//!   the empty state machine) and set `raft::Config::applied` to the snapshot's index (0 when
//!   there is none). raft-rs then returns every committed entry after it through
//!   `Ready::committed_entries`. A larger `applied` would skip entries; a non-zero value below
//!   `first_index - 1` makes raft-rs panic.
//! - `initial_state` returns `m/confstate`, which raft-rs takes as the configuration at
//!   `applied`. Committed ConfChanges after the snapshot are re-applied on restart. So take a
//!   snapshot ([`SledStorage::create_snapshot`], which stores the conf state too) right after
//!   applying a ConfChange. That also gives a newly added node a snapshot that names it: raft-rs
//!   followers drop a snapshot whose ConfState omits them, and [`raft::Storage::snapshot`]
//!   refuses to offer one.
//!
//! # What it leaves out
//!
//! - No asynchronous entry fetching: `entries` ignores `GetEntriesContext` and never returns
//!   `LogTemporarilyUnavailable`.
//! - No on-demand snapshots: the storage does not own the state machine, so
//!   [`raft::Storage::snapshot`] can only hand out the latest stored one (see its docs).
//! - No state-machine rows (`s/`), no metrics, no retention of log entries past a snapshot for
//!   slow followers. A follower that falls behind the latest snapshot gets that snapshot.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};
use sha2::{Digest, Sha256};

use super::sled_files::SledFiles;
pub use super::sled_files::{SyncCounts, SyncError};

/// Prefix of log entry keys. `e` sorts before `m` and `s`, so entries form one contiguous run.
const ENTRY_PREFIX: &[u8] = b"e/";
/// The current `HardState` (term, vote, commit).
const KEY_HARDSTATE: &[u8] = b"m/hardstate";
/// The current `ConfState`, as returned by `initial_state`.
const KEY_CONFSTATE: &[u8] = b"m/confstate";
/// Index and term of the last entry removed by compaction or by installing a snapshot. Keeps
/// `term(first_index - 1)` answerable after the entry itself is deleted.
const KEY_TRUNCATED: &[u8] = b"m/truncated";
/// The cluster id this node belongs to, so a node cannot be pointed at another cluster's peers.
const KEY_CLUSTER_ID: &[u8] = b"m/cluster_id";
/// The latest snapshot's record ([`SnapshotRecord`]: metadata, payload length and sha256): what
/// a restart restores from, and what the leader sends to a follower that is behind the log. The
/// payload itself lives in [`SNAPSHOT_TREE`].
const KEY_SNAPSHOT: &[u8] = b"m/snapshot";

/// The sled tree that holds snapshot payloads, keyed by [`payload_key`]. Kept out of the main
/// tree so that the payload is not re-written with the hot metadata page (see the module docs).
const SNAPSHOT_TREE: &[u8] = b"snapshots";
/// First byte of an `m/snapshot` record. A protobuf message never starts with a byte below 8
/// (field number 0 does not exist), so this also tells a record from the earlier layout's
/// whole `eraftpb::Snapshot`.
const SNAPSHOT_RECORD_FORMAT: u8 = 1;
/// Format byte, payload length, sha256.
const SNAPSHOT_RECORD_HEADER: usize = 1 + 8 + 32;

/// sled's page cache. Small on purpose: the hot data (the log tail and the metadata) is tiny,
/// and a coordinator shares its host with the services it deploys (DESIGN §2: 64 MiB).
const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// Sub-directory of the coordinator's data_dir that holds the sled database.
const RAFT_DIR: &str = "raft";

/// How long `open` waits for sled's file lock to be released by a handle that was just dropped
/// in this process (see `SledStorage::open_db`). Long enough for a starved flusher thread on a
/// loaded CI machine; short enough that a lock held by another process fails fast.
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// Poll interval while waiting for the lock.
const LOCK_RETRY_EVERY: Duration = Duration::from_millis(25);

/// Index of the snapshot that [`SledStorage::initialize`] writes. Non-zero so that index 1..=it
/// are "compacted" on every founding node, and a node that joins later is sent a snapshot
/// rather than a log whose initial configuration it cannot see (the TiKV way).
pub const BOOTSTRAP_INDEX: u64 = 1;
/// Term of the bootstrap snapshot. The hard state starts at this term, so the first election
/// is for term `BOOTSTRAP_TERM + 1`.
pub const BOOTSTRAP_TERM: u64 = 1;

/// Errors of the raft storage. All of them are fatal to the Ready loop: log, exit, and let
/// systemd restart the node.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The sled database could not be opened (missing permissions, held by another process...).
    #[error("cannot open raft storage at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// A sled read, batch or flush failed.
    #[error("raft storage: {op}: {source}")]
    Sled {
        op: &'static str,
        #[source]
        source: sled::Error,
    },
    /// A file sled wrote could not be made durable (`fdatasync`/`fsync`; see `sled_files`).
    #[error("raft storage: {op}: {source}")]
    Sync {
        op: &'static str,
        #[source]
        source: SyncError,
    },
    /// A stored value could not be decoded: the store is damaged or from another program.
    #[error("raft storage: cannot decode {what}: {source}")]
    Decode {
        what: String,
        #[source]
        source: protobuf::ProtobufError,
    },
    /// A value could not be encoded (protobuf refused the message).
    #[error("raft storage: cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: protobuf::ProtobufError,
    },
    /// The stored data breaks an invariant of the layout (a gap in the log, a bad length...).
    #[error("raft storage is corrupt: {0}")]
    Corrupt(String),
    /// `initialize` was called on a storage that already holds raft state.
    #[error("raft storage is already initialized; refusing to bootstrap it again")]
    AlreadyInitialized,
    /// The caller asked for something the log cannot do (appending into the compacted prefix,
    /// leaving a gap, snapshotting past the last entry, ...).
    #[error("raft storage: {0}")]
    Invalid(String),
    /// A snapshot is not newer than what the storage already has.
    #[error(
        "raft storage: snapshot at index {index} is out of date (log truncated at {truncated})"
    )]
    SnapshotOutOfDate { index: u64, truncated: u64 },
}

impl From<StorageError> for raft::Error {
    fn from(e: StorageError) -> Self {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}

type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Index and term of a log position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LogPosition {
    index: u64,
    term: u64,
}

/// In-memory copy of everything but the entries and the snapshot data. raft-rs calls
/// `first_index`/`last_index`/`term` many times per Ready; answering those from memory avoids
/// decoding from sled each time. Loaded at `open`, replaced only after a write is flushed.
#[derive(Debug, Default)]
struct Meta {
    hard_state: HardState,
    conf_state: ConfState,
    truncated: LogPosition,
    /// Index of the last stored entry, or `truncated.index` when the log is empty.
    last_index: u64,
    /// The record in `m/snapshot`, if one is stored.
    snapshot: Option<SnapshotRecord>,
    cluster_id: Option<u64>,
    /// Whether `m/hardstate` / `m/confstate` exist at all (for `is_blank`).
    has_hard_state: bool,
    has_conf_state: bool,
}

impl Meta {
    fn first_index(&self) -> u64 {
        self.truncated.index + 1
    }
}

/// What `m/snapshot` holds: the snapshot's metadata, and the length and sha256 of its payload
/// (stored in [`SNAPSHOT_TREE`] under [`payload_key`]).
#[derive(Debug, Clone, PartialEq)]
struct SnapshotRecord {
    metadata: SnapshotMetadata,
    payload_len: u64,
    payload_sha256: [u8; 32],
}

impl SnapshotRecord {
    fn new(metadata: SnapshotMetadata, payload: &[u8]) -> Self {
        SnapshotRecord {
            metadata,
            payload_len: payload.len() as u64,
            payload_sha256: Sha256::digest(payload).into(),
        }
    }

    fn payload_key(&self) -> [u8; 40] {
        payload_key(self.metadata.index, &self.payload_sha256)
    }

    fn encode(&self) -> Result<Vec<u8>> {
        let metadata = encode(&self.metadata, "snapshot metadata")?;
        let mut out = Vec::with_capacity(SNAPSHOT_RECORD_HEADER + metadata.len());
        out.push(SNAPSHOT_RECORD_FORMAT);
        out.extend_from_slice(&self.payload_len.to_be_bytes());
        out.extend_from_slice(&self.payload_sha256);
        out.extend_from_slice(&metadata);
        Ok(out)
    }

    /// Decodes a record. `Err` for anything that is not one, including the earlier layout's
    /// whole `Snapshot` (see [`StoredSnapshot::decode`]).
    fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || {
            StorageError::Corrupt(format!(
                "m/snapshot record is malformed ({} bytes)",
                bytes.len()
            ))
        };
        if bytes.first() != Some(&SNAPSHOT_RECORD_FORMAT) {
            return Err(corrupt());
        }
        let len: [u8; 8] = bytes
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(corrupt)?;
        let payload_sha256: [u8; 32] = bytes
            .get(9..SNAPSHOT_RECORD_HEADER)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(corrupt)?;
        let metadata = decode(&bytes[SNAPSHOT_RECORD_HEADER..], || {
            "the metadata in m/snapshot".into()
        })?;
        Ok(SnapshotRecord {
            metadata,
            payload_len: u64::from_be_bytes(len),
            payload_sha256,
        })
    }
}

/// The value of `m/snapshot` as found on disk.
enum StoredSnapshot {
    /// The current layout.
    Record(SnapshotRecord),
    /// The earlier layout: the whole snapshot, payload included. `open` migrates it.
    Legacy(Snapshot),
}

impl StoredSnapshot {
    fn decode(bytes: &[u8]) -> Result<Self> {
        match bytes.first() {
            Some(&SNAPSHOT_RECORD_FORMAT) => {
                Ok(StoredSnapshot::Record(SnapshotRecord::decode(bytes)?))
            }
            // Field 1 (`data`) or 2 (`metadata`) of `eraftpb::Snapshot`, length-delimited.
            Some(0x0a | 0x12) => Ok(StoredSnapshot::Legacy(decode(bytes, || {
                "m/snapshot (earlier layout)".into()
            })?)),
            _ => Err(StorageError::Corrupt(format!(
                "m/snapshot is neither a snapshot record nor a snapshot ({} bytes)",
                bytes.len()
            ))),
        }
    }
}

/// Key of a payload in [`SNAPSHOT_TREE`]: index u64be ‖ sha256. Sorts by index.
fn payload_key(index: u64, sha256: &[u8; 32]) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..8].copy_from_slice(&index.to_be_bytes());
    key[8..].copy_from_slice(sha256);
    key
}

/// A snapshot of `record`'s metadata with `payload` as its data.
fn snapshot_from(record: &SnapshotRecord, payload: &[u8]) -> Snapshot {
    let mut snap = Snapshot {
        data: payload.to_vec().into(),
        ..Default::default()
    };
    snap.set_metadata(record.metadata.clone());
    snap
}

struct Inner {
    db: sled::Db,
    /// sled's files and their syncing: every durable write ends in `durable_flush`.
    files: Mutex<Durability>,
    /// [`SNAPSHOT_TREE`]: snapshot payloads only.
    snapshots: sled::Tree,
    /// Writers hold the write side across batch + flush + cache update, so a reader that combines
    /// several facts (say `last_index` and an entry) sees one consistent state.
    meta: RwLock<Meta>,
}

/// raft-rs storage backed by sled. Cloning is cheap (an `Arc`): the `RawNode` owns one handle,
/// the driver keeps another, and both see the same state.
#[derive(Clone)]
pub struct SledStorage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SledStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStorage")
            .field("meta", &*self.read_meta())
            .finish_non_exhaustive()
    }
}

fn entry_key(index: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(ENTRY_PREFIX);
    key[2..].copy_from_slice(&index.to_be_bytes());
    key
}

fn entry_index_from_key(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key
        .strip_prefix(ENTRY_PREFIX)
        .and_then(|rest| rest.try_into().ok())
        .ok_or_else(|| StorageError::Corrupt(format!("malformed entry key {key:?}")))?;
    Ok(u64::from_be_bytes(bytes))
}

fn encode<M: PbMessage>(msg: &M, what: &'static str) -> Result<Vec<u8>> {
    msg.write_to_bytes()
        .map_err(|source| StorageError::Encode { what, source })
}

fn decode<M: PbMessage>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<M> {
    M::parse_from_bytes(bytes).map_err(|source| StorageError::Decode {
        what: what(),
        source,
    })
}

fn encode_position(pos: LogPosition) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&pos.index.to_be_bytes());
    out[8..].copy_from_slice(&pos.term.to_be_bytes());
    out
}

fn decode_position(bytes: &[u8]) -> Result<LogPosition> {
    let (index, term) = match (bytes.get(..8), bytes.get(8..)) {
        (Some(i), Some(t)) if bytes.len() == 16 => (i, t),
        _ => {
            return Err(StorageError::Corrupt(format!(
                "m/truncated has {} bytes, expected 16",
                bytes.len()
            )))
        }
    };
    let to_u64 = |b: &[u8]| -> Result<u64> {
        let arr: [u8; 8] = b
            .try_into()
            .map_err(|_| StorageError::Corrupt("m/truncated is malformed".into()))?;
        Ok(u64::from_be_bytes(arr))
    };
    Ok(LogPosition {
        index: to_u64(index)?,
        term: to_u64(term)?,
    })
}

fn sled_err(op: &'static str) -> impl FnOnce(sled::Error) -> StorageError {
    move |source| StorageError::Sled { op, source }
}

/// The metadata of a snapshot at `pos` with `conf_state`.
fn snapshot_metadata(pos: LogPosition, conf_state: ConfState) -> SnapshotMetadata {
    let mut metadata = SnapshotMetadata {
        index: pos.index,
        term: pos.term,
        ..Default::default()
    };
    metadata.set_conf_state(conf_state);
    metadata
}

/// A snapshot at `pos` with `conf_state` and the serialized state machine `data`.
#[cfg(test)]
fn new_snapshot(pos: LogPosition, conf_state: ConfState, data: Vec<u8>) -> Snapshot {
    let mut snap = Snapshot {
        data: data.into(),
        ..Default::default()
    };
    snap.set_metadata(snapshot_metadata(pos, conf_state));
    snap
}

/// How the storage's durable writes reach stable storage.
enum Durability {
    /// sled's files, `fdatasync`ed/`fsync`ed after every durable flush (see `sled_files`).
    Files(SledFiles),
    /// A temporary database (the simulator's, see [`SledStorage::open_temporary`]): it lives in
    /// memory or on a tmpfs and vanishes with its last handle, so there is nothing to sync.
    /// Durable flushes are still counted (`SyncCounts::syncs`), so that tests see when they
    /// happen.
    #[cfg(test)]
    Temporary(SyncCounts),
}

impl Durability {
    /// Called right after sled's `flush` of a write that must be durable.
    fn sync(&mut self) -> std::result::Result<(), SyncError> {
        match self {
            Durability::Files(files) => files.sync(),
            #[cfg(test)]
            Durability::Temporary(counts) => {
                counts.syncs += 1;
                Ok(())
            }
        }
    }

    fn counts(&self) -> SyncCounts {
        match self {
            Durability::Files(files) => files.counts(),
            #[cfg(test)]
            Durability::Temporary(counts) => *counts,
        }
    }

    /// Every file synced so far (none for a temporary database).
    #[cfg(test)]
    fn synced(&self) -> &std::collections::BTreeSet<PathBuf> {
        static NONE: std::collections::BTreeSet<PathBuf> = std::collections::BTreeSet::new();
        match self {
            Durability::Files(files) => files.synced(),
            Durability::Temporary(_) => &NONE,
        }
    }
}

/// Writes `payload` under `record`'s key in the `snapshots` tree and makes it durable. sled's
/// flush covers every tree of the `Db`: they share one log (and the payload, being large, one
/// blob file of its own, which `durable_flush` syncs).
fn write_payload(
    db: &sled::Db,
    files: &Mutex<Durability>,
    snapshots: &sled::Tree,
    record: &SnapshotRecord,
    payload: &[u8],
) -> Result<()> {
    snapshots
        .insert(record.payload_key(), payload)
        .map_err(sled_err("writing a snapshot payload"))?;
    durable_flush(db, files, "making a snapshot payload durable")
}

/// sled's `flush` (its buffers written, `sync_file_range`), then `fdatasync`/`fsync` of every
/// file it wrote (`SledFiles::sync`): what makes a write durable against power loss.
fn durable_flush(db: &sled::Db, files: &Mutex<Durability>, op: &'static str) -> Result<()> {
    db.flush().map_err(sled_err(op))?;
    files
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .sync()
        .map_err(|source| StorageError::Sync { op, source })
}

/// The payload `record` names, checked against its length and sha256. A missing or mismatched
/// payload is [`StorageError::Corrupt`]: starting from it would silently lose the state.
fn read_payload(snapshots: &sled::Tree, record: &SnapshotRecord) -> Result<sled::IVec> {
    let (index, term) = (record.metadata.index, record.metadata.term);
    let payload = snapshots
        .get(record.payload_key())
        .map_err(sled_err("reading a snapshot payload"))?
        .ok_or_else(|| {
            StorageError::Corrupt(format!(
                "the payload of the snapshot at index {index} (term {term}) is missing from \
                 the `snapshots` tree"
            ))
        })?;
    if payload.len() as u64 != record.payload_len {
        return Err(StorageError::Corrupt(format!(
            "the payload of the snapshot at index {index} (term {term}) has {} bytes; \
             m/snapshot records {}",
            payload.len(),
            record.payload_len
        )));
    }
    let sha256: [u8; 32] = Sha256::digest(&payload).into();
    if sha256 != record.payload_sha256 {
        return Err(StorageError::Corrupt(format!(
            "the payload of the snapshot at index {index} (term {term}) fails its sha256 check"
        )));
    }
    Ok(payload)
}

/// Deletes every payload but `keep`'s (all of them when `keep` is `None`) in one batch, without
/// flushing: a payload that comes back after a crash is unreferenced, and `open` deletes it.
/// Returns how many were deleted.
fn remove_payloads_except(snapshots: &sled::Tree, keep: Option<&SnapshotRecord>) -> Result<usize> {
    let keep = keep.map(SnapshotRecord::payload_key);
    let mut batch = sled::Batch::default();
    let mut removed = 0;
    for key in snapshots.iter().keys() {
        let key = key.map_err(sled_err("listing snapshot payloads"))?;
        if keep.as_ref().map(|k| &k[..]) != Some(&key[..]) {
            batch.remove(key);
            removed += 1;
        }
    }
    if removed > 0 {
        snapshots
            .apply_batch(batch)
            .map_err(sled_err("deleting old snapshot payloads"))?;
    }
    Ok(removed)
}

/// Whether node `id` appears in `cs` in a role that lets it accept a snapshot. Mirrors the check
/// in raft-rs `Raft::restore`, which silently drops a snapshot whose ConfState omits the
/// recipient.
fn conf_state_has(cs: &ConfState, id: u64) -> bool {
    cs.voters
        .iter()
        .chain(&cs.learners)
        .chain(&cs.voters_outgoing)
        .any(|v| *v == id)
}

impl SledStorage {
    /// Opens (or creates) `<data_dir>/raft` with a 64 MiB cache and loads the metadata.
    /// [`SledStorage::is_blank`] tells whether nothing was ever written.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(RAFT_DIR);
        let config = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_CAPACITY_BYTES);
        let db = Self::open_db(&config).map_err(|source| StorageError::Open {
            path: path.clone(),
            source,
        })?;
        let snapshots = db
            .open_tree(SNAPSHOT_TREE)
            .map_err(|source| StorageError::Open {
                path: path.clone(),
                source,
            })?;
        let files = SledFiles::open(&path).map_err(|source| StorageError::Sync {
            op: "syncing the raft storage on open",
            source,
        })?;
        let files = Mutex::new(Durability::Files(files));
        let record = Self::load_snapshot_record(&db, &files, &snapshots)?;
        let meta = Self::load_meta(&db, record)?;
        if let Some(record) = &meta.snapshot {
            read_payload(&snapshots, record)?;
        }
        // Debris of a snapshot interrupted between its payload and its metadata batch, or of
        // a deletion that did not reach disk. Only after the live payload checked out.
        let removed = remove_payloads_except(&snapshots, meta.snapshot.as_ref())?;
        if removed > 0 {
            durable_flush(&db, &files, "deleting unreferenced snapshot payloads")?;
            tracing::info!(
                removed,
                "deleted snapshot payloads that no stored snapshot references"
            );
        }
        tracing::debug!(
            path = %path.display(),
            first_index = meta.first_index(),
            last_index = meta.last_index,
            commit = meta.hard_state.commit,
            term = meta.hard_state.term,
            "opened raft storage"
        );
        Ok(SledStorage {
            inner: Arc::new(Inner {
                db,
                files,
                snapshots,
                meta: RwLock::new(meta),
            }),
        })
    }

    /// Opens the sled database, waiting up to [`LOCK_WAIT`] for its file lock. Dropping the last
    /// `sled::Db` does not release the lock synchronously (sled 0.34's flusher thread holds the
    /// file a little longer, sled issue #1234), so an in-process reopen (tests, a restarted node
    /// in a harness) can race it. A lock held by another live process still fails, after the
    /// wait, with sled's "could not acquire lock" error. Blocks the calling thread meanwhile:
    /// call it at startup, not from a busy async task.
    fn open_db(config: &sled::Config) -> std::result::Result<sled::Db, sled::Error> {
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().starts_with("could not acquire lock")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(LOCK_RETRY_EVERY);
                }
                other => return other,
            }
        }
    }

    /// Reads `m/snapshot`. A whole snapshot in the earlier layout is migrated: its payload is
    /// written to the `snapshots` tree and flushed, then `m/snapshot` is replaced by a record
    /// and flushed (the same order as [`SledStorage::create_snapshot`]).
    fn load_snapshot_record(
        db: &sled::Db,
        files: &Mutex<Durability>,
        snapshots: &sled::Tree,
    ) -> Result<Option<SnapshotRecord>> {
        let Some(v) = db
            .get(KEY_SNAPSHOT)
            .map_err(sled_err("reading the snapshot record"))?
        else {
            return Ok(None);
        };
        match StoredSnapshot::decode(&v)? {
            StoredSnapshot::Record(record) => Ok(Some(record)),
            StoredSnapshot::Legacy(snap) => {
                let record = SnapshotRecord::new(snap.get_metadata().clone(), &snap.data);
                write_payload(db, files, snapshots, &record, &snap.data)?;
                db.insert(KEY_SNAPSHOT, record.encode()?)
                    .map_err(sled_err("migrating m/snapshot"))?;
                durable_flush(db, files, "migrating m/snapshot")?;
                tracing::info!(
                    index = record.metadata.index,
                    bytes = record.payload_len,
                    "moved the snapshot payload out of m/snapshot into the snapshots tree"
                );
                Ok(Some(record))
            }
        }
    }

    fn load_meta(db: &sled::Db, snapshot: Option<SnapshotRecord>) -> Result<Meta> {
        let get = |key: &'static [u8]| db.get(key).map_err(sled_err("reading metadata"));
        let mut meta = Meta {
            snapshot,
            ..Meta::default()
        };
        if let Some(v) = get(KEY_HARDSTATE)? {
            meta.hard_state = decode(&v, || "m/hardstate".into())?;
            meta.has_hard_state = true;
        }
        if let Some(v) = get(KEY_CONFSTATE)? {
            meta.conf_state = decode(&v, || "m/confstate".into())?;
            meta.has_conf_state = true;
        }
        if let Some(v) = get(KEY_TRUNCATED)? {
            meta.truncated = decode_position(&v)?;
        }
        if let Some(v) = get(KEY_CLUSTER_ID)? {
            let arr: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                StorageError::Corrupt(format!("m/cluster_id has {} bytes, expected 8", v.len()))
            })?;
            meta.cluster_id = Some(u64::from_be_bytes(arr));
        }

        // The log must be exactly truncated.index+1 ..= last: check both ends.
        let mut entries = db.scan_prefix(ENTRY_PREFIX).keys();
        let first = entries
            .next()
            .transpose()
            .map_err(sled_err("scanning the log"))?
            .map(|k| entry_index_from_key(&k))
            .transpose()?;
        let last = entries
            .next_back()
            .transpose()
            .map_err(sled_err("scanning the log"))?
            .map(|k| entry_index_from_key(&k))
            .transpose()?;
        meta.last_index = match (first, last) {
            (None, _) => meta.truncated.index,
            (Some(first), last) => {
                if first != meta.first_index() {
                    return Err(StorageError::Corrupt(format!(
                        "first log entry is {first}, expected {} (truncated at {})",
                        meta.first_index(),
                        meta.truncated.index
                    )));
                }
                last.unwrap_or(first)
            }
        };
        if let Some(snap) = meta.snapshot.as_ref().map(|r| &r.metadata) {
            if snap.index != meta.truncated.index || snap.term != meta.truncated.term {
                return Err(StorageError::Corrupt(format!(
                    "snapshot at ({}, {}) but log truncated at ({}, {})",
                    snap.index, snap.term, meta.truncated.index, meta.truncated.term
                )));
            }
        }
        Ok(meta)
    }

    // Lock poisoning only follows a panic in another thread while holding the lock; the cache is
    // only assigned after a successful write, so the data behind a poisoned lock is still whole.
    fn read_meta(&self) -> RwLockReadGuard<'_, Meta> {
        self.inner
            .meta
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_meta(&self) -> RwLockWriteGuard<'_, Meta> {
        self.inner
            .meta
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `batch` atomically, then makes it durable. The caller holds the meta write lock and updates
    /// the cache only if this returns `Ok`.
    fn commit_batch(&self, batch: sled::Batch, op: &'static str) -> Result<()> {
        self.apply_batch(batch, op, true)
    }

    /// Stores a snapshot, crash-safe without one batch spanning two trees: writes `payload` into
    /// the `snapshots` tree and flushes it, THEN applies `batch` (the rest of the operation: the
    /// compaction, `m/truncated`, the conf state, the hard state) together with
    /// `m/snapshot = record`, and flushes. A crash in between leaves an unreferenced payload,
    /// deleted by `open`. The caller holds the meta write lock, updates the cache on `Ok`, then
    /// calls [`SledStorage::remove_old_payloads`].
    fn commit_snapshot(
        &self,
        mut batch: sled::Batch,
        record: &SnapshotRecord,
        payload: &[u8],
        op: &'static str,
    ) -> Result<()> {
        let encoded = record.encode()?;
        write_payload(
            &self.inner.db,
            &self.inner.files,
            &self.inner.snapshots,
            record,
            payload,
        )?;
        batch.insert(KEY_SNAPSHOT, encoded);
        self.commit_batch(batch, op)
    }

    /// Deletes every payload but `keep`'s, once the batch that references `keep` is flushed.
    fn remove_old_payloads(&self, keep: &SnapshotRecord) -> Result<()> {
        remove_payloads_except(&self.inner.snapshots, Some(keep))?;
        Ok(())
    }

    /// Applies `batch` atomically, and makes it durable when `sync` is set. Without `sync` the batch
    /// is still atomic and reaches disk with sled's next flush (or the next synced batch).
    fn apply_batch(&self, batch: sled::Batch, op: &'static str, sync: bool) -> Result<()> {
        self.inner.db.apply_batch(batch).map_err(sled_err(op))?;
        self.flush_if(sync)
    }

    /// Writes `writes` atomically: one key as a plain insert or remove, more as one batch.
    /// sled makes a batch atomic with extra log records, and syncs them apart from the data:
    /// a one-entry append costs about 200 µs as a batch and 135 µs as an insert (release
    /// build, this project's CI disk). One key is atomic without the batch.
    fn write(&self, writes: Writes, op: &'static str, sync: bool) -> Result<()> {
        writes.apply(&self.inner.db).map_err(sled_err(op))?;
        self.flush_if(sync)
    }

    fn flush_if(&self, sync: bool) -> Result<()> {
        if sync {
            durable_flush(
                &self.inner.db,
                &self.inner.files,
                "making the raft storage durable",
            )?;
        }
        Ok(())
    }

    /// How many `fdatasync`/`fsync` calls the storage made since it was opened (the durability
    /// diagnostics and tests read it).
    pub fn sync_counts(&self) -> SyncCounts {
        self.inner
            .files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counts()
    }

    /// True when nothing was ever written: no hard state, no conf state, no entries and no
    /// snapshot (a cluster id alone does not count). A blank node either bootstraps with
    /// [`SledStorage::initialize`] or waits to be sent a snapshot by a leader.
    pub fn is_blank(&self) -> bool {
        let m = self.read_meta();
        !m.has_hard_state
            && !m.has_conf_state
            && m.snapshot.is_none()
            && m.last_index == 0
            && m.truncated == LogPosition::default()
    }

    /// Bootstraps a brand-new cluster with `voters`, whose state machine starts empty.
    /// Every founding node must call it with the same voters. See
    /// [`SledStorage::initialize_with_data`] for what it writes.
    pub fn initialize(&self, voters: &[u64], cluster_id: u64) -> Result<()> {
        self.initialize_with_data(voters, cluster_id, Vec::new())
    }

    /// Bootstraps a brand-new cluster. In one batch, writes:
    /// - a snapshot at ([`BOOTSTRAP_INDEX`], [`BOOTSTRAP_TERM`]) with `ConfState{voters}` and
    ///   `data` (the serialized initial state machine; empty means "the empty state machine",
    ///   and the driver must restore it as such);
    /// - `m/truncated` = that position, so `first_index() == BOOTSTRAP_INDEX + 1`;
    /// - `m/confstate` = `ConfState{voters}`;
    /// - `m/hardstate` = `{term: BOOTSTRAP_TERM, vote: 0, commit: BOOTSTRAP_INDEX}` (raft-rs
    ///   requires `commit >= first_index - 1` on load);
    /// - `m/cluster_id`.
    ///
    /// Fails with [`StorageError::AlreadyInitialized`] unless [`SledStorage::is_blank`].
    pub fn initialize_with_data(
        &self,
        voters: &[u64],
        cluster_id: u64,
        data: Vec<u8>,
    ) -> Result<()> {
        let pos = LogPosition {
            index: BOOTSTRAP_INDEX,
            term: BOOTSTRAP_TERM,
        };
        self.initialize_at(voters, cluster_id, data, pos)
    }

    /// Bootstraps a cluster restored from a backup (`hotdeploy-coordinator restore`): as
    /// [`SledStorage::initialize_with_data`], but the snapshot (`data`, the restored state) sits
    /// at (`index`, `term`) instead of the bootstrap position, so the new log starts after
    /// `index`: the state's tokens (raft indexes of grants) stay below every new one.
    pub fn initialize_restored(
        &self,
        voters: &[u64],
        cluster_id: u64,
        data: Vec<u8>,
        index: u64,
        term: u64,
    ) -> Result<()> {
        if index < BOOTSTRAP_INDEX || term < BOOTSTRAP_TERM {
            return Err(StorageError::Invalid(format!(
                "a restored snapshot needs an index and a term of at least 1 (got {index}, {term})"
            )));
        }
        self.initialize_at(voters, cluster_id, data, LogPosition { index, term })
    }

    fn initialize_at(
        &self,
        voters: &[u64],
        cluster_id: u64,
        data: Vec<u8>,
        pos: LogPosition,
    ) -> Result<()> {
        if voters.is_empty() || voters.contains(&0) {
            return Err(StorageError::Invalid(format!(
                "bootstrap needs at least one voter and no id 0 (got {voters:?})"
            )));
        }
        let mut meta = self.write_meta();
        let blank = !meta.has_hard_state
            && !meta.has_conf_state
            && meta.snapshot.is_none()
            && meta.last_index == 0;
        if !blank {
            return Err(StorageError::AlreadyInitialized);
        }
        let conf_state = ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        };
        let record = SnapshotRecord::new(snapshot_metadata(pos, conf_state.clone()), &data);
        let hard_state = HardState {
            term: pos.term,
            vote: 0,
            commit: pos.index,
            ..Default::default()
        };

        let mut batch = sled::Batch::default();
        batch.insert(KEY_TRUNCATED, &encode_position(pos)[..]);
        batch.insert(KEY_CONFSTATE, encode(&conf_state, "conf state")?);
        batch.insert(KEY_HARDSTATE, encode(&hard_state, "hard state")?);
        batch.insert(KEY_CLUSTER_ID, &cluster_id.to_be_bytes()[..]);
        self.commit_snapshot(batch, &record, &data, "writing the bootstrap state")?;

        meta.snapshot = Some(record.clone());
        meta.truncated = pos;
        meta.last_index = pos.index;
        meta.conf_state = conf_state;
        meta.has_conf_state = true;
        meta.hard_state = hard_state;
        meta.has_hard_state = true;
        meta.cluster_id = Some(cluster_id);
        self.remove_old_payloads(&record)
    }

    /// The cluster id recorded by `initialize` or `set_cluster_id`, if any.
    pub fn cluster_id(&self) -> Option<u64> {
        self.read_meta().cluster_id
    }

    /// Records the cluster id (for a node that joins an existing cluster). Batch + flush.
    pub fn set_cluster_id(&self, id: u64) -> Result<()> {
        let mut meta = self.write_meta();
        let mut batch = sled::Batch::default();
        batch.insert(KEY_CLUSTER_ID, &id.to_be_bytes()[..]);
        self.commit_batch(batch, "writing the cluster id")?;
        meta.cluster_id = Some(id);
        Ok(())
    }

    /// Persists one Ready: appends `entries`, deleting every stored entry at or after the first
    /// new index (the conflicting tail), and sets `hard_state` if given, in ONE sled batch, then
    /// flushes. Errors are fatal to the caller: never call `advance` after one.
    ///
    /// `entries` must be contiguous, start after the compacted prefix, and leave no gap after the
    /// current last entry.
    pub fn append_and_persist(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<()> {
        self.persist_ready(entries, hard_state, true)
    }

    /// Like [`SledStorage::append_and_persist`], but syncs only when `sync` is set: pass
    /// raft's `Ready::must_sync()`, which is false when neither entries nor the term or vote
    /// changed. A commit index alone need not be durable before raft moves on: after a crash it
    /// is learned again from the leader, and snapshots raise the stored commit to what they
    /// cover, so a restart never finds `applied > commit`.
    pub fn persist_ready(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<()> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let mut meta = self.write_meta();
        let mut writes = Writes::default();
        let mut new_last = meta.last_index;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            if first.index <= meta.truncated.index {
                return Err(StorageError::Invalid(format!(
                    "append at index {} would overwrite the compacted log (truncated at {})",
                    first.index, meta.truncated.index
                )));
            }
            if first.index > meta.last_index + 1 {
                return Err(StorageError::Invalid(format!(
                    "append at index {} leaves a gap after last index {}",
                    first.index, meta.last_index
                )));
            }
            for (expected, e) in (first.index..).zip(entries) {
                if e.index != expected {
                    return Err(StorageError::Invalid(format!(
                        "appended entries are not contiguous: index {} where {expected} was expected",
                        e.index
                    )));
                }
                writes.insert(&entry_key(e.index), encode(e, "log entry")?);
            }
            // The conflicting tail that the new entries do not overwrite key by key.
            for index in last.index + 1..=meta.last_index {
                writes.remove(&entry_key(index));
            }
            new_last = last.index;
        }
        // A hard state whose only change is the commit index rides after the entries, unsynced
        // (see `commit_only`): it keeps the synced write to the entries alone.
        let deferred = hard_state.filter(|hs| !entries.is_empty() && commit_only(&meta, hs));
        if let Some(hs) = hard_state.filter(|_| deferred.is_none()) {
            writes.insert(KEY_HARDSTATE, encode(hs, "hard state")?);
        }
        self.write(writes, "appending log entries", sync || !entries.is_empty())?;
        if let Some(hs) = deferred {
            let mut later = Writes::default();
            later.insert(KEY_HARDSTATE, encode(hs, "hard state")?);
            self.write(later, "recording the commit index", false)?;
        }
        meta.last_index = new_last;
        if let Some(hs) = hard_state {
            meta.hard_state = hs.clone();
            meta.has_hard_state = true;
        }
        Ok(())
    }

    /// Stores `hs` as the hard state. Batch + flush.
    pub fn set_hardstate(&self, hs: &HardState) -> Result<()> {
        self.append_and_persist(&[], Some(hs))
    }

    /// Sets the commit index of the stored hard state (a light ready's `commit_index`). The
    /// commit never moves backwards: a lower value is ignored. Not synced on its own (see
    /// [`SledStorage::persist_ready`]): it reaches disk with the next synced batch.
    pub fn set_commit(&self, commit: u64) -> Result<()> {
        let mut hs = self.hard_state();
        if commit <= hs.commit {
            return Ok(());
        }
        hs.commit = commit;
        self.persist_ready(&[], Some(&hs), false)
    }

    /// Stores `cs` as the conf state returned by `initial_state`. Batch + flush.
    ///
    /// Careful: on restart raft-rs takes this ConfState as the configuration at
    /// `Config.applied`, and the driver re-applies every committed ConfChange after that. Prefer
    /// [`SledStorage::create_snapshot`] right after applying a ConfChange, which writes the conf
    /// state together with a snapshot at that index.
    pub fn set_conf_state(&self, cs: &ConfState) -> Result<()> {
        let mut meta = self.write_meta();
        let mut batch = sled::Batch::default();
        batch.insert(KEY_CONFSTATE, encode(cs, "conf state")?);
        self.commit_batch(batch, "writing the conf state")?;
        meta.conf_state = cs.clone();
        meta.has_conf_state = true;
        Ok(())
    }

    /// Installs a snapshot received from the leader (`Ready::snapshot`), in one batch + flush:
    /// stores it, sets `truncated = (index, term)`, the conf state from its metadata, drops the
    /// whole log (raft-rs only hands over a snapshot whose position is not in our log, so every
    /// stored entry is either covered or conflicting, as in `MemStorage::apply_snapshot`), and
    /// raises the hard state to `term >= snapshot term`, `commit >= index`.
    pub fn apply_snapshot(&self, snap: &Snapshot) -> Result<()> {
        let smeta = snap.get_metadata();
        if smeta.index == 0 {
            return Err(StorageError::Invalid(
                "cannot apply an empty snapshot (index 0)".into(),
            ));
        }
        let mut meta = self.write_meta();
        if smeta.index <= meta.truncated.index {
            return Err(StorageError::SnapshotOutOfDate {
                index: smeta.index,
                truncated: meta.truncated.index,
            });
        }
        let pos = LogPosition {
            index: smeta.index,
            term: smeta.term,
        };
        let mut hs = meta.hard_state.clone();
        hs.term = hs.term.max(smeta.term);
        hs.commit = hs.commit.max(smeta.index);
        let conf_state = smeta.get_conf_state().clone();

        let record = SnapshotRecord::new(smeta.clone(), &snap.data);

        let mut batch = sled::Batch::default();
        for index in meta.first_index()..=meta.last_index {
            batch.remove(&entry_key(index)[..]);
        }
        batch.insert(KEY_TRUNCATED, &encode_position(pos)[..]);
        batch.insert(KEY_CONFSTATE, encode(&conf_state, "conf state")?);
        batch.insert(KEY_HARDSTATE, encode(&hs, "hard state")?);
        self.commit_snapshot(batch, &record, &snap.data, "installing a snapshot")?;

        meta.snapshot = Some(record.clone());
        meta.truncated = pos;
        meta.last_index = pos.index;
        meta.conf_state = conf_state;
        meta.has_conf_state = true;
        meta.hard_state = hs;
        meta.has_hard_state = true;
        self.remove_old_payloads(&record)
    }

    /// Records a snapshot of the state machine taken at `applied` (`data` = its serialized form,
    /// `conf_state` = the configuration at `applied`) and compacts the log up to it, in the SAME
    /// batch; then flushes. Also stores `conf_state` as the current conf state, and raises the
    /// stored commit to `applied` if it lags (the entries were committed, the Ready that says
    /// so may not be persisted yet; raft-rs panics on a restart that finds applied > commit).
    ///
    /// `applied` must be within `[first_index - 1, last_index]`; `applied == first_index - 1`
    /// replaces the stored snapshot without compacting further.
    pub fn create_snapshot(
        &self,
        applied: u64,
        conf_state: &ConfState,
        data: Vec<u8>,
    ) -> Result<()> {
        let mut meta = self.write_meta();
        if applied == 0 {
            return Err(StorageError::Invalid(
                "cannot snapshot at index 0: raft-rs treats it as no snapshot".into(),
            ));
        }
        if applied < meta.truncated.index {
            return Err(StorageError::SnapshotOutOfDate {
                index: applied,
                truncated: meta.truncated.index,
            });
        }
        if applied > meta.last_index {
            return Err(StorageError::Invalid(format!(
                "cannot snapshot at {applied}: the log ends at {}",
                meta.last_index
            )));
        }
        // `applied` is within [truncated.index, last_index]: answer from m/truncated or the entry.
        let term = if applied == meta.truncated.index {
            meta.truncated.term
        } else {
            self.read_entry(applied)?.term
        };
        let pos = LogPosition {
            index: applied,
            term,
        };
        let record = SnapshotRecord::new(snapshot_metadata(pos, conf_state.clone()), &data);
        let mut hs = meta.hard_state.clone();
        hs.commit = hs.commit.max(applied);

        let mut batch = sled::Batch::default();
        for index in meta.first_index()..=applied {
            batch.remove(&entry_key(index)[..]);
        }
        batch.insert(KEY_TRUNCATED, &encode_position(pos)[..]);
        batch.insert(KEY_CONFSTATE, encode(conf_state, "conf state")?);
        batch.insert(KEY_HARDSTATE, encode(&hs, "hard state")?);
        self.commit_snapshot(
            batch,
            &record,
            &data,
            "recording a snapshot and compacting the log",
        )?;

        meta.snapshot = Some(record.clone());
        meta.truncated = pos;
        meta.conf_state = conf_state.clone();
        meta.has_conf_state = true;
        meta.hard_state = hs;
        meta.has_hard_state = true;
        self.remove_old_payloads(&record)
    }

    /// The latest stored snapshot (from `initialize`, `create_snapshot` or `apply_snapshot`).
    /// On restart the driver restores the state machine from it, and sets
    /// `Config.applied = snapshot.index`; raft-rs then hands the committed entries after it back
    /// through `Ready::committed_entries`.
    ///
    /// A `Result`, not an `Option`: a damaged snapshot must stop the node, not silently start it
    /// with an empty state machine.
    ///
    /// The payload is read from the `snapshots` tree and checked against the length and sha256
    /// recorded in `m/snapshot`; a missing or damaged payload is [`StorageError::Corrupt`].
    pub fn latest_snapshot(&self) -> Result<Option<Snapshot>> {
        // The read lock keeps a concurrent snapshot from deleting the payload being read.
        let meta = self.read_meta();
        meta.snapshot
            .as_ref()
            .map(|record| self.read_snapshot(record))
            .transpose()
    }

    fn read_snapshot(&self, record: &SnapshotRecord) -> Result<Snapshot> {
        let payload = read_payload(&self.inner.snapshots, record)?;
        Ok(snapshot_from(record, &payload))
    }

    /// The stored hard state (default when none was written).
    pub fn hard_state(&self) -> HardState {
        self.read_meta().hard_state.clone()
    }

    /// The stored conf state (default when none was written).
    pub fn conf_state(&self) -> ConfState {
        self.read_meta().conf_state.clone()
    }

    fn read_entry(&self, index: u64) -> Result<Entry> {
        let v = self
            .inner
            .db
            .get(entry_key(index))
            .map_err(sled_err("reading a log entry"))?
            .ok_or_else(|| StorageError::Corrupt(format!("log entry {index} is missing")))?;
        decode(&v, || format!("log entry {index}"))
    }

    fn term_locked(&self, meta: &Meta, idx: u64) -> Result<u64, raft::Error> {
        if idx == meta.truncated.index {
            return Ok(meta.truncated.term);
        }
        if idx < meta.truncated.index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > meta.last_index {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.read_entry(idx)?.term)
    }

    fn entries_locked(
        &self,
        meta: &Meta,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut size: u64 = 0;
        for (expected, kv) in (low..).zip(self.inner.db.range(entry_key(low)..entry_key(high))) {
            let (key, value) = kv.map_err(sled_err("reading log entries"))?;
            let index = entry_index_from_key(&key)?;
            if index != expected {
                return Err(StorageError::Corrupt(format!(
                    "log entry {expected} is missing (found {index})"
                )));
            }
            let entry: Entry = decode(&value, || format!("log entry {index}"))?;
            out.push(entry);
            // The encoded length is the entry's `compute_size`: stop reading once past the limit;
            // `limit_size` below trims to exactly what raft-rs expects.
            size = size.saturating_add(value.len() as u64);
            if matches!(max_size, Some(max) if max != raft::NO_LIMIT && size > max) {
                break;
            }
        }
        let complete = out.len() as u64 == high - low;
        let stopped_for_size = matches!(max_size, Some(max) if max != raft::NO_LIMIT && size > max);
        if !complete && !stopped_for_size {
            return Err(StorageError::Corrupt(format!(
                "log entries {low}..{high} are incomplete (got {}, last index {})",
                out.len(),
                meta.last_index
            )));
        }
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }
}

impl raft::Storage for SledStorage {
    /// The stored hard state and conf state. raft-rs checks `hard_state.commit` against
    /// `[first_index - 1, last_index]` and panics outside it; the writes above keep it inside.
    fn initial_state(&self) -> raft::Result<RaftState> {
        let meta = self.read_meta();
        Ok(RaftState::new(
            meta.hard_state.clone(),
            meta.conf_state.clone(),
        ))
    }

    /// Entries `[low, high)`, at least one if any, and no more than `max_size` bytes beyond the
    /// first. `Compacted` if `low` is in the compacted prefix; `Unavailable` if `high` is past
    /// `last_index + 1` (where `MemStorage` panics; raft-rs checks bounds before calling).
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let meta = self.read_meta();
        if low <= meta.truncated.index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > meta.last_index + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        Ok(self.entries_locked(&meta, low, high, max_size.into())?)
    }

    /// Term of entry `idx`, for `idx` in `[first_index - 1, last_index]`; `first_index - 1`
    /// answers from `m/truncated`. `Compacted` below, `Unavailable` above.
    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.read_meta();
        self.term_locked(&meta, idx)
    }

    /// `truncated.index + 1` (1 for a blank storage).
    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read_meta().first_index())
    }

    /// Index of the last stored entry, or `first_index - 1` when the log is empty.
    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read_meta().last_index)
    }

    /// The latest stored snapshot. raft-rs calls this on the leader when a follower needs
    /// entries that are compacted, sends the result as `MsgSnapshot`, and panics ("need
    /// non-empty snapshot") if its index is 0. `SnapshotTemporarilyUnavailable` makes it skip the
    /// send and try again at the next heartbeat response; we return it when:
    /// - no snapshot is stored (a blank storage: no follower can need one, as nothing is
    ///   compacted);
    /// - the stored one is older than `request_index` (only non-zero after a follower called
    ///   `RawNode::request_snapshot`; we cannot make a newer one here, and `MemStorage`'s trick
    ///   of relabelling the index would lie about the data);
    /// - `to` is not in the stored snapshot's ConfState: the follower would drop it (raft-rs
    ///   `restore`), so sending the whole state machine would only waste bandwidth. This happens
    ///   to a node added after the last snapshot; the driver fixes it by snapshotting right after
    ///   applying a ConfChange.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = self.read_meta();
        let unavailable = || raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable);
        let Some(record) = meta.snapshot.as_ref() else {
            return Err(unavailable());
        };
        let smeta = &record.metadata;
        if smeta.index == 0 || smeta.index < request_index {
            tracing::debug!(
                snapshot_index = smeta.index,
                request_index,
                to,
                "stored snapshot is older than requested"
            );
            return Err(unavailable());
        }
        if to != 0 && !conf_state_has(smeta.get_conf_state(), to) {
            tracing::debug!(
                snapshot_index = smeta.index,
                to,
                "peer is not in the stored snapshot's conf state; waiting for a newer snapshot"
            );
            return Err(unavailable());
        }
        Ok(self.read_snapshot(record)?)
    }
}

/// The writes of one Ready to the main tree, in order.
#[derive(Default)]
struct Writes {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Writes {
    fn insert(&mut self, key: &[u8], value: Vec<u8>) {
        self.ops.push((key.to_vec(), Some(value)));
    }

    fn remove(&mut self, key: &[u8]) {
        self.ops.push((key.to_vec(), None));
    }

    /// Carries out the writes: one key as a plain insert or remove (atomic by itself), more
    /// as one batch.
    fn apply(mut self, db: &sled::Db) -> sled::Result<()> {
        if self.ops.len() > 1 {
            let mut batch = sled::Batch::default();
            for (key, value) in self.ops {
                match value {
                    Some(v) => batch.insert(key, v),
                    None => batch.remove(key),
                }
            }
            return db.apply_batch(batch);
        }
        match self.ops.pop() {
            Some((key, Some(value))) => db.insert(key, value).map(drop),
            Some((key, None)) => db.remove(key).map(drop),
            None => Ok(()),
        }
    }
}

/// Whether `hs` differs from the stored hard state in its commit index alone. Such a change
/// need not be durable before raft moves on (a restarted node learns the commit again from the
/// leader), so it is written right after the Ready's entries are synced, without a sync of its
/// own, and reaches disk with the next one. Written after the entries, never before: a crash
/// can then lose the new commit but never keep a commit beyond the durable log, which raft-rs
/// refuses at start.
fn commit_only(meta: &Meta, hs: &HardState) -> bool {
    meta.has_hard_state && hs.term == meta.hard_state.term && hs.vote == meta.hard_state.vote
}

#[cfg(test)]
impl SledStorage {
    /// A blank storage in a temporary sled database (in memory where the OS has a tmpfs), which
    /// sled deletes when the last handle is dropped: for the deterministic simulator, which
    /// opens thousands of them. No background flusher thread, and no file syncs: its durable
    /// writes are only counted ([`SledStorage::sync_counts`]'s `syncs`).
    pub(crate) fn open_temporary() -> Result<Self> {
        let path = PathBuf::from("(temporary)");
        let open_err = |source| StorageError::Open {
            path: path.clone(),
            source,
        };
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .cache_capacity(8 << 20)
            .open()
            .map_err(open_err)?;
        let snapshots = db.open_tree(SNAPSHOT_TREE).map_err(open_err)?;
        let meta = Self::load_meta(&db, None)?;
        Ok(SledStorage {
            inner: Arc::new(Inner {
                db,
                files: Mutex::new(Durability::Temporary(SyncCounts::default())),
                snapshots,
                meta: RwLock::new(meta),
            }),
        })
    }
}

#[cfg(test)]
#[path = "storage_tests.rs"]
mod tests;
