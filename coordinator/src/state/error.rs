//! Why the state machine refused a command.
//!
//! A refusal is an *answer*, not a failure of the node: it is the same on every replica, it is
//! cached in the client's session like a success (a retried `(client_id, seq)` gets the same
//! refusal back), and it is snapshotted with the session. Retryable refusals are the exception:
//! they are not cached, so a retry of the same write is judged afresh (see `session.rs`). So [`StateError`] is plain data:
//! `Clone`, `PartialEq` and serde, with owned strings only. For that reason a name error is
//! stored as its rendered parts ([`StateError::InvalidName`]) rather than as
//! `hotdeploy_common::NameError`, whose `&'static str` fields cannot be deserialized.
//!
//! Each variant carries the context an operator needs to act (the host, the group, the holder's
//! purpose, the hosts using the budget) and knows two things about itself: the gRPC code the
//! service answers with ([`StateError::code`]), and whether waiting and asking again can
//! succeed without anyone changing anything ([`StateError::is_retryable`]). Only the budget
//! refusals are retryable: slots are released and hosts come back on their own.

use super::rollout::RolloutError;
use hotdeploy_common::config::BudgetError;
use hotdeploy_common::NameError;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tonic::Code;

#[derive(Error, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum StateError {
    #[error("unknown host {host:?}: it has not registered, or was removed")]
    UnknownHost { host: String },

    #[error(
        "unknown group {group:?}; create it with `hotdeployctl groups set {group} --max-unavailable N`"
    )]
    UnknownGroup { group: String },

    #[error(
        "host {host:?} cannot register: unknown group(s) {}; known groups: {}. \
         Create the group first with `hotdeployctl groups set GROUP --max-unavailable N`",
        list(unknown),
        list(known)
    )]
    RegisterUnknownGroups {
        host: String,
        unknown: Vec<String>,
        known: Vec<String>,
    },

    #[error("host {host:?} cannot register without groups; set `groups` in the agent's config")]
    NoGroups { host: String },

    #[error("invalid {kind} name {value:?}: {rule}")]
    InvalidName {
        kind: String,
        value: String,
        rule: String,
    },

    #[error("invalid budget for group {group:?}: {reason}")]
    InvalidBudget { group: String, reason: String },

    #[error(
        "host {host:?} already holds slot {token} for purpose {holder_purpose:?}; \
         wait for it to be released, or `hotdeployctl locks release {host} --force`"
    )]
    HeldForOtherPurpose {
        host: String,
        holder_purpose: String,
        token: u64,
    },

    #[error(
        "granting a slot to host {host:?} would make {} host(s) of group {group:?} \
         unavailable, over its budget of {budget}; unavailable now: {}",
        unavailable.len() + 1, list(unavailable)
    )]
    OverBudget {
        host: String,
        group: String,
        budget: u64,
        /// The hosts of the group already unavailable (without `host`).
        unavailable: Vec<String>,
    },

    #[error(
        "granting a slot to host {host:?} would leave group {group:?} with no available host \
         (unavailable now: {}); it can be granted once another host is back, or set \
         `--allow-zero-available true` on the group",
        list(unavailable)
    )]
    ZeroAvailable {
        host: String,
        group: String,
        unavailable: Vec<String>,
    },

    #[error(
        "group {group:?} has a single provisioned host ({host:?}), so any deploy would leave it \
         with none available; it cannot be deployed unless \
         `hotdeployctl groups set {group} --allow-zero-available true`"
    )]
    LoneHost { host: String, group: String },

    #[error(
        "stale token {given} for host {host:?}: {}; \
         the slot was released, force-released, or the host was removed",
        match current { Some(t) => format!("its current slot is {t}"), None => "it holds no slot".to_string() }
    )]
    StaleToken {
        host: String,
        given: u64,
        current: Option<u64>,
    },

    #[error("host {host:?} holds no slot")]
    NoSlot { host: String },

    #[error("host {host:?} is still reachable; stop its agent first, or remove it with --force")]
    HostReachable { host: String },

    #[error(
        "host {host:?} holds slot {token}, so its groups cannot change (from {} to {}); \
         release the slot first",
        list(from),
        list(to)
    )]
    GroupsChangeWhileHolding {
        host: String,
        token: u64,
        from: Vec<String>,
        to: Vec<String>,
    },

    #[error(
        "host {host:?} is registered by its agent in group(s) {}, not in {group:?}; a FleetLock \
         client must name one of its host's groups",
        list(groups)
    )]
    NotInGroup {
        host: String,
        group: String,
        groups: Vec<String>,
    },

    #[error(
        "host {host:?} is a lock-only (FleetLock) host, which has no agent; an agent reports for \
         it only once it has registered"
    )]
    LockOnlyHost { host: String },

    #[error(
        "request seq {seq} of client {client_id:?} is too old: only the answers of the last \
         {window} seqs are kept (oldest kept: {oldest}); use a new seq"
    )]
    SeqTooOld {
        client_id: String,
        seq: u64,
        oldest: u64,
        window: usize,
    },

    #[error("cannot decode: {0}")]
    Decode(String),

    #[error(
        "raft entry {index} was already applied (applied index {applied}); \
         this is a bug in the raft driver"
    )]
    AlreadyApplied { index: u64, applied: u64 },

    #[error(transparent)]
    Rollout(#[from] RolloutError),
}

impl StateError {
    /// The gRPC status code the service answers with.
    pub fn code(&self) -> Code {
        match self {
            Self::UnknownHost { .. } | Self::UnknownGroup { .. } => Code::NotFound,
            Self::NoGroups { .. }
            | Self::InvalidName { .. }
            | Self::InvalidBudget { .. }
            | Self::Decode(_) => Code::InvalidArgument,
            Self::OverBudget { .. } | Self::ZeroAvailable { .. } => Code::ResourceExhausted,
            Self::RegisterUnknownGroups { .. }
            | Self::HeldForOtherPurpose { .. }
            | Self::LoneHost { .. }
            | Self::StaleToken { .. }
            | Self::NoSlot { .. }
            | Self::HostReachable { .. }
            | Self::GroupsChangeWhileHolding { .. }
            | Self::NotInGroup { .. }
            | Self::LockOnlyHost { .. }
            | Self::SeqTooOld { .. } => Code::FailedPrecondition,
            Self::AlreadyApplied { .. } => Code::Internal,
            Self::Rollout(e) => e.code(),
        }
    }

    /// Whether asking again later, unchanged, may succeed: true only when the refusal is about
    /// budget that frees up by itself (a slot is released, a host comes back). A waiter on the
    /// leader keeps waiting on these and gives up at once on anything else.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::OverBudget { .. } | Self::ZeroAvailable { .. })
    }

    /// An invalid budget for `group`.
    pub(super) fn budget(group: &str, e: BudgetError) -> Self {
        Self::InvalidBudget {
            group: group.to_string(),
            reason: e.to_string(),
        }
    }
}

impl From<NameError> for StateError {
    fn from(e: NameError) -> Self {
        Self::InvalidName {
            kind: e.kind.to_string(),
            value: e.value,
            rule: e.rule.to_string(),
        }
    }
}

/// Renders a list of names for a message: `a, b` or `(none)`.
fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}
