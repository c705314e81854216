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
//! enums give a clear error for a command kind this binary does not know.
//!
//! **Versions.** Each command kind belongs to the format version that introduced it
//! ([`Command::version`]), and a proposal is stamped with its command's version, not with the
//! newest this binary knows. [`FORMAT_VERSION`] is the newest version this binary can apply.
//! [`Proposal::decode`] refuses an entry stamped with a newer version
//! ([`DecodeError::NeedsVersion`], naming the version it needs) before looking at its command,
//! and refuses an entry that does not decode ([`DecodeError::Malformed`]). The raft driver stops
//! the node on either: DESIGN §8 has the leader propose a new kind of command only once every
//! member knows it, so meeting one means this binary must be upgraded, and applying a guess (or
//! skipping the entry) would fork the replicas.
//!
//! Adding a command kind: name its version in a constant below, use the constant in
//! [`Command::version`] (the match has no wildcard, so the compiler asks), and let
//! [`FORMAT_VERSION`] take it into its maximum. Each number is written once, here, so
//! renumbering a feature is a one-line change, and nothing else names the numbers: code uses the
//! constants. Entries of the kinds that existed before keep their old version, so a mixed cluster
//! keeps applying them. The leader's version gate (`raft/versions.rs`) then keeps the new kind out
//! of the log until every member reports that it knows it; nothing else is needed for a rolling
//! upgrade.
//!
//! The versions so far:
//! - 1 ([`BASE_VERSION`]): the lock: groups, hosts, slots, members;
//! - 2 ([`ROLLOUTS_VERSION`]): rollouts;
//! - 3 ([`VERSION_GATE_VERSION`]): `SetMemberVersion`, the leader's record of what each member
//!   knows;
//! - 4 ([`FLEETLOCK_VERSION`]): FleetLock's lock-only hosts ([`Command::RegisterLockOnly`]),
//!   and the `Acquire` of purpose `fleetlock` (an ordinary slot, but audited as a FleetLock
//!   grant). Its `Release` is an ordinary one ([`BASE_VERSION`]). So a FleetLock `pre-reboot`
//!   waits for version 4 on every member, and a `steady-state` of a host not known yet too.
//! - 5 ([`STEP_RELEASE_VERSION`]): a `ReportStep` that also releases the deploy's slot
//!   (`release: Some(token)`), one entry for an outcome and its release. A `ReportStep`
//!   without it keeps version 2, so an agent's outcome still goes through a mixed cluster: the
//!   service then records the outcome alone and the agent releases on its own.
//! - 6 ([`GRANT_PHASE_VERSION`]): an `Acquire` that commits the holder's first phase with the
//!   grant (`phase: Some("draining")`): the grant is then the drain's fence, one entry less per
//!   deploy. An `Acquire` without it keeps its version, so while a member does not know 6 the
//!   service grants alone and the agent fences `draining` on its own, as before.
//!
//! The cargo feature `command-format-v1` builds an honest old binary for the mixed-version
//! tests: [`FORMAT_VERSION`] is 1, so it applies and advertises version 1 only, refuses newer
//! entries as any old binary would, and its own gate refuses to propose newer kinds (a FleetLock
//! request to it is refused naming itself as the old member).

use super::fleetlock::FLEETLOCK;
use super::group::{GroupSeed, GroupView};
use super::host::Report;
use super::lock::Slot;
use super::rollout::{RolloutSpec, StepReport};
use hotdeploy_common::config::MaxUnavailable;
use serde::{Deserialize, Serialize};

/// The first commands: groups, hosts, the lock, members. Every binary knows them.
pub const BASE_VERSION: u32 = 1;
/// Rollouts.
pub const ROLLOUTS_VERSION: u32 = 2;
/// The version gate's record of what each member knows (`SetMemberVersion`).
pub const VERSION_GATE_VERSION: u32 = 3;
/// FleetLock's lock-only hosts (`RegisterLockOnly`).
pub const FLEETLOCK_VERSION: u32 = 4;
/// A `ReportStep` that releases the slot with the outcome.
pub const STEP_RELEASE_VERSION: u32 = 5;
/// An `Acquire` that commits the holder's first phase with the grant.
pub const GRANT_PHASE_VERSION: u32 = 6;

