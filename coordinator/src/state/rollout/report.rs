//! What agents report about their steps, and what the lock does to them.
//!
//! Two paths move a step. The agent's `ReportStep` carries what only it knows: staging, a first
//! install's progress (it holds no slot to fence with), and the outcome. The deploy phases of a
//! host holding a slot arrive through the lock's own fenced `ReportPhase`: the slot names the
//! rollout, so the machine moves the step with it (`draining`; `swapped` and `restarted` are
//! `swapping`; `verifying`; `rolling_back`).
//!
//! Every report is checked against the step's phase and attempt, so a repeat is a no-op and a
//! report from an attempt that was since re-driven is refused as stale: agents retry freely,
//! across leader changes and their own restarts.
//!
//! A slot freed while its step is deploying (released before an outcome, force-released, the
//! host removed) means the deploy was fenced: the step goes back to `staged` with a new attempt
//! and is admitted again, so a rollout never wedges on it. So does an agent's own `fenced`
//! outcome. After [`MAX_ATTEMPTS`] the step fails instead.

use super::error::RolloutError;
use super::model::{Step, StepPhase, StepReport, MAX_ATTEMPTS};
use super::start::already_on;
use super::{At, Fleet, Rollouts};
use crate::state::error::StateError;
use crate::state::lock::Slot;

/// The longest error text kept on a step.
const MAX_ERROR: usize = 1024;

/// What a report does to a step.
enum Change {
    Nothing,
    To(StepPhase),
    Redrive,
}

fn short(error: &str) -> String {
    error.chars().take(MAX_ERROR).collect()
}

/// Sends `s` back to `staged` as a new attempt, or fails it after [`MAX_ATTEMPTS`]. Returns the
/// event message.
fn redrive(s: &mut Step, why: &str, at_ms: u64) -> String {
    s.token = None;
    s.first_install = false;
    if s.attempt >= MAX_ATTEMPTS {
        s.error = short(&format!("fenced {} times; last: {why}", s.attempt));
        s.enter(StepPhase::Failed, at_ms);
        format!("failed: {}", s.error)
    } else {
        s.attempt += 1;
        s.enter(StepPhase::Staged, at_ms);
        format!("{why}: driven again as attempt {}", s.attempt)
    }
}

impl Rollouts {
    /// `ReportStep` from `host`'s agent.
    #[allow(clippy::too_many_arguments)]
    pub fn report_step(
        &mut self,
        at: &At,
        host: &str,
        id: &str,
        attempt: u32,
        report: StepReport,
        error: &str,
        fleet: Fleet<'_>,
    ) -> Result<(), StateError> {
        let r = self
            .by_id
            .get_mut(id)
            .ok_or_else(|| RolloutError::UnknownRollout { id: id.to_string() })?;
        let held = fleet.holds_slot_for(host, r);
        let Some(s) = r.steps.iter_mut().find(|s| s.host == host) else {
            return Err(RolloutError::NoStep {
                host: host.to_string(),
                id: id.to_string(),
            }
            .into());
        };
        if attempt != s.attempt {
            return Err(RolloutError::StaleAttempt {
                host: host.to_string(),
                id: id.to_string(),
                given: attempt,
                current: s.attempt,
            }
            .into());
        }
        let bad = || -> StateError {
            RolloutError::BadReport {
                host: host.to_string(),
                id: id.to_string(),
                report: report.as_str().to_string(),
                phase: s.phase.as_str().to_string(),
            }
            .into()
        };
        let not_admitted = || -> StateError {
            RolloutError::NotAdmitted {
                host: host.to_string(),
                id: id.to_string(),
                why: format!("its step is {}, not admitted", s.phase.as_str()),
            }
            .into()
        };
        use StepPhase as P;
        use StepReport as R;
        let phase = s.phase;
        let change = match (report, phase) {
            (R::Succeeded, P::Succeeded)
            | (R::Failed, P::Failed)
            | (R::RolledBack, P::RolledBack) => Change::Nothing,
            (_, p) if p.is_terminal() => return Err(bad()),
            (R::Staging, P::Pending | P::Staging | P::Staged) => Change::To(P::Staging),
            (R::Staging, P::Waiting) if s.token.is_none() && !held => Change::To(P::Staging),
            (R::Staging, _) => return Err(bad()),
            (R::Staged, P::Pending | P::Staging) => Change::To(P::Staged),
            (R::Staged, _) => Change::Nothing,
            (R::Swapping, P::Waiting) => Change::To(P::Swapping),
            (R::Verifying, P::Waiting | P::Draining | P::Swapping) => Change::To(P::Verifying),
            (R::Swapping | R::Verifying, p) if p.is_in_flight() => Change::Nothing,
            (R::Swapping | R::Verifying, _) => return Err(not_admitted()),
            (R::Succeeded, p) if p.is_in_flight() => Change::To(P::Succeeded),
            (R::RolledBack, p) if p.is_in_flight() => Change::To(P::RolledBack),
            (R::Succeeded | R::RolledBack, _) => return Err(not_admitted()),
            (R::Failed, _) => Change::To(P::Failed),
            (R::Fenced, p) if p.is_in_flight() => Change::Redrive,
            (R::Fenced, _) => Change::Nothing,
        };
        let message = match change {
            Change::Nothing => return Ok(()),
            Change::To(p) => {
                if p.is_failure() {
                    s.error = if error.is_empty() {
                        format!("{} without a reason given", p.as_str())
                    } else {
                        short(error)
                    };
                }
                s.enter(p, at.at_ms);
                if p.is_failure() {
                    format!("{}: {}", p.as_str(), s.error)
                } else {
                    p.as_str().to_string()
                }
            }
            Change::Redrive => {
                let why = if error.is_empty() {
                    "fenced".to_string()
                } else {
                    format!("fenced ({})", short(error))
                };
                redrive(s, &why, at.at_ms)
            }
        };
        let succeeded = s.phase == P::Succeeded;
        r.log(at.index, at.at_ms, host, message);
        r.progressed(at.at_ms);
        self.active_steps.touch_step(id, host);
        if succeeded {
            self.record_success(id, host);
        }
        Ok(())
    }

