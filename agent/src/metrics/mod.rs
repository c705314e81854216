//! The agent's Prometheus metrics (DESIGN §8), served as `GET /metrics` on `metrics_listen`.
//!
//! Every name starts with `hotdeploy_agent_`, so that the agent's series never collide with
//! the coordinator's `hotdeploy_*` ones on a shared dashboard. The metrics come from three
//! places:
//!
//! - **the engine's deploys** ([`DeployStats`]): the time spent in each deploy step (a histogram
//!   by `phase`: stage, slot_wait, drain, swap, restart, verify, rollback, undrain) and deploys
//!   by kind and outcome, fed by `deploy::transition` at each phase transition and conclusion;
//!   and maintenance runs by result, counted as each run concludes (`deploy::maint`);
//! - **the edges** ([`metered`]): errors by kind, counted where an effect on the host or a call
//!   to the coordinators fails, and each slot grant's time; the health monitor's probe rounds
//!   and failures ([`ProbeCounters`]);
//! - **read at scrape time** ([`state`]): the current deploy phase, the reported health, the
//!   rotation state and readiness, a hold, the slot held, its token and age, the live release.
//!
//! Labels come from fixed sets (phases, outcomes, kinds, health and rotation states), plus the
//! live release id (one series). No request data becomes a label.
//!
//! The listener ([`http`]) is plain HTTP, like `/ready`: the metrics say nothing a load
//! balancer's health check does not already see, and Prometheus scrapes it without a
//! certificate. It ends on the agent's shutdown token.
//!
//! Left out: per-rollout series (the coordinators have them), and histograms of the API's
//! calls.

pub mod deploy;
pub mod http;
pub mod metered;
pub mod state;

pub use deploy::{DeployStats, ErrorKind, Errors, Step};
pub use metered::{MeteredHost, MeteredLock};
pub use state::AgentState;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// The content type of [`AgentMetrics::render`]: OpenMetrics text, which Prometheus reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The health monitor's probe rounds and the failed ones. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ProbeCounters {
    pub rounds: Counter,
    pub failures: Counter,
}

impl ProbeCounters {
    /// Counts one round of the probes, failed unless `ok`.
    pub fn round(&self, ok: bool) {
        self.rounds.inc();
        if !ok {
            self.failures.inc();
        }
    }
}

/// Every metric of one agent.
pub struct AgentMetrics {
    registry: Registry,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentMetrics")
    }
}

impl AgentMetrics {
    // prometheus-client ends the help of registered metrics with a full stop itself.

    /// Registers the engine's instruments, the probe counters and the scrape-time state.
    pub fn new(stats: &DeployStats, probes: &ProbeCounters, state: AgentState) -> Self {
        let mut registry = Registry::with_prefix("hotdeploy_agent");
        registry.register(
            "build",
            "This binary's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_string())]),
        );
        let start: Gauge<f64, AtomicU64> = Gauge::default();
        start.set(hotdeploy_common::time::now_ms() as f64 / 1000.0);
        registry.register_with_unit(
            "start_time",
            "When this agent process started, Unix time; a change means a restart (an upgrade, a \
             crash)",
            Unit::Seconds,
            start,
        );
        registry.register_with_unit(
            "deploy_phase_duration",
            "Time spent in each deploy step, by phase (stage, slot_wait, drain, swap, restart, \
             verify, rollback, undrain); a step begun before an agent restart is not timed",
            Unit::Seconds,
            stats.steps.clone(),
        );
        registry.register(
            "deploys",
            "Deploys concluded, by kind (deploy, rollback) and outcome (succeeded, failed, \
             rolled_back, fenced)",
            stats.deploys.clone(),
        );
        registry.register(
            "maintenance_runs",
            "Maintenance runs (RunMaintenance, hotdeploy-agent maint) concluded, recovery's \
             included, by outcome (succeeded, command_failed, verify_failed, failed)",
            stats.maintenance.clone(),
        );
        registry.register(
            "errors",
            "Failures by kind: stage, policy, store, drain, undrain, service, verify, hook, \
             slot, slot_release, fenced, fence_unconfirmed, report, journal",
            stats.errors.0.clone(),
        );
        registry.register(
            "health_probe_rounds",
            "Rounds of the health probes run between deploys",
            probes.rounds.clone(),
        );
        registry.register(
            "health_probe_failures",
            "Rounds of the health probes between deploys that failed",
            probes.failures.clone(),
        );
        registry.register_collector(Box::new(state));
        Self { registry }
    }

    /// Every metric, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
