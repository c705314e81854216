//! The health monitor task: probes between deploys, until shutdown.
//!
//! Each `interval` it reads the fact. While the engine owns it, the monitor does nothing. When
//! the handover number has moved, it resumes from the value handed over. An unprovisioned host
//! is not probed. Otherwise it runs one round ([`Verifier::probe_once`], every probe bounded by
//! `probe_timeout`, the whole round by a guard on top) and feeds the result to the
//! [`Tracker`]; a change is published, unless the engine took the fact meanwhile.
//!
//! In `exec` mode it also follows the supervisor's `alive` flag: a process that dies is
//! `unhealthy` at once (a round in flight is abandoned), and the monitor waits for the next
//! rounds to bring it back.
//!
//! The task ends when the agent's shutdown token is cancelled, even in the middle of a round.

use super::fact::{HealthFact, Owner};
use super::tracker::Tracker;
use crate::verify::Verifier;
use hotdeploy_common::config::{HealthConfig, VerifyConfig};
use hotdeploy_common::proto::Health;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Slack on top of the probes' own timeouts for one whole round.
const ROUND_SLACK: Duration = Duration::from_secs(1);

/// The monitor; [`HealthMonitor::run`] drives it.
pub struct HealthMonitor {
    fact: Arc<HealthFact>,
    verifier: Verifier,
    interval: Duration,
    round_limit: Duration,
    tracker: Tracker,
    /// `exec` mode: the supervisor's "alive" flag. `None` in the other modes, where the agent
    /// supervises no process and only the probes speak.
    alive: Option<watch::Receiver<bool>>,
    /// The handover number the tracker resumed from (`None` before the first look).
    handover: Option<u64>,
    rounds: watch::Sender<u64>,
    /// The metrics' probe counters.
    probes: crate::metrics::ProbeCounters,
    /// Beaten at every turn: the systemd watchdog is fed while it is fresh (`watchdog`).
    beat: Option<crate::watchdog::Beat>,
}

impl HealthMonitor {
    /// A monitor of `fact` with `[health]` (its probes resolved against `[verify]`).
    pub fn new(
        cfg: &HealthConfig,
        verify: &VerifyConfig,
        fact: Arc<HealthFact>,
        alive: Option<watch::Receiver<bool>>,
    ) -> Self {
        let p = cfg.probes(verify);
        let probes = VerifyConfig {
            http: p.http,
            tcp: p.tcp,
            exec: p.exec,
            expect_status: p.expect_status,
            body_contains: p.body_contains,
            ..verify.clone()
        };
        let timeout = cfg.probe_timeout();
        let (rounds, _) = watch::channel(0);
        Self {
            tracker: Tracker::new(fact.get(), cfg.unhealthy_after, cfg.healthy_after),
            fact,
            verifier: Verifier::with_probe_timeout(&probes, timeout),
            interval: cfg.interval,
            round_limit: timeout * 3 + ROUND_SLACK,
            alive,
            handover: None,
            rounds,
            probes: Default::default(),
            beat: None,
        }
    }

    /// The longest one turn of the loop may take: a tick, then a round bounded as a whole.
    pub fn turn_bound(&self) -> Duration {
        self.interval + self.round_limit
    }

    /// Beats `beat` at every turn of the loop (the systemd watchdog follows it).
    pub fn beating(mut self, beat: crate::watchdog::Beat) -> Self {
        self.beat = Some(beat);
        self
    }

    /// Counts the probe rounds and their failures into `probes` (the metrics).
    pub fn count_probes(mut self, probes: crate::metrics::ProbeCounters) -> Self {
        self.probes = probes;
        self
    }

    /// Counts the probe rounds run (for tests and diagnostics).
    pub fn subscribe_rounds(&self) -> watch::Receiver<u64> {
        self.rounds.subscribe()
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut alive = self.alive.take();
        loop {
            let due = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = died(&mut alive) => false,
                _ = tick.tick() => true,
            };
            if let Some(b) = &self.beat {
                b.beat();
            }
            let Some(handover) = self.look() else {
                continue;
            };
            if alive.as_ref().is_some_and(|a| !*a.borrow()) {
                let h = self.tracker.dead();
                self.publish(handover, h);
                continue;
            }
            if !due {
                continue;
            }
            let ok = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = died(&mut alive) => {
                    let h = self.tracker.dead();
                    self.publish(handover, h);
                    continue;
                }
                r = self.round() => r,
            };
            self.rounds.send_modify(|n| *n += 1);
            self.probes.round(ok.is_ok());
            let before = self.tracker.health();
            let after = self.tracker.observe(ok.is_ok());
            match (&ok, before == after) {
                (Err(e), false) => {
                    tracing::warn!("health: {e}; unhealthy after consecutive failed probe rounds")
                }
                (Err(e), true) if after == Health::Healthy => {
                    tracing::info!("health probe failed (still counted healthy): {e}")
                }
                (Ok(()), false) => tracing::info!("health: probes pass again; healthy"),
                _ => {}
            }
            self.publish(handover, after);
        }
    }

    /// Reads the fact: `None` when there is nothing to judge (the engine owns it, or the host
    /// is unprovisioned); else the handover number to publish with, after resuming the tracker
    /// from a new handover.
    fn look(&mut self) -> Option<u64> {
        let snap = self.fact.snapshot();
        if snap.owner == Owner::Engine {
            return None;
        }
        if self.handover != Some(snap.handover) {
            self.handover = Some(snap.handover);
            self.tracker.resume(snap.health);
        }
        (snap.health != Health::Unprovisioned).then_some(snap.handover)
    }

    fn publish(&self, handover: u64, health: Health) {
        if !self.fact.publish_from_monitor(handover, health) {
            tracing::debug!("health verdict dropped: the engine took the fact");
        }
    }

    /// One round of every probe, bounded as a whole.
    async fn round(&self) -> Result<(), String> {
        match tokio::time::timeout(self.round_limit, self.verifier.probe_once()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "the probe round did not finish within {:?}",
                self.round_limit
            )),
        }
    }
}

/// Resolves when the supervised process is seen dead; never in modes without one (or once
/// the supervisor is gone).
async fn died(alive: &mut Option<watch::Receiver<bool>>) {
    let Some(rx) = alive else {
        return std::future::pending().await;
    };
    loop {
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        if !*rx.borrow_and_update() {
            return;
        }
    }
}
