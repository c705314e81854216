//! Rollouts in the replicated state (DESIGN §5; docs/architecture.md "Rollouts").
//!
//! A rollout upgrades every host of one group to one release, a few at a time, under the lock.
//! Everything about it lives here, in the state machine, so that every coordinator holds the
//! same rollouts and a new leader carries on where the old one stopped:
//!
//! - `model`: the data: rollouts, per-host steps and their phases, events;
//! - `start`: `StartRollout`: checks, idempotence by id, supersede, the steps;
//! - `control`: pause, resume, abort (and its rollback rollout), the progress deadline;
//! - `report`: what agents report (`ReportStep`), and what the lock's grants, fenced phases and
//!   releases do to a host's step;
//! - `admit`: which hosts may deploy now (canaries, batch), completion and halting;
//! - `desired`: each host's desired release, and the catch-up of a host that is not on it;
//! - `wait`: what each step waits on, for `rollout status`;
//! - `error`: [`RolloutError`].
//!
//! **Derived on apply.** Admission is not a leader's decision but a function of the state:
//! [`Rollouts::reconcile`] runs after every command the machine applies successfully and moves
//! every active rollout to its fixpoint (halt, complete, pause after the canaries, admit staged
//! hosts up to the batch). The same log gives the same admissions on every replica, with no
//! timer and nothing to hand over at a leader change. The one clock is the progress deadline,
//! and it enters only as a proposal (`CheckProgress`) that the machine checks against the
//! proposal's own `at_ms`.
//!
//! Invariants (checked by [`Rollouts::check_consistency`], and by the property test after every
//! step):
//! - at most one active `operator`/`rollback` rollout per group;
//! - a host has a non-terminal step in at most one active rollout;
//! - a running rollout has at most `batch` steps in flight (first installs without a slot
//!   aside), and no non-canary step was admitted while a canary step was not terminal;
//! - a running rollout has fewer failures than `max_failures`; a completed one has no
//!   non-terminal step;
//! - every step of an active rollout names a registered host, and a step's token names that
//!   host's slot or none.
//! - the derived host → active step index (`index`: not serialized, rebuilt on restore, and
//!   brought up to date after every applied command from what the command marked as changed)
//!   names exactly the non-terminal steps of the active rollouts. Reads (`assignment`, the
//!   heartbeat's answer) use it; code that runs while a command applies walks the rollouts
//!   instead, since the index is only refreshed after it.
//!
//! Left out: command versioning for mixed-version clusters (issue 11; see the architecture
//! doc for where its gate sits) and any per-rollout metrics.

mod admit;
mod control;
mod desired;
mod error;
mod index;
mod model;
mod report;
mod start;
mod wait;

#[cfg(test)]
mod proptest;
#[cfg(test)]
mod tests;

pub use desired::Desired;
pub use error::RolloutError;
pub use model::{
    Assignment, Event, PhaseTime, Policy, ReleaseSpec, Rollout, RolloutKind, RolloutSpec,
    RolloutState, Step, StepPhase, StepReport, DEFAULT_PROGRESS_DEADLINE_MS,
};
pub use start::check_release_spec;
pub use wait::{Unavailable, Wait};

use super::group::Group;
use super::host::Host;
use super::lock::Slot;
use index::ActiveIndex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The part of the machine's state a rollout reads: hosts, groups and slots, after the command
/// being applied has changed them.
#[derive(Clone, Copy)]
pub(in crate::state) struct Fleet<'a> {
    pub hosts: &'a BTreeMap<String, Host>,
    pub groups: &'a BTreeMap<String, Group>,
    pub slots: &'a BTreeMap<u64, Slot>,
}

impl<'a> Fleet<'a> {
    pub fn host(&self, id: &str) -> Option<&'a Host> {
        self.hosts.get(id)
    }

    /// The slot `host` holds, if any.
    pub fn slot_of(&self, host: &str) -> Option<&'a Slot> {
        self.hosts
            .get(host)
            .and_then(|h| h.slot)
            .and_then(|t| self.slots.get(&t))
    }

    /// Whether `host` holds a slot taken for rollout `r`.
    pub fn holds_slot_for(&self, host: &str, r: &Rollout) -> bool {
        self.slot_of(host).is_some_and(|s| serves(s, r))
    }

    /// The hosts of `group`, by id.
    pub fn members(&self, group: &str) -> Vec<&'a Host> {
        self.groups
            .get(group)
            .map(|g| g.members.iter().filter_map(|h| self.hosts.get(h)).collect())
            .unwrap_or_default()
    }

    /// The hosts of `group` a rollout can target, by id: its agent hosts. A lock-only host
    /// (FleetLock) has no agent to deploy anything; it still counts in the group's budget.
    pub fn targets(&self, group: &str) -> Vec<&'a Host> {
        let mut hosts = self.members(group);
        hosts.retain(|h| !h.is_lock_only());
        hosts
    }
}

