//! Finishing a deploy that an agent crash interrupted.
//!
//! The journal names the last phase made durable; the step it names may or may not have
//! happened, every earlier step did. So (DESIGN §4):
//!
//! | last phase                              | recovery                                        |
//! |-----------------------------------------|-------------------------------------------------|
//! | `staging`, `staged`                     | nothing was disrupted: outcome `failed`         |
//! | `slot_requested`                        | same; a late grant is released by the link      |
//! | `slot_held`, `draining`                 | undrain (confirmed), release: `failed`          |
//! | `swapped`, `restarted`, `verifying`     | (re)start and verify `current`; roll back if it |
//! |                                         | fails; a swap that never happened is an abort   |
//! | `rolling_back`                          | finish the rollback                             |
//! | `undraining`                            | confirm the undrain, release, keep the outcome  |
//!
//! After a reboot nothing runs, and the agent did not start `current` at boot if it may be a
//! release not verified yet (from `swapped` to `rolling_back`): recovery starts it, and only
//! under a fenced `restarted` (or, when the swap never happened, by starting the old release,
//! which disrupts nothing). A restart fence that cannot be committed is retried while the host
//! is out of rotation under its slot, unless nothing was restarted yet and the old release
//! still runs, in which case the swap is undone and the deploy aborted.
//!
//! Afterwards the host is healthy and in rotation on the old or the new release with its slot
//! released, or (neither verifies) out of rotation keeping its slot; `current` always names a
//! complete release, because the store swaps it atomically.

use super::run::{interrupted, Run, Stop, Verdict};
use crate::journal::{Outcome, Phase};

/// Finishes the deploy recorded in `run`; at the agent's shutdown it stops where it is (the
/// next start recovers again).
pub(super) async fn recover(run: Run) -> Verdict {
    let shutdown = run.eng.shutdown.clone();
    tokio::select! {
        v = finish(run) => v,
        _ = shutdown.cancelled() => interrupted(),
    }
}

async fn finish(mut run: Run) -> Verdict {
    let phase = run.rec.phase;
    tracing::warn!(%phase, release = %run.rec.to, "recovering an interrupted deploy");
    // Whatever recovery abandons was abandoned for the restart, not for the release: a rollout
    // deploy then ends `fenced` and is driven again.
    run.redrive = true;
    if phase <= Phase::SlotRequested {
        // Nothing was disrupted and there is no outcome to report: the rollout driver deploys
        // again when the assignment says so.
        run.not_admitted();
    }
    let r = match phase {
        Phase::Staging | Phase::Staged => Err(Stop::Failed(format!(
            "agent restarted while staging {}; nothing was swapped",
            run.rec.to
        ))),
        Phase::SlotRequested => Err(Stop::Failed(
            "agent restarted while waiting for a slot; nothing was swapped".into(),
        )),
        Phase::SlotHeld | Phase::Draining => Err(Stop::Abort(format!(
            "agent restarted during {phase}, before the swap; deploy abandoned"
        ))),
        Phase::Swapped | Phase::Restarted | Phase::Verifying => resume_swapped(&mut run).await,
        Phase::RollingBack => {
            let reason = run
                .rec
                .error
                .clone()
                .unwrap_or_else(|| format!("verify of {} failed", run.rec.to));
            run.roll_back(reason).await
        }
        Phase::Undraining => {
            let outcome = run.rec.outcome.unwrap_or(Outcome::Failed);
            let error = run.rec.error.clone().unwrap_or_default();
            // The phase is rewritten as undraining; drained is judged from the phase before it.
            run.rec.phase = Phase::Draining;
            run.back_in_rotation(outcome, error).await
        }
        Phase::Released => Ok((
            run.rec.outcome.unwrap_or(Outcome::Succeeded),
            run.rec.error.clone().unwrap_or_default(),
        )),
    };
    run.settle(r).await
}

/// The swap may have happened: judge by what `current` says.
async fn resume_swapped(run: &mut Run) -> Result<Verdict, Stop> {
    let to = run.rec.to.clone();
    let current = run
        .eng
        .ops
        .current()
        .map_err(|e| Stop::Unconfirmed(format!("cannot read current: {e}")))?;
    let phase = run.rec.phase;
    let down = run.not_running();
    match run.rec.from.clone() {
        None => {
            if current.as_deref() != Some(to.as_str()) {
                return Err(Stop::Failed(format!(
                    "agent restarted before {to} was swapped in"
                )));
            }
            if phase < Phase::Verifying || down {
                run.first_start().await
            } else {
                run.first_verify().await
            }
        }
        Some(from) => {
            if current.as_deref() != Some(to.as_str()) {
                if down {
                    // Nothing runs (a reboot): the old release is what was live. Started
                    // afresh and not verified: it must prove itself to the monitor.
                    run.mark_restarted();
                    if let Err(e) = run.eng.ops.start(&from).await {
                        tracing::warn!(error = %e, "cannot start {from}");
                    }
                }
                return Err(Stop::Abort(format!(
                    "agent restarted before the swap to {to} took effect; still on {from}"
                )));
            }
            if phase < Phase::Verifying || down {
                if phase == Phase::Swapped && !down {
                    // Nothing restarted yet, and the old release still runs.
                    if let Err(stop) = run.fence(Phase::Restarted).await {
                        return match stop {
                            Stop::Unconfirmed(m) => run.swap_back_and_abort(&from, m),
                            other => Err(other),
                        };
                    }
                } else {
                    run.fence_until_confirmed(Phase::Restarted).await?;
                }
                return run.restart_new(&from).await;
            }
            run.verify_new(&from).await
        }
    }
}
