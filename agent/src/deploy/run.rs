//! One deploy, step by step. See the module docs of [`super`] for the flow and its rules.

use super::transition::{self, PhaseClock};
use super::{outcome, Hook, HookCtx, Inner, Progress, SlotRequest, StepReport, StepSlot};
use crate::failpoint::failpoint;
use crate::health::EngineClaim;
use crate::journal::{DeployKind, DeployRecord, Hold, HoldKind, Outcome, OutcomeReport, Phase};
use crate::link::LinkError;
use hotdeploy_common::proto::Health;
use hotdeploy_common::time::now_ms;
use std::sync::Arc;
use std::time::Duration;

/// Why a deploy stops before its natural end.
#[derive(Debug)]
pub(super) enum Stop {
    /// Nothing to undo: end with `failed`.
    Failed(String),
    /// Before the swap (or with it undone): return to rotation if drained, release the slot,
    /// end with `failed`.
    Abort(String),
    /// The token is stale: touch nothing more, end with `fenced`.
    Fenced(String),
    /// A fencing phase could not be committed (coordinators unreachable): touch nothing more,
    /// keep the slot, end with `failed`.
    Unconfirmed(String),
    /// The journal cannot be written: touch nothing more, keep the slot, end with `failed`.
    Journal(String),
}

/// The outcome of a deploy and why.
pub(super) type Verdict = (Outcome, String);

/// What became of a fenced swap.
enum Swapped {
    /// `current` points at the new release.
    Done,
    /// `current` could not be moved (why): roll back.
    Failed(String),
}

/// What a deploy task answers when the agent shuts down under it: the journal is left as it
/// was, and recovery resumes the deploy at the next start.
pub(super) fn interrupted() -> Verdict {
    (
        Outcome::Failed,
        "the agent is shutting down; the deploy resumes when it starts again".into(),
    )
}

/// Pause between attempts to commit a rollback's fence.
const FENCE_RETRY_MIN: Duration = Duration::from_secs(1);
const FENCE_RETRY_MAX: Duration = Duration::from_secs(10);

/// A deploy in progress.
pub(super) struct Run {
    pub(super) eng: Arc<Inner>,
    pub(super) rec: DeployRecord,
    pub(super) progress: Progress,
    /// The host's health, once the deploy has disrupted (or is about to disrupt) the service.
    health: Option<EngineClaim>,
    /// A verdict on the service was set through `health`.
    judged: bool,
    /// The service was (or may have been) restarted by this deploy.
    restarted: bool,
    /// The deploy was abandoned for a reason that is not the release's fault (a fence that
    /// could not be confirmed, an agent restart before the swap took effect): a rollout deploy
    /// that aborts then ends `fenced`, and the coordinators drive it again.
    pub(super) redrive: bool,
    /// The phase entered last and since when, for the transition lines and the metrics.
    clock: PhaseClock,
}

impl Run {
    pub(super) fn new(eng: Arc<Inner>, rec: DeployRecord, progress: Progress) -> Self {
        Self {
            eng,
            rec,
            progress,
            health: None,
            judged: false,
            restarted: false,
            redrive: false,
            clock: PhaseClock::new(),
        }
    }

    /// A rollout's canary host (its slot request says so).
    fn canary(&self) -> bool {
        self.rec.step.as_ref().is_some_and(|s| s.canary)
    }

    /// Whether a failed verify is rolled back (always, unless a rollout says otherwise).
    fn auto_rollback(&self) -> bool {
        self.rec.step.as_ref().is_none_or(|s| s.auto_rollback)
    }

    /// A rollout deploy that never disrupted anything because it got no slot (or was
    /// interrupted before it did): there is no outcome to report, and the driver asks again.
    pub(super) fn not_admitted(&mut self) {
        if let Some(s) = &mut self.rec.step {
            s.report = OutcomeReport::NotAdmitted;
        }
    }

    /// What an aborted deploy (nothing swapped, or the swap undone) ends as.
    fn abort_outcome(&self) -> Outcome {
        if self.redrive && self.rec.step.is_some() {
            Outcome::Fenced
        } else {
            Outcome::Failed
        }
    }

