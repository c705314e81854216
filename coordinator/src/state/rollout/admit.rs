//! Admission: which hosts of a rollout may deploy now. Derived on apply.
//!
//! [`Rollouts::reconcile`] runs after every command the machine applies successfully, and
//! moves each active rollout, oldest first, to its fixpoint:
//!
//! 1. failures reach `max_failures`: **halted**, with the failed hosts and their errors;
//! 2. every step terminal: **completed**;
//! 3. the last canary is done and `pause_after_canary` is set: **paused**, once;
//! 4. a running rollout admits `staged` steps in order, canaries only while any canary is not
//!    done, while its in-flight count is below `batch`. A host that is unprovisioned at
//!    admission is a first install: no slot, no drain, not counted. A host holding a slot for
//!    anything else (maintenance, a superseded rollout) waits.
//! 5. **A host already out goes first.** A reachable host that is already unavailable (its
//!    service unhealthy, or out of rotation) costs no budget to deploy, and the budget it uses
//!    lets no other host deploy while it is down. So staged hosts already out are admitted
//!    before the others, and when the batch is full, an admitted step whose host is available
//!    and holds no slot yet yields its place (back to `staged`) to such a host. Otherwise a
//!    rollout whose batch went to a healthy host would wait forever on the budget the down host
//!    holds (issue 10 (f): "that host itself may be deployed"). A yielded host's agent is
//!    refused its slot as not admitted, which disrupted nothing; it is admitted again later.
//!
//! One pass reaches the fixpoint: admitting a step changes only the count it is checked
//! against, and every state change returns. So applying an unrelated command afterwards
//! changes nothing, which keeps "a refused command changes nothing" true.

use super::model::{Rollout, RolloutState, Step, StepPhase};
use super::{serves, At, Fleet, Rollouts};
use crate::state::host::{Host, Reachability};

/// Whether step `s` of `r` counts toward `r`'s batch now: the host holds a slot for `r` (a
/// terminal step whose outcome came before the release, too), or the step is admitted and not
/// terminal, unless it is a first install holding no slot.
pub(super) fn counts_in_flight(r: &Rollout, s: &Step, fleet: Fleet<'_>) -> bool {
    fleet.holds_slot_for(&s.host, r) || (s.phase.is_in_flight() && !s.first_install)
}

/// Whether deploying `h` costs its groups no budget: it is reachable (so it can act) and
/// already in Unavailable, with no slot of its own.
fn already_out(h: &Host) -> bool {
    h.reachability == Reachability::Reachable && h.slot.is_none() && h.is_unavailable()
}

/// How many steps of `r` count toward its batch.
pub(super) fn in_flight(r: &Rollout, fleet: Fleet<'_>) -> u64 {
    r.steps
        .iter()
        .filter(|s| counts_in_flight(r, s, fleet))
        .count() as u64
}

impl Rollouts {
    /// Moves every active rollout to its fixpoint (see the module docs).
    pub fn reconcile(&mut self, at: &At, fleet: Fleet<'_>) {
        for id in self.active_ids() {
            self.reconcile_one(at, &id, fleet);
        }
    }

