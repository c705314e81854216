//! The rollout driver task. See the module docs of [`super`].

use crate::deploy::{
    ArtifactRef, DeployParams, Engine, EngineError, LastStep, Progress, SlotLock, StepReport,
    StepUpdate,
};
use crate::journal::{OutcomeReport, RolloutStep};
use crate::link::LinkError;
use hotdeploy_common::proto::{Assignment, Release, StepPhase};
use rand::Rng;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The most a host waits before it starts staging a new assignment.
pub const STAGE_JITTER: Duration = Duration::from_millis(500);
/// How long staging runs before the coordinators are told it is under way (`STAGING`): a
/// stage that ends sooner (the release already in the store, a small artifact) is reported
/// `STAGED` alone, one log entry per host instead of two, and a thousand hosts given one
/// rollout do not each write both while the first batch deploys.
pub const STAGING_REPORT_AFTER: Duration = Duration::from_secs(1);
/// How often the driver looks again with nothing new (an outcome still to report).
const LOOK_AGAIN: Duration = Duration::from_secs(5);
/// The pause before asking again for a slot the coordinators did not grant for the rollout.
const NOT_ADMITTED_BACKOFF: Duration = Duration::from_secs(3);
/// The pause before trying again while another operation runs.
const BUSY_BACKOFF: Duration = Duration::from_secs(1);

/// One step of one rollout: `(rollout id, attempt)`.
type Key = (String, u32);

/// What to do after a look.
enum Next {
    /// Wait for the assignment to change (or [`LOOK_AGAIN`]).
    Wait,
    /// Look again after this long, or when the assignment changes.
    After(Duration),
}

/// Follows the host's rollout step and drives the engine through it; [`RolloutDriver::run`]
/// runs it until the shutdown.
pub struct RolloutDriver {
    engine: Engine,
    lock: Arc<dyn SlotLock>,
    assignment: watch::Receiver<Option<Assignment>>,
    jitter: Duration,
    /// The step staged last (its release is in the store), and when `STAGED` was last sent.
    staged: Option<(Key, Instant)>,
    /// Steps dealt with: staging failed, or a deploy of them ran.
    done: BTreeSet<Key>,
}

impl RolloutDriver {
    /// A driver of `engine` on the assignments `assignment` follows (the link's), reporting
    /// through `lock` (the link).
    pub fn new(
        engine: Engine,
        lock: Arc<dyn SlotLock>,
        assignment: watch::Receiver<Option<Assignment>>,
    ) -> Self {
        Self {
            engine,
            lock,
            assignment,
            jitter: STAGE_JITTER,
            staged: None,
            done: BTreeSet::new(),
        }
    }