    /// Before anything disruptive happened, a phase that cannot be committed aborts the
    /// deploy (and a rollout drives it again).
    fn unconfirmed_aborts(&mut self, stop: Stop) -> Stop {
        match stop {
            Stop::Unconfirmed(m) => {
                self.redrive = true;
                Stop::Abort(m)
            }
            other => other,
        }
    }

    /// Reports the outcome of a rollout deploy, once, releasing the slot of `release_token`
    /// with it; the journal records that it was. Answers what became of the slot.
    async fn report_outcome(
        &mut self,
        outcome: Outcome,
        error: &str,
        release_token: u64,
    ) -> StepSlot {
        let (report, slot) = match &self.rec.step {
            Some(s) if s.report == OutcomeReport::Due => {
                outcome::send(&self.eng, &self.rec, outcome, error, release_token).await
            }
            _ => return StepSlot::NotReleased,
        };
        if let Some(s) = &mut self.rec.step {
            s.report = report;
        }
        if let Err(e) = self.eng.journal.put_deploy(&self.rec) {
            tracing::warn!(error = %e, "cannot journal that the outcome was reported");
        }
        slot
    }

    /// A first install's progress, for display (it holds no slot to fence with). A failure
    /// is only logged.
    async fn report_progress(&self, report: StepReport) {
        if let Some(step) = &self.rec.step {
            outcome::progress(&self.eng, &self.rec.rollout, step.attempt, report).await;
        }
    }

    /// Recovery of a deploy that may have disrupted the service: the health is the engine's
    /// until the recovery ends (or, with nothing left to judge, until it returns to rotation).
    /// From `restarted` to `rolling_back` the service may run a release nobody judged yet; at
    /// `undraining` the verdict was reached before the crash, and the journaled fact holds it.
    pub(super) fn recovering(&mut self) {
        self.claim_health();
        if self.rec.phase >= Phase::Restarted && self.rec.phase < Phase::Undraining {
            self.restarted = true;
        }
    }

    /// The service is about to be restarted.
    pub(super) fn mark_restarted(&mut self) {
        self.restarted = true;
    }

    /// Takes the health fact from the monitor (once).
    fn claim_health(&mut self) {
        if self.health.is_none() {
            self.health = Some(self.eng.health.claim());
        }
    }

    /// Sets a verdict on the service that this deploy established.
    fn judge(&mut self, health: Health) {
        self.claim_health();
        if let Some(c) = &self.health {
            c.set(health);
        }
        self.judged = true;
    }

    /// Hands the health back to the monitor: as judged, or `unhealthy` if the service was
    /// restarted and never judged (a first deploy stays `unprovisioned`).
    fn release_health(&mut self) {
        if let Some(c) = self.health.take() {
            let unjudged = !self.judged && self.restarted && self.rec.from.is_some();
            c.release(unjudged.then_some(Health::Unhealthy));
        }
    }

    /// Makes `phase` durable, then shows it.
    pub(super) fn enter(&mut self, phase: Phase, message: impl Into<String>) -> Result<(), Stop> {
        self.rec.phase = phase;
        self.rec.updated_at_ms = now_ms();
        if let Err(e) = self.eng.journal.put_deploy(&self.rec) {
            self.eng
                .stats
                .errors
                .count(crate::metrics::ErrorKind::Journal);
            return Err(Stop::Journal(e.to_string()));
        }
        let message = message.into();
        let ended = self.clock.enter(phase, &self.eng.stats);
        let (host, deploy) = (&self.eng.host_id, self.clock.elapsed());
        transition::log_entered(host, &self.rec, ended, deploy, &message);
        self.eng.update(|v| v.phase = phase.as_str().to_owned());
        self.progress.phase(phase, message);
        Ok(())
    }

    /// Commits the phase about to be acted on, fenced by the token.
    pub(super) async fn fence(&self, phase: Phase) -> Result<(), Stop> {
        self.fence_of(phase).await
    }

