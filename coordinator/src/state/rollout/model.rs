//! The rollout's data: releases, rollouts, steps, phases and events.
//!
//! Plain data with serde, as everything in the replicated state. The behaviour lives in the
//! sibling files; here are only the names of states and phases, what each means, and the few
//! questions that follow from a phase alone (is it terminal, is it a failure, is the step
//! admitted). See docs/architecture.md "Rollouts" for the state diagram.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// Events kept per rollout; older ones fall off the front (counted in `events_dropped`).
pub const MAX_EVENTS: usize = 256;
/// Phase timestamps kept per step (a step re-driven a few times stays bounded).
pub const MAX_PHASE_TIMES: usize = 24;
/// Attempts of one step: a host fenced this many times fails instead of being driven again.
pub const MAX_ATTEMPTS: u32 = 5;
/// Terminal rollouts kept (newest first); active ones are always kept.
pub const MAX_TERMINAL: usize = 100;
/// The progress deadline when none is given: 10 minutes.
pub const DEFAULT_PROGRESS_DEADLINE_MS: u64 = 10 * 60 * 1000;
/// The shortest and longest progress deadline accepted.
pub const MIN_PROGRESS_DEADLINE_MS: u64 = 1000;
pub const MAX_PROGRESS_DEADLINE_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// What is deployed: the release id and where its artifact is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReleaseSpec {
    pub id: String,
    pub artifact_url: String,
    /// Lower-case hex.
    pub sha256: String,
    /// Base64 ed25519 signature over the raw digest; `""` for none.
    pub signature: String,
}

/// `StartRollout` as it was asked for. Zero means "the default" for `batch`, `max_failures`
/// and `progress_deadline_ms`. Kept on the rollout to answer a retried start.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RolloutSpec {
    pub id: String,
    pub group: String,
    pub release: ReleaseSpec,
    pub batch: u64,
    pub canary: u64,
    pub pause_after_canary: bool,
    pub max_failures: u64,
    pub auto_rollback: bool,
    pub supersede: bool,
    pub progress_deadline_ms: u64,
}

impl RolloutSpec {
    /// Whether `other` asks for the same rollout (a retry): everything but `supersede`.
    pub fn same_request(&self, other: &RolloutSpec) -> bool {
        let norm = |s: &RolloutSpec| {
            let mut s = s.clone();
            s.supersede = false;
            s.release.sha256.make_ascii_lowercase();
            s
        };
        norm(self) == norm(other)
    }
}

/// Who made the rollout, and why.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RolloutKind {
    /// Started by `StartRollout`.
    Operator,
    /// Started by `AbortRollout{rollback: true}`: the previous release, for the same group.
    Rollback,
    /// Made by the machine: one host brought to its desired release.
    CatchUp,
}

impl RolloutKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Rollback => "rollback",
            Self::CatchUp => "catch_up",
        }
    }
}

/// The rollout's state. `Running` and `Paused` are active; the rest are terminal.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    Paused,
    Completed,
    Halted,
    Aborted,
}

impl RolloutState {
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Halted => "halted",
            Self::Aborted => "aborted",
        }
    }
}

/// Where one host stands in one rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum StepPhase {
    /// A target; the agent has not started staging.
    Pending,
    /// The agent is fetching and unpacking the release (no lock).
    Staging,
    /// Staged; not admitted yet.
    Staged,
    /// Admitted: the agent may take a slot (or, for a first install, deploy) now.
    Waiting,
    /// Leaving rotation (committed with the slot's token).
    Draining,
    /// Swapping `current` and restarting.
    Swapping,
    /// The probes run against the new release.
    Verifying,
    /// Verify failed; the previous release is being swapped back in.
    RollingBack,
    Succeeded,
    Failed,
    RolledBack,
}

impl StepPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::RolledBack)
    }

    /// Counts toward `max_failures`.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::RolledBack)
    }

    /// Admitted and not finished: `waiting` up to `rolling_back`.
    pub fn is_in_flight(self) -> bool {
        matches!(
            self,
            Self::Waiting | Self::Draining | Self::Swapping | Self::Verifying | Self::RollingBack
        )
    }

    /// Before admission: `pending`, `staging`, `staged`.
    pub fn is_before_admission(self) -> bool {
        matches!(self, Self::Pending | Self::Staging | Self::Staged)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Staging => "staging",
            Self::Staged => "staged",
            Self::Waiting => "waiting",
            Self::Draining => "draining",
            Self::Swapping => "swapping",
            Self::Verifying => "verifying",
            Self::RollingBack => "rolling_back",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
        }
    }
}

