//! The deploy engine: one operation at a time, each deploy phase journaled before it is acted
//! on.
//!
//! A deploy on a host that already runs a release goes:
//!
//! ```text
//! staging → staged → slot_requested → slot_held → draining → swapped → restarted → verifying
//!         → undraining → released                                  (outcome: succeeded)
//!                                          verify fails → rolling_back → undraining → released
//!                                                                       (outcome: rolled_back)
//! ```
//!
//! - Staging takes no lock, so the time out of rotation is only drain + swap + restart + verify.
//! - A release goes live only if the artifact policy allows it *at that moment*
//!   ([`HostOps::check_release`]: a signature that verifies when `require_signature` is on,
//!   however long ago the release was staged).
//! - Before each disruptive step (drain, swap, restart, rollback) the engine commits
//!   `ReportPhase{token}` to the coordinators. A stale token means the slot was revoked: the
//!   engine stops at once and leaves the service exactly as it is (outcome `fenced`). A fence
//!   that cannot be committed (coordinators unreachable) aborts a deploy that has not restarted
//!   anything yet; a rollback's fence is retried until it is committed or found stale, since
//!   the host is already out of rotation under its slot.
//! - The slot is released only after the return to rotation is confirmed.
//! - If the host cannot be brought back (neither release verifies, the return to rotation is
//!   not confirmed, the deploy was interrupted), it stays out of rotation and **keeps its
//!   slot**, journaled as a [`Hold`] of a [`HoldKind`] that says why, so that the budget keeps
//!   counting it until an operator or a later deploy repairs it. Only `verify_failed` makes the
//!   host report `unhealthy` whatever its probes say (see `health::reported`, which reads
//!   [`View::verify_failed`] and [`View::problem`]). A later deploy repairs it under the same
//!   slot.
//! - A first deploy on an unprovisioned host needs no slot and no drain. If it fails, the
//!   service is stopped, `current` is removed (the host is unprovisioned again) and the outcome
//!   is `failed`.
//! - Only a deploy moves `previous`, once the new release has passed verify; a rollback leaves
//!   it alone (it never points at the release rolled away from).
//! - Standalone (no coordinators) is the same flow without slots and fencing.
//! - A deploy a rollout drives carries its step ([`RolloutStep`]) in the record: its slot request
//!   says `canary`, `auto_rollback = false` keeps a failed verify out of rotation under its slot
//!   instead of rolling back, and its outcome is reported to the coordinators *before* the slot
//!   is released (or, with no slot to release, when the deploy is over), once, as the journal
//!   records (see `outcome`). A slot not granted for the rollout is no outcome at all
//!   ([`OutcomeReport::NotAdmitted`]); an abort that is not the release's fault (a fence not
//!   confirmed, a restart before the swap) ends `fenced`, so the step is driven again.
//!
//! Every operation (deploy, rollback, drain, undrain, recovery, a rebuild) runs in a task of
//! the engine's own, tracked and ended by the agent's shutdown token, never inside the caller's
//! future: a client that hangs up does not cancel a step half done. At shutdown a task stops at
//! its next await point and leaves the journal as it is, exactly as a crash would, and recovery
//! resumes it at the next start.
//!
//! Maintenance without a release (`maint`: a slot, a drain, an operator's command, verify,
//! undrain, release; journaled step by step and resumed after a crash or a reboot) is an
//! operation of the engine too, built on the maintenance hold of `Maintenance{enable}`.
//!
//! The engine orders effects; [`HostOps`] and [`SlotLock`] carry them out. `recover` finishes
//! an interrupted deploy at start, and `reconcile` keeps the slot the coordinators list for
//! the host in line with what the engine uses.
//!
//! Health: from its first disruptive step (the drain, or a first deploy's swap) until its end,
//! a deploy owns the host's health fact and the monitor pauses (see [`crate::health`]). The
//! engine sets only verdicts it established (a verify passed: `healthy`; neither release
//! verified: `unhealthy`; a first deploy failed: `unprovisioned`) and hands the fact back when
//! the deploy ends, `unhealthy` if it restarted the service without judging it. A first deploy
//! therefore stays `unprovisioned` until its verify passes.
//!
//! Hooks: `before_drain` and `before_swap` are gates (a failure aborts the deploy before the
//! step, safely); the others are notifications (a failure is logged and reported as progress).

