//! The coordinator's Prometheus metrics (DESIGN §8), served as `/metrics` on `http_listen`.
//!
//! Every name starts with `hotdeploy_`. The metrics come from two places, and neither is the
//! state machine, which stays pure:
//!
//! - **read at scrape time** (`collector`, from a `sample` of the node): the raft role, term,
//!   commit and applied indexes, peers' activity and lag (on the leader), how long the raft loop
//!   has been still; groups' budget, size, unavailable hosts and holders; slots held by purpose
//!   and the age of each (and of the oldest); host counts; rollouts by state, and for each
//!   rollout that matters now its state and its hosts by phase;
//! - **fed from the edges**: the commit latency (proposal to applied, measured by the raft
//!   handle on the leader) and failed raft requests by kind (`raft::NodeStats`), gRPC refusals
//!   by call and code (`grpc`, a tower layer), `AcquireSlot` calls by purpose and result, the
//!   wait for a grant and the calls waiting now (`lock`), FleetLock requests by operation and
//!   result.
//!
//! Each node reports its own view. The replicated series (groups, slots, hosts, rollouts) are
//! the same on every node up to replication lag; dashboards and alerts read them from the
//! leader (`hotdeploy_raft_role{role="leader"} == 1`) or take the max over nodes.
//!
//! Labels are bounded by the fleet: group, host (slot holders only), purpose, rollout (active
//! ones and each group's latest), peer id, gRPC call (methods served, `unknown` for the rest),
//! and fixed sets of codes, kinds, roles, states and phases. No request data becomes a label.
//!
//! A storage error is fatal (the node exits and systemd restarts it), so it is never counted
//! here: a restart shows as a new `hotdeploy_start_time_seconds`.
//!
//! Left out: the agent's metrics (its own `metrics_listen`, another module).

mod collector;
mod grpc;
mod lock;
mod sample;

pub use collector::{Source, StateCollector};
pub use grpc::{code_name, GrpcErrors, GrpcErrorsLayer, GrpcLabels};
pub use lock::{purpose_label, AcquireLabels, AcquireResult, LockStats, Waiting};
pub use sample::{FleetSample, GroupSample, PeerSample, RaftSample, RolloutSample, SlotSample};

use crate::raft::RaftNode;
use crate::state::FORMAT_VERSION;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// The content type of what [`Metrics::render`] writes: OpenMetrics text, which Prometheus
/// reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The labels of one FleetLock request's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FleetLockLabels {
    /// `pre_reboot` or `steady_state`.
    pub op: &'static str,
    /// `ok`, or the FleetLock error kind answered.
    pub result: &'static str,
}

/// Every metric of one coordinator. Shared (`Arc`) by the gRPC layer, the FleetLock handler and
/// the `/metrics` endpoint.
pub struct Metrics {
    registry: Registry,
    grpc_errors: GrpcErrors,
    lock: LockStats,
    fleetlock: Family<FleetLockLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    // prometheus-client ends the help of registered metrics with a full stop itself.

    /// The metrics of `node`: its state read at every scrape, its request statistics.
    pub fn new(node: &RaftNode) -> Self {
        Self::with_source(node.clone(), node.stats())
    }

    /// The metrics with the scrape-time sample taken from `source` (tests give a fixed one).
    pub fn with_source(source: impl Source, stats: &crate::raft::NodeStats) -> Self {
        let mut registry = Registry::with_prefix("hotdeploy");
        registry.register(
            "build",
            "This binary: its version, and the newest command format version it can apply",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("command_format_version", FORMAT_VERSION.to_string()),
            ]),
        );
        let start: Gauge<f64, AtomicU64> = Gauge::default();
        start.set(hotdeploy_common::time::now_ms() as f64 / 1000.0);
        registry.register_with_unit(
            "start_time",
            "When this process started, Unix time; a change means a restart (a fatal error, \
             an upgrade, the watchdog)",
            Unit::Seconds,
            start,
        );
        registry.register_with_unit(
            "raft_commit_latency",
            "Leader: time from a write's proposal to its entry applied, as the client waits",
            Unit::Seconds,
            stats.commit_latency.clone(),
        );
        registry.register(
            "raft_proposals_applied",
            "Proposals made at this node that applied, by command kind (Acquire, ReportPhase, \
             ReportStep, Release, UpdateReport, ...): summed over the members, where the log's \
             entries come from",
            stats.applied.clone(),
        );
        registry.register(
            "raft_errors",
            "Raft requests that failed, by op (propose, conf_change, read) and kind",
            stats.errors.clone(),
        );
        let grpc_errors = GrpcErrors::default();
        registry.register(
            "grpc_errors",
            "gRPC calls refused, by call (Service/Method, or unknown) and code",
            grpc_errors.clone(),
        );
        let lock = LockStats::default();
        registry.register(
            "lock_acquires",
            "AcquireSlot calls answered, by purpose (deploy, drain, rollback, maintenance, \
             fleetlock, other) and result (granted, refused, queue_timeout, not_leader, failed)",
            lock.acquires.clone(),
        );
        registry.register_with_unit(
            "lock_grant_wait",
            "Granted AcquireSlot calls: time from the call to the grant, the wait for budget \
             included",
            Unit::Seconds,
            lock.grant_wait.clone(),
        );
        registry.register(
            "lock_waiters",
            "AcquireSlot calls in progress on this node (on the leader: waiting for budget)",
            lock.waiters.clone(),
        );
        let fleetlock = Family::<FleetLockLabels, Counter>::default();
        registry.register(
            "fleetlock_requests",
            "FleetLock requests answered, by op (pre_reboot, steady_state) and result (ok, or \
             the error kind)",
            fleetlock.clone(),
        );
        registry.register_collector(Box::new(StateCollector::new(source)));
        Self {
            registry,
            grpc_errors,
            lock,
            fleetlock,
        }
    }

    /// Every metric, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The counter the gRPC layer feeds.
    pub fn grpc_errors(&self) -> GrpcErrors {
        self.grpc_errors.clone()
    }

    /// The instruments `AcquireSlot` feeds.
    pub fn lock(&self) -> LockStats {
        self.lock.clone()
    }

    /// Counts one answered FleetLock request.
    pub fn fleetlock_request(&self, op: &'static str, result: &'static str) {
        self.fleetlock
            .get_or_create(&FleetLockLabels { op, result })
            .inc();
    }
}

#[cfg(test)]
mod tests;
