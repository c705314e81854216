//! Pause, resume, abort (with its rollback rollout), and the progress deadline.
//!
//! - pause: running → paused; no new admissions and no new slots. A deploy under way finishes.
//! - resume: paused → running; the progress clock starts again from the resume. A halted
//!   rollout is not resumed (its failures are real): start a new one, which skips the hosts
//!   already on the release.
//! - abort: running, paused or halted → aborted. With `rollback`, a `rollback` rollout of
//!   `previous` starts for the same group; a first install has no `previous` and is refused.
//! - `CheckProgress`: proposed by the leader when, by its clock, a running rollout has made no
//!   progress for its deadline. The machine halts it only if the proposal's own `at_ms` agrees,
//!   so a late or repeated proposal is harmless.
//!
//! Pausing what is paused and resuming what runs are no-ops, so a retried call through another
//! coordinator answers as the first did.

use super::error::RolloutError;
use super::model::{Policy, RolloutKind, RolloutState};
use super::start::new_rollout;
use super::wait::describe_waits;
use super::{At, Fleet, Rollouts};
use crate::state::error::StateError;
use std::time::Duration;

/// The longest rollout id (and so the longest `<id>-rollback`).
const MAX_ID: usize = 64;

fn unknown(id: &str) -> StateError {
    RolloutError::UnknownRollout { id: id.to_string() }.into()
}

fn wrong(id: &str, action: &str, state: RolloutState, reason: &str) -> StateError {
    RolloutError::WrongState {
        id: id.to_string(),
        action: action.to_string(),
        state: state.as_str().to_string(),
        reason: reason.to_string(),
    }
    .into()
}

