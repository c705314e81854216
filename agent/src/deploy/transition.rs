//! Deploy phase transitions, told once each: one `tracing` line per transition, and the time
//! of the step that ended into the metrics.
//!
//! [`PhaseClock`] keeps the journal phase a deploy is in and when this process entered it.
//! Entering the next phase ([`PhaseClock::enter`]) or concluding ([`PhaseClock::end`]) ends it;
//! its time is observed for the step it belongs to (`metrics::Step::of`), and the line written
//! for the transition carries, as fields:
//!
//! | field | value |
//! |---|---|
//! | `host` | the host id |
//! | `rollout` | the rollout id; absent for a local deploy |
//! | `token` | the slot token (0 without a slot) |
//! | `release` | the release being installed (or swapped back in) |
//! | `phase` | the phase entered; `idle` when the deploy concludes |
//! | `ended` | the phase that ended; absent for the first of this process |
//! | `ended_ms` | how long it lasted |
//! | `deploy_ms` | time since this process began (or resumed) the deploy |
//! | `outcome` | on the concluding line only |
//!
//! A deploy resumed by recovery has no start time for the phase it was in before the restart:
//! its first line has no `ended`, and that phase is not timed.

use crate::journal::{DeployRecord, Outcome, Phase};
use crate::metrics::{DeployStats, Step};
use std::time::{Duration, Instant};

/// The phase a deploy is in, and since when (in this process).
#[derive(Debug)]
pub(crate) struct PhaseClock {
    open: Option<(Phase, Instant)>,
    started: Instant,
}

/// A phase that ended and how long it lasted.
pub(crate) type Ended = Option<(Phase, Duration)>;

impl PhaseClock {
    pub(crate) fn new() -> Self {
        Self {
            open: None,
            started: Instant::now(),
        }
    }

    /// Enters `phase`: ends the open one (its step's time is observed in `stats`).
    pub(crate) fn enter(&mut self, phase: Phase, stats: &DeployStats) -> Ended {
        let ended = self.end(stats);
        self.open = Some((phase, Instant::now()));
        ended
    }

    /// Ends the open phase, if any (its step's time is observed in `stats`).
    pub(crate) fn end(&mut self, stats: &DeployStats) -> Ended {
        let (phase, since) = self.open.take()?;
        let took = since.elapsed();
        if let Some(step) = Step::of(phase) {
            stats.step_took(step, took);
        }
        Some((phase, took))
    }

    /// Time since this process began (or resumed) the deploy.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

fn rollout(rec: &DeployRecord) -> Option<&str> {
    (!rec.rollout.is_empty()).then_some(rec.rollout.as_str())
}

/// The line for entering `rec.phase`.
pub(crate) fn log_entered(
    host: &str,
    rec: &DeployRecord,
    ended: Ended,
    deploy: Duration,
    msg: &str,
) {
    tracing::info!(
        host,
        rollout = rollout(rec),
        token = rec.token,
        release = %rec.to,
        phase = rec.phase.as_str(),
        ended = ended.map(|(p, _)| p.as_str()),
        ended_ms = ended.map(|(_, d)| d.as_millis() as u64),
        deploy_ms = deploy.as_millis() as u64,
        "{msg}"
    );
}

/// The line for a deploy's conclusion: `phase` is `idle`; a warning unless it succeeded.
pub(crate) fn log_concluded(
    host: &str,
    rec: &DeployRecord,
    ended: Ended,
    deploy: Duration,
    outcome: Outcome,
    error: &str,
) {
    macro_rules! line {
        ($level:ident, $msg:literal) => {
            tracing::$level!(
                host,
                rollout = rollout(rec),
                token = rec.token,
                release = %rec.to,
                phase = "idle",
                ended = ended.map(|(p, _)| p.as_str()),
                ended_ms = ended.map(|(_, d)| d.as_millis() as u64),
                deploy_ms = deploy.as_millis() as u64,
                outcome = outcome.as_str(),
                error,
                $msg
            )
        };
    }
    if outcome == Outcome::Succeeded {
        line!(info, "deploy succeeded");
    } else {
        line!(warn, "deploy did not succeed");
    }
}
