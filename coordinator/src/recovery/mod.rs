//! Disaster recovery (DESIGN §8): back up the replicated state, and rebuild a cluster from it
//! after the quorum is lost for good.
//!
//! - `hotdeployctl snapshot save FILE` asks the leader for the state at a linearizable point
//!   (`SaveSnapshot`, `service/snapshot.rs`) and writes it as a [`SnapshotFile`] (`file`).
//! - `hotdeploy-coordinator restore --from FILE --config CONFIG` turns that file into the data_dir
//!   of a one-node cluster with a new cluster id, its log starting above the backup's index
//!   (`restore`); the operator then starts the node and adds members back.
//!
//! Step by step, for operators: docs/operations.md, "Disaster recovery".

mod file;
mod restore;

pub use file::{
    sha256_hex, write_atomically, FileError, Header, SnapshotFile, FILE_FORMAT, MAX_FILE_BYTES,
};
pub use restore::{restore, RestoreError, Restored};
