//! The commands of the replicated log and the answers they produce.
//!
//! A [`Proposal`] is the payload of one raft log entry: a [`Command`] plus what the state machine
//! needs to apply it deterministically on every replica. The proposer stamps the wall clock
//! (`at_ms`) and the actor into it, so applying never reads a clock; the `(client_id, seq)` of a
//! client write lets the machine answer a retried write from its session instead of applying it
//! twice.
//!
//! Entries are serde_json, wrapped in a format `version`. JSON rather than a binary codec because
//! the log is small, operators read it when something goes wrong, and serde's externally tagged
//! enums give a clear error for a command kind this binary does not know. [`Proposal::decode`]
//! refuses any version other than [`FORMAT_VERSION`]: DESIGN §8 has the leader propose a new
//! kind of command only once every member knows it, so an unknown version here means that rule
//! was broken, and applying a guess would fork the replicas.
//!
//! Left out: FleetLock lock-only hosts; their commands come with that feature.

use super::error::StateError;
use super::group::{GroupSeed, GroupView};
use super::host::Report;
use super::lock::Slot;
use super::rollout::{RolloutSpec, StepReport};
use hotdeploy_common::config::MaxUnavailable;
use serde::{Deserialize, Serialize};

/// The command format this binary writes and reads. Bump it only with a new decoder for the old.
pub const FORMAT_VERSION: u32 = 1;

/// The payload of one raft log entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Proposal {
    /// Command format version, [`FORMAT_VERSION`].
    pub version: u32,
    /// `(client_id, seq)` of a client write, for dedup; `None` for internal commands.
    pub write: Option<WriteId>,
    /// The proposer's wall clock, Unix ms. The only time the machine knows.
    pub at_ms: u64,
    /// Who asked: `"operator/alice"`, `"agent/web-1"`, `"leader"`. Recorded in audit events.
    pub actor: String,
    pub command: Command,
}

/// Identifies one client write for dedup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WriteId {
    pub client_id: String,
    pub seq: u64,
}

impl Proposal {
    /// A proposal in the current format.
    pub fn new(
        write: Option<WriteId>,
        at_ms: u64,
        actor: impl Into<String>,
        command: Command,
    ) -> Self {
        Self {
            version: FORMAT_VERSION,
            write,
            at_ms,
            actor: actor.into(),
            command,
        }
    }

    /// The bytes of the log entry.
    ///
    /// Serializing these types cannot fail (every map key is a string, every value plain data);
    /// if it ever did, the empty entry would be refused by [`Proposal::decode`] on every replica
    /// alike, which keeps them in step.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a log entry, refusing unknown format versions and unknown commands.
    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        // Read the version alone first, so that a newer format gets a version error rather
        // than a confusing one about a field or command this binary does not know.
        let v: Versioned = serde_json::from_slice(bytes)
            .map_err(|e| StateError::Decode(format!("log entry is not a proposal: {e}")))?;
        if v.version != FORMAT_VERSION {
            return Err(StateError::Decode(format!(
                "log entry has command format version {}, but this coordinator knows only \
                 version {FORMAT_VERSION}; upgrade this coordinator",
                v.version
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| {
            StateError::Decode(format!("invalid version {FORMAT_VERSION} proposal: {e}"))
        })
    }
}

/// What one log entry asks the state machine to do.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Command {
    /// Seeds groups from config when a cluster is first bootstrapped; a no-op if any group exists.
    SeedGroups {
        groups: Vec<GroupSeed>,
    },
    /// `hotdeployctl groups set`: creates the group if missing (then `max_unavailable` is
    /// required), else changes the given fields.
    SetGroupPolicy {
        group: String,
        max_unavailable: Option<MaxUnavailable>,
        allow_zero_available: Option<bool>,
    },
    /// An agent (re-)registers; it is reachable from now on.
    Register {
        host: String,
        groups: Vec<String>,
        address: String,
        report: Report,
    },
    /// Leader-proposed when an agent's reported health/rotation/release changes.
    UpdateReport {
        host: String,
        report: Report,
    },
    MarkUnreachable {
        host: String,
    },
    /// Carries the agent's latest report, so that reconnecting never hides a bad state.
    MarkReachable {
        host: String,
        report: Report,
    },
    Acquire {
        host: String,
        purpose: String,
        reason: String,
        rollout: String,
    },
    Release {
        host: String,
        token: u64,
    },
    ForceRelease {
        host: String,
    },
    ReportPhase {
        host: String,
        token: u64,
        phase: String,
    },
    RemoveHost {
        host: String,
        force: bool,
    },
    /// Recorded by the raft driver when a conf change adds a member.
    SetMember {
        id: u64,
        address: String,
    },
    RemoveMember {
        id: u64,
    },
    /// An operator starts a rollout (idempotent by id; see `rollout/start.rs`).
    StartRollout {
        spec: RolloutSpec,
    },
    PauseRollout {
        id: String,
    },
    ResumeRollout {
        id: String,
    },
    /// With `rollback`, also starts a rollout of the previous release.
    AbortRollout {
        id: String,
        rollback: bool,
    },
    /// An agent reports on its step; an outcome carries its host report too.
    ReportStep {
        host: String,
        rollout: String,
        attempt: u32,
        report: StepReport,
        error: String,
        host_report: Option<Report>,
    },
    /// Leader-proposed: halts the rollout if, at this entry's `at_ms`, it has made no progress
    /// for its deadline.
    CheckProgress {
        rollout: String,
    },
}

/// A successful command's answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Answer {
    Done,
    /// The slot granted (or already held, for a re-entrant acquire).
    Slot(Slot),
    /// The token of the slot freed.
    Released {
        token: u64,
    },
    /// The group after a policy change.
    Group(GroupView),
    /// The rollout a rollout command acted on, and the rollback rollout an abort started.
    Rollout {
        id: String,
        rollback: Option<String>,
    },
}

/// What applying a command gives back: the same on every replica.
pub type Response = Result<Answer, StateError>;
