//! What the engine's deploys feed: the time spent in each deploy step, deploys by outcome, the
//! slot grant this agent last saw, and errors by kind; and what its maintenance runs
//! (`RunMaintenance`, `hotdeploy-agent maint`) feed: runs by result, counted like deploys.
//!
//! A *step* ([`Step`]) is what an operator thinks of as a deploy phase: stage, wait for a slot,
//! drain, swap, restart, verify, roll back, undrain. Each is opened by the journal phase that
//! starts it ([`Step::of`]) and ends when the next journal phase is entered or the deploy
//! concludes; the journal phases that only record a fact (`staged`, `slot_held`, `released`)
//! start no step, so their (short) time is counted nowhere. A step that began before the agent
//! restarted is not timed: its start is not known.
//!
//! Every label is one of a fixed set, and every series exists from the start (at zero), so that
//! a series never appears out of nowhere and `rate()` sees its first increase.

use crate::journal::{DeployKind, MaintResult, Outcome, Phase};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A deploy step, as timed by `hotdeploy_agent_deploy_phase_duration_seconds{phase}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Fetch, check and unpack the artifact (`staging`).
    Stage,
    /// Wait for the coordinators' slot (`slot_requested`).
    SlotWait,
    /// Leave rotation, the `after_drain` and `before_swap` hooks, the swap's fence
    /// (`draining`).
    Drain,
    /// Swap `current`, the restart's fence (`swapped`).
    Swap,
    /// Restart the service on the new release, the `after_swap` hook (`restarted`).
    Restart,
    /// The probes, until the release is judged (`verifying`).
    Verify,
    /// Swap the old release back in, restart it and verify it (`rolling_back`).
    Rollback,
    /// Return to rotation (confirmed), report the outcome, release the slot (`undraining`).
    Undrain,
}

impl Step {
    /// Every step, in deploy order.
    pub const ALL: [Step; 8] = [
        Step::Stage,
        Step::SlotWait,
        Step::Drain,
        Step::Swap,
        Step::Restart,
        Step::Verify,
        Step::Rollback,
        Step::Undrain,
    ];

    /// The step that entering journal phase `phase` starts; `None` for the phases that only
    /// record a fact.
    pub fn of(phase: Phase) -> Option<Step> {
        match phase {
            Phase::Staging => Some(Step::Stage),
            Phase::SlotRequested => Some(Step::SlotWait),
            Phase::Draining => Some(Step::Drain),
            Phase::Swapped => Some(Step::Swap),
            Phase::Restarted => Some(Step::Restart),
            Phase::Verifying => Some(Step::Verify),
            Phase::RollingBack => Some(Step::Rollback),
            Phase::Undraining => Some(Step::Undrain),
            Phase::Staged | Phase::SlotHeld | Phase::Released => None,
        }
    }

    /// The `phase` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Stage => "stage",
            Step::SlotWait => "slot_wait",
            Step::Drain => "drain",
            Step::Swap => "swap",
            Step::Restart => "restart",
            Step::Verify => "verify",
            Step::Rollback => "rollback",
            Step::Undrain => "undrain",
        }
    }
}

/// What went wrong, for `hotdeploy_agent_errors_total{kind}`. Counted where the effect failed
/// (see `metered`), whatever asked for it: a deploy, a rollback, an operator's drain, recovery,
/// pre-staging or reconciliation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Fetching, checking or unpacking an artifact failed (bad checksum, signature, archive,
    /// network, size).
    Stage,
    /// A staged release may not go live under the artifact policy now.
    Policy,
    /// The release store (`current`, `previous`, gc) could not be read or changed.
    Store,
    /// Leaving rotation was not confirmed.
    Drain,
    /// Returning to rotation was not confirmed.
    Undrain,
    /// The service could not be started, restarted or stopped.
    Service,
    /// A release failed its verify.
    Verify,
    /// A lifecycle hook failed.
    Hook,
    /// No slot: refused, timed out, or the coordinators unreachable.
    Slot,
    /// A slot could not be released (it is released later).
    SlotRelease,
    /// A fence found the slot token stale: the agent stopped where it was.
    Fenced,
    /// A fence could not be committed (coordinators unreachable).
    FenceUnconfirmed,
    /// A rollout step report could not be sent.
    Report,
    /// The deploy journal could not be written.
    Journal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::Stage,
        ErrorKind::Policy,
        ErrorKind::Store,
        ErrorKind::Drain,
        ErrorKind::Undrain,
        ErrorKind::Service,
        ErrorKind::Verify,
        ErrorKind::Hook,
        ErrorKind::Slot,
        ErrorKind::SlotRelease,
        ErrorKind::Fenced,
        ErrorKind::FenceUnconfirmed,
        ErrorKind::Report,
        ErrorKind::Journal,
    ];

    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Stage => "stage",
            ErrorKind::Policy => "policy",
            ErrorKind::Store => "store",
            ErrorKind::Drain => "drain",
            ErrorKind::Undrain => "undrain",
            ErrorKind::Service => "service",
            ErrorKind::Verify => "verify",
            ErrorKind::Hook => "hook",
            ErrorKind::Slot => "slot",
            ErrorKind::SlotRelease => "slot_release",
            ErrorKind::Fenced => "fenced",
            ErrorKind::FenceUnconfirmed => "fence_unconfirmed",
            ErrorKind::Report => "report",
            ErrorKind::Journal => "journal",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StepLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DeployLabels {
    /// `deploy` or `rollback`.
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MaintLabels {
    /// The run's result: `succeeded`, `command_failed`, `verify_failed`, `failed`.
    pub outcome: &'static str,
}

/// Every result a maintenance run ends with, for the series that exist from the start.
const MAINT_RESULTS: [MaintResult; 4] = [
    MaintResult::Succeeded,
    MaintResult::CommandFailed,
    MaintResult::VerifyFailed,
    MaintResult::Failed,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabels {
    pub kind: &'static str,
}

type StepHistograms = Family<StepLabels, Histogram, fn() -> Histogram>;

/// 50 ms to about 7 minutes, doubling: a swap takes milliseconds, a slot wait or a verify
/// timeout minutes.
fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

/// Errors by kind. Cheap to clone; clones count into the same series.
#[derive(Clone, Debug)]
pub struct Errors(pub(crate) Family<ErrorLabels, Counter>);

impl Default for Errors {
    fn default() -> Self {
        let f = Family::<ErrorLabels, Counter>::default();
        for k in ErrorKind::ALL {
            let _ = f.get_or_create(&ErrorLabels { kind: k.as_str() });
        }
        Self(f)
    }
}

impl Errors {
    /// Counts one error of `kind`.
    pub fn count(&self, kind: ErrorKind) {
        self.0
            .get_or_create(&ErrorLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// How many of `kind` were counted (tests).
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0
            .get_or_create(&ErrorLabels {
                kind: kind.as_str(),
            })
            .get()
    }
}

/// The instruments the engine feeds. Cheap to clone; clones feed the same series.
#[derive(Clone, Debug)]
pub struct DeployStats {
    pub(crate) steps: StepHistograms,
    pub(crate) deploys: Family<DeployLabels, Counter>,
    pub(crate) maintenance: Family<MaintLabels, Counter>,
    pub(crate) errors: Errors,
    /// The last slot this agent was granted: `(token, granted_at_ms)`.
    grant: Arc<Mutex<Option<(u64, u64)>>>,
}

impl Default for DeployStats {
    fn default() -> Self {
        let steps: StepHistograms = Family::new_with_constructor(step_histogram);
        for s in Step::ALL {
            let _ = steps.get_or_create(&StepLabels { phase: s.as_str() });
        }
        let deploys = Family::<DeployLabels, Counter>::default();
        for kind in [DeployKind::Deploy, DeployKind::Rollback] {
            for o in [
                Outcome::Succeeded,
                Outcome::Failed,
                Outcome::RolledBack,
                Outcome::Fenced,
            ] {
                let _ = deploys.get_or_create(&DeployLabels {
                    kind: kind.as_str(),
                    outcome: o.as_str(),
                });
            }
        }
        let maintenance = Family::<MaintLabels, Counter>::default();
        for r in MAINT_RESULTS {
            let _ = maintenance.get_or_create(&MaintLabels {
                outcome: r.as_str(),
            });
        }
        Self {
            steps,
            deploys,
            maintenance,
            errors: Errors::default(),
            grant: Arc::default(),
        }
    }
}

impl DeployStats {
    /// The error counter (shared with the metered host and lock).
    pub fn errors(&self) -> Errors {
        self.errors.clone()
    }

    /// Records the time spent in `step`.
    pub fn step_took(&self, step: Step, took: Duration) {
        self.steps
            .get_or_create(&StepLabels {
                phase: step.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a concluded deploy.
    pub fn concluded(&self, kind: DeployKind, outcome: Outcome) {
        self.deploys
            .get_or_create(&DeployLabels {
                kind: kind.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Counts a concluded maintenance run (live or finished by recovery).
    pub fn maintenance_concluded(&self, result: MaintResult) {
        self.maintenance
            .get_or_create(&MaintLabels {
                outcome: result.as_str(),
            })
            .inc();
    }

    /// Records a grant of `token` at `at_ms`; a re-entrant grant of the same token keeps the
    /// first time.
    pub fn granted(&self, token: u64, at_ms: u64) {
        let mut g = self.grant.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none_or(|(t, _)| t != token) {
            *g = Some((token, at_ms));
        }
    }

    /// When `token` was granted, if this agent saw the grant.
    pub fn granted_at(&self, token: u64) -> Option<u64> {
        let g = self.grant.lock().unwrap_or_else(|p| p.into_inner());
        g.filter(|(t, _)| *t == token).map(|(_, at)| at)
    }
}