/// The newest command format version this binary can apply: the largest of the versions above.
/// Every command kind it knows has a version at most this.
#[cfg(not(feature = "command-format-v1"))]
pub const FORMAT_VERSION: u32 = max(
    max(max(BASE_VERSION, ROLLOUTS_VERSION), STEP_RELEASE_VERSION),
    max(
        max(VERSION_GATE_VERSION, FLEETLOCK_VERSION),
        GRANT_PHASE_VERSION,
    ),
);
/// The newest command format version this binary can apply: built as an old binary (the cargo
/// feature `command-format-v1`, for mixed-version tests), only the first.
#[cfg(feature = "command-format-v1")]
pub const FORMAT_VERSION: u32 = BASE_VERSION;

#[cfg(not(feature = "command-format-v1"))]
const fn max(a: u32, b: u32) -> u32 {
    if a > b {
        a
    } else {
        b
    }
}

/// The payload of one raft log entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Proposal {
    /// The command format version this entry needs: its command's [`Command::version`].
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
    /// A proposal of `command`, stamped with the version its kind needs.
    pub fn new(
        write: Option<WriteId>,
        at_ms: u64,
        actor: impl Into<String>,
        command: Command,
    ) -> Self {
        Self {
            version: command.version(),
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

    /// Parses a log entry, refusing newer format versions than [`FORMAT_VERSION`] and commands
    /// that do not decode.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_known(bytes, FORMAT_VERSION)
    }

    /// [`Proposal::decode`] for a node that knows versions up to `known` (the simulator runs
    /// nodes of several versions in one process).
    pub fn decode_known(bytes: &[u8], known: u32) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        // Read the version alone first, so that a newer format gets a version error rather
        // than a confusing one about a field or command this binary does not know.
        let v: Versioned = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::Malformed(format!("log entry is not a proposal: {e}")))?;
        if v.version > known {
            return Err(DecodeError::NeedsVersion {
                needs: v.version,
                known,
            });
        }
        if v.version == 0 {
            return Err(DecodeError::Malformed(
                "log entry has command format version 0, which does not exist".into(),
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| {
            DecodeError::Malformed(format!("invalid version {} proposal: {e}", v.version))
        })
    }
}

/// Why a log entry does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Written in a format newer than this binary knows: it must be upgraded.
    #[error(
        "log entry needs command format version {needs}, but this coordinator knows only up to \
         version {known}; upgrade this coordinator"
    )]
    NeedsVersion { needs: u32, known: u32 },
    /// Not a valid proposal of a version this binary knows.
    #[error("{0}")]
    Malformed(String),
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
        /// A phase to commit with the grant, as a `ReportPhase` of the granted token in the same
        /// entry (the agent's `draining`, when no hook runs between the grant and the drain).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phase: Option<String>,
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
    /// An agent reports on its step; an outcome carries its host report too, and may release
    /// the deploy's slot (`release`, its token) once it is recorded: one entry for both. A
    /// token the host no longer holds releases nothing (the answer is then `Done`, not
    /// `Released`).
    ReportStep {
        host: String,
        rollout: String,
        attempt: u32,
        report: StepReport,
        error: String,
        host_report: Option<Report>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        release: Option<u64>,
    },
    /// Leader-proposed: halts the rollout if, at this entry's `at_ms`, it has made no progress
    /// for its deadline.
    CheckProgress {
        rollout: String,
    },
    /// Leader-proposed: member `id` reports that it knows command format versions up to
    /// `version` (from its peer frames). Kept so that a later leader knows the version of a
    /// member that is down (see `raft/versions.rs`).
    SetMemberVersion {
        id: u64,
        version: u32,
    },
    /// FleetLock: makes `host` a lock-only host of `group` if no agent has registered it (see
    /// `fleetlock.rs`); a no-op for a host already known in that group.
    RegisterLockOnly {
        host: String,
        group: String,
    },
}

