//! The state machine: applies committed commands to hosts, groups, slots, members, sessions and
//! the audit trail.
//!
//! Every replica calls [`StateMachine::apply`] with the same entries in the same order and must
//! end in the same state with the same answers. So this file does no I/O, reads no clock and no
//! randomness, and iterates only ordered maps: time comes in the proposal's `at_ms`, and the only
//! number it makes up is a slot's token, which is the raft index of the granting entry (strictly
//! increasing, and the same on every replica).
//!
//! Each command either succeeds, or is refused and leaves the state as it was (apart from the
//! applied index, and the session that remembers the refusal). Handlers therefore check
//! everything first and change things last.
//!
//! Invariants (checked on restore by [`StateMachine::check_consistency`], and after every step
//! by the property test):
//! - a host's `slot` is `Some(t)` iff the slot table has a slot `t` for that host;
//! - a host's groups are sorted, unique, non-empty and exist, and each group's member index
//!   lists exactly the hosts naming it;
//! - every token is at most the applied index.
//!
//! Rollouts (`rollout/`) hook in at two points: their own commands, and a few lines in the lock
//! commands (a grant, a fenced phase, a freed slot, a host registering, returning or being
//! removed) that tell the rollouts what happened; after every successful command the rollouts
//! are reconciled (admission is derived on apply).
//!
//! FleetLock's lock-only hosts live in `fleetlock.rs` (`RegisterLockOnly`); their locks are
//! ordinary slots of purpose `fleetlock`.
//!
//! Left out: limits on the length of free-text fields, which the service layer enforces on its
//! network inputs.

use super::audit::{AuditEvent, AuditLog};
use super::changes::{Changed, HostChanges};
use super::command::{Answer, Command, Proposal, Response, FORMAT_VERSION, ROLLOUTS_VERSION};
use super::error::StateError;
use super::fleetlock::FLEETLOCK;
use super::group::{Group, GroupSeed, GroupView};
use super::host::{Host, HostKind, Reachability, Report};
use super::lock::{self, Slot};
use super::rollout::{Assignment, At, Desired, Fleet, Rollout, RolloutError, Rollouts, Wait};
use super::session::Sessions;
use hotdeploy_common::config::MaxUnavailable;
use hotdeploy_common::names::{check_group, check_host, check_release};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The fleet view a rollout reads, from the machine's own fields (a macro rather than a method
/// so that `self.rollouts` can be borrowed mutably beside it).
macro_rules! fleet {
    ($s:expr) => {
        Fleet {
            hosts: &$s.hosts,
            groups: &$s.groups,
            slots: &$s.slots,
        }
    };
}

/// The purpose of an operator's maintenance lock (`hotdeployctl locks acquire`), which is audited.
pub const MAINTENANCE: &str = "maintenance";

/// Actors whose maintenance locks are audited: operators, by their certificate identity.
const OPERATOR_PREFIX: &str = "operator/";

/// The snapshot format this binary writes and reads.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// The replicated state of a coordinator cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct StateMachine {
    /// The raft index of the last entry applied.
    applied: u64,
    pub(super) groups: BTreeMap<String, Group>,
    pub(super) hosts: BTreeMap<String, Host>,
    /// Token → slot.
    pub(super) slots: BTreeMap<u64, Slot>,
    /// Raft member id → peer address.
    members: BTreeMap<u64, String>,
    sessions: Sessions,
    audit: AuditLog,
    /// Rollouts and desired releases. `default` so that a snapshot from before rollouts loads.
    #[serde(default)]
    rollouts: Rollouts,
    /// The newest command format version of any entry that changed the state (0 reads as 1). A
    /// node that knows less refuses a snapshot of this state: it could not have applied what
    /// made it.
    #[serde(default)]
    format_version: u32,
    /// Raft member id → the newest command format version it reported, as a leader recorded it
    /// (`SetMemberVersion`). A later leader judges a member that is down by it.
    #[serde(default)]
    member_versions: BTreeMap<u64, u32>,
    /// Derived and local, never serialized: the hosts whose heartbeat answer each recent entry
    /// may have changed (`changes.rs`).
    #[serde(skip)]
    changes: HostChanges,
}

/// The snapshot as written: the state wrapped in a format number.
#[derive(Serialize)]
struct SnapshotOut<'a> {
    format: u32,
    state: &'a StateMachine,
}

#[derive(Deserialize)]
struct SnapshotIn {
    format: u32,
    state: StateMachine,
}

