//! What a rollout deploy tells the coordinators about its step: the outcome, once, and a first
//! install's progress.
//!
//! The outcome of a deploy under a slot is reported *before* the slot is released (see
//! `run::Run::back_in_rotation`): the coordinators then count the step done while the slot still
//! stands, so the next host of the rollout is granted the moment it frees, and a release never
//! looks like a deploy that vanished (which re-drives the step). Both go in one `ReportStep`
//! that names the slot's token: one log entry and one round trip, in that order. When the
//! answer says the slot was not released with it (the coordinators take the outcome alone while
//! a member predates that form, or the token was no longer held), the caller releases it
//! separately, after the outcome as before. An outcome with no slot to
//! release (a failure before the drain, a fenced deploy, a first install, a host kept out of
//! rotation) is reported when the deploy is over ([`report_due`]).
//!
//! The journal's [`RolloutStep::report`] records where that stands, so that a restarted agent
//! whose deploy was over but not reported reports it (the rollout driver calls [`report_due`]
//! at start and whenever it looks), and a recovery that finishes a deploy reports it before its
//! release. A report the coordinators refuse for good (an attempt since driven again, a step or
//! rollout they no longer have) is dropped: both orders converge (architecture.md, "The agent
//! protocol").

use super::{Inner, StepReport, StepSlot, StepUpdate};
use crate::journal::{DeployRecord, Outcome, OutcomeReport, RolloutStep};
use crate::link::LinkError;
use std::sync::Arc;

/// Sends the outcome of the rollout deploy `rec`, releasing the slot of `release_token` with it
/// (0: none); answers what the journal should now say, and what became of the slot.
pub(super) async fn send(
    inner: &Inner,
    rec: &DeployRecord,
    outcome: Outcome,
    error: &str,
    release_token: u64,
) -> (OutcomeReport, StepSlot) {
    let (Some(lock), Some(step)) = (&inner.lock, &rec.step) else {
        return (OutcomeReport::Sent, StepSlot::NotReleased);
    };
    let update = StepUpdate {
        rollout: rec.rollout.clone(),
        attempt: step.attempt,
        report: StepReport::of(outcome),
        error: error.to_owned(),
        release: inner.view.borrow().current.clone(),
        release_token,
    };
    match lock.report_step(update).await {
        Ok(slot) => (OutcomeReport::Sent, slot),
        Err(LinkError::Refused(m)) => {
            tracing::info!(
                rollout = %rec.rollout,
                attempt = step.attempt,
                "the coordinators refuse the outcome ({m}); dropped"
            );
            (OutcomeReport::Sent, StepSlot::NotReleased)
        }
        Err(e) => {
            tracing::warn!(
                rollout = %rec.rollout,
                attempt = step.attempt,
                error = %e,
                "the outcome could not be reported; it is sent again later"
            );
            (OutcomeReport::Due, StepSlot::NotReleased)
        }
    }
}

/// Reports a first install's progress (`swapping`, `verifying`); a failure is only logged.
pub(super) async fn progress(inner: &Inner, rollout: &str, attempt: u32, report: StepReport) {
    let Some(lock) = &inner.lock else { return };
    let update = StepUpdate {
        rollout: rollout.to_owned(),
        attempt,
        report,
        error: String::new(),
        release: None,
        release_token: 0,
    };
    if let Err(e) = lock.report_step(update).await {
        tracing::warn!(%report, error = %e, "cannot report the step's progress");
    }
}

/// The last deploy's rollout step and outcome, if it was a rollout's and is over.
pub(super) fn finished_step(rec: &DeployRecord) -> Option<(&RolloutStep, Outcome)> {
    let step = rec.step.as_ref()?;
    if rec.in_progress() {
        return None;
    }
    Some((step, rec.outcome?))
}

/// Reports the journaled deploy's outcome if it is over and still due. The caller holds the
/// engine (no other operation writes the record meanwhile).
pub(super) async fn report_due(inner: &Arc<Inner>) {
    let mut rec = match inner.journal.deploy() {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the journal for an unreported outcome");
            return;
        }
    };
    let Some((step, outcome)) = finished_step(&rec) else {
        return;
    };
    if step.report != OutcomeReport::Due {
        return;
    }
    let error = rec.error.clone().unwrap_or_default();
    // Any slot of this deploy is the reconciliation's to release (the deploy is over).
    let (report, _) = send(inner, &rec, outcome, &error, 0).await;
    if report == OutcomeReport::Due {
        return;
    }
    if let Some(s) = &mut rec.step {
        s.report = report;
    }
    if let Err(e) = inner.journal.put_deploy(&rec) {
        tracing::warn!(error = %e, "cannot journal that the outcome was reported");
    }
}