/// What an agent reports about its step with `ReportStep` (the fenced deploy phases come
/// through `ReportPhase` instead).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StepReport {
    Staging,
    Staged,
    /// A first install (no slot) swapping in and starting.
    Swapping,
    /// A first install (no slot) verifying.
    Verifying,
    Succeeded,
    Failed,
    RolledBack,
    /// The deploy stopped because its slot was revoked or could not be confirmed: drive again.
    Fenced,
}

impl StepReport {
    /// Whether the report is a deploy's outcome (it ends the attempt).
    pub fn is_outcome(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::RolledBack | Self::Fenced
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Staging => "staging",
            Self::Staged => "staged",
            Self::Swapping => "swapping",
            Self::Verifying => "verifying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Fenced => "fenced",
        }
    }
}

/// When a step entered a phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseTime {
    pub phase: StepPhase,
    pub at_ms: u64,
}

/// One host in one rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub host: String,
    pub phase: StepPhase,
    /// The phases entered, oldest first, the last [`MAX_PHASE_TIMES`].
    pub phases: Vec<PhaseTime>,
    pub canary: bool,
    /// 1, then + 1 each time a fenced deploy is driven again.
    pub attempt: u32,
    /// The slot taken for this step, while the machine knows of it.
    pub token: Option<u64>,
    /// Admitted while the host was unprovisioned: no slot, no drain, not counted in `batch`.
    pub first_install: bool,
    /// When it was last admitted, if ever.
    pub admitted_at_ms: Option<u64>,
    /// The release the host reported when the step was made (`""`: none).
    pub from_release: String,
    /// Why it failed or rolled back; `""` otherwise.
    pub error: String,
}

impl Step {
    pub(super) fn new(host: String, from_release: String, at_ms: u64) -> Self {
        Self {
            host,
            phase: StepPhase::Pending,
            phases: vec![PhaseTime {
                phase: StepPhase::Pending,
                at_ms,
            }],
            canary: false,
            attempt: 1,
            token: None,
            first_install: false,
            admitted_at_ms: None,
            from_release,
            error: String::new(),
        }
    }

    /// Moves to `phase` at `at_ms` (a no-op for the phase it is in).
    pub(super) fn enter(&mut self, phase: StepPhase, at_ms: u64) -> bool {
        if self.phase == phase {
            return false;
        }
        self.phase = phase;
        self.phases.push(PhaseTime { phase, at_ms });
        if self.phases.len() > MAX_PHASE_TIMES {
            let drop = self.phases.len() - MAX_PHASE_TIMES;
            self.phases.drain(..drop);
        }
        true
    }

    /// When the step entered its current phase.
    pub fn since_ms(&self) -> u64 {
        self.phases.last().map(|p| p.at_ms).unwrap_or(0)
    }
}

/// One line of a rollout's event log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The raft index of the entry that caused it.
    pub index: u64,
    pub at_ms: u64,
    /// The host it is about; `""` for the rollout as a whole.
    pub host: String,
    pub message: String,
}

/// The resolved policy in force (defaults filled in).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub batch: u64,
    pub canary: u64,
    pub pause_after_canary: bool,
    pub max_failures: u64,
    pub auto_rollback: bool,
    pub progress_deadline_ms: u64,
}

/// One rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Rollout {
    pub id: String,
    pub kind: RolloutKind,
    pub group: String,
    pub release: ReleaseSpec,
    /// The start as asked for (for an operator rollout), to answer a retried start.
    pub requested: Option<RolloutSpec>,
    pub policy: Policy,
    pub state: RolloutState,
    /// Why it is paused, halted or aborted, in words; `""` while running or once completed.
    pub reason: String,
    /// The group's desired release at the start: what `abort --rollback` goes back to.
    pub previous: Option<ReleaseSpec>,
    /// Who started it (certificate identity), or `"catch-up"`.
    pub actor: String,
    /// The raft index of the entry that created it: the rollouts' order.
    pub created_index: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The last step phase change, admission or state change.
    pub last_progress_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// The pause after the canaries has happened (it happens once).
    pub canary_pause_done: bool,
    /// The rollout that superseded this one, `""` for none.
    pub superseded_by: String,
    /// The rollback rollout `abort --rollback` started, `""` for none.
    pub rollback: String,
    /// One per host, in host-id order (hosts that join later at the end). Steps are added
    /// and removed only by [`Rollout::push_step`] and [`Rollout::remove_step`], which keep
    /// `positions` true.
    pub steps: Vec<Step>,
    pub events: VecDeque<Event>,
    pub events_dropped: u64,
    /// Derived, never serialized: host → position in `steps`, so that finding a host's step
    /// is one lookup (admission and every report ask it on every replica, after every entry).
    #[serde(skip)]
    pub(super) positions: StepPositions,
}