impl StateMachine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one committed log entry at raft index `index`.
    ///
    /// A repeated `(client_id, seq)` gets its first answer back without re-applying. An index
    /// at or below the applied index is refused and changes nothing: replaying an entry twice
    /// would grant twice.
    pub fn apply(&mut self, index: u64, proposal: Proposal) -> Response {
        if index <= self.applied {
            return Err(StateError::AlreadyApplied {
                index,
                applied: self.applied,
            });
        }
        self.applied = index;
        if proposal.version == 0 || proposal.version > FORMAT_VERSION {
            return Err(StateError::Decode(format!(
                "command format version {} is not one of 1..={FORMAT_VERSION}",
                proposal.version
            )));
        }

        let Proposal {
            version,
            write,
            at_ms,
            actor,
            command,
        } = proposal;
        let Some(write) = write else {
            return self.execute_versioned(index, at_ms, &actor, version, command);
        };
        if let Some(answer) = self.sessions.check(index, at_ms, &write) {
            return self.answer_again(answer);
        }
        let response = self.execute_versioned(index, at_ms, &actor, version, command);
        self.sessions.record(index, at_ms, &write, &response);
        response
    }

    /// Applies the internal commands of one raft entry that is not a proposal (a membership
    /// change may name several nodes), in order, with `actor` and `at_ms` from the entry.
    pub(super) fn apply_internal(
        &mut self,
        index: u64,
        at_ms: u64,
        actor: &str,
        commands: Vec<Command>,
    ) -> Vec<Response> {
        if index <= self.applied {
            return vec![Err(StateError::AlreadyApplied {
                index,
                applied: self.applied,
            })];
        }
        self.applied = index;
        commands
            .into_iter()
            .map(|command| self.execute(index, at_ms, actor, command))
            .collect()
    }

    /// Records that raft entry `index` carried no proposal (an empty entry of a new leader, a
    /// conf change, an entry that did not decode), so that the applied index follows the log.
    pub fn skip(&mut self, index: u64) {
        self.applied = self.applied.max(index);
    }

    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// The whole state, applied index included, as serde_json.
    ///
    /// Serializing these types does not fail; should it ever, the error is returned (and stops
    /// the raft node), never an empty snapshot that would stand for an empty state.
    pub fn snapshot(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&SnapshotOut {
            format: SNAPSHOT_FORMAT,
            state: self,
        })
    }

    /// The inverse of [`StateMachine::snapshot`]. Refuses an unknown format, a state made by
    /// newer commands than [`FORMAT_VERSION`], and an inconsistent state.
    pub fn restore(bytes: &[u8]) -> Result<Self, StateError> {
        Self::restore_known(bytes, FORMAT_VERSION)
    }

    /// [`StateMachine::restore`] for a node that knows command format versions up to `known`.
    pub fn restore_known(bytes: &[u8], known: u32) -> Result<Self, StateError> {
        let snap: SnapshotIn = serde_json::from_slice(bytes)
            .map_err(|e| StateError::Decode(format!("invalid state snapshot: {e}")))?;
        if snap.format != SNAPSHOT_FORMAT {
            return Err(StateError::Decode(format!(
                "state snapshot format {} is not {SNAPSHOT_FORMAT}; upgrade this coordinator",
                snap.format
            )));
        }
        let mut state = snap.state;
        // A state written before versions were tracked: rollouts mean version 2 entries.
        if !state.rollouts.list().is_empty() {
            state.format_version = state.format_version.max(ROLLOUTS_VERSION);
        }
        if state.format_version() > known {
            return Err(StateError::Decode(format!(
                "the state snapshot was made by entries of command format version {}, and this \
                 coordinator knows versions up to {known}; upgrade this coordinator",
                state.format_version()
            )));
        }
        state.rebuild_members();
        state.rollouts.reindex();
        state.changes = HostChanges::starting_at(state.applied);
        state
            .check_consistency()
            .map_err(|e| StateError::Decode(format!("inconsistent state snapshot: {e}")))?;
        Ok(state)
    }

    // ---- reads ----

    pub fn host(&self, host: &str) -> Option<&Host> {
        self.hosts.get(host)
    }

    /// All hosts, sorted by id.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    pub fn group_view(&self, name: &str) -> Option<GroupView> {
        self.groups.get(name).map(|g| lock::view(g, &self.hosts))
    }

    /// All groups, sorted by name.
    pub fn group_views(&self) -> Vec<GroupView> {
        self.groups
            .values()
            .map(|g| lock::view(g, &self.hosts))
            .collect()
    }

    /// All slots, sorted by token (oldest grant first).
    pub fn slots(&self) -> Vec<&Slot> {
        self.slots.values().collect()
    }

    /// The slot of token `token`, if it is held.
    pub fn slot(&self, token: u64) -> Option<&Slot> {
        self.slots.get(&token)
    }

    /// The hosts whose heartbeat answer (slot or assignment) the entries after `index` may
    /// have changed, or [`Changed::All`] when this state no longer knows (see `changes.rs`).
    pub fn hosts_changed_after(&self, index: u64) -> Changed<'_> {
        self.changes.after(index)
    }

    /// Would `Acquire{host, purpose}` be granted now? `Ok(())` also for a re-entrant acquire.
    pub fn check_grant(&self, host: &str, purpose: &str) -> Result<(), StateError> {
        self.grant_check(host, purpose).map(|_| ())
    }

    /// Judges many acquires at this instant at once (the leader's queue of waiters).
    pub fn grant_checker(&self) -> lock::GrantChecker<'_> {
        lock::GrantChecker::new(&self.hosts, &self.groups, &self.slots)
    }

    /// Raft member id → peer address.
    pub fn members(&self) -> &BTreeMap<u64, String> {
        &self.members
    }

    /// Raft member id → the command format version a leader recorded for it.
    pub fn member_versions(&self) -> &BTreeMap<u64, u32> {
        &self.member_versions
    }

    /// The newest command format version of any entry that changed the state (at least 1).
    pub fn format_version(&self) -> u32 {
        self.format_version.max(1)
    }

    /// Turns this state, restored from a backup of another cluster (`hotdeploy-coordinator
    /// restore`), into the first state of a new one-node cluster of member `node` at `address`:
    /// the applied index moves to `index` (above the backup's, so that tokens keep
    /// increasing), the members are that one node (the old ones are not members of the new
    /// cluster; operators add members back), the recorded versions are forgotten, and the
    /// restore is audited with `detail`. Hosts, groups, slots, rollouts, sessions and the audit
    /// trail are kept as they are: a slot held at backup time stays held.
    pub fn rebase_for_restore(
        &mut self,
        index: u64,
        at_ms: u64,
        actor: &str,
        node: u64,
        address: &str,
        detail: String,
    ) -> Result<(), StateError> {
        if index <= self.applied {
            return Err(StateError::AlreadyApplied {
                index,
                applied: self.applied,
            });
        }
        self.applied = index;
        self.members = BTreeMap::from([(node, address.to_string())]);
        self.member_versions.clear();
        let ctx = Ctx {
            index,
            at_ms,
            actor,
        };
        self.record(&ctx, "restore", detail);
        Ok(())
    }

    /// The audit trail, oldest first.
    pub fn audit(&self) -> impl Iterator<Item = &AuditEvent> {
        self.audit.iter()
    }

    /// A rollout by id.
    pub fn rollout(&self, id: &str) -> Option<&Rollout> {
        self.rollouts.get(id)
    }

    /// Every rollout kept, oldest first.
    pub fn rollouts(&self) -> Vec<&Rollout> {
        self.rollouts.list()
    }

    /// What each waiting step of `r` waits on, by host.
    pub fn rollout_waits(&self, r: &Rollout) -> BTreeMap<String, Wait> {
        self.rollouts.waits(r, fleet!(self))
    }

    /// The step `host` is to work on now, if any.
    pub fn assignment(&self, host: &str) -> Option<Assignment> {
        self.rollouts.assignment(host)
    }

    /// The host → active step index as it is, and as a full rebuild makes it (tests).
    #[cfg(test)]
    pub(super) fn index_and_rebuild(
        &self,
    ) -> (super::rollout::IndexEntries, super::rollout::IndexEntries) {
        self.rollouts.index_and_rebuild()
    }

    /// Whether admission's shortcuts agree with their plain definitions (tests).
    #[cfg(test)]
    pub(super) fn check_admission_shortcuts(&self) -> Result<(), String> {
        self.rollouts.check_admission_shortcuts(fleet!(self))
    }

    /// [`StateMachine::assignment`] by a walk of every rollout, not the index (tests).
    #[cfg(test)]
    pub(super) fn assignment_by_scan(&self, host: &str) -> Option<Assignment> {
        self.rollouts.assignment_by_scan(host)
    }

    /// Whether the step `host` is to work on now is `told` (see [`Rollouts::assignment_is`]).
    pub fn assignment_is(&self, host: &str, told: Option<&Assignment>) -> bool {
        self.rollouts.assignment_is(host, told)
    }

    /// Whether a new slot for `host` serving `rollout` would pass the rollout's gate (a
    /// re-entrant acquire always does; an unknown rollout id is free text).
    pub fn check_rollout_gate(
        &self,
        host: &str,
        purpose: &str,
        rollout: &str,
    ) -> Result<(), StateError> {
        if rollout.is_empty() || self.held_for(host, purpose) {
            return Ok(());
        }
        self.rollouts.gate_acquire(host, rollout, fleet!(self))
    }

    /// Whether `host` is a canary of `rollout`.
    pub fn is_canary(&self, host: &str, rollout: &str) -> bool {
        self.rollouts.is_canary(host, rollout)
    }

    /// Running rollouts whose progress deadline has passed by `now_ms` (the leader's clock).
    pub fn overdue_rollouts(&self, now_ms: u64) -> Vec<String> {
        self.rollouts.overdue(now_ms)
    }

    /// `host`'s desired release, if a rollout has set one.
    pub fn desired_release(&self, host: &str) -> Option<&Desired> {
        self.hosts
            .get(host)
            .and_then(|h| self.rollouts.desired_of(h))
    }

    /// Number of live client sessions.
    #[cfg(test)]
    pub(super) fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Checks the invariants listed at the top of this file.
    pub(super) fn check_consistency(&self) -> Result<(), String> {
        for (id, host) in &self.hosts {
            if *id != host.id {
                return Err(format!("host {id:?} is stored as {:?}", host.id));
            }
            if host.groups.is_empty() || !host.groups.windows(2).all(|w| w[0] < w[1]) {
                return Err(format!("host {id:?} has groups {:?}", host.groups));
            }
            for g in &host.groups {
                if !self.groups.get(g).is_some_and(|g| g.members.contains(id)) {
                    return Err(format!("host {id:?} is not indexed in group {g:?}"));
                }
            }
            if let Some(token) = host.slot {
                if self.slots.get(&token).is_none_or(|s| s.host != *id) {
                    return Err(format!("host {id:?} names slot {token}, which is not its"));
                }
            }
        }
        for (name, group) in &self.groups {
            for id in &group.members {
                if !self.hosts.get(id).is_some_and(|h| h.groups.contains(name)) {
                    return Err(format!("group {name:?} indexes host {id:?} wrongly"));
                }
            }
        }
        for (token, slot) in &self.slots {
            if *token != slot.token || *token > self.applied {
                return Err(format!("slot {token} has token {}", slot.token));
            }
            if self.hosts.get(&slot.host).and_then(|h| h.slot) != Some(*token) {
                return Err(format!("slot {token} of {:?} is not its host's", slot.host));
            }
        }
        self.check_lock_only_hosts()?;
        self.rollouts.check_consistency(fleet!(self))
    }

    // ---- commands ----

    /// [`StateMachine::execute`] of a command of format `version`; a success raises the
    /// state's format version to it (a refusal changed nothing).
    fn execute_versioned(
        &mut self,
        index: u64,
        at_ms: u64,
        actor: &str,
        version: u32,
        command: Command,
    ) -> Response {
        let response = self.execute(index, at_ms, actor, command);
        if response.is_ok() {
            self.format_version = self.format_version.max(version);
        }
        response
    }

    /// Applies `command`, then moves the rollouts to their fixpoint (admission is derived on
    /// apply: see `rollout/admit.rs`). Only after a success: a refusal changes nothing. Then
    /// brings the host → active step index up to date with what changed, and records the hosts
    /// whose heartbeat answer may have changed.
    fn execute(&mut self, index: u64, at_ms: u64, actor: &str, command: Command) -> Response {
        let subject = slot_subject(&command).map(str::to_string);
        let response = self.execute_command(index, at_ms, actor, command);
        if response.is_ok() && self.rollouts.any_active() {
            let at = At {
                index,
                at_ms,
                actor,
            };
            self.rollouts.reconcile(&at, fleet!(self));
        }
        // Also after a refusal: it changed nothing, so whatever it marked is a no-op.
        let mut touched = self.rollouts.refresh_index();
        if response.is_ok() {
            touched.extend(subject);
            for host in touched {
                self.changes.record(index, host);
            }
        }
        response
    }

    fn execute_command(
        &mut self,
        index: u64,
        at_ms: u64,
        actor: &str,
        command: Command,
    ) -> Response {
        let ctx = Ctx {
            index,
            at_ms,
            actor,
        };
        match command {
            Command::SeedGroups { groups } => self.seed_groups(&ctx, groups),
            Command::SetGroupPolicy {
                group,
                max_unavailable,
                allow_zero_available,
            } => self.set_group_policy(&ctx, group, max_unavailable, allow_zero_available),
            Command::Register {
                host,
                groups,
                address,
                report,
            } => self.register(&ctx, host, groups, address, report),
            Command::UpdateReport { host, report } => {
                check_report(&report)?;
                self.agent_host_mut(&host)?.apply_report(report);
                Ok(Answer::Done)
            }
            Command::MarkUnreachable { host } => {
                self.agent_host_mut(&host)?.reachability = Reachability::Unreachable;
                Ok(Answer::Done)
            }
            Command::MarkReachable { host, report } => {
                check_report(&report)?;
                let h = self.agent_host_mut(&host)?;
                h.reachability = Reachability::Reachable;
                h.apply_report(report);
                self.rollouts.on_reachable(&ctx.at(), &host, fleet!(self));
                Ok(Answer::Done)
            }
            Command::Acquire {
                host,
                purpose,
                reason,
                rollout,
                phase,
            } => {
                let granted = self.acquire(&ctx, host, purpose, reason, rollout)?;
                match (granted, phase) {
                    (Answer::Slot(slot), Some(phase)) => self.grant_with_phase(&ctx, slot, phase),
                    (granted, _) => Ok(granted),
                }
            }
            Command::Release { host, token } => self.release(&ctx, &host, token),
            Command::ForceRelease { host } => self.force_release(&ctx, &host),
            Command::ReportPhase { host, token, phase } => {
                self.report_phase(&ctx, &host, token, phase)
            }
            Command::RemoveHost { host, force } => self.remove_host(&ctx, &host, force),
            Command::SetMember { id, address } => {
                let old = self.members.insert(id, address.clone());
                let detail = match old {
                    Some(old) if old != address => format!("member {id}: {old} -> {address}"),
                    _ => format!("member {id} at {address}"),
                };
                self.record(&ctx, "set_member", detail);
                Ok(Answer::Done)
            }
            Command::RemoveMember { id } => {
                // Idempotent: raft has already removed the member; this only records it.
                self.member_versions.remove(&id);
                let detail = match self.members.remove(&id) {
                    Some(address) => format!("member {id} at {address} removed"),
                    None => format!("member {id} removed (no address was recorded)"),
                };
                self.record(&ctx, "remove_member", detail);
                Ok(Answer::Done)
            }
            Command::StartRollout { spec } => self.start_rollout(&ctx, spec),
            Command::PauseRollout { id } => {
                if self.rollouts.pause(&ctx.at(), &id)? {
                    self.record(&ctx, "pause_rollout", format!("rollout {id} paused"));
                }
                Ok(Answer::Rollout { id, rollback: None })
            }
            Command::ResumeRollout { id } => {
                if self.rollouts.resume(&ctx.at(), &id)? {
                    self.record(&ctx, "resume_rollout", format!("rollout {id} resumed"));
                }
                Ok(Answer::Rollout { id, rollback: None })
            }
            Command::AbortRollout { id, rollback } => {
                let rb = self
                    .rollouts
                    .abort(&ctx.at(), &id, rollback, fleet!(self))?;
                let detail = match &rb {
                    Some(rb) => format!("rollout {id} aborted; rollback rollout {rb} started"),
                    None => format!("rollout {id} aborted"),
                };
                self.record(&ctx, "abort_rollout", detail);
                Ok(Answer::Rollout { id, rollback: rb })
            }
            Command::ReportStep {
                host,
                rollout,
                attempt,
                report,
                error,
                host_report,
                release,
            } => {
                self.host_ref(&host)?;
                if let Some(r) = &host_report {
                    check_report(r)?;
                }
                if release.is_some() && !report.is_outcome() {
                    return Err(RolloutError::ReleaseWithoutOutcome {
                        host,
                        report: report.as_str().to_string(),
                    }
                    .into());
                }
                self.rollouts.report_step(
                    &ctx.at(),
                    &host,
                    &rollout,
                    attempt,
                    report,
                    &error,
                    fleet!(self),
                )?;
                if let Some(r) = host_report {
                    self.host_mut(&host)?.apply_report(r);
                }
                // After the outcome, so the rollout counts the step done before its slot
                // frees (a slot freed first would drive the step again).
                match release {
                    Some(token) if self.host_ref(&host)?.slot == Some(token) => {
                        self.release(&ctx, &host, token)
                    }
                    _ => Ok(Answer::Done),
                }
            }
            Command::CheckProgress { rollout } => {
                self.rollouts
                    .check_progress(&ctx.at(), &rollout, fleet!(self))?;
                Ok(Answer::Done)
            }
            Command::SetMemberVersion { id, version } => {
                if version == 0 {
                    return Err(StateError::Decode(format!(
                        "member {id}: command format version 0 does not exist"
                    )));
                }
                let old = self.member_versions.insert(id, version);
                let detail = match old {
                    Some(old) if old == version => return Ok(Answer::Done),
                    Some(old) => {
                        format!("member {id} knows command format version {version} (was {old})")
                    }
                    None => format!("member {id} knows command format version {version}"),
                };
                self.record(&ctx, "member_version", detail);
                Ok(Answer::Done)
            }
            Command::RegisterLockOnly { host, group } => self.register_lock_only(&ctx, host, group),
        }
    }

    fn start_rollout(&mut self, ctx: &Ctx, spec: super::rollout::RolloutSpec) -> Response {
        let started = self.rollouts.start(&ctx.at(), spec, fleet!(self))?;
        if started.created {
            if let Some(r) = self.rollouts.get(&started.id) {
                let mut detail = format!(
                    "rollout {} of release {} ({}) to group {}: batch {}, canary {}, \
                     max_failures {}, auto_rollback {}",
                    r.id,
                    r.release.id,
                    r.release.sha256,
                    r.group,
                    r.policy.batch,
                    r.policy.canary,
                    r.policy.max_failures,
                    r.policy.auto_rollback
                );
                if !started.superseded.is_empty() {
                    detail.push_str(&format!("; superseded {}", started.superseded.join(", ")));
                }
                self.record(ctx, "start_rollout", detail);
            }
        }
        Ok(Answer::Rollout {
            id: started.id,
            rollback: None,
        })
    }

    fn seed_groups(&mut self, ctx: &Ctx, seeds: Vec<GroupSeed>) -> Response {
        if !self.groups.is_empty() {
            return Ok(Answer::Done);
        }
        for seed in &seeds {
            check_group(&seed.name)?;
            check_budget(&seed.name, seed.max_unavailable)?;
        }
        let names: Vec<String> = seeds.iter().map(|s| s.name.clone()).collect();
        for seed in seeds {
            let group = Group::new(
                seed.name.clone(),
                seed.max_unavailable,
                seed.allow_zero_available,
            );
            self.groups.insert(seed.name, group);
        }
        if !names.is_empty() {
            self.record(ctx, "seed_groups", format!("groups {}", names.join(", ")));
        }
        Ok(Answer::Done)
    }

    fn set_group_policy(
        &mut self,
        ctx: &Ctx,
        name: String,
        max_unavailable: Option<MaxUnavailable>,
        allow_zero_available: Option<bool>,
    ) -> Response {
        check_group(&name)?;
        if let Some(m) = max_unavailable {
            check_budget(&name, m)?;
        }
        let detail = match self.groups.get_mut(&name) {
            Some(group) => {
                let mut changes = Vec::new();
                if let Some(m) = max_unavailable {
                    changes.push(format!("max_unavailable {} -> {m}", group.max_unavailable));
                    group.max_unavailable = m;
                }
                if let Some(z) = allow_zero_available {
                    changes.push(format!(
                        "allow_zero_available {} -> {z}",
                        group.allow_zero_available
                    ));
                    group.allow_zero_available = z;
                }
                if changes.is_empty() {
                    changes.push("no change".to_string());
                }
                format!("group {name}: {}", changes.join(", "))
            }
            None => {
                let Some(m) = max_unavailable else {
                    return Err(StateError::UnknownGroup { group: name });
                };
                let z = allow_zero_available.unwrap_or(false);
                self.groups
                    .insert(name.clone(), Group::new(name.clone(), m, z));
                format!("group {name} created: max_unavailable {m}, allow_zero_available {z}")
            }
        };
        self.record(ctx, "set_group_policy", detail);
        let view = self
            .group_view(&name)
            .ok_or(StateError::UnknownGroup { group: name })?;
        Ok(Answer::Group(view))
    }

    fn register(
        &mut self,
        ctx: &Ctx,
        id: String,
        mut groups: Vec<String>,
        address: String,
        report: Report,
    ) -> Response {
        check_host(&id)?;
        for g in &groups {
            check_group(g)?;
        }
        check_report(&report)?;
        groups.sort();
        groups.dedup();
        if groups.is_empty() {
            return Err(StateError::NoGroups { host: id });
        }
        let unknown: Vec<String> = groups
            .iter()
            .filter(|g| !self.groups.contains_key(*g))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(StateError::RegisterUnknownGroups {
                host: id,
                unknown,
                known: self.groups.keys().cloned().collect(),
            });
        }
        let old_groups = match self.hosts.get(&id) {
            Some(host) => {
                if let (Some(token), true) = (host.slot, host.groups != groups) {
                    return Err(StateError::GroupsChangeWhileHolding {
                        host: id,
                        token,
                        from: host.groups.clone(),
                        to: groups,
                    });
                }
                host.groups.clone()
            }
            None => Vec::new(),
        };
        // Joins or comes back: new, heard again after being unreachable, or reporting another
        // release than last known (a rebuilt host). A session restart after a leader change
        // is none of these, so it does not trigger a catch-up.
        let returning = self.hosts.get(&id).is_none_or(|h| {
            h.reachability == Reachability::Unreachable || h.release != report.release
        });
        self.unindex(&id, &old_groups);
        self.index(&id, &groups);
        let host = self.hosts.entry(id.clone()).or_insert_with(|| Host {
            id,
            groups: Vec::new(),
            address: String::new(),
            reachability: Reachability::Reachable,
            health: report.health,
            rotation: report.rotation,
            release: String::new(),
            phase: String::new(),
            slot: None,
            registered_at_ms: ctx.at_ms,
            kind: HostKind::Agent,
        });
        host.groups = groups;
        host.address = address;
        host.reachability = Reachability::Reachable;
        // An agent registering a lock-only host's id speaks for it from now on.
        host.kind = HostKind::Agent;
        host.apply_report(report);
        let host_id = host.id.clone();
        self.rollouts
            .on_register(&ctx.at(), &host_id, returning, fleet!(self));
        Ok(Answer::Done)
    }

    fn acquire(
        &mut self,
        ctx: &Ctx,
        id: String,
        purpose: String,
        reason: String,
        rollout: String,
    ) -> Response {
        self.host_ref(&id)?;
        if !rollout.is_empty() && !self.held_for(&id, &purpose) {
            self.rollouts.gate_acquire(&id, &rollout, fleet!(self))?;
        }
        if let Some(held) = self.grant_check(&id, &purpose)? {
            return Ok(Answer::Slot(held.clone()));
        }
        let host = self.host_mut(&id)?;
        host.slot = Some(ctx.index);
        let slot = Slot {
            host: id,
            groups: host.groups.clone(),
            token: ctx.index,
            purpose,
            reason,
            rollout,
            granted_at_ms: ctx.at_ms,
            phase: String::new(),
        };
        self.slots.insert(ctx.index, slot.clone());
        if slot.purpose == MAINTENANCE && ctx.actor.starts_with(OPERATOR_PREFIX) {
            let detail = format!(
                "host {}: maintenance slot {} granted, reason {:?}",
                slot.host, slot.token, slot.reason
            );
            self.record(ctx, "acquire_maintenance", detail);
        }
        if slot.purpose == FLEETLOCK {
            let detail = format!(
                "host {}: FleetLock slot {} granted, reason {:?}",
                slot.host, slot.token, slot.reason
            );
            self.record(ctx, "acquire_fleetlock", detail);
        }
        if !slot.rollout.is_empty() {
            self.rollouts
                .on_grant(&ctx.at(), &slot.host, &slot.rollout, slot.token);
        }
        Ok(Answer::Slot(slot))
    }

    /// Commits the holder's first phase with its grant, in the same entry: what a
    /// `ReportPhase{token, phase}` right after it would do. Answers the slot as it now is. It
    /// is never refused (the host holds the token it was just granted), so the grant is never
    /// applied without its phase.
    fn grant_with_phase(&mut self, ctx: &Ctx, slot: Slot, phase: String) -> Response {
        self.report_phase(ctx, &slot.host, slot.token, phase)?;
        let now = self.slots.get(&slot.token).cloned();
        Ok(Answer::Slot(now.unwrap_or(slot)))
    }

    /// A client's repeated write answered from its session. A grant is given again only while
    /// the host still holds that slot: a retried `AcquireSlot` whose slot was force-released (or
    /// freed by `hosts remove`) since is told its token is stale, never handed a slot it no
    /// longer has. An agent may act on a grant as on a fence (the grant that commits `draining`),
    /// so the cached answer must be as true as a fence's at this entry.
    fn answer_again(&self, answer: Response) -> Response {
        let Ok(Answer::Slot(slot)) = &answer else {
            return answer;
        };
        let current = self.hosts.get(&slot.host).and_then(|h| h.slot);
        if current == Some(slot.token) {
            return answer;
        }
        Err(StateError::StaleToken {
            host: slot.host.clone(),
            given: slot.token,
            current,
        })
    }

    /// Whether `id` holds a slot for `purpose` (an acquire would be re-entrant).
    fn held_for(&self, id: &str, purpose: &str) -> bool {
        self.hosts
            .get(id)
            .and_then(|h| h.slot)
            .and_then(|t| self.slots.get(&t))
            .is_some_and(|s| s.purpose == purpose)
    }

    /// `Ok(Some(slot))` for a re-entrant acquire, `Ok(None)` when a new slot would be granted.
    fn grant_check(&self, id: &str, purpose: &str) -> Result<Option<&Slot>, StateError> {
        let host = self.host_ref(id)?;
        if let Some(held) = host.slot.and_then(|t| self.slots.get(&t)) {
            return if held.purpose == purpose {
                Ok(Some(held))
            } else {
                Err(StateError::HeldForOtherPurpose {
                    host: id.to_string(),
                    holder_purpose: held.purpose.clone(),
                    token: held.token,
                })
            };
        }
        lock::check_grant(host, &self.hosts, &self.groups)?;
        Ok(None)
    }

    fn release(&mut self, ctx: &Ctx, id: &str, token: u64) -> Response {
        let host = self.host_mut(id)?;
        if host.slot != Some(token) {
            return Err(StateError::StaleToken {
                host: id.to_string(),
                given: token,
                current: host.slot,
            });
        }
        host.slot = None;
        if let Some(slot) = self.slots.remove(&token) {
            self.rollouts.on_slot_freed(&ctx.at(), &slot, "released");
        }
        Ok(Answer::Released { token })
    }

    fn force_release(&mut self, ctx: &Ctx, id: &str) -> Response {
        let host = self.host_mut(id)?;
        let Some(token) = host.slot.take() else {
            return Err(StateError::NoSlot {
                host: id.to_string(),
            });
        };
        let detail = match self.slots.remove(&token) {
            Some(s) => {
                self.rollouts.on_slot_freed(&ctx.at(), &s, "force-released");
                format!(
                    "host {id}: slot {token} ({}, rollout {:?}, phase {:?}) force-released",
                    s.purpose, s.rollout, s.phase
                )
            }
            None => format!("host {id}: slot {token} force-released"),
        };
        self.record(ctx, "force_release", detail);
        Ok(Answer::Released { token })
    }

    fn report_phase(&mut self, ctx: &Ctx, id: &str, token: u64, phase: String) -> Response {
        let host = self.host_mut(id)?;
        if host.slot != Some(token) {
            return Err(StateError::StaleToken {
                host: id.to_string(),
                given: token,
                current: host.slot,
            });
        }
        host.phase = phase.clone();
        if let Some(slot) = self.slots.get_mut(&token) {
            slot.phase = phase.clone();
            if !slot.rollout.is_empty() {
                let rollout = slot.rollout.clone();
                self.rollouts.on_phase(&ctx.at(), id, &rollout, &phase);
            }
        }
        Ok(Answer::Done)
    }

    fn remove_host(&mut self, ctx: &Ctx, id: &str, force: bool) -> Response {
        let host = self.host_ref(id)?;
        // A lock-only host has no heartbeats to go silent: it is never `unreachable`.
        if host.reachability == Reachability::Reachable && !force && !host.is_lock_only() {
            return Err(StateError::HostReachable {
                host: id.to_string(),
            });
        }
        let Some(host) = self.hosts.remove(id) else {
            return Err(StateError::UnknownHost {
                host: id.to_string(),
            });
        };
        self.unindex(id, &host.groups);
        let mut detail = format!("host {id} removed from {}", host.groups.join(", "));
        if force {
            detail.push_str(" (forced)");
        }
        if let Some(token) = host.slot {
            if let Some(slot) = self.slots.remove(&token) {
                self.rollouts
                    .on_slot_freed(&ctx.at(), &slot, "freed by removing the host");
            }
            detail.push_str(&format!("; its slot {token} was freed"));
        }
        self.rollouts.on_host_removed(&ctx.at(), id);
        self.record(ctx, "remove_host", detail);
        Ok(Answer::Done)
    }

    // ---- helpers ----

    pub(super) fn host_ref(&self, id: &str) -> Result<&Host, StateError> {
        self.hosts.get(id).ok_or_else(|| StateError::UnknownHost {
            host: id.to_string(),
        })
    }

    pub(super) fn host_mut(&mut self, id: &str) -> Result<&mut Host, StateError> {
        self.hosts
            .get_mut(id)
            .ok_or_else(|| StateError::UnknownHost {
                host: id.to_string(),
            })
    }

    pub(super) fn index(&mut self, id: &str, groups: &[String]) {
        for g in groups {
            if let Some(group) = self.groups.get_mut(g) {
                group.members.insert(id.to_string());
            }
        }
    }

    pub(super) fn unindex(&mut self, id: &str, groups: &[String]) {
        for g in groups {
            if let Some(group) = self.groups.get_mut(g) {
                group.members.remove(id);
            }
        }
    }

    /// Rebuilds every group's member index from the hosts (after restore).
    fn rebuild_members(&mut self) {
        for group in self.groups.values_mut() {
            group.members.clear();
        }
        let hosts: Vec<(String, Vec<String>)> = self
            .hosts
            .values()
            .map(|h| (h.id.clone(), h.groups.clone()))
            .collect();
        for (id, groups) in hosts {
            self.index(&id, &groups);
        }
    }

    pub(super) fn record(&mut self, ctx: &Ctx, action: &str, detail: String) {
        self.audit.push(AuditEvent {
            index: ctx.index,
            at_ms: ctx.at_ms,
            actor: ctx.actor.to_string(),
            action: action.to_string(),
            detail,
        });
    }
}

