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
//!
//! **Cost.** This runs after every applied entry, on every replica, so it must not cost a host
//! lookup per step: with 1,000 hosts in a rollout that was most of a replica's CPU during a
//! rollout (BENCHMARKS.md §5). The steps are walked once for their phases (no lookups); the
//! batch's slot holders come from the slot table (a few entries), and the hosts that need a
//! look at their state (already out, or a first install) from one walk of the hosts' values,
//! once per entry for every rollout, each mapped to its step by the rollout's position map.
//! Only the steps actually admitted, and the few that might yield, are looked up by id. The
//! property test checks each shortcut against the plain definition
//! ([`in_flight_by_scan`], [`candidates_by_scan`]) after every random command.

use super::index::ActiveIndex;
use super::model::{Rollout, RolloutState, Step, StepPhase};
use super::{serves, At, Fleet, Rollouts};
use crate::state::host::{Host, Reachability};

/// Whether step `s` of `r` counts toward `r`'s batch now: the host holds a slot for `r` (a
/// terminal step whose outcome came before the release, too), or the step is admitted and not
/// terminal, unless it is a first install holding no slot.
pub(super) fn counts_in_flight(r: &Rollout, s: &Step, fleet: Fleet<'_>) -> bool {
    fleet.holds_slot_for(&s.host, r) || counts_by_phase(s)
}

/// The half of [`counts_in_flight`] that the step alone answers.
fn counts_by_phase(s: &Step) -> bool {
    s.phase.is_in_flight() && !s.first_install
}

/// Whether deploying `h` costs its groups no budget: it is reachable (so it can act) and
/// already in Unavailable, with no slot of its own.
fn already_out(h: &Host) -> bool {
    h.reachability == Reachability::Reachable && h.slot.is_none() && h.is_unavailable()
}

/// Whether admitting `h` is a first install: unprovisioned, holding no slot. (Never also
/// [`already_out`]: an unprovisioned host without a slot is not counted, so not unavailable.)
fn first_install(h: &Host) -> bool {
    !h.is_provisioned() && h.slot.is_none()
}

/// How many steps of `r` count toward its batch: those that count by their phase, plus the
/// hosts holding a slot for `r` whose step does not.
pub(super) fn in_flight(r: &Rollout, fleet: Fleet<'_>) -> u64 {
    let by_phase = r.steps.iter().filter(|s| counts_by_phase(s)).count();
    let by_slot = fleet
        .slots
        .values()
        .filter(|slot| serves(slot, r))
        // The host's own slot (what `holds_slot_for` asks), not a stale entry.
        .filter(|slot| fleet.host(&slot.host).and_then(|h| h.slot) == Some(slot.token))
        .filter(|slot| r.step(&slot.host).is_some_and(|s| !counts_by_phase(s)))
        .count();
    (by_phase + by_slot) as u64
}

/// [`in_flight`] by its definition, one host lookup per step: what the property test compares
/// it with.
#[cfg(test)]
fn in_flight_by_scan(r: &Rollout, fleet: Fleet<'_>) -> u64 {
    r.steps
        .iter()
        .filter(|s| counts_in_flight(r, s, fleet))
        .count() as u64
}

/// The hosts whose state admission must look at beyond their step's phase: already out, or a
/// first install. One walk of the hosts, shared by every rollout for one entry.
fn unusual_hosts<'a>(fleet: Fleet<'a>) -> Vec<&'a Host> {
    fleet
        .hosts
        .values()
        .filter(|h| already_out(h) || first_install(h))
        .collect()
}

/// The positions, in step order, of `r`'s steps that `eligible` accepts and whose host is
/// already out, and of those whose host is a first install.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Candidates {
    pub out: Vec<usize>,
    pub first: Vec<usize>,
}

fn candidates(r: &Rollout, unusual: &[&Host], eligible: &impl Fn(&Step) -> bool) -> Candidates {
    let mut c = Candidates::default();
    for h in unusual {
        let Some(i) = r.position(&h.id).filter(|&i| eligible(&r.steps[i])) else {
            continue;
        };
        if already_out(h) {
            c.out.push(i);
        } else {
            c.first.push(i);
        }
    }
    c.out.sort_unstable();
    c.first.sort_unstable();
    c
}

/// [`candidates`] by a lookup of every eligible step's host, beside [`candidates`] itself:
/// what the property test compares.
#[cfg(test)]
fn candidates_by_scan(r: &Rollout, fleet: Fleet<'_>) -> (Candidates, Candidates) {
    let eligible = eligibility(StepTally::of(r).canary_open);
    let mut c = Candidates::default();
    for (i, s) in r.steps.iter().enumerate().filter(|(_, s)| eligible(s)) {
        match fleet.host(&s.host) {
            Some(h) if already_out(h) => c.out.push(i),
            Some(h) if first_install(h) => c.first.push(i),
            _ => {}
        }
    }
    let fast = candidates(r, &unusual_hosts(fleet), &eligible);
    (fast, c)
}

/// Which steps admission may admit now: staged ones, canaries only while a canary is open.
fn eligibility(canary_open: bool) -> impl Fn(&Step) -> bool {
    move |s: &Step| s.phase == StepPhase::Staged && (!canary_open || s.canary)
}

/// What one walk of a rollout's steps tells admission, without a host lookup.
struct StepTally {
    failures: u64,
    pending: u64,
    canaries: u64,
    canary_open: bool,
}