mod host;
mod maint;
mod maint_command;
mod ops;
mod outcome;
mod progress;
mod reconcile;
mod recover;
mod run;
#[cfg(test)]
pub(crate) mod tests;
mod transition;

pub use host::RealHost;
pub use maint::{MaintParams, MaintProgress, MaintVerdict, MAINT_LOG};
pub use ops::{
    ArtifactRef, Grant, HeldSlot, Hook, HookCtx, HostOps, OpError, OpResult, ProgressFn,
    RotationView, SlotLock, SlotOwner, SlotRequest, SlotView, StepReport, StepSlot, StepUpdate,
};
pub use progress::Progress;
pub use reconcile::round_bound as reconcile_round_bound;

use crate::failpoint::failpoint;
use crate::health::HealthFact;
use crate::journal::{
    DeployKind, DeployRecord, Hold, HoldKind, Journal, JournalError, MaintRecord, Outcome,
    OutcomeReport, Phase, Purpose, RolloutStep,
};
use crate::link::LinkError;
use hotdeploy_common::proto::Health;
use hotdeploy_common::time::now_ms;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the engine refused or failed a request.
#[derive(Debug, Error)]
pub enum EngineError {
    /// Another operation runs (FAILED_PRECONDITION).
    #[error("{0} in progress")]
    Busy(String),
    /// The host is not in a state that allows the request (FAILED_PRECONDITION).
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0}")]
    Host(#[from] OpError),
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The agent is shutting down; the operation stopped where it was.
    #[error("the agent is shutting down")]
    Shutdown,
}

/// How long the engine waits on the coordinators.
#[derive(Debug, Clone)]
pub struct Timing {
    /// A deploy or rollback waiting for budget.
    pub slot_wait: Duration,
    /// A drain or maintenance waiting for budget.
    pub drain_slot_wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            slot_wait: Duration::from_secs(300),
            drain_slot_wait: Duration::from_secs(60),
        }
    }
}

/// What the engine shows: to `Status`, to the heartbeat, to the health computation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The phase of the deploy in progress, or "idle".
    pub phase: String,
    /// The slot held: by the deploy in progress, or by a [`Hold`]; 0 for none.
    pub token: u64,
    pub last_outcome: Option<Outcome>,
    pub last_error: String,
    /// The last verify failed and nothing good has been verified since.
    pub verify_failed: bool,
    /// The live release, as the engine last read or set it.
    pub current: Option<String>,
    pub hold: Option<Hold>,
    /// The release store's `current` link is unusable (why): the host reports `unhealthy` and
    /// deploys are refused until it is repaired.
    pub problem: Option<String>,
}

/// A deploy request, already validated.
#[derive(Debug, Clone)]
pub struct DeployParams {
    pub release: String,
    pub artifact: ArtifactRef,
    pub rollout: String,
    /// The rollout step this deploy serves (from the coordinators' assignment); `None` for a
    /// local deploy, whose `rollout` is free text.
    pub step: Option<RolloutStep>,
}

/// The rollout step of the last deploy in the journal, as the rollout driver needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastStep {
    pub rollout: String,
    pub attempt: u32,
    /// Still running (or to be recovered).
    pub in_progress: bool,
    pub report: OutcomeReport,
}

/// The parts an engine is built from.
pub struct EngineParts {
    pub host_id: String,
    pub ops: Arc<dyn HostOps>,
    /// `None` standalone.
    pub lock: Option<Arc<dyn SlotLock>>,
    pub journal: Journal,
    pub timing: Timing,
    /// The host's health, which deploys own while they run.
    pub health: Arc<HealthFact>,
    /// The agent's shutdown signal.
    pub shutdown: CancellationToken,
}