    /// The fence of `phase` as a future that borrows nothing of the deploy, so that it can be
    /// sent while the deploy goes on (see [`Run::swap_in`]).
    fn fence_of(&self, phase: Phase) -> impl std::future::Future<Output = Result<(), Stop>> {
        let (lock, token) = (self.eng.lock.clone(), self.rec.token);
        async move {
            let Some(lock) = lock.filter(|_| token != 0) else {
                return Ok(());
            };
            match lock.report_phase(token, phase).await {
                Ok(()) => Ok(()),
                Err(LinkError::Stale(m)) => Err(Stop::Fenced(format!(
                    "slot token {token} is stale ({m}): stopped before {phase}, service left as \
                     it is"
                ))),
                Err(e) => Err(Stop::Unconfirmed(format!(
                    "could not commit phase {phase} with token {token}: {e}"
                ))),
            }
        }
    }

    /// Commits `phase`, retrying while the coordinators cannot be reached, until it is
    /// committed or the token is found stale. For steps that must happen under the slot the
    /// host already holds out of rotation (a rollback, a recovery's restart): waiting is safe,
    /// giving up would leave the host drained on a bad release for good.
    pub(super) async fn fence_until_confirmed(&self, phase: Phase) -> Result<(), Stop> {
        let mut pause = FENCE_RETRY_MIN;
        loop {
            match self.fence(phase).await {
                Err(Stop::Unconfirmed(m)) => {
                    tracing::warn!("{m}; retrying while the slot is held");
                    self.progress.note(
                        phase.as_str(),
                        format!("{m}; retrying while the slot is held"),
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(FENCE_RETRY_MAX);
                }
                other => return other,
            }
        }
    }

    fn hook_ctx(&self, release: &str) -> HookCtx {
        HookCtx {
            host: self.eng.host_id.clone(),
            release: release.to_owned(),
            from: self.rec.from.clone(),
            rollout: self.rec.rollout.clone(),
            phase: self.rec.phase.as_str().to_owned(),
        }
    }

    /// Runs a gate hook: its failure aborts the deploy before the step.
    async fn gate(&self, hook: Hook) -> Result<(), Stop> {
        let ctx = self.hook_ctx(&self.rec.to);
        self.eng
            .ops
            .hook(hook, &ctx)
            .await
            .map_err(|e| Stop::Abort(format!("hook {hook:?} failed: {e}")))
    }

    /// Runs a notification hook: its failure is logged.
    pub(super) async fn notify(&self, hook: Hook, release: &str) {
        let ctx = self.hook_ctx(release);
        if let Err(e) = self.eng.ops.hook(hook, &ctx).await {
            tracing::warn!(?hook, error = %e, "hook failed");
            self.progress.note(
                self.rec.phase.as_str(),
                format!("hook {hook:?} failed: {e}"),
            );
        }
    }

    fn set_current_view(&self, id: Option<&str>) {
        let id = id.map(str::to_owned);
        self.eng.update(|v| v.current = id);
    }

    /// Runs the probes, with progress notes.
    pub(super) async fn verify(&self) -> Result<(), String> {
        let progress = self.progress.clone();
        let note = move |m: String| progress.note(Phase::Verifying.as_str(), m);
        let r = self.eng.ops.verify(&note).await.map_err(|e| e.message);
        self.eng.update(|v| v.verify_failed = r.is_err());
        r
    }

    /// Whether the service is known not to run (an agent that started after a reboot with a
    /// deploy in progress does not start it: recovery does, under a fence).
    pub(super) fn not_running(&self) -> bool {
        self.eng.ops.running() == Some(false)
    }

    /// A deploy of the release that is already live and healthy: nothing to do.
    pub(super) async fn already_live(mut self) -> Verdict {
        self.rec.phase = Phase::Released;
        self.progress
            .note("staged", format!("{} is already live", self.rec.to));
        self.conclude(Outcome::Succeeded, String::new())
    }

    /// Runs the deploy to its end, staging `artifact` first (a rollback stages nothing). At the
    /// agent's shutdown it stops where it is and tells the caller.
    pub(super) async fn execute(mut self, artifact: Option<super::ArtifactRef>) -> Verdict {
        let shutdown = self.eng.shutdown.clone();
        let progress = self.progress.clone();
        let work = async move {
            let r = self.steps(artifact.as_ref()).await;
            self.settle(r).await
        };
        tokio::select! {
            v = work => v,
            _ = shutdown.cancelled() => {
                let (outcome, error) = interrupted();
                progress.done(outcome, &error, 0);
                (outcome, error)
            }
        }
    }

    /// Turns the result of the steps into the outcome, undoing what must be undone.
    pub(super) async fn settle(mut self, r: Result<Verdict, Stop>) -> Verdict {
        match r {
            Ok((outcome, error)) => self.conclude(outcome, error),
            Err(Stop::Failed(m)) => self.conclude(Outcome::Failed, m),
            Err(Stop::Abort(m)) => {
                match self.back_in_rotation(self.abort_outcome(), m.clone()).await {
                    Ok((o, e)) => self.conclude(o, e),
                    Err(Stop::Fenced(f)) => self.fenced(format!("{m}; {f}")),
                    Err(_) => {
                        self.keep_slot(HoldKind::Interrupted);
                        self.conclude(Outcome::Failed, m)
                    }
                }
            }
            Err(Stop::Fenced(m)) => self.fenced(m),
            Err(Stop::Unconfirmed(m)) | Err(Stop::Journal(m)) => {
                tracing::error!("{m}");
                self.keep_slot(HoldKind::Interrupted);
                self.conclude(Outcome::Failed, m)
            }
        }
    }

    fn fenced(self, m: String) -> Verdict {
        tracing::error!(token = self.rec.token, "{m}");
        if let Some(lock) = &self.eng.lock {
            lock.unclaim(self.rec.token);
        }
        self.conclude(Outcome::Fenced, m)
    }

    async fn steps(&mut self, artifact: Option<&super::ArtifactRef>) -> Result<Verdict, Stop> {
        let to = self.rec.to.clone();
        self.enter(Phase::Staging, format!("staging {to}"))?;
        match artifact {
            Some(spec) => {
                let progress = self.progress.clone();
                let note = move |m: String| progress.note(Phase::Staging.as_str(), m);
                if let Err(e) = self.eng.ops.stage(&to, spec, &note).await {
                    return Err(Stop::Failed(format!("staging {to} failed: {e}")));
                }
            }
            None => match self.eng.ops.has_release(&to) {
                Ok(true) => {}
                Ok(false) => return Err(Stop::Failed(format!("release {to} is not in the store"))),
                Err(e) => return Err(Stop::Failed(format!("cannot read the store: {e}"))),
            },
        }
        failpoint("after_staged");
        self.enter(Phase::Staged, format!("{to} staged"))?;
        // At use, whatever was true at staging: the policy may have changed since.
        if let Err(e) = self.eng.ops.check_release(&to) {
            return Err(Stop::Failed(format!("{to} may not go live: {e}")));
        }
        let Some(from) = self.rec.from.clone() else {
            return self.first_deploy().await;
        };

        // Whether the grant also committed `draining` (then it is the drain's fence).
        let mut drain_fenced = false;
        if let Some(lock) = self.eng.lock.clone() {
            let kept = self
                .eng
                .journal
                .hold()
                .ok()
                .flatten()
                .filter(|h| !h.kind.operator() && h.token != 0);
            let token = match kept {
                // The host keeps a slot from an earlier deploy: repair it under that slot.
                Some(h) => h.token,
                None => {
                    let write = self
                        .eng
                        .journal
                        .next_write_id()
                        .map_err(|e| Stop::Failed(e.to_string()))?;
                    self.rec.write = Some(write.clone());
                    let purpose = self.rec.kind.purpose();
                    self.enter(Phase::SlotRequested, format!("asking for a {purpose} slot"))?;
                    let req = SlotRequest {
                        purpose,
                        reason: format!("{} {to}", self.rec.kind.as_str()),
                        rollout: self.rec.rollout.clone(),
                        canary: self.canary(),
                        wait: self.eng.timing.slot_wait,
                        // The grant can fence the drain only if nothing runs between them: a
                        // `before_drain` hook may outlive the slot, so it is fenced after.
                        fence_draining: !self.eng.ops.has_hook(Hook::BeforeDrain),
                    };
                    match lock.acquire(req, write).await {
                        Ok(grant) => {
                            drain_fenced = grant.draining_fenced;
                            grant.token
                        }
                        Err(e) => {
                            // Nothing was disrupted. For a rollout this is "not admitted (yet)":
                            // no outcome; the driver follows the assignment again.
                            self.not_admitted();
                            return Err(Stop::Failed(format!("no slot: {e}")));
                        }
                    }
                }
            };
            self.rec.token = token;
            self.eng.update(|v| v.token = token);
            self.enter(Phase::SlotHeld, format!("slot held, token {token}"))?;
        }

        // A gate hook may run for a long time (or the agent may be frozen in it), so it runs
        // *before* the fence: the token is checked right before the step it guards, never
        // before a hook that could outlive the slot. With no such hook, the grant itself may
        // have committed `draining` (one round trip less): it is then the fence.
        self.gate(Hook::BeforeDrain).await?;
        if !drain_fenced {
            let fenced = self.fence(Phase::Draining).await;
            fenced.map_err(|s| self.unconfirmed_aborts(s))?;
        }
        self.claim_health();
        self.rec.drained_at_ms = Some(now_ms());
        self.enter(Phase::Draining, "leaving rotation")?;
        let took = self
            .eng
            .ops
            .drain()
            .await
            .map_err(|e| Stop::Abort(format!("drain failed: {e}")))?;
        self.progress.note(
            Phase::Draining.as_str(),
            format!("out of rotation (drain took {} ms)", took.as_millis()),
        );
        self.notify(Hook::AfterDrain, &to).await;
        failpoint("after_drain");

        self.gate(Hook::BeforeSwap).await?;
        // The restart's fence is sent right behind the swap's rather than after the swap: each
        // still commits before its own step, and the second rides the first's round trip (often
        // its very sync on the coordinators) instead of taking one of its own. The swap between
        // them is a rename and a journal write, nothing a fence could not also precede.
        let restart_fence = self.fence_of(Phase::Restarted);
        let (swapped, restart_fenced) = tokio::join!(self.swap_in(&to), restart_fence);
        match swapped? {
            Swapped::Done => {}
            Swapped::Failed(why) => return self.roll_back(why).await,
        }
        if let Err(stop) = restart_fenced {
            if let Stop::Unconfirmed(m) = stop {
                self.redrive = true;
                return self.swap_back_and_abort(&from, m);
            }
            return Err(stop);
        }
        self.restart_new(&from).await
    }

    /// Fences the swap, then points `current` at `to`.
    async fn swap_in(&mut self, to: &str) -> Result<Swapped, Stop> {
        let fenced = self.fence(Phase::Swapped).await;
        fenced.map_err(|s| self.unconfirmed_aborts(s))?;
        self.enter(Phase::Swapped, format!("swapping current to {to}"))?;
        if let Err(e) = self.eng.ops.set_current(to) {
            return Ok(Swapped::Failed(format!("swap to {to} failed: {e}")));
        }
        self.set_current_view(Some(to));
        failpoint("after_swap");
        Ok(Swapped::Done)
    }

    /// Nothing restarted yet: put `current` back on `from` and abort.
    pub(super) fn swap_back_and_abort(&mut self, from: &str, why: String) -> Result<Verdict, Stop> {
        match self.eng.ops.set_current(from) {
            Ok(()) => {
                self.set_current_view(Some(from));
                Err(Stop::Abort(why))
            }
            Err(e) => Err(Stop::Unconfirmed(format!(
                "{why}; and cannot swap back: {e}"
            ))),
        }
    }

    /// `restarted` (fenced already) and what follows it.
    pub(super) async fn restart_new(&mut self, from: &str) -> Result<Verdict, Stop> {
        let to = self.rec.to.clone();
        self.enter(Phase::Restarted, format!("restarting on {to}"))?;
        self.restarted = true;
        if let Err(e) = self.eng.ops.restart(&to).await {
            return self.roll_back(format!("restart on {to} failed: {e}")).await;
        }
        self.notify(Hook::AfterSwap, &to).await;
        self.verify_new(from).await
    }

    /// `verifying` and what follows it, for a host with an old release to fall back on.
    pub(super) async fn verify_new(&mut self, from: &str) -> Result<Verdict, Stop> {
        let to = self.rec.to.clone();
        self.enter(Phase::Verifying, format!("verifying {to}"))?;
        failpoint("during_verify");
        // Verifying disrupts nothing (DESIGN §3 fences drain, swap, restart and rollback), so
        // its phase report commits while the verify runs rather than before it: one raft round
        // trip less on every deploy's way back. A stale token still stops the deploy before it
        // decides anything more under a slot it no longer holds: the fence's answer is awaited
        // before the verify's is acted on, and a stale one ends the verify where it is.
        let fence = async {
            match self.fence(Phase::Verifying).await {
                Err(Stop::Unconfirmed(m)) => {
                    tracing::warn!("{m}; verifying anyway: {to} already runs");
                    Ok(())
                }
                other => other,
            }
        };
        let verify = async { Ok::<_, Stop>(self.verify().await) };
        let ((), verified) = tokio::try_join!(fence, verify)?;
        if let Err(e) = verified {
            if !self.auto_rollback() {
                return Ok(self.keep_failed(format!(
                    "verify of {to} failed: {e}; not rolled back (auto_rollback is off): the \
                     host stays out of rotation on {to} and keeps its slot"
                )));
            }
            return self.roll_back(format!("verify of {to} failed: {e}")).await;
        }
        self.judge(Health::Healthy);
        // `previous` is the last good release *before* the live one. A rollback does not move
        // it: the release rolled away from is not good, and a second rollback must not bring
        // it back. A re-deploy of the live release (repairing an unhealthy host) keeps it too.
        if self.rec.kind == DeployKind::Deploy && from != to {
            if let Err(e) = self.eng.ops.set_previous(from) {
                tracing::warn!(error = %e, "cannot move previous");
            }
        }
        self.notify(Hook::AfterVerify, &to).await;
        self.back_in_rotation(Outcome::Succeeded, String::new())
            .await
    }

    /// A failed verify left as it is (a rollout with `auto_rollback` off): the host stays out
    /// of rotation, reports `unhealthy` and keeps its slot, as when no release verifies.
    fn keep_failed(&mut self, why: String) -> Verdict {
        tracing::warn!("{why}");
        self.eng.update(|v| v.verify_failed = true);
        self.judge(Health::Unhealthy);
        self.rec.error = Some(why.clone());
        self.keep_slot(HoldKind::VerifyFailed);
        (Outcome::Failed, why)
    }

    /// A first deploy: no slot, no drain. On failure the service is stopped and the host is
    /// unprovisioned again.
    async fn first_deploy(&mut self) -> Result<Verdict, Stop> {
        let to = self.rec.to.clone();
        // Not healthy until verified: the fact stays `unprovisioned`, and the engine's.
        self.claim_health();
        self.report_progress(StepReport::Swapping).await;
        self.enter(Phase::Swapped, format!("first release: current → {to}"))?;
        if let Err(e) = self.eng.ops.set_current(&to) {
            return Err(Stop::Failed(format!("swap to {to} failed: {e}")));
        }
        self.set_current_view(Some(&to));
        failpoint("after_swap");
        self.first_start().await
    }

    /// Starts and verifies a first release.
    pub(super) async fn first_start(&mut self) -> Result<Verdict, Stop> {
        let to = self.rec.to.clone();
        self.enter(Phase::Restarted, format!("starting {to}"))?;
        self.restarted = true;
        if let Err(e) = self.eng.ops.restart(&to).await {
            return Ok(self.undo_first(format!("start of {to} failed: {e}")).await);
        }
        self.notify(Hook::AfterSwap, &to).await;
        self.first_verify().await
    }

    pub(super) async fn first_verify(&mut self) -> Result<Verdict, Stop> {
        let to = self.rec.to.clone();
        self.report_progress(StepReport::Verifying).await;
        self.enter(Phase::Verifying, format!("verifying {to}"))?;
        failpoint("during_verify");
        if let Err(e) = self.verify().await {
            return Ok(self.undo_first(format!("verify of {to} failed: {e}")).await);
        }
        self.judge(Health::Healthy);
        self.notify(Hook::AfterVerify, &to).await;
        self.enter(Phase::Released, format!("{to} is live"))?;
        Ok((Outcome::Succeeded, String::new()))
    }

    /// A failed first deploy: stop the service, remove `current`.
    async fn undo_first(&mut self, reason: String) -> Verdict {
        if let Err(e) = self.eng.ops.stop().await {
            tracing::warn!(error = %e, "cannot stop the service");
        }
        match self.eng.ops.clear_current() {
            Ok(()) => self.set_current_view(None),
            Err(e) => tracing::warn!(error = %e, "cannot remove current"),
        }
        self.eng.update(|v| v.verify_failed = false);
        self.judge(Health::Unprovisioned);
        (Outcome::Failed, format!("{reason}; service stopped"))
    }

    /// Swaps the old release back in, restarts and verifies it. The decision is journaled
    /// first (`rolling_back`, with the reason), so that an agent restarted before the fence is
    /// committed resumes the rollback; the fence is then retried until it is committed or
    /// found stale.
    pub(super) async fn roll_back(&mut self, reason: String) -> Result<Verdict, Stop> {
        let Some(from) = self.rec.from.clone() else {
            return Ok(self.undo_first(reason).await);
        };
        tracing::warn!(%reason, %from, "rolling back");
        self.rec.error = Some(reason.clone());
        self.enter(
            Phase::RollingBack,
            format!("{reason}; rolling back to {from}"),
        )?;
        self.fence_until_confirmed(Phase::RollingBack).await?;
        self.notify(Hook::OnRollback, &from).await;
        let r = async {
            self.eng
                .ops
                .set_current(&from)
                .map_err(|e| format!("swap back failed: {e}"))?;
            self.set_current_view(Some(&from));
            self.restarted = true;
            self.eng
                .ops
                .restart(&from)
                .await
                .map_err(|e| format!("restart failed: {e}"))?;
            self.verify().await
        }
        .await;
        match r {
            Ok(()) => {
                self.judge(Health::Healthy);
                self.back_in_rotation(
                    Outcome::RolledBack,
                    format!("{reason}; rolled back to {from}"),
                )
                .await
            }
            Err(e) => {
                self.eng.update(|v| v.verify_failed = true);
                self.judge(Health::Unhealthy);
                self.keep_slot(HoldKind::VerifyFailed);
                Ok((
                    Outcome::Failed,
                    format!(
                        "{reason}; rollback to {from} also failed: {e}; the host stays out of \
                         rotation and keeps its slot"
                    ),
                ))
            }
        }
    }

    /// `undraining` → `released`: back in rotation (confirmed), then release the slot.
    pub(super) async fn back_in_rotation(
        &mut self,
        outcome: Outcome,
        error: String,
    ) -> Result<Verdict, Stop> {
        self.rec.outcome = Some(outcome);
        if !error.is_empty() {
            self.rec.error = Some(error.clone());
        }
        if matches!(outcome, Outcome::Failed | Outcome::Fenced) {
            if let Some(kind) = self.rec.repairs {
                // The host was out of rotation, keeping its slot, before this deploy; it still
                // is not repaired. It stays out, and keeps the slot.
                self.keep_slot(kind);
                return Ok((outcome, error));
            }
        }
        let drained = self.rec.phase >= Phase::Draining || self.rec.repairs.is_some();
        self.enter(Phase::Undraining, "returning to rotation")?;
        if self.not_running() {
            // Never return to rotation with nothing running (after a reboot, the service is
            // started by recovery only). `current` is the release judged good here.
            let id = self.eng.ops.current().ok().flatten();
            if let Some(id) = id {
                // Started, not judged: unless a verify of this deploy vouched for it, the
                // health is handed back `unhealthy` and the monitor's rounds must prove it.
                self.restarted = true;
                if let Err(e) = self.eng.ops.start(&id).await {
                    tracing::warn!(error = %e, "cannot start the service on {id}");
                }
            }
        }
        // Nothing left for this deploy to judge (it set a verdict, or restarted nothing it has
        // not handed over as unproven): the monitor's probes decide from here, so that what the
        // load balancer is told while the host returns is the service's state now, not a value
        // from before the deploy (say, `unhealthy` from a lost journal, which would keep the
        // return from ever being confirmed).
        if !self.judged {
            self.release_health();
        }
        if drained {
            let mut last = None;
            for attempt in 0..3u32 {
                match self.eng.ops.undrain().await {
                    Ok(took) => {
                        self.progress.note(
                            Phase::Undraining.as_str(),
                            format!("back in rotation (took {} ms)", took.as_millis()),
                        );
                        last = None;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(attempt, error = %e, "undrain failed");
                        last = Some(e);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            if let Some(e) = last {
                self.keep_slot(HoldKind::UndrainFailed);
                let why = if error.is_empty() {
                    format!("undrain failed: {e}")
                } else {
                    format!("{error}; undrain failed: {e}")
                };
                return Ok((Outcome::Failed, why));
            }
        }
        // The hold (if this deploy repaired one) goes first: a crash between the two leaves a
        // slot nobody claims (released by reconciliation), never a journaled hold of a slot
        // already released.
        if let Ok(Some(h)) = self.eng.journal.hold() {
            if !h.kind.operator() {
                if let Err(e) = self.eng.journal.set_hold(None) {
                    tracing::warn!(error = %e, "cannot clear the hold");
                }
                self.eng.update(|v| v.hold = None);
            }
        }
        // A rollout hears the outcome *before* the slot is freed: the next host then waits on
        // the leader when it frees, and a slot released first would re-drive the step. One
        // entry carries both; a slot it did not release is released here, after the outcome.
        failpoint("before_outcome_reported");
        let token = self.rec.token;
        let slot = self.report_outcome(outcome, &error, token).await;
        failpoint("after_outcome_reported");
        if slot == StepSlot::NotReleased {
            self.eng.release(token).await;
        }
        self.eng.update(|v| v.token = 0);
        self.enter(Phase::Released, "slot released")?;
        if outcome == Outcome::Succeeded {
            let from = self.rec.from.clone().unwrap_or_default();
            if let Err(e) = self.eng.ops.gc(&[self.rec.to.as_str(), from.as_str()]) {
                tracing::warn!(error = %e, "release gc failed");
            }
        }
        Ok((outcome, error))
    }

    /// Keeps the slot of a host left out of rotation as a journaled hold of `kind`.
    fn keep_slot(&self, kind: HoldKind) {
        let hold = Hold {
            kind,
            purpose: self.rec.kind.purpose(),
            token: self.rec.token,
            note: format!(
                "{} of {} did not end in rotation ({kind})",
                self.rec.kind.as_str(),
                self.rec.to
            ),
            since_ms: now_ms(),
        };
        if let Err(e) = self.eng.journal.set_hold(Some(&hold)) {
            tracing::error!(error = %e, "cannot journal the held slot");
        }
        let token = self.rec.token;
        self.eng.update(|v| {
            v.token = token;
            v.hold = Some(hold);
        });
    }

    /// Records the outcome and sends the last progress message.
    fn conclude(mut self, outcome: Outcome, error: String) -> Verdict {
        self.release_health();
        let now = now_ms();
        self.rec.outcome = Some(outcome);
        self.rec.error = (!error.is_empty()).then(|| error.clone());
        self.rec.finished_at_ms = Some(now);
        self.rec.updated_at_ms = now;
        if let Err(e) = self.eng.journal.put_deploy(&self.rec) {
            self.eng
                .stats
                .errors
                .count(crate::metrics::ErrorKind::Journal);
            tracing::error!(error = %e, "cannot journal the outcome");
        }
        let oor = self
            .rec
            .drained_at_ms
            .map(|t| now.saturating_sub(t))
            .unwrap_or(0);
        let ended = self.clock.end(&self.eng.stats);
        self.eng.stats.concluded(self.rec.kind, outcome);
        let (host, deploy) = (&self.eng.host_id, self.clock.elapsed());
        transition::log_concluded(host, &self.rec, ended, deploy, outcome, &error);
        self.eng.update(|v| {
            v.phase = "idle".to_owned();
            v.last_outcome = Some(outcome);
            v.last_error = error.clone();
        });
        self.progress.done(outcome, &error, oor);
        (outcome, error)
    }
}