impl Command {
    /// The command format version that introduced this kind of command. No wildcard: a new
    /// kind must be given its version (see the module docs).
    ///
    /// One kind changed its meaning rather than arriving: an `Acquire` of purpose `fleetlock` is
    /// audited as a FleetLock grant (`acquire_fleetlock`) since [`FLEETLOCK_VERSION`], which an
    /// older binary would not record, so it needs that version too.
    pub fn version(&self) -> u32 {
        match self {
            // Before FleetLock's arm: a phase needs 6 whatever the purpose (6 implies 4).
            Command::Acquire { phase: Some(_), .. } => GRANT_PHASE_VERSION,
            Command::Acquire { purpose, .. } if purpose == FLEETLOCK => FLEETLOCK_VERSION,
            Command::ReportStep {
                release: Some(_), ..
            } => STEP_RELEASE_VERSION,
            Command::SeedGroups { .. }
            | Command::SetGroupPolicy { .. }
            | Command::Register { .. }
            | Command::UpdateReport { .. }
            | Command::MarkUnreachable { .. }
            | Command::MarkReachable { .. }
            | Command::Acquire { .. }
            | Command::Release { .. }
            | Command::ForceRelease { .. }
            | Command::ReportPhase { .. }
            | Command::RemoveHost { .. }
            | Command::SetMember { .. }
            | Command::RemoveMember { .. } => BASE_VERSION,
            Command::StartRollout { .. }
            | Command::PauseRollout { .. }
            | Command::ResumeRollout { .. }
            | Command::AbortRollout { .. }
            | Command::ReportStep { .. }
            | Command::CheckProgress { .. } => ROLLOUTS_VERSION,
            Command::SetMemberVersion { .. } => VERSION_GATE_VERSION,
            Command::RegisterLockOnly { .. } => FLEETLOCK_VERSION,
        }
    }

    /// The command's kind, as errors name it (`StartRollout`).
    pub fn kind(&self) -> &'static str {
        match self {
            Command::SeedGroups { .. } => "SeedGroups",
            Command::SetGroupPolicy { .. } => "SetGroupPolicy",
            Command::Register { .. } => "Register",
            Command::UpdateReport { .. } => "UpdateReport",
            Command::MarkUnreachable { .. } => "MarkUnreachable",
            Command::MarkReachable { .. } => "MarkReachable",
            Command::Acquire { purpose, .. } if purpose == FLEETLOCK => "Acquire (fleetlock)",
            Command::Acquire { phase: Some(_), .. } => "Acquire (phase)",
            Command::Acquire { .. } => "Acquire",
            Command::Release { .. } => "Release",
            Command::ForceRelease { .. } => "ForceRelease",
            Command::ReportPhase { .. } => "ReportPhase",
            Command::RemoveHost { .. } => "RemoveHost",
            Command::SetMember { .. } => "SetMember",
            Command::RemoveMember { .. } => "RemoveMember",
            Command::StartRollout { .. } => "StartRollout",
            Command::PauseRollout { .. } => "PauseRollout",
            Command::ResumeRollout { .. } => "ResumeRollout",
            Command::AbortRollout { .. } => "AbortRollout",
            Command::ReportStep {
                release: Some(_), ..
            } => "ReportStep (release)",
            Command::ReportStep { .. } => "ReportStep",
            Command::CheckProgress { .. } => "CheckProgress",
            Command::SetMemberVersion { .. } => "SetMemberVersion",
            Command::RegisterLockOnly { .. } => "RegisterLockOnly",
        }
    }
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
pub type Response = Result<Answer, super::error::StateError>;