pub(crate) struct Inner {
    host_id: String,
    ops: Arc<dyn HostOps>,
    lock: Option<Arc<dyn SlotLock>>,
    journal: Journal,
    timing: Timing,
    health: Arc<HealthFact>,
    busy: Mutex<Option<String>>,
    view: watch::Sender<View>,
    /// The agent's shutdown: every task of the engine stops at its next await point.
    shutdown: CancellationToken,
    /// Every task the engine runs, awaited at shutdown.
    tasks: TaskTracker,
    /// What the deploys feed into the metrics (`transition`).
    stats: crate::metrics::DeployStats,
}

impl Inner {
    fn update(&self, f: impl FnOnce(&mut View)) {
        self.view.send_modify(f);
    }

    /// Releases `token` (if any), logging a failure: reconciliation releases a slot the
    /// coordinators still list once nothing claims it.
    async fn release(&self, token: u64) {
        let Some(lock) = &self.lock else { return };
        if token == 0 {
            return;
        }
        if let Err(e) = lock.release(token).await {
            tracing::warn!(token, error = %e, "slot release failed; it will be released once the coordinators answer");
            lock.unclaim(token);
        }
    }

    /// Marks the engine busy with `what`, or says what it is busy with.
    fn try_busy(self: &Arc<Self>, what: String) -> Result<BusyGuard, EngineError> {
        let mut b = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = b.as_ref() {
            return Err(EngineError::Busy(other.clone()));
        }
        *b = Some(what);
        Ok(BusyGuard(self.clone()))
    }

    /// Whether an operation runs.
    fn is_busy(&self) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Re-reads `current`: the live release, or why the link is unusable.
    fn refresh_current(&self) -> Result<Option<String>, OpError> {
        let r = self.ops.current();
        let (current, problem) = match &r {
            Ok(c) => (c.clone(), None),
            Err(e) => (None, Some(format!("the `current` link is unusable: {e}"))),
        };
        let mut repaired = false;
        let installed = current.is_some();
        self.update(|v| {
            if v.problem.is_none() && problem.is_some() {
                tracing::error!("{}", problem.as_deref().unwrap_or_default());
            }
            repaired = v.problem.is_some() && problem.is_none();
            v.current = current;
            v.problem = problem;
        });
        if repaired {
            // What the engine knows once the link is repaired: nothing installed is
            // `unprovisioned`; an installed release is unproven, and the probes decide.
            let health = if installed {
                Health::Unhealthy
            } else {
                Health::Unprovisioned
            };
            tracing::info!(
                health = health.label(),
                "the `current` link is usable again"
            );
            self.health.claim().release(Some(health));
        }
        r
    }

    /// Runs `work` in a task of the engine's own, ended by the shutdown token.
    fn spawn<T: Send + 'static>(
        &self,
        interrupted: T,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> JoinHandle<T> {
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                // `work` first: a task that handles the shutdown itself gets to say so.
                biased;
                v = work => v,
                _ = shutdown.cancelled() => interrupted,
            }
        })
    }
}

/// Marks the engine busy for as long as it lives.
pub(crate) struct BusyGuard(Arc<Inner>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut b = self.0.busy.lock().unwrap_or_else(|p| p.into_inner());
        *b = None;
    }
}

/// Whether the host must start out of rotation, judging by the journal: an operator's drain or
/// maintenance, a host a deploy left out keeping its slot, a deploy interrupted while drained
/// (recovery undrains it), or a fenced deploy that was stopped while drained (left as it is).
pub fn starts_drained(journal: &Journal) -> Result<bool, JournalError> {
    if journal.hold()?.is_some() {
        return Ok(true);
    }
    Ok(journal.deploy()?.is_some_and(|r| {
        r.phase.may_be_drained() && (r.in_progress() || r.outcome == Some(Outcome::Fenced))
    }))
}

/// Whether the journal holds a deploy in progress that may have swapped `current` to a release
/// not verified yet: the service must then not be started on `current` before recovery fences
/// the restart.
pub fn current_may_be_unverified(journal: &Journal) -> Result<bool, JournalError> {
    Ok(journal
        .deploy()?
        .is_some_and(|r| r.in_progress() && r.phase.current_may_be_unverified()))
}