    /// Refuses a new slot for known rollout `id` unless it runs and has admitted `host`. A
    /// rollout id the state does not know is free text, and passes.
    pub fn gate_acquire(&self, host: &str, id: &str, fleet: Fleet<'_>) -> Result<(), StateError> {
        let Some(r) = self.by_id.get(id) else {
            return Ok(());
        };
        let why = if r.state != super::RolloutState::Running {
            if r.reason.is_empty() {
                format!("the rollout is {}", r.state.as_str())
            } else {
                format!("the rollout is {} ({})", r.state.as_str(), r.reason)
            }
        } else {
            match r.step(host) {
                None => "it is not a target of this rollout".to_string(),
                // A first install asking for a slot after all (its agent found something
                // installed) is counted from now on, so it needs room in the batch.
                Some(s)
                    if s.phase.is_in_flight()
                        && s.first_install
                        && !fleet.holds_slot_for(host, r)
                        && super::admit::in_flight(r, fleet) >= r.policy.batch =>
                {
                    format!(
                        "a first install asking for a slot needs room in the batch, and the \
                         batch of {} is full",
                        r.policy.batch
                    )
                }
                Some(s) if s.phase.is_in_flight() => return Ok(()),
                Some(s) if s.phase.is_terminal() => {
                    format!("its step has already {}", s.phase.as_str())
                }
                Some(s) => match self.waits(r, fleet).get(host) {
                    Some(w) => format!("not admitted yet ({}): {w}", s.phase.as_str()),
                    None => format!("not admitted yet ({})", s.phase.as_str()),
                },
            }
        };
        Err(RolloutError::NotAdmitted {
            host: host.to_string(),
            id: id.to_string(),
            why,
        }
        .into())
    }

    /// A new slot `token` was granted to `host` for rollout `id`.
    pub fn on_grant(&mut self, at: &At, host: &str, id: &str, token: u64) {
        let Some(r) = self.by_id.get_mut(id) else {
            return;
        };
        let Some(s) = r.step_mut(host) else { return };
        s.token = Some(token);
        s.first_install = false;
        r.log(at.index, at.at_ms, host, format!("slot {token} granted"));
        r.progressed(at.at_ms);
        self.active_steps.touch_step(id, host);
    }

    /// `host` committed `phase` with the token of its slot for rollout `id`.
    pub fn on_phase(&mut self, at: &At, host: &str, id: &str, phase: &str) {
        let to = match phase {
            "draining" => StepPhase::Draining,
            "swapped" | "restarted" => StepPhase::Swapping,
            "verifying" => StepPhase::Verifying,
            "rolling_back" => StepPhase::RollingBack,
            _ => return,
        };
        let Some(r) = self.by_id.get_mut(id) else {
            return;
        };
        let Some(s) = r.step_mut(host) else { return };
        if !s.phase.is_in_flight() || !s.enter(to, at.at_ms) {
            return;
        }
        r.log(at.index, at.at_ms, host, to.as_str().to_string());
        r.progressed(at.at_ms);
        self.active_steps.touch_step(id, host);
    }

