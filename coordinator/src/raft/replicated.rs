//! The contract between the raft driver and the state it replicates.
//!
//! The driver ([`super::core::Core`]) knows raft: entries, terms, conf changes, snapshots. It
//! does not know what a command is. Everything it needs from the state machine goes through
//! [`Replicated`]: apply a committed entry's bytes, record a membership change, serialize and
//! restore, and say which members it has recorded. The state machine in `crate::state`
//! implements it (in `state/replicated.rs`); the deterministic test driver runs the same trait
//! over the same machine.
//!
//! The rules the driver relies on:
//! - [`Replicated::apply`] is deterministic: the same bytes at the same index give the same
//!   answer on every replica. An entry it cannot decode is an [`EntryError`], never a skip:
//!   skipping would let this replica diverge silently, so the driver stops the node and names the
//!   entry (DESIGN §8: a command kind this binary does not know means it must be upgraded).
//! - [`Replicated::snapshot`] either gives the whole state or fails. A failure is fatal to the
//!   node; an empty snapshot would be stored, the log compacted behind it, and the state gone
//!   after the next restart.
//! - Membership changes are applied as [`MembershipChange`]s carrying who asked and when, so the
//!   state machine can audit them; the driver decodes them from the conf change, and never builds
//!   a command of the state machine itself.

use std::collections::BTreeMap;
use thiserror::Error;

/// A replicated state machine, as the raft driver drives it.
pub trait Replicated: Default + Send + Sync + 'static {
    /// What a proposer is answered when its entry is applied.
    type Answer: Send + 'static;

    /// Applies the normal entry `data`, committed at `index`, on a node that knows command
    /// format versions up to `known`. An error means the entry cannot be applied by this node
    /// at all (not a refusal of the command, which is an `Answer`).
    fn apply(&mut self, index: u64, data: &[u8], known: u32) -> Result<Self::Answer, EntryError>;

    /// Records that entry `index` carried nothing to apply (a new leader's empty entry, or a
    /// conf change raft refused), so that the applied index follows the log.
    fn skip(&mut self, index: u64);

    /// Applies a membership change committed at `index`.
    fn apply_membership(&mut self, index: u64, change: &MembershipChange);

    /// The whole state, for a raft snapshot.
    fn snapshot(&self) -> Result<Vec<u8>, SnapshotError>;

    /// The inverse of [`Replicated::snapshot`], on a node that knows command format versions
    /// up to `known`: a state that newer entries made is refused.
    fn restore(data: &[u8], known: u32) -> Result<Self, SnapshotError>;

    /// Member id → address, for every member recorded as having acknowledged the log.
    fn members(&self) -> BTreeMap<u64, String>;

    /// Member id → the command format version a leader recorded for it.
    fn member_versions(&self) -> BTreeMap<u64, u32>;

    /// The entry the leader proposes to record that member `id` knows command format versions
    /// up to `version`, and the version that entry itself needs (the gate applies to it too).
    fn member_version_entry(id: u64, version: u32, at_ms: u64) -> (Vec<u8>, u32);

    /// The entry the leader proposes to record that member `id`, reachable at `address`, has
    /// acknowledged the log (so that a wiped member is recognised, see `bootstrap`).
    fn member_entry(id: u64, address: &str, at_ms: u64) -> Vec<u8>;
}

/// Why a committed entry cannot be applied by this binary. Fatal to the node.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum EntryError {
    /// The entry was written in a command format newer than this binary knows.
    #[error(
        "it needs command format version {needs}, and this coordinator knows versions up to \
         {known}; upgrade this coordinator"
    )]
    NeedsVersion { needs: u32, known: u32 },
    /// The entry claims a known format but does not decode.
    #[error("it does not decode: {0}")]
    Malformed(String),
}

/// The state could not be serialized or restored.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SnapshotError(pub String);

/// One committed membership change, as the state machine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipChange {
    pub changes: Vec<MemberChange>,
    /// Who asked for it (`operator/alice`), from the change's context.
    pub actor: String,
    /// When the proposer asked, Unix ms, from the change's context.
    pub at_ms: u64,
}

/// One node joining or leaving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// Added as a voter or a learner (or promoted), reachable at `address` (may be empty).
    Added {
        id: u64,
        address: String,
    },
    Removed {
        id: u64,
    },
}