    fn reconcile_one(&mut self, at: &At, id: &str, fleet: Fleet<'_>) {
        let Some(r) = self.by_id.get_mut(id) else {
            return;
        };
        if !r.state.is_active() {
            return;
        }
        let failures = r.failures();
        if failures >= r.policy.max_failures {
            let failed: Vec<String> = r
                .steps
                .iter()
                .filter(|s| s.phase.is_failure())
                .take(3)
                .map(|s| {
                    let why = if s.error.is_empty() {
                        s.phase.as_str().to_string()
                    } else {
                        s.error.clone()
                    };
                    format!("{}: {why}", s.host)
                })
                .collect();
            let reason = format!(
                "{failures} host(s) failed (max_failures {}): {}",
                r.policy.max_failures,
                failed.join("; ")
            );
            r.log(at.index, at.at_ms, "", format!("halted: {reason}"));
            r.set_state(RolloutState::Halted, reason, at.at_ms);
            self.active_steps.touch_rollout(id);
            return;
        }
        if r.steps.iter().all(|s| s.phase.is_terminal()) {
            let msg = format!(
                "completed: {} succeeded, {} failed",
                r.succeeded(),
                r.failures()
            );
            r.log(at.index, at.at_ms, "", msg);
            r.set_state(RolloutState::Completed, String::new(), at.at_ms);
            self.active_steps.touch_rollout(id);
            return;
        }
        if r.state != RolloutState::Running {
            return;
        }
        let canary_open = r.steps.iter().any(|s| s.canary && !s.phase.is_terminal());
        let canaries: Vec<String> = r
            .steps
            .iter()
            .filter(|s| s.canary)
            .map(|s| s.host.clone())
            .collect();
        if !canary_open
            && !canaries.is_empty()
            && r.policy.pause_after_canary
            && !r.canary_pause_done
        {
            r.canary_pause_done = true;
            let reason = format!(
                "paused after the canary hosts {}: resume with `hotdeployctl rollout resume {}`",
                canaries.join(", "),
                r.id
            );
            r.log(at.index, at.at_ms, "", reason.clone());
            r.set_state(RolloutState::Paused, reason, at.at_ms);
            self.active_steps.touch_rollout(id);
            return;
        }
        let mut count = in_flight(r, fleet);
        let eligible = |s: &Step| s.phase == StepPhase::Staged && (!canary_open || s.canary);
        // A full batch makes room for a host already out (module docs, 5): each yield swaps
        // an available waiting host for one already out, so this ends.
        while count >= r.policy.batch {
            let out = r.steps.iter().find(|s| {
                eligible(s)
                    && fleet.host(&s.host).is_some_and(already_out)
                    && fleet.slot_of(&s.host).is_none()
            });
            let Some(out) = out.map(|s| s.host.clone()) else {
                break;
            };
            let yielding = r.steps.iter().position(|s| {
                s.phase == StepPhase::Waiting
                    && s.token.is_none()
                    && !s.first_install
                    && fleet.slot_of(&s.host).is_none()
                    && fleet.host(&s.host).is_some_and(Host::is_available)
            });
            let Some(i) = yielding else {
                break;
            };
            let s = &mut r.steps[i];
            s.enter(StepPhase::Staged, at.at_ms);
            let host = s.host.clone();
            self.active_steps.touch_step(id, &host);
            count -= 1;
            r.log(
                at.index,
                at.at_ms,
                &host,
                format!(
                    "yields its place in the batch to {out}, which is already out of \
                     rotation and costs no budget"
                ),
            );
        }
        // Hosts already out first, then the others, each in step order. Only eligible steps
        // are looked at, and each host is looked up once (not once per comparison of a sort:
        // this runs after every applied entry, on every replica).
        let (out, rest): (Vec<usize>, Vec<usize>) = (0..r.steps.len())
            .filter(|&i| eligible(&r.steps[i]))
            .partition(|&i| fleet.host(&r.steps[i].host).is_some_and(already_out));
        for i in out.into_iter().chain(rest) {
            let s = &r.steps[i];
            let Some(h) = fleet.host(&s.host) else {
                continue;
            };
            if fleet.slot_of(&s.host).is_some_and(|slot| !serves(slot, r)) {
                continue;
            }
            let first = !h.is_provisioned() && h.slot.is_none();
            if !first && count >= r.policy.batch {
                continue;
            }
            let s = &mut r.steps[i];
            s.enter(StepPhase::Waiting, at.at_ms);
            s.admitted_at_ms = Some(at.at_ms);
            s.first_install = first;
            let host = s.host.clone();
            self.active_steps.touch_step(id, &host);
            if !first {
                count += 1;
            }
            let msg = if first {
                "admitted: a first install, no slot needed".to_string()
            } else {
                format!(
                    "admitted ({count} of batch {} in flight): may take a slot",
                    r.policy.batch
                )
            };
            r.log(at.index, at.at_ms, &host, msg);
            r.progressed(at.at_ms);
        }
    }
}