    /// `slot` is gone (`how`: "released", "force-released", "freed by host removal"). A step
    /// still deploying with it was fenced: drive it again.
    pub fn on_slot_freed(&mut self, at: &At, slot: &Slot, how: &str) {
        let Some(r) = self.by_id.get_mut(&slot.rollout) else {
            return;
        };
        let Some(s) = r.step_mut(&slot.host) else {
            return;
        };
        if s.token != Some(slot.token) {
            return;
        }
        s.token = None;
        let deploying = matches!(
            s.phase,
            StepPhase::Draining
                | StepPhase::Swapping
                | StepPhase::Verifying
                | StepPhase::RollingBack
        );
        let message = if deploying {
            let why = format!(
                "slot {} {how} while {} and before an outcome",
                slot.token,
                s.phase.as_str()
            );
            redrive(s, &why, at.at_ms)
        } else {
            format!("slot {} {how}", slot.token)
        };
        r.log(at.index, at.at_ms, &slot.host, message);
        r.progressed(at.at_ms);
        self.active_steps.touch_step(&slot.rollout, &slot.host);
    }

    /// `host` registered. It gets a step in an active rollout of a group it is in and has none
    /// in (unless busy in another), loses a step not yet admitted in a group it left, and, if
    /// it is `returning` (new, back from unreachable, or on another release than last known),
    /// may be caught up to its desired release.
    pub fn on_register(&mut self, at: &At, host: &str, returning: bool, fleet: Fleet<'_>) {
        let Some(h) = fleet.host(host) else { return };
        for id in self.active_ids() {
            let Some(r) = self.by_id.get_mut(&id) else {
                continue;
            };
            let left = !h.groups.contains(&r.group);
            if let Some(pos) = r.position(host) {
                if left && r.steps[pos].phase.is_before_admission() {
                    r.remove_step(pos);
                    r.log(
                        at.index,
                        at.at_ms,
                        host,
                        format!("{host} left group {}: dropped from the rollout", r.group),
                    );
                    r.progressed(at.at_ms);
                    // The steps after it moved.
                    self.active_steps.touch_rollout(&id);
                    self.active_steps.touch_step(&id, host);
                }
            }
        }
        for id in self.active_ids() {
            let busy = self.scan_active_step_of(host).is_some();
            let Some(r) = self.by_id.get_mut(&id) else {
                continue;
            };
            if busy
                || r.kind == super::RolloutKind::CatchUp
                || !h.groups.contains(&r.group)
                || r.step(host).is_some()
            {
                continue;
            }
            let mut s = Step::new(host.to_string(), h.release.clone(), at.at_ms);
            let done = already_on(h, &r.release);
            let msg = if done {
                s.enter(StepPhase::Succeeded, at.at_ms);
                format!(
                    "{host} joined group {}, already on {}",
                    r.group, r.release.id
                )
            } else {
                format!("{host} joined group {}: added to the rollout", r.group)
            };
            r.push_step(s);
            r.log(at.index, at.at_ms, host, msg);
            r.progressed(at.at_ms);
            self.active_steps.touch_step(&id, host);
            if done {
                self.record_success(&id, host);
            }
        }
        if returning {
            self.maybe_catch_up(at, host, fleet);
        }
    }

    /// `host` is reachable again: it may be caught up to its desired release.
    pub fn on_reachable(&mut self, at: &At, host: &str, fleet: Fleet<'_>) {
        self.maybe_catch_up(at, host, fleet);
    }

    /// `host` was removed: its steps leave the active rollouts, and its desired release is
    /// forgotten. Terminal rollouts keep their history.
    pub fn on_host_removed(&mut self, at: &At, host: &str) {
        for id in self.active_ids() {
            let Some(r) = self.by_id.get_mut(&id) else {
                continue;
            };
            if let Some(pos) = r.position(host) {
                r.remove_step(pos);
                r.log(
                    at.index,
                    at.at_ms,
                    host,
                    format!("{host} was removed: dropped from the rollout"),
                );
                r.progressed(at.at_ms);
                // The steps after it moved.
                self.active_steps.touch_rollout(&id);
                self.active_steps.touch_step(&id, host);
            }
        }
        self.forget_host(host);
    }
}