/// What every handler knows about the entry it applies.
pub(super) struct Ctx<'a> {
    pub(super) index: u64,
    pub(super) at_ms: u64,
    pub(super) actor: &'a str,
}

impl<'a> Ctx<'a> {
    /// The same, for the rollout module.
    fn at(&self) -> At<'a> {
        At {
            index: self.index,
            at_ms: self.at_ms,
            actor: self.actor,
        }
    }
}

/// Refuses a budget that `MaxUnavailable::parse` would refuse (0, 0%, over 100%). The type can
/// be built directly, so a command may carry one that no config or CLI would accept.
/// The host whose slot `command` may change, or who (re-)registers: its heartbeat answer may
/// change with it.
fn slot_subject(command: &Command) -> Option<&str> {
    match command {
        Command::Register { host, .. }
        | Command::Acquire { host, .. }
        | Command::Release { host, .. }
        | Command::ForceRelease { host }
        | Command::RemoveHost { host, .. }
        | Command::RegisterLockOnly { host, .. }
        | Command::ReportStep {
            host,
            release: Some(_),
            ..
        } => Some(host),
        _ => None,
    }
}

fn check_budget(group: &str, m: MaxUnavailable) -> Result<(), StateError> {
    MaxUnavailable::parse(&m.to_string())
        .map(|_| ())
        .map_err(|e| StateError::budget(group, e))
}

/// Refuses a report whose release id is not a valid name (`""` means none installed).
fn check_report(report: &Report) -> Result<(), StateError> {
    if !report.release.is_empty() {
        check_release(&report.release)?;
    }
    Ok(())
}
