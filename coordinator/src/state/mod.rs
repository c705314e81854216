//! The replicated state machine of the coordinator (DESIGN §2 `state/`, §3 the lock).
//!
//! Raft agrees on a log of [`Proposal`]s; this module turns that log into state. It is a pure,
//! deterministic function of the log: no I/O, no clock, no randomness, ordered maps only, so that
//! every replica that applies the same entries holds the same hosts, groups and slots and gives
//! the same answers. The raft driver calls [`StateMachine::apply`] for each committed entry and
//! saves [`StateMachine::snapshot`]s; the gRPC service reads through the accessors.
//!
//! Files, one job each:
//! - `command`: [`Proposal`], [`Command`], [`Answer`]: the log's entries and their answers;
//! - `host`, `group`: what is known about hosts and groups;
//! - `lock`: [`Slot`]s and the grant rule, the heart of the system;
//! - `session`: dedup of retried client writes by `(client_id, seq)`;
//! - `audit`: the bounded trail of operator actions;
//! - `changes`: which hosts' heartbeat answers each recent entry may have changed (derived);
//! - `error`: [`StateError`], with gRPC codes and retryability;
//! - `rollout/`: rollouts, their per-host steps, admission and desired releases;
//! - `fleetlock`: FleetLock's lock-only hosts (`RegisterLockOnly`) and the `fleetlock` purpose;
//! - `machine`: [`StateMachine`], which applies commands and holds it all together;
//! - `replicated`: the [`crate::raft::Replicated`] trait over the machine: what the raft driver
//!   calls, and the only place that turns raft's entries and membership changes into commands.

mod audit;
mod changes;
mod command;
mod error;
mod fleetlock;
mod group;
mod host;
mod lock;
mod machine;
mod replicated;
mod rollout;
mod session;

#[cfg(test)]
mod fleetlock_tests;
#[cfg(test)]
mod proptest;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod upgrade_tests;

pub use audit::AuditEvent;
pub use changes::Changed;
pub use command::{
    Answer, Command, DecodeError, Proposal, Response, WriteId, BASE_VERSION, FLEETLOCK_VERSION,
    FORMAT_VERSION, GRANT_PHASE_VERSION, ROLLOUTS_VERSION, STEP_RELEASE_VERSION,
    VERSION_GATE_VERSION,
};
pub use error::StateError;
pub use fleetlock::{LockOnlyPlan, FLEETLOCK};
pub use group::{GroupSeed, GroupView};
pub use host::{Health, Host, HostKind, Reachability, Report, Rotation};
pub use lock::{GrantChecker, Outlook, Slot};
pub use machine::{StateMachine, MAINTENANCE, SNAPSHOT_FORMAT};
pub use rollout::{
    check_release_spec, Assignment, Event as RolloutEvent, PhaseTime, Policy, ReleaseSpec, Rollout,
    RolloutError, RolloutKind, RolloutSpec, RolloutState, Step, StepPhase, StepReport, Unavailable,
    Wait, DEFAULT_PROGRESS_DEADLINE_MS,
};