/// The assignment of step `s` of rollout `r`.
fn assignment_from(r: &Rollout, s: &Step) -> Assignment {
    Assignment {
        rollout: r.id.clone(),
        release: r.release.clone(),
        attempt: s.attempt,
        phase: s.phase,
        canary: s.canary,
        may_deploy: r.state == RolloutState::Running && s.phase.is_in_flight(),
        first_install: s.first_install,
        auto_rollback: r.policy.auto_rollback,
    }
}

/// Whether `slot` was taken for rollout `r`: it names `r` and was granted after `r` started.
/// (A rollout id is free text to the lock, so a slot may name an id before a rollout of that
/// id exists; such a slot is not the rollout's.)
pub(in crate::state) fn serves(slot: &Slot, r: &Rollout) -> bool {
    slot.rollout == r.id && slot.token > r.created_index
}

/// Host → (rollout, step position): the index's entries, for tests.
#[cfg(test)]
pub(in crate::state) type IndexEntries = BTreeMap<String, (String, usize)>;

/// Who applies: the raft index, the proposer's clock and the actor of the entry.
#[derive(Clone, Copy)]
pub(in crate::state) struct At<'a> {
    pub index: u64,
    pub at_ms: u64,
    pub actor: &'a str,
}

/// Every rollout the state remembers, and the desired releases they set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub(in crate::state) struct Rollouts {
    by_id: BTreeMap<String, Rollout>,
    /// Host → the release of the latest rollout that succeeded on it.
    host_desired: BTreeMap<String, Desired>,
    /// Group → the release of the latest rollout of that group that succeeded on any host.
    group_desired: BTreeMap<String, Desired>,
    /// Derived, never serialized: host → (active rollout, index of its non-terminal step in
    /// it), so that a heartbeat's assignment is one lookup rather than a walk of every
    /// rollout and its steps. Rebuilt by [`Rollouts::reindex`] on restore and refreshed by
    /// [`Rollouts::refresh_index`] after every command (see `index.rs`);
    /// [`Rollouts::check_consistency`] checks it against a scan.
    #[serde(skip)]
    active_steps: ActiveIndex,
}

impl Rollouts {
    pub fn get(&self, id: &str) -> Option<&Rollout> {
        self.by_id.get(id)
    }

    /// Every rollout kept, oldest first.
    pub fn list(&self) -> Vec<&Rollout> {
        let mut all: Vec<&Rollout> = self.by_id.values().collect();
        all.sort_by_key(|r| r.created_index);
        all
    }

    /// Whether any rollout is active (the hooks on lock commands do nothing otherwise).
    pub fn any_active(&self) -> bool {
        self.by_id.values().any(|r| r.state.is_active())
    }