/// The deploy engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Builds the engine from the journal's state, and claims the slots the journal says are in
    /// use (a hold's, an in-progress deploy's) so that they are not released as unwanted. A
    /// finished deploy's token is not claimed: if its release failed, reconciliation releases
    /// it. An unusable `current` link does not stop the engine: it is reported (see
    /// [`View::problem`]) and deploys are refused until it is repaired.
    pub fn new(parts: EngineParts) -> Result<Self, EngineError> {
        Self::with_stats(parts, crate::metrics::DeployStats::default())
    }

    /// [`Engine::new`], its deploys feeding `stats` (the daemon's metrics).
    pub fn with_stats(
        parts: EngineParts,
        stats: crate::metrics::DeployStats,
    ) -> Result<Self, EngineError> {
        let rec = parts.journal.deploy()?;
        let hold = parts.journal.hold()?;
        let mut token = hold.as_ref().map(|h| h.token).unwrap_or(0);
        let mut phase = "idle".to_owned();
        let (mut last_outcome, mut last_error) = (None, String::new());
        let mut claims = vec![token];
        if let Some(r) = &rec {
            if r.in_progress() {
                phase = r.phase.as_str().to_owned();
                if r.token != 0 {
                    token = r.token;
                }
                claims.push(r.token);
            } else {
                last_outcome = r.outcome;
                last_error = r.error.clone().unwrap_or_default();
            }
        }
        if let Some(lock) = &parts.lock {
            for t in claims.into_iter().filter(|t| *t != 0) {
                lock.claim(t);
            }
        }
        if let Some(m) = parts.journal.maint()?.filter(MaintRecord::in_progress) {
            phase = format!("maint_{}", m.step.as_str());
        }
        let verify_failed = hold.as_ref().is_some_and(|h| h.kind.service_failed());
        let (view, _) = watch::channel(View {
            phase,
            token,
            last_outcome,
            last_error,
            verify_failed,
            current: None,
            hold,
            problem: None,
        });
        let inner = Arc::new(Inner {
            host_id: parts.host_id,
            ops: parts.ops,
            lock: parts.lock,
            journal: parts.journal,
            timing: parts.timing,
            health: parts.health,
            busy: Mutex::new(None),
            view,
            shutdown: parts.shutdown,
            tasks: TaskTracker::new(),
            stats,
        });
        let _ = inner.refresh_current();
        Ok(Self { inner })
    }

    /// A snapshot of what the engine shows.
    pub fn view(&self) -> View {
        self.inner.view.borrow().clone()
    }

    /// The instruments the engine's deploys feed.
    pub fn stats(&self) -> crate::metrics::DeployStats {
        self.inner.stats.clone()
    }

    /// Follows what the engine shows.
    pub fn subscribe(&self) -> watch::Receiver<View> {
        self.inner.view.subscribe()
    }

    /// See [`starts_drained`].
    pub fn starts_drained(&self) -> Result<bool, EngineError> {
        Ok(starts_drained(&self.inner.journal)?)
    }

    /// Finishes an interrupted deploy in the background (DESIGN §4, recovery on start). Other
    /// operations are refused until it is done. `None` when there is nothing to recover.
    pub fn start_recovery(&self) -> Result<Option<JoinHandle<()>>, EngineError> {
        if let Some(m) = self.inner.journal.maint()?.filter(MaintRecord::in_progress) {
            let guard = self
                .inner
                .try_busy(format!("recovery of the maintenance run ({})", m.reason))?;
            let run = maint::MaintRun::new(self.inner.clone(), m, MaintProgress::default(), guard);
            return Ok(Some(self.inner.spawn((), async move {
                let _ = maint::recover(run).await;
            })));
        }
        let Some(rec) = self.inner.journal.deploy()? else {
            return Ok(None);
        };
        if !rec.in_progress() {
            return Ok(None);
        }
        let guard = self
            .inner
            .try_busy(format!("recovery of the deploy of {}", rec.to))?;
        // The service may be disrupted: the health is the engine's from now on, before the
        // monitor's first round (the daemon starts the monitor after this returns).
        let disrupted = rec.phase.may_be_drained();
        let mut run = run::Run::new(self.inner.clone(), rec, Progress::none());
        if disrupted {
            run.recovering();
        }
        let inner = self.inner.clone();
        Ok(Some(self.inner.spawn((), async move {
            let _guard = guard;
            recover::recover(run).await;
            outcome::report_due(&inner).await;
        })))
    }

    /// Starts reconciling the slot the coordinators list for this host with what the engine
    /// uses, and returning to rotation a host that nothing keeps out (see `reconcile`), until
    /// the shutdown.
    pub fn start_reconcile(&self) -> JoinHandle<()> {
        self.start_reconcile_beating(None)
    }

    /// [`Engine::start_reconcile`], beating `beat` at every round (the systemd watchdog follows
    /// it; see [`reconcile_round_bound`] for the bound to register it with).
    pub fn start_reconcile_beating(&self, beat: Option<crate::watchdog::Beat>) -> JoinHandle<()> {
        let inner = self.inner.clone();
        self.inner.spawn((), reconcile::run(inner, beat))
    }

    /// Stops every task of the engine (the shutdown token must be cancelled) and waits up to
    /// `bound` for them to end.
    pub async fn wait_stopped(&self, bound: Duration) -> bool {
        self.inner.tasks.close();
        tokio::time::timeout(bound, self.inner.tasks.wait())
            .await
            .is_ok()
    }

    /// Starts a deploy in a task of its own, which outlives the caller. Refused when another
    /// operation runs, the host is held out of rotation by an operator, or `current` is
    /// unusable.
    pub fn deploy(
        &self,
        params: DeployParams,
        progress: Progress,
    ) -> Result<JoinHandle<(Outcome, String)>, EngineError> {
        let guard = self
            .inner
            .try_busy(format!("deploy of {}", params.release))?;
        let hold = self.check_hold()?;
        let from = self.usable_current()?;
        let view = self.view();
        let mut rec = DeployRecord::new(
            DeployKind::Deploy,
            &params.rollout,
            from.clone(),
            &params.release,
            now_ms(),
        );
        rec.repairs = hold.map(|h| h.kind);
        rec.step = params.step.clone();
        let run = run::Run::new(self.inner.clone(), rec, progress);
        let inner = self.inner.clone();
        // The live release, verified, healthy and held out by nothing: nothing to do. An
        // unhealthy host (or one a deploy left out) gets the full deploy (restart and verify):
        // that is how it is repaired.
        if from.as_deref() == Some(params.release.as_str())
            && !view.verify_failed
            && view.hold.is_none()
            && self.inner.health.get() == Health::Healthy
        {
            return Ok(self.inner.spawn(run::interrupted(), async move {
                let _guard = guard;
                let v = run.already_live().await;
                outcome::report_due(&inner).await;
                v
            }));
        }
        Ok(self.inner.spawn(run::interrupted(), async move {
            let _guard = guard;
            let v = run.execute(Some(params.artifact)).await;
            // An outcome with no slot released before it (see `outcome`).
            outcome::report_due(&inner).await;
            v
        }))
    }

    /// Stages `release` in a task of the engine's own, without the lock and alongside any
    /// operation (staging touches nothing live; the store's commit is atomic and idempotent).
    /// What a rollout's pre-staging runs.
    pub fn prestage(
        &self,
        release: &str,
        artifact: ArtifactRef,
    ) -> JoinHandle<Result<(), OpError>> {
        let inner = self.inner.clone();
        let release = release.to_owned();
        self.inner.spawn(
            Err(OpError::transient("the agent is shutting down")),
            async move {
                let note = |m: String| tracing::info!(release = %release, "pre-staging: {m}");
                inner.ops.stage(&release, &artifact, &note).await
            },
        )
    }

    /// The rollout step of the last deploy in the journal, if a rollout drove it.
    pub fn last_step(&self) -> Result<Option<LastStep>, EngineError> {
        Ok(self.inner.journal.deploy()?.and_then(|r| {
            let step = r.step.as_ref()?;
            Some(LastStep {
                rollout: r.rollout.clone(),
                attempt: step.attempt,
                in_progress: r.in_progress(),
                report: step.report,
            })
        }))
    }

    /// Reports the last rollout deploy's outcome if it is over and was never reported (an
    /// agent that stopped between the two), unless an operation runs (it reports its own).
    pub async fn report_due_outcome(&self) {
        // Looked at without the busy guard first: nothing due is the common case, and a local
        // operation asked for meanwhile must not be refused as busy for it.
        let due = matches!(self.last_step(), Ok(Some(s)) if !s.in_progress && s.report == OutcomeReport::Due);
        if !due {
            return;
        }
        let Ok(guard) = self.inner.try_busy("reporting a rollout outcome".into()) else {
            return;
        };
        let inner = self.inner.clone();
        let _ = self
            .inner
            .spawn((), async move {
                let _guard = guard;
                outcome::report_due(&inner).await;
            })
            .await;
    }

    /// Whether an operation (deploy, rollback, drain, undrain, recovery) runs.
    pub fn is_busy(&self) -> bool {
        self.inner.is_busy()
    }

    /// Runs a maintenance command under a slot (see `maint`): drain, the command, verify,
    /// undrain, release, each step journaled first, in a task of its own that outlives the
    /// caller. Refused, with nothing disrupted, when another operation runs, the host is held
    /// out already, nothing is installed, or the command cannot be found.
    pub fn maint(
        &self,
        params: MaintParams,
        progress: MaintProgress,
    ) -> Result<JoinHandle<MaintVerdict>, EngineError> {
        let guard = self.inner.try_busy(format!(
            "maintenance `{}` ({})",
            params.argv.join(" "),
            params.reason
        ))?;
        let program = maint::precheck(&self.inner, &params)?;
        let timeout_ms = params
            .timeout
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let rec = MaintRecord::new(&params.reason, params.argv, timeout_ms, now_ms());
        let run = maint::MaintRun::new(self.inner.clone(), rec, progress, guard);
        Ok(self.inner.spawn(maint::interrupted(), run.start(program)))
    }

    /// Swaps `previous` back in, under a slot, with the same phases as a deploy.
    pub fn rollback(
        &self,
        progress: Progress,
    ) -> Result<JoinHandle<(Outcome, String)>, EngineError> {
        let guard = self.inner.try_busy("rollback".to_owned())?;
        let hold = self.check_hold()?;
        let from = self.usable_current()?;
        let Some(to) = self.inner.ops.previous()? else {
            return Err(EngineError::Precondition(
                "no previous release to roll back to".into(),
            ));
        };
        if from.is_none() {
            return Err(EngineError::Precondition(
                "no live release: nothing to roll back".into(),
            ));
        }
        if from.as_deref() == Some(to.as_str()) {
            return Err(EngineError::Precondition(format!(
                "{to} is already the live release"
            )));
        }
        let mut rec = DeployRecord::new(DeployKind::Rollback, "", from, &to, now_ms());
        rec.repairs = hold.map(|h| h.kind);
        let run = run::Run::new(self.inner.clone(), rec, progress);
        Ok(self.inner.spawn(run::interrupted(), async move {
            let _guard = guard;
            run.execute(None).await
        }))
    }

    /// The live release; refuses when the `current` link is unusable.
    fn usable_current(&self) -> Result<Option<String>, EngineError> {
        self.inner.refresh_current().map_err(|e| {
            EngineError::Precondition(format!(
                "the `current` link is unusable ({e}); repair it (point it at a staged release, \
                 or remove it) before deploying"
            ))
        })
    }

    /// The hold a deploy would repair; refused when an operator holds the host out.
    fn check_hold(&self) -> Result<Option<Hold>, EngineError> {
        match self.inner.journal.hold()? {
            Some(h) if h.kind.operator() => Err(EngineError::Precondition(format!(
                "the host is held out of rotation for {} ({}); undrain it first",
                h.kind, h.note
            ))),
            other => Ok(other),
        }
    }

    /// Takes the host out of rotation for `purpose` (an operator's [`Purpose::Drain`] or
    /// [`Purpose::Maintenance`]), under a slot of that purpose when coordinators are
    /// configured. Idempotent for the same purpose. Runs in a task of its own.
    pub fn drain(
        &self,
        purpose: Purpose,
        reason: &str,
    ) -> Result<JoinHandle<Result<(), EngineError>>, EngineError> {
        let Some(kind) = HoldKind::for_operator(purpose) else {
            return Err(EngineError::Precondition(format!(
                "{purpose} is not a purpose to drain for"
            )));
        };
        let guard = self.inner.try_busy(purpose.wire().to_owned())?;
        let inner = self.inner.clone();
        let reason = reason.to_owned();
        Ok(self.inner.spawn(Err(EngineError::Shutdown), async move {
            let _guard = guard;
            drain(&inner, purpose, kind, &reason).await
        }))
    }

    /// Returns the host to rotation (confirmed), then releases the slot it was held with. Runs
    /// in a task of its own.
    pub fn undrain(&self) -> Result<JoinHandle<Result<(), EngineError>>, EngineError> {
        let guard = self.inner.try_busy("undrain".to_owned())?;
        let inner = self.inner.clone();
        Ok(self.inner.spawn(Err(EngineError::Shutdown), async move {
            let _guard = guard;
            undrain(&inner).await
        }))
    }
}

