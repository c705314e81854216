//! Why a rollout command was refused.
//!
//! Like [`StateError`](super::super::StateError), of which it is one variant, a refusal is an
//! answer: plain data, the same on every replica, cached in the client's session. Each variant
//! names what the operator or agent needs to act on, and knows its gRPC code. None is
//! retryable in the lock's sense (nothing frees up by itself): an agent refused a slot because
//! its rollout is paused waits for its assignment to say `may_deploy` again, not for budget.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tonic::Code;

#[derive(Error, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum RolloutError {
    #[error("unknown rollout {id:?}: it was never started, or is older than the 100 kept")]
    UnknownRollout { id: String },

    #[error(
        "rollout id {id:?} is already used by a different rollout ({existing}); \
         retry with exactly the same request, or choose another --id"
    )]
    IdTaken { id: String, existing: String },

    #[error(
        "{what} already has the active rollout {other:?} ({state}); wait for it to finish, \
         pause or abort it, or start with --supersede to abort it"
    )]
    Conflict {
        /// `group "web"` or `host "web-1" (in group "api")`.
        what: String,
        other: String,
        state: String,
    },

    #[error("group {group:?} has no registered hosts: there is nothing to roll out to")]
    NoHosts { group: String },

    #[error(
        "batch {batch} is more than group {group:?}'s budget of {budget}; use --batch {budget} \
         or less, or raise the budget with `hotdeployctl groups set {group} --max-unavailable N`"
    )]
    BatchOverBudget {
        group: String,
        batch: u64,
        budget: u64,
    },

    #[error("canary {canary} is more than the {hosts} host(s) of group {group:?}")]
    CanaryOverHosts {
        group: String,
        canary: u64,
        hosts: u64,
    },

    #[error("invalid rollout: {0}")]
    Invalid(String),

    #[error(
        "cannot {action} rollout {id:?}: it is {state}{}",
        reason_suffix(reason)
    )]
    WrongState {
        id: String,
        action: String,
        state: String,
        reason: String,
    },

    #[error(
        "rollout {id:?} has no previous release to roll back to ({why}); abort it without \
         --rollback, then start a rollout of the release you want"
    )]
    NoPrevious { id: String, why: String },

    #[error("host {host:?} may not take a slot for rollout {id:?}: {why}")]
    NotAdmitted {
        host: String,
        id: String,
        why: String,
    },

    #[error("host {host:?} has no step in rollout {id:?}")]
    NoStep { host: String, id: String },

    #[error(
        "report for attempt {given} of host {host:?} in rollout {id:?} is stale: the current \
         attempt is {current}; drop it"
    )]
    StaleAttempt {
        host: String,
        id: String,
        given: u32,
        current: u32,
    },

    #[error("host {host:?} cannot report {report} in rollout {id:?}: its step is {phase}")]
    BadReport {
        host: String,
        id: String,
        report: String,
        phase: String,
    },

    #[error(
        "host {host:?} cannot release its slot with report {report}: only an outcome \
         (succeeded, failed, rolled_back, fenced) releases one"
    )]
    ReleaseWithoutOutcome { host: String, report: String },
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

impl RolloutError {
    pub fn code(&self) -> Code {
        match self {
            Self::UnknownRollout { .. } | Self::NoStep { .. } => Code::NotFound,
            Self::BatchOverBudget { .. }
            | Self::CanaryOverHosts { .. }
            | Self::Invalid(_)
            | Self::ReleaseWithoutOutcome { .. } => Code::InvalidArgument,
            Self::IdTaken { .. }
            | Self::Conflict { .. }
            | Self::NoHosts { .. }
            | Self::WrongState { .. }
            | Self::NoPrevious { .. }
            | Self::NotAdmitted { .. }
            | Self::StaleAttempt { .. }
            | Self::BadReport { .. } => Code::FailedPrecondition,
        }
    }
}
