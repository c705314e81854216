//! The deploy engine: one deploy at a time, each phase journaled before it is acted on.
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
//! - Before each disruptive step (drain, swap, restart, rollback) the engine commits
//!   `ReportPhase{token}` to the coordinators. A stale token means the slot was revoked: the
//!   engine stops at once and leaves the service exactly as it is (outcome `fenced`).
//! - The slot is released only after the return to rotation is confirmed.
//! - If the rollback's verify fails too, neither release is good: the host stays out of
//!   rotation, reports `unhealthy`, and **keeps its slot** (journaled as a [`Hold`]), so that the
//!   budget keeps counting the broken host until an operator or a later deploy repairs it (a
//!   later `deploy` gets the same slot back: grants are re-entrant per purpose).
//! - A first deploy on an unprovisioned host needs no slot and no drain. If it fails, the
//!   service is stopped, `current` is removed (the host is unprovisioned again) and the outcome
//!   is `failed`.
//! - Standalone (no coordinators) is the same flow without slots and fencing.
//!
//! The engine orders effects; [`HostOps`] and [`SlotLock`] carry them out. [`recover`] finishes
//! an interrupted deploy at start.
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
mod ops;
mod progress;
mod recover;
mod run;
#[cfg(test)]
mod tests;

pub use host::RealHost;
pub use ops::{
    ArtifactRef, Hook, HookCtx, HostOps, OpError, OpResult, ProgressFn, SlotLock, SlotRequest,
};
pub use progress::Progress;

use crate::health::HealthFact;
use crate::journal::{DeployKind, DeployRecord, Hold, Journal, JournalError, Outcome, Phase};
use crate::link::LinkError;
use hotdeploy_common::proto::Health;
use hotdeploy_common::time::now_ms;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
    /// The live release, as the engine last set it.
    pub current: Option<String>,
    pub hold: Option<Hold>,
}

/// A deploy request, already validated.
#[derive(Debug, Clone)]
pub struct DeployParams {
    pub release: String,
    pub artifact: ArtifactRef,
    pub rollout: String,
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
}

impl Inner {
    fn update(&self, f: impl FnOnce(&mut View)) {
        self.view.send_modify(f);
    }