/// Drain: slot, fence, *then* the journaled hold, then the drain. A fence that fails gives a
/// fresh slot back and journals nothing, so no crash or refusal can leave the journal saying
/// "drained" under a slot the host does not hold.
async fn drain(
    inner: &Arc<Inner>,
    purpose: Purpose,
    kind: HoldKind,
    reason: &str,
) -> Result<(), EngineError> {
    let (token, fresh) = match inner.journal.hold()? {
        Some(h) if h.kind == kind => (h.token, false),
        Some(h) => {
            return Err(EngineError::Precondition(format!(
                "the host is already held for {} ({})",
                h.kind, h.note
            )))
        }
        None => match &inner.lock {
            None => (0, true),
            Some(lock) => {
                let write = inner.journal.next_write_id()?;
                let req = SlotRequest {
                    purpose,
                    reason: reason.to_owned(),
                    rollout: String::new(),
                    canary: false,
                    wait: inner.timing.drain_slot_wait,
                    fence_draining: false,
                };
                (lock.acquire(req, write).await?.token, true)
            }
        },
    };
    if let (Some(lock), true) = (&inner.lock, token != 0) {
        if let Err(e) = lock.report_phase(token, Phase::Draining).await {
            if fresh {
                inner.release(token).await;
            }
            return Err(e.into());
        }
    }
    if fresh {
        let hold = Hold {
            kind,
            purpose,
            token,
            note: reason.to_owned(),
            since_ms: now_ms(),
        };
        if let Err(e) = inner.journal.set_hold(Some(&hold)) {
            inner.release(token).await;
            return Err(e.into());
        }
        inner.update(|v| {
            v.token = token;
            v.hold = Some(hold);
        });
    }
    failpoint("drain_after_hold");
    inner.ops.drain().await?;
    tracing::info!(%purpose, reason, token, "host drained");
    Ok(())
}

/// Undrain: back in rotation (confirmed), *then* the hold is cleared, then the slot released.
/// A crash after the hold is cleared leaves a slot nobody claims, which reconciliation
/// releases; never a journal that says "drained" for a slot already gone.
async fn undrain(inner: &Arc<Inner>) -> Result<(), EngineError> {
    inner.ops.undrain().await?;
    if let Some(h) = inner.journal.hold()? {
        inner.journal.set_hold(None)?;
        inner.update(|v| {
            v.token = 0;
            v.hold = None;
            // The operator ended a `verify_failed` hold: from now on the probes say how the
            // service is (see `health::reported`).
            if h.kind.service_failed() {
                v.verify_failed = false;
            }
        });
        failpoint("undrain_before_release");
        inner.release(h.token).await;
    }
    tracing::info!("host undrained");
    Ok(())
}