    /// Ids of the active rollouts, oldest first.
    fn active_ids(&self) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|r| r.state.is_active())
            .map(|r| r.id.clone())
            .collect()
    }

    /// The active rollout in which `host` has a non-terminal step, if any (there is at most
    /// one, by the per-host rule), by the index: valid between commands, not while one applies
    /// (use [`Rollouts::scan_active_step_of`] there).
    pub fn active_step_of(&self, host: &str) -> Option<(&Rollout, &Step)> {
        let (id, i) = self.active_steps.get(host)?;
        let r = self.by_id.get(id)?;
        r.steps.get(i).map(|s| (r, s))
    }

    /// Rebuilds the derived indexes from the rollouts (on restore): each rollout's host →
    /// step position map, and the host → active step index. Linear in the steps.
    pub fn reindex(&mut self) {
        for r in self.by_id.values_mut() {
            r.reindex();
        }
        self.active_steps.rebuild(&self.by_id);
    }

    /// Brings the index up to date with what the command just applied marked as changed, and
    /// returns the hosts whose assignment may have changed. The machine calls it after every
    /// command; it costs what the command touched.
    pub fn refresh_index(&mut self) -> BTreeSet<String> {
        self.active_steps.refresh(&self.by_id)
    }

    /// The index as it is and as a full rebuild would make it, for the property tests.
    #[cfg(test)]
    pub fn index_and_rebuild(&self) -> (IndexEntries, IndexEntries) {
        let mut rebuilt = ActiveIndex::default();
        rebuilt.rebuild(&self.by_id);
        (
            self.active_steps.entries().clone(),
            rebuilt.entries().clone(),
        )
    }

    /// [`Rollouts::active_step_of`] by a walk of every rollout, for use while a command is
    /// being applied (the index is rebuilt only after it).
    pub(super) fn scan_active_step_of(&self, host: &str) -> Option<(&Rollout, &Step)> {
        self.list()
            .into_iter()
            .filter(|r| r.state.is_active())
            .find_map(|r| {
                r.step(host)
                    .filter(|s| !s.phase.is_terminal())
                    .map(|s| (r, s))
            })
    }

    /// What `host` is to do now, as the heartbeat answer carries it.
    pub fn assignment(&self, host: &str) -> Option<Assignment> {
        self.active_step_of(host)
            .map(|(r, s)| assignment_from(r, s))
    }

    /// [`Rollouts::assignment`] by a walk rather than the index: what tests compare it with.
    #[cfg(test)]
    pub fn assignment_by_scan(&self, host: &str) -> Option<Assignment> {
        self.scan_active_step_of(host)
            .map(|(r, s)| assignment_from(r, s))
    }

    /// Whether [`Rollouts::assignment`] of `host` equals `told`, without building it: what a
    /// heartbeat stream asks after every applied entry, so it allocates nothing.
    pub fn assignment_is(&self, host: &str, told: Option<&Assignment>) -> bool {
        match (self.active_step_of(host), told) {
            (None, None) => true,
            (Some((r, s)), Some(a)) => {
                a.rollout == r.id
                    && a.attempt == s.attempt
                    && a.phase == s.phase
                    && a.canary == s.canary
                    && a.may_deploy == (r.state == RolloutState::Running && s.phase.is_in_flight())
                    && a.first_install == s.first_install
                    && a.auto_rollback == r.policy.auto_rollback
                    && a.release == r.release
            }
            _ => false,
        }
    }

    /// Whether `host` is a canary of rollout `id`.
    pub fn is_canary(&self, host: &str, id: &str) -> bool {
        self.by_id
            .get(id)
            .and_then(|r| r.step(host))
            .is_some_and(|s| s.canary)
    }

    /// Running rollouts whose progress deadline has passed at `now_ms`.
    pub fn overdue(&self, now_ms: u64) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|r| r.state == RolloutState::Running)
            .filter(|r| {
                now_ms.saturating_sub(r.last_progress_at_ms) >= r.policy.progress_deadline_ms
            })
            .map(|r| r.id.clone())
            .collect()
    }

    /// Host → desired release, for reads.
    pub fn desired_of(&self, host: &Host) -> Option<&Desired> {
        desired::desired_for(&self.host_desired, &self.group_desired, host)
    }

    /// Checks the invariants listed at the top of this file.
    pub fn check_consistency(&self, fleet: Fleet<'_>) -> Result<(), String> {
        let mut group_owner: BTreeMap<&str, &str> = BTreeMap::new();
        let mut host_owner: BTreeMap<&str, &str> = BTreeMap::new();
        for r in self.by_id.values() {
            if r.state.is_active() && r.kind != RolloutKind::CatchUp {
                if let Some(other) = group_owner.insert(&r.group, &r.id) {
                    return Err(format!(
                        "group {:?} has two active rollouts: {other:?} and {:?}",
                        r.group, r.id
                    ));
                }
            }
            if !r.positions_are_true() {
                return Err(format!(
                    "rollout {:?}'s host -> step position map is not its steps'",
                    r.id
                ));
            }
            for s in &r.steps {
                if r.state.is_active() && fleet.host(&s.host).is_none() {
                    return Err(format!(
                        "rollout {:?} has a step for unknown host {:?}",
                        r.id, s.host
                    ));
                }
                if let Some(t) = s.token {
                    if fleet.slots.get(&t).is_some_and(|slot| slot.host != s.host) {
                        return Err(format!(
                            "step {:?}/{:?} names another host's slot {t}",
                            r.id, s.host
                        ));
                    }
                }
                if r.state.is_active() && !s.phase.is_terminal() {
                    if let Some(other) = host_owner.insert(&s.host, &r.id) {
                        return Err(format!(
                            "host {:?} has non-terminal steps in {other:?} and {:?}",
                            s.host, r.id
                        ));
                    }
                }
            }
            if r.state.is_active() {
                for (i, s) in r.steps.iter().enumerate() {
                    let indexed = self.active_steps.get(&s.host);
                    let want = !s.phase.is_terminal();
                    if want && indexed != Some((r.id.as_str(), i)) {
                        return Err(format!(
                            "host {:?} is indexed at {indexed:?}, not at step {i} of {:?}",
                            s.host, r.id
                        ));
                    }
                }
            }
            if r.state == RolloutState::Running {
                let in_flight = admit::in_flight(r, fleet);
                if in_flight > r.policy.batch {
                    return Err(format!(
                        "rollout {:?} has {in_flight} steps in flight, over its batch {}",
                        r.id, r.policy.batch
                    ));
                }
                if r.failures() >= r.policy.max_failures {
                    return Err(format!(
                        "rollout {:?} runs with {} failures",
                        r.id,
                        r.failures()
                    ));
                }
            }
            if r.state == RolloutState::Completed && r.pending() > 0 {
                return Err(format!("rollout {:?} completed with steps pending", r.id));
            }
            let canary_open = r.steps.iter().any(|s| s.canary && !s.phase.is_terminal());
            if canary_open
                && r.steps
                    .iter()
                    .any(|s| !s.canary && s.admitted_at_ms.is_some() && !s.phase.is_terminal())
            {
                return Err(format!(
                    "rollout {:?} admitted a non-canary host while a canary is not done",
                    r.id
                ));
            }
        }
        if host_owner.len() != self.active_steps.len() {
            return Err(format!(
                "{} hosts have an active step, and the index names {}",
                host_owner.len(),
                self.active_steps.len()
            ));
        }
        Ok(())
    }
}