    /// Releases `token` (if any), logging a failure: the link's reconciliation releases a slot
    /// the coordinator still lists once nothing claims it.
    async fn release(&self, token: u64) {
        let Some(lock) = &self.lock else { return };
        if token == 0 {
            return;
        }
        if let Err(e) = lock.release(token).await {
            tracing::warn!(token, error = %e, "slot release failed; it will be released on reconnect");
            lock.unclaim(token);
        }
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
/// maintenance, a broken host keeping its slot, a deploy interrupted while drained (recovery
/// undrains it), or a fenced deploy that was stopped while drained (left as it is).
pub fn starts_drained(journal: &Journal) -> Result<bool, JournalError> {
    if journal.hold()?.is_some() {
        return Ok(true);
    }
    Ok(journal.deploy()?.is_some_and(|r| {
        r.phase.may_be_drained() && (r.in_progress() || r.outcome == Some(Outcome::Fenced))
    }))
}

/// The deploy engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Builds the engine from the journal's state, and claims the slots the journal says are in
    /// use so that the link does not release them as unwanted.
    pub fn new(parts: EngineParts) -> Result<Self, EngineError> {
        let rec = parts.journal.deploy()?;
        let hold = parts.journal.hold()?;
        let current = parts.ops.current()?;
        let mut token = hold.as_ref().map(|h| h.token).unwrap_or(0);
        let mut phase = "idle".to_owned();
        let (mut last_outcome, mut last_error) = (None, String::new());
        if let Some(r) = &rec {
            if r.in_progress() {
                phase = r.phase.as_str().to_owned();
                if r.token != 0 {
                    token = r.token;
                }
            } else {
                last_outcome = r.outcome;
                last_error = r.error.clone().unwrap_or_default();
            }
        }
        if let Some(lock) = &parts.lock {
            for t in [
                hold.as_ref().map(|h| h.token),
                rec.as_ref().map(|r| r.token),
            ]
            .into_iter()
            .flatten()
            .filter(|t| *t != 0)
            {
                lock.claim(t);
            }
        }
        let verify_failed = hold.as_ref().is_some_and(|h| h.purpose == "deploy");
        let (view, _) = watch::channel(View {
            phase,
            token,
            last_outcome,
            last_error,
            verify_failed,
            current,
            hold,
        });
        Ok(Self {
            inner: Arc::new(Inner {
                host_id: parts.host_id,
                ops: parts.ops,
                lock: parts.lock,
                journal: parts.journal,
                timing: parts.timing,
                health: parts.health,
                busy: Mutex::new(None),
                view,
            }),
        })
    }

    /// A snapshot of what the engine shows.
    pub fn view(&self) -> View {
        self.inner.view.borrow().clone()
    }

    /// Follows what the engine shows.
    pub fn subscribe(&self) -> watch::Receiver<View> {
        self.inner.view.subscribe()
    }

    /// See [`starts_drained`].
    pub fn starts_drained(&self) -> Result<bool, EngineError> {
        Ok(starts_drained(&self.inner.journal)?)
    }

    fn claim(&self, what: String) -> Result<BusyGuard, EngineError> {
        let mut b = self.inner.busy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = b.as_ref() {
            return Err(EngineError::Busy(other.clone()));
        }
        *b = Some(what);
        Ok(BusyGuard(self.inner.clone()))
    }

    /// Finishes an interrupted deploy in the background (DESIGN §4, recovery on start). Other
    /// operations are refused until it is done. `None` when there is nothing to recover.
    pub fn start_recovery(&self) -> Result<Option<JoinHandle<()>>, EngineError> {
        let Some(rec) = self.inner.journal.deploy()? else {
            return Ok(None);
        };
        if !rec.in_progress() {
            return Ok(None);
        }
        let guard = self.claim(format!("recovery of the deploy of {}", rec.to))?;
        // The service may be disrupted: the health is the engine's from now on, before the
        // monitor's first round.
        let disrupted = rec.phase.may_be_drained();
        let mut run = run::Run::new(self.inner.clone(), rec, Progress::none());
        if disrupted {
            run.recovering();
        }
        Ok(Some(tokio::spawn(async move {
            let _guard = guard;
            recover::recover(run).await;
        })))
    }

    /// Starts a deploy in a task of its own, which outlives the caller. Refused when another
    /// operation runs or the host is held out of rotation by an operator.
    pub fn deploy(
        &self,
        params: DeployParams,
        progress: Progress,
    ) -> Result<JoinHandle<(Outcome, String)>, EngineError> {
        let guard = self.claim(format!("deploy of {}", params.release))?;
        self.check_hold()?;
        let from = self.inner.ops.current()?;
        let view = self.view();
        // The live release, verified and healthy: nothing to do. An unhealthy host gets the
        // full deploy (restart and verify): that is how it is repaired.
        if from.as_deref() == Some(params.release.as_str())
            && !view.verify_failed
            && self.inner.health.get() == Health::Healthy
        {
            let rec = DeployRecord::new(
                DeployKind::Deploy,
                &params.rollout,
                from,
                &params.release,
                now_ms(),
            );
            let run = run::Run::new(self.inner.clone(), rec, progress);
            return Ok(tokio::spawn(async move {
                let _guard = guard;
                run.already_live().await
            }));
        }
        let rec = DeployRecord::new(
            DeployKind::Deploy,
            &params.rollout,
            from,
            &params.release,
            now_ms(),
        );
        let run = run::Run::new(self.inner.clone(), rec, progress);
        Ok(tokio::spawn(async move {
            let _guard = guard;
            run.execute(Some(params.artifact)).await
        }))
    }

    /// Swaps `previous` back in, under a slot, with the same phases as a deploy.
    pub fn rollback(
        &self,
        progress: Progress,
    ) -> Result<JoinHandle<(Outcome, String)>, EngineError> {
        let guard = self.claim("rollback".to_owned())?;
        self.check_hold()?;
        let from = self.inner.ops.current()?;
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
        let rec = DeployRecord::new(DeployKind::Rollback, "", from, &to, now_ms());
        let run = run::Run::new(self.inner.clone(), rec, progress);
        Ok(tokio::spawn(async move {
            let _guard = guard;
            run.execute(None).await
        }))
    }

    fn check_hold(&self) -> Result<(), EngineError> {
        match self.inner.journal.hold()? {
            Some(h) if h.purpose != "deploy" => Err(EngineError::Precondition(format!(
                "the host is held out of rotation for {} ({}); undrain it first",
                h.purpose, h.reason
            ))),
            _ => Ok(()),
        }
    }

    /// Takes the host out of rotation for `purpose` ("drain" or "maintenance"), under a slot of
    /// that purpose when coordinators are configured. Idempotent for the same purpose.
    pub async fn drain(&self, purpose: &str, reason: &str) -> Result<(), EngineError> {
        let _guard = self.claim(purpose.to_owned())?;
        let inner = &self.inner;
        let token = match inner.journal.hold()? {
            Some(h) if h.purpose == purpose => h.token,
            Some(h) => {
                return Err(EngineError::Precondition(format!(
                    "the host is already held for {} ({})",
                    h.purpose, h.reason
                )))
            }
            None => {
                let token = match &inner.lock {
                    None => 0,
                    Some(lock) => {
                        let write = inner.journal.next_write_id()?;
                        let req = SlotRequest {
                            purpose: purpose.to_owned(),
                            reason: reason.to_owned(),
                            rollout: String::new(),
                            wait: inner.timing.drain_slot_wait,
                        };
                        lock.acquire(req, write).await?
                    }
                };
                let hold = Hold {
                    purpose: purpose.to_owned(),
                    token,
                    reason: reason.to_owned(),
                    since_ms: now_ms(),
                };
                inner.journal.set_hold(Some(&hold))?;
                inner.update(|v| {
                    v.token = token;
                    v.hold = Some(hold);
                });
                token
            }
        };
        if let (Some(lock), true) = (&inner.lock, token != 0) {
            lock.report_phase(token, Phase::Draining.as_str()).await?;
        }
        inner.ops.drain().await?;
        tracing::info!(purpose, reason, token, "host drained");
        Ok(())
    }

    /// Returns the host to rotation (confirmed), then releases the slot it was held with.
    pub async fn undrain(&self) -> Result<(), EngineError> {
        let _guard = self.claim("undrain".to_owned())?;
        let inner = &self.inner;
        inner.ops.undrain().await?;
        if let Some(h) = inner.journal.hold()? {
            inner.release(h.token).await;
            inner.journal.set_hold(None)?;
            inner.update(|v| {
                v.token = 0;
                v.hold = None;
            });
        }
        tracing::info!("host undrained");
        Ok(())
    }
}