impl StepTally {
    fn of(r: &Rollout) -> Self {
        let mut t = StepTally {
            failures: 0,
            pending: 0,
            canaries: 0,
            canary_open: false,
        };
        for s in &r.steps {
            t.failures += u64::from(s.phase.is_failure());
            t.pending += u64::from(!s.phase.is_terminal());
            t.canaries += u64::from(s.canary);
            t.canary_open |= s.canary && !s.phase.is_terminal();
        }
        t
    }
}

impl Rollouts {
    /// Whether admission's shortcuts ([`in_flight`], [`candidates`]) give what their plain
    /// definitions give, and every running rollout is at its fixpoint (nothing it may admit is
    /// left staged), for every active rollout: the property test asks after every step.
    #[cfg(test)]
    pub fn check_admission_shortcuts(&self, fleet: Fleet<'_>) -> Result<(), String> {
        for r in self.by_id.values().filter(|r| r.state.is_active()) {
            let (fast, plain) = (in_flight(r, fleet), in_flight_by_scan(r, fleet));
            if fast != plain {
                return Err(format!(
                    "rollout {:?}: in flight {fast} by the slot table, {plain} by a scan",
                    r.id
                ));
            }
            let (fast, plain) = candidates_by_scan(r, fleet);
            if fast != plain {
                return Err(format!(
                    "rollout {:?}: candidates {fast:?} by the unusual hosts, {plain:?} by a scan",
                    r.id
                ));
            }
            // The fixpoint: nothing admission would admit is left staged.
            if r.state != RolloutState::Running {
                continue;
            }
            let eligible = eligibility(StepTally::of(r).canary_open);
            let room = in_flight_by_scan(r, fleet) < r.policy.batch;
            for s in r.steps.iter().filter(|s| eligible(s)) {
                let Some(h) = fleet.host(&s.host) else {
                    continue;
                };
                if fleet.slot_of(&s.host).is_some_and(|slot| !serves(slot, r)) {
                    continue;
                }
                if first_install(h) || room {
                    return Err(format!(
                        "rollout {:?} left {:?} staged, which it may admit (first install: {})",
                        r.id,
                        s.host,
                        first_install(h)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Moves every active rollout to its fixpoint (see the module docs).
    pub fn reconcile(&mut self, at: &At, fleet: Fleet<'_>) {
        let ids = self.active_ids();
        if ids.is_empty() {
            return;
        }
        let unusual = unusual_hosts(fleet);
        for id in ids {
            self.reconcile_one(at, &id, fleet, &unusual);
        }
    }

    fn reconcile_one(&mut self, at: &At, id: &str, fleet: Fleet<'_>, unusual: &[&Host]) {
        let Some(r) = self.by_id.get_mut(id) else {
            return;
        };
        if !r.state.is_active() {
            return;
        }
        let tally = StepTally::of(r);
        let failures = tally.failures;
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
        if tally.pending == 0 {
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
        if !tally.canary_open
            && tally.canaries > 0
            && r.policy.pause_after_canary
            && !r.canary_pause_done
        {
            let canaries: Vec<&str> = r
                .steps
                .iter()
                .filter(|s| s.canary)
                .map(|s| s.host.as_str())
                .collect();
            let reason = format!(
                "paused after the canary hosts {}: resume with `hotdeployctl rollout resume {}`",
                canaries.join(", "),
                r.id
            );
            r.canary_pause_done = true;
            r.log(at.index, at.at_ms, "", reason.clone());
            r.set_state(RolloutState::Paused, reason, at.at_ms);
            self.active_steps.touch_rollout(id);
            return;
        }
        let mut count = in_flight(r, fleet);
        let eligible = eligibility(tally.canary_open);
        let found = candidates(r, unusual, &eligible);
        // A full batch makes room for a host already out (module docs, 5): each yield swaps
        // an available waiting host for one already out, so this ends. Yielding changes no
        // host and makes no host-already-out step ineligible, so `found.out` stays true.
        while count >= r.policy.batch {
            let Some(&o) = found.out.first() else {
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
            let out = r.steps[o].host.clone();
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
        // Hosts already out first, then the others, each in step order. Once the batch is
        // full only first installs can still be admitted, and those are in `found.first`: so
        // the walk of the others stops there, and no step is looked up that cannot be
        // admitted.
        let index = &mut self.active_steps;
        for &i in &found.out {
            admit(r, index, at, i, &mut count, fleet);
        }
        let mut i = 0;
        while i < r.steps.len() && count < r.policy.batch {
            if eligible(&r.steps[i]) && found.out.binary_search(&i).is_err() {
                admit(r, index, at, i, &mut count, fleet);
            }
            i += 1;
        }
        for &f in found.first.iter().filter(|&&f| f >= i) {
            admit(r, index, at, f, &mut count, fleet);
        }
    }
}

/// Admits step `i` of `r` if its host may deploy now (it holds no slot for anything else, and
/// it is a first install or the batch has room), counting it in `count` unless it is a first
/// install, and marks it changed in the index.
fn admit(
    r: &mut Rollout,
    index: &mut ActiveIndex,
    at: &At,
    i: usize,
    count: &mut u64,
    fleet: Fleet<'_>,
) {
    let s = &r.steps[i];
    let Some(h) = fleet.host(&s.host) else {
        return;
    };
    if fleet.slot_of(&s.host).is_some_and(|slot| !serves(slot, r)) {
        return;
    }
    let first = first_install(h);
    if !first && *count >= r.policy.batch {
        return;
    }
    let s = &mut r.steps[i];
    s.enter(StepPhase::Waiting, at.at_ms);
    s.admitted_at_ms = Some(at.at_ms);
    s.first_install = first;
    let host = s.host.clone();
    index.touch_step(&r.id, &host);
    if !first {
        *count += 1;
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
