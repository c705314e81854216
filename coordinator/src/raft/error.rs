//! Errors of the node driver: [`NodeError`], what services see when a proposal or a read does
//! not go through, and [`Fatal`], what stops the node.
//!
//! A `NodeError` is about one request and says whether trying again may help. A `Fatal` is
//! about the node: its storage failed, or it met a committed entry or snapshot it cannot apply.
//! Carrying on after one would let this replica diverge or lose state, so the node stops and the
//! process exits (systemd restarts it; a fatal entry stops it again, until it is upgraded).

use super::replicated::{EntryError, SnapshotError};
use super::storage::StorageError;
use thiserror::Error;

/// Why a proposal or a read did not go through.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum NodeError {
    /// This node is not the leader. `leader` is the leader's id when known (0 when not).
    #[error("not the leader (leader is {leader})")]
    NotLeader { leader: u64 },
    /// Leadership changed while the proposal was pending: it may or may not commit. Retry with
    /// the same (client_id, seq); the state machine dedups it.
    #[error("leadership changed while the request was pending; retry")]
    LeadershipLost,
    /// Raft dropped the proposal (for example during a leader transfer).
    #[error("proposal dropped by raft: {0}")]
    Dropped(String),
    /// Raft accepts one membership change at a time, and one is still being applied.
    #[error("another membership change is in progress; retry once it has applied")]
    MembershipChangeInProgress,
    /// A ReadIndex request was not confirmed by a quorum in time (no leader, a new leader that
    /// has not committed in its term yet, or lost messages).
    #[error("the leader could not confirm a read within {ticks} ticks; retry")]
    ReadUnconfirmed { ticks: u64 },
    /// The request took longer than its deadline.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The node task has stopped (fatal error or shutdown).
    #[error("raft node stopped")]
    Stopped,
    /// The version gate: a member does not know the command format version the command needs
    /// (see `versions.rs`). Not retryable until that member is upgraded.
    #[error(
        "member {member}{} knows command format version {knows}; {kind} needs {needs}: upgrade \
         it first",
        if *this_node { " (this node)" } else { "" }
    )]
    MemberTooOld {
        member: u64,
        this_node: bool,
        knows: u32,
        needs: u32,
        kind: &'static str,
    },
    /// The version gate: what a member knows is not known (it is joining, or down and never
    /// recorded, or not heard from since this leader took office).
    #[error(
        "member {member} has not reported its command format version (it is joining, down, or \
         not heard from since this leader took office); {kind} needs {needs}: retry once it is \
         up"
    )]
    VersionUnknown {
        member: u64,
        needs: u32,
        kind: &'static str,
    },
    /// The version gate: a membership change is being applied, and the member it adds may not
    /// know the version.
    #[error(
        "a membership change is being applied; {kind} needs command format version {needs}, \
         which the member it adds may not know: retry once it has applied"
    )]
    VersionGatePending { needs: u32, kind: &'static str },
}

impl NodeError {
    /// Whether the same request may succeed if tried again (here or at the leader).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, NodeError::Stopped | NodeError::MemberTooOld { .. })
    }

    /// Whether the leader's version gate kept the command out of the log: nothing was
    /// proposed, and a command of an older version may go through.
    pub fn is_version_gate(&self) -> bool {
        matches!(
            self,
            NodeError::MemberTooOld { .. }
                | NodeError::VersionUnknown { .. }
                | NodeError::VersionGatePending { .. }
        )
    }
}

/// What stops the node.
#[derive(Debug, Error)]
pub enum Fatal {
    #[error("storage error ({what}): {source}")]
    Storage {
        what: &'static str,
        #[source]
        source: StorageError,
    },
    /// A committed entry this binary cannot apply.
    #[error("committed entry (index {index}, term {term}) cannot be applied: {source}")]
    Entry {
        index: u64,
        term: u64,
        #[source]
        source: EntryError,
    },
    /// A committed conf change that does not decode.
    #[error("committed conf change (index {index}, term {term}) does not decode: {detail}")]
    ConfChange {
        index: u64,
        term: u64,
        detail: String,
    },
    /// The state machine could not be serialized for a snapshot.
    #[error("cannot snapshot the state machine at index {index}: {source}")]
    Snapshot {
        index: u64,
        #[source]
        source: SnapshotError,
    },
    /// A snapshot (stored, or sent by the leader) could not be restored.
    #[error("the snapshot at index {index} cannot be restored: {source}")]
    Restore {
        index: u64,
        #[source]
        source: SnapshotError,
    },
    /// A thread panicked while holding the state machine's lock.
    #[error("the state machine's lock is poisoned (a thread panicked while holding it)")]
    Poisoned,
}

impl Fatal {
    pub(crate) fn storage(what: &'static str) -> impl FnOnce(StorageError) -> Fatal {
        move |source| Fatal::Storage { what, source }
    }
}