/// Host → position of its step in [`Rollout::steps`]. Derived from the steps, so it takes no
/// part in equality: two rollouts with the same steps are equal however their maps were
/// made. Empty after deserializing until [`Rollout::reindex`]; a lookup notices that (the map
/// is shorter than the steps) and walks the steps instead, so a missing rebuild costs time,
/// never a wrong answer.
#[derive(Clone, Debug, Default)]
pub(super) struct StepPositions(HashMap<String, usize>);

impl PartialEq for StepPositions {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for StepPositions {}

impl Rollout {
    pub fn step(&self, host: &str) -> Option<&Step> {
        self.position(host).map(|i| &self.steps[i])
    }

    pub(super) fn step_mut(&mut self, host: &str) -> Option<&mut Step> {
        self.position(host).map(|i| &mut self.steps[i])
    }

    /// The position of `host`'s step in `steps`: one lookup while the map is whole, a walk of
    /// the steps if it is not (see [`StepPositions`]).
    pub fn position(&self, host: &str) -> Option<usize> {
        let map = &self.positions.0;
        if map.len() == self.steps.len() {
            match map.get(host) {
                Some(&i) if self.steps.get(i).is_some_and(|s| s.host == host) => return Some(i),
                None => return None,
                Some(_) => {}
            }
        }
        self.steps.iter().position(|s| s.host == host)
    }

    /// Appends the step of a host that has none in this rollout.
    pub(super) fn push_step(&mut self, step: Step) {
        self.positions.0.insert(step.host.clone(), self.steps.len());
        self.steps.push(step);
    }

    /// Removes the step at `pos`; the steps after it move up one.
    pub(super) fn remove_step(&mut self, pos: usize) -> Step {
        let step = self.steps.remove(pos);
        self.positions.0.remove(&step.host);
        for (i, s) in self.steps.iter().enumerate().skip(pos) {
            self.positions.0.insert(s.host.clone(), i);
        }
        step
    }

    /// Rebuilds the host → position map from the steps (after deserializing).
    pub(super) fn reindex(&mut self) {
        self.positions.0 = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.host.clone(), i))
            .collect();
    }

    /// Whether the host → position map is whole and true, for the consistency check.
    pub(super) fn positions_are_true(&self) -> bool {
        self.positions.0.len() == self.steps.len()
            && self
                .steps
                .iter()
                .enumerate()
                .all(|(i, s)| self.positions.0.get(&s.host) == Some(&i))
    }

    pub fn succeeded(&self) -> u64 {
        self.count(|p| p == StepPhase::Succeeded)
    }

    /// Steps that failed or rolled back.
    pub fn failures(&self) -> u64 {
        self.count(StepPhase::is_failure)
    }

    /// Steps not yet terminal.
    pub fn pending(&self) -> u64 {
        self.count(|p| !p.is_terminal())
    }

    fn count(&self, f: impl Fn(StepPhase) -> bool) -> u64 {
        self.steps.iter().filter(|s| f(s.phase)).count() as u64
    }

    /// Appends an event, dropping the oldest beyond [`MAX_EVENTS`].
    pub(super) fn log(&mut self, index: u64, at_ms: u64, host: &str, message: String) {
        self.events.push_back(Event {
            index,
            at_ms,
            host: host.to_string(),
            message,
        });
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
            self.events_dropped += 1;
        }
    }

    /// Marks progress (and an update) at `at_ms`.
    pub(super) fn progressed(&mut self, at_ms: u64) {
        self.updated_at_ms = self.updated_at_ms.max(at_ms);
        self.last_progress_at_ms = self.last_progress_at_ms.max(at_ms);
    }

    /// Moves the rollout to a terminal or paused state with a reason.
    pub(super) fn set_state(&mut self, state: RolloutState, reason: String, at_ms: u64) {
        self.state = state;
        self.reason = reason;
        if !state.is_active() {
            self.finished_at_ms = Some(at_ms);
        }
        self.progressed(at_ms);
    }
}

/// What a host is told to do: its current step, as the heartbeat answer carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub rollout: String,
    pub release: ReleaseSpec,
    pub attempt: u32,
    pub phase: StepPhase,
    pub canary: bool,
    /// The rollout is running and the step is admitted.
    pub may_deploy: bool,
    pub first_install: bool,
    pub auto_rollback: bool,
}