/// A duration in words ("10m", "1h 30m").
pub(super) fn words(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

impl Rollouts {
    /// `PauseRollout`. Returns whether anything changed.
    pub fn pause(&mut self, at: &At, id: &str) -> Result<bool, StateError> {
        let r = self.by_id.get_mut(id).ok_or_else(|| unknown(id))?;
        match r.state {
            RolloutState::Running => {
                r.set_state(
                    RolloutState::Paused,
                    format!("paused by {}", at.actor),
                    at.at_ms,
                );
                r.log(at.index, at.at_ms, "", format!("paused by {}", at.actor));
                self.active_steps.touch_rollout(id);
                Ok(true)
            }
            RolloutState::Paused => Ok(false),
            s => Err(wrong(id, "pause", s, &r.reason)),
        }
    }

    /// `ResumeRollout`. Returns whether anything changed.
    pub fn resume(&mut self, at: &At, id: &str) -> Result<bool, StateError> {
        let r = self.by_id.get_mut(id).ok_or_else(|| unknown(id))?;
        match r.state {
            RolloutState::Paused => {
                r.set_state(RolloutState::Running, String::new(), at.at_ms);
                r.log(at.index, at.at_ms, "", format!("resumed by {}", at.actor));
                self.active_steps.touch_rollout(id);
                Ok(true)
            }
            RolloutState::Running => Ok(false),
            RolloutState::Halted => Err(wrong(
                id,
                "resume",
                RolloutState::Halted,
                &format!(
                    "{}; start a new rollout of {} to go on: hosts already on it are skipped",
                    r.reason, r.release.id
                ),
            )),
            s => Err(wrong(id, "resume", s, &r.reason)),
        }
    }

    /// `AbortRollout`. Returns the id of the rollback rollout, when one was started.
    pub fn abort(
        &mut self,
        at: &At,
        id: &str,
        rollback: bool,
        fleet: Fleet<'_>,
    ) -> Result<Option<String>, StateError> {
        let r = self.by_id.get(id).ok_or_else(|| unknown(id))?;
        if matches!(r.state, RolloutState::Completed | RolloutState::Aborted) {
            let hint = if r.state == RolloutState::Completed {
                format!(
                    "to go back, start a rollout of the release you want{}",
                    r.previous
                        .as_ref()
                        .map(|p| format!(" (it replaced {})", p.id))
                        .unwrap_or_default()
                )
            } else {
                r.reason.clone()
            };
            return Err(wrong(id, "abort", r.state, &hint));
        }
        let plan = if rollback {
            let Some(previous) = r.previous.clone() else {
                let why = if r.kind == RolloutKind::CatchUp {
                    "it is a catch-up of one host".to_string()
                } else {
                    format!(
                        "no earlier rollout of group {} succeeded before it: it was a first install, \
                         or the hosts were installed outside rollouts",
                        r.group
                    )
                };
                return Err(RolloutError::NoPrevious {
                    id: id.to_string(),
                    why,
                }
                .into());
            };
            let hosts = fleet.targets(&r.group);
            for other in self.list().into_iter().filter(|o| o.state.is_active()) {
                if other.id == id || other.kind == RolloutKind::CatchUp {
                    continue;
                }
                if let Some(s) = other
                    .steps
                    .iter()
                    .find(|s| !s.phase.is_terminal() && hosts.iter().any(|h| h.id == s.host))
                {
                    return Err(RolloutError::Conflict {
                        what: format!("host {:?}, to be rolled back,", s.host),
                        other: other.id.clone(),
                        state: other.state.as_str().to_string(),
                    }
                    .into());
                }
            }
            let rb_id = {
                let named = format!("{id}-rollback");
                if named.len() <= MAX_ID && !self.by_id.contains_key(&named) {
                    named
                } else {
                    format!("rollback-{}", at.index)
                }
            };
            let policy = Policy {
                batch: r.policy.batch,
                canary: 0,
                pause_after_canary: false,
                max_failures: r.policy.max_failures,
                auto_rollback: true,
                progress_deadline_ms: r.policy.progress_deadline_ms,
            };
            Some((rb_id, previous, policy, r.group.clone(), hosts))
        } else {
            None
        };
        // Checks done: change things.
        let catch_ups: Vec<String> = match &plan {
            Some((_, _, _, _, hosts)) => self
                .list()
                .into_iter()
                .filter(|o| o.state.is_active() && o.kind == RolloutKind::CatchUp)
                .filter(|o| {
                    o.steps
                        .iter()
                        .any(|s| !s.phase.is_terminal() && hosts.iter().any(|h| h.id == s.host))
                })
                .map(|o| o.id.clone())
                .collect(),
            None => Vec::new(),
        };
        if let Some(r) = self.by_id.get_mut(id) {
            r.set_state(
                RolloutState::Aborted,
                format!("aborted by {}", at.actor),
                at.at_ms,
            );
            let msg = match &plan {
                Some((rb, p, ..)) => {
                    r.rollback = rb.clone();
                    format!("aborted by {}; rolling back to {} as {rb}", at.actor, p.id)
                }
                None => format!("aborted by {}", at.actor),
            };
            r.log(at.index, at.at_ms, "", msg);
            self.active_steps.touch_rollout(id);
        }
        let Some((rb_id, previous, policy, group, hosts)) = plan else {
            return Ok(None);
        };
        for c in catch_ups {
            self.supersede(at, &c, &rb_id);
        }
        let before = self.group_release(&group).cloned();
        let mut rb = new_rollout(
            at,
            RolloutKind::Rollback,
            &rb_id,
            &group,
            previous,
            None,
            policy,
            before,
            &hosts,
        );
        rb.log(at.index, at.at_ms, "", format!("rolls back rollout {id}"));
        self.insert(rb);
        Ok(Some(rb_id))
    }

    /// `CheckProgress`. Returns whether the rollout was halted.
    pub fn check_progress(
        &mut self,
        at: &At,
        id: &str,
        fleet: Fleet<'_>,
    ) -> Result<bool, StateError> {
        let r = self.by_id.get(id).ok_or_else(|| unknown(id))?;
        if r.state != RolloutState::Running {
            return Ok(false);
        }
        let idle = at.at_ms.saturating_sub(r.last_progress_at_ms);
        if idle < r.policy.progress_deadline_ms {
            return Ok(false);
        }
        let reason = format!(
            "no progress for {} (progress_deadline {}): {}",
            words(idle),
            words(r.policy.progress_deadline_ms),
            describe_waits(r, &self.waits(r, fleet), at.at_ms)
        );
        if let Some(r) = self.by_id.get_mut(id) {
            r.log(at.index, at.at_ms, "", format!("halted: {reason}"));
            r.set_state(RolloutState::Halted, reason, at.at_ms);
            self.active_steps.touch_rollout(id);
        }
        Ok(true)
    }
}