    /// The most it waits before staging (tests use zero).
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let a = self.assignment.borrow_and_update().clone();
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                n = self.look(a) => n,
            };
            let pause = match next {
                Next::Wait => LOOK_AGAIN,
                Next::After(d) => d,
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                r = self.assignment.changed() => if r.is_err() {
                    // The link is gone: nothing more will be assigned.
                    shutdown.cancelled().await;
                    return;
                },
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One look: an outcome still due first, then the assignment.
    async fn look(&mut self, a: Option<Assignment>) -> Next {
        self.engine.report_due_outcome().await;
        match a {
            Some(a) if !a.rollout.is_empty() => self.follow(a).await,
            _ => Next::Wait,
        }
    }

    async fn follow(&mut self, a: Assignment) -> Next {
        let key: Key = (a.rollout.clone(), a.attempt);
        if self.done.contains(&key) {
            return Next::Wait;
        }
        let phase = StepPhase::try_from(a.phase).unwrap_or(StepPhase::Unspecified);
        if matches!(
            phase,
            StepPhase::Succeeded | StepPhase::Failed | StepPhase::RolledBack
        ) {
            return Next::Wait;
        }
        match self.engine.last_step() {
            // A deploy of this step ran (or recovery is finishing it, and reports it).
            Ok(Some(LastStep {
                rollout,
                attempt,
                report,
                ..
            })) if rollout == key.0 && attempt == key.1 && report != OutcomeReport::NotAdmitted => {
                self.done.insert(key);
                return Next::Wait;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the journal; looking again later");
                return Next::After(LOOK_AGAIN);
            }
        }
        let Some(release) = a.release.clone() else {
            let _ = self
                .report(&key, StepReport::Failed, "the assignment names no release")
                .await;
            self.done.insert(key);
            return Next::Wait;
        };
        let sent = match &self.staged {
            Some((k, at)) if *k == key => *at,
            _ => {
                if self.stage(&key, &release, phase).await {
                    self.staged = Some((key, Instant::now()));
                    // `may_deploy` may have come while staging: look at the latest assignment.
                    return Next::After(Duration::ZERO);
                }
                self.done.insert(key);
                return Next::Wait;
            }
        };
        if phase < StepPhase::Staged && sent.elapsed() >= LOOK_AGAIN {
            // Still not staged for the coordinators, long after it was sent: the report was
            // lost for good (an answer can lag the report, so not at once).
            let _ = self.report(&key, StepReport::Staged, "").await;
            self.staged = Some((key.clone(), Instant::now()));
        }
        if !a.may_deploy {
            return Next::Wait;
        }
        self.deploy(key, release, &a).await
    }

    /// Stages the step's release, then reports `STAGED`, or `FAILED` with the error when
    /// staging fails; `STAGING` is reported only once staging has run for
    /// [`STAGING_REPORT_AFTER`] (and the coordinators do not know it yet). `false`: the step is
    /// over for this host (failed, or refused as stale).
    async fn stage(&mut self, key: &Key, release: &Release, phase: StepPhase) -> bool {
        if phase <= StepPhase::Staging {
            let ms = self.jitter.as_millis() as u64;
            if ms > 0 {
                let wait = rand::thread_rng().gen_range(0..=ms);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
        tracing::info!(rollout = %key.0, release = %release.id, "pre-staging");
        let staging = async {
            self.engine
                .prestage(&release.id, artifact(release))
                .await
                .unwrap_or_else(|e| Err(crate::deploy::OpError::transient(e.to_string())))
        };
        tokio::pin!(staging);
        let mut refused = None;
        let r = if phase < StepPhase::Staging {
            tokio::select! {
                r = &mut staging => r,
                _ = tokio::time::sleep(STAGING_REPORT_AFTER) => {
                    if let Err(LinkError::Refused(m)) =
                        self.report(key, StepReport::Staging, "").await
                    {
                        refused = Some(m);
                    }
                    // Finished either way: a stage is not cut off halfway.
                    staging.await
                }
            }
        } else {
            staging.await
        };
        if let Some(m) = refused {
            tracing::info!(rollout = %key.0, attempt = key.1, "step refused ({m}); dropped");
            return false;
        }
        match r {
            Ok(()) => {
                let _ = self.report(key, StepReport::Staged, "").await;
                true
            }
            Err(e) => {
                let why = format!("staging {} failed: {e}", release.id);
                tracing::warn!(rollout = %key.0, "{why}; nothing was touched");
                let _ = self.report(key, StepReport::Failed, &why).await;
                false
            }
        }
    }

    /// Runs the engine's deploy for the step, to its end.
    async fn deploy(&mut self, key: Key, release: Release, a: &Assignment) -> Next {
        if self.engine.is_busy() {
            return Next::After(BUSY_BACKOFF);
        }
        let params = DeployParams {
            release: release.id.clone(),
            artifact: artifact(&release),
            rollout: key.0.clone(),
            step: Some(RolloutStep::new(key.1, a.canary, a.auto_rollback)),
        };
        let handle = match self.engine.deploy(params, Progress::none()) {
            Ok(h) => h,
            Err(EngineError::Busy(_)) => return Next::After(BUSY_BACKOFF),
            Err(e) => {
                // The host cannot be deployed at all now (an operator's hold, an unusable
                // `current` link): the rollout must hear why, not wait for ever.
                let why = format!("deploy of {} refused on this host: {e}", release.id);
                tracing::warn!(rollout = %key.0, "{why}");
                let _ = self.report(&key, StepReport::Failed, &why).await;
                self.done.insert(key);
                return Next::Wait;
            }
        };
        tracing::info!(rollout = %key.0, attempt = key.1, release = %release.id, "deploying");
        let (outcome, error) = match handle.await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "the deploy task failed");
                return Next::After(LOOK_AGAIN);
            }
        };
        match self.engine.last_step() {
            Ok(Some(l))
                if l.rollout == key.0
                    && l.attempt == key.1
                    && l.report == OutcomeReport::NotAdmitted =>
            {
                tracing::info!(rollout = %key.0, "no slot for the rollout now ({error}); asking again later");
                Next::After(NOT_ADMITTED_BACKOFF)
            }
            _ => {
                tracing::info!(rollout = %key.0, attempt = key.1, %outcome, "rollout deploy over");
                self.done.insert(key);
                Next::Wait
            }
        }
    }

    async fn report(&self, key: &Key, report: StepReport, error: &str) -> Result<(), LinkError> {
        let r = self
            .lock
            .report_step(StepUpdate {
                rollout: key.0.clone(),
                attempt: key.1,
                report,
                error: error.to_owned(),
                release: None,
                release_token: 0,
            })
            .await
            .map(|_| ());
        if let Err(e) = &r {
            tracing::warn!(rollout = %key.0, attempt = key.1, %report, error = %e, "step report not taken");
        }
        r
    }
}

/// Where the assignment's release comes from.
fn artifact(r: &Release) -> ArtifactRef {
    ArtifactRef {
        url: r.artifact_url.clone(),
        sha256: r.sha256.to_ascii_lowercase(),
        signature: (!r.signature.is_empty()).then(|| r.signature.clone()),
    }
}
