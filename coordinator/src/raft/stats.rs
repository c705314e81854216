//! What the node's clients saw of it, for the metrics: how long a write took from its proposal
//! to its entry applied (on the leader, where proposals are made), how many proposals applied,
//! by command kind, and how many proposals, membership changes and reads failed, by kind.
//!
//! The applied proposals by kind say where the log's entries come from (a deploy's fenced
//! phases, its step reports, heartbeat report changes, liveness): summed over the members, they
//! are every entry but the leader's own (membership records, the version gate's), which no
//! client waits for.
//!
//! Measured at the edge, in [`RaftNode`](super::RaftNode)'s calls, not inside the Ready loop:
//! what an agent waits for is the whole way, inbox and fsync and a quorum's round trip
//! included. The loop itself counts nothing, so it stays as it is for the simulator.
//!
//! The instruments are prometheus-client's, shared by clones; the metrics module registers
//! them. A node whose stats nobody registers still counts, for nobody.

use super::NodeError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::time::Instant;

/// Upper bounds of the commit-latency buckets, in seconds: an fsync on a fast disk is well
/// under a millisecond, a quorum over a LAN a few; 10 s is the write deadline.
pub const COMMIT_LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The labels of a failed request: which kind of request, and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `propose`, `conf_change` or `read`.
    pub op: &'static str,
    /// [`error_kind`] of the error.
    pub kind: &'static str,
}

/// The label of an applied proposal: its command's kind (`Command::kind`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// The node's request statistics. Cheap to clone; clones share the counts.
#[derive(Clone, Debug)]
pub struct NodeStats {
    /// Proposal to applied, of every proposal that applied (whatever the state machine
    /// answered).
    pub commit_latency: Histogram,
    /// Proposals made at this node that applied, by command kind.
    pub applied: Family<KindLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
}

impl Default for NodeStats {
    fn default() -> Self {
        Self {
            commit_latency: Histogram::new(COMMIT_LATENCY_BUCKETS),
            applied: Family::default(),
            errors: Family::default(),
        }
    }
}

impl NodeStats {
    /// Records the end of a proposal of a command of `kind`, started at `started`.
    pub(super) fn proposal<T>(
        &self,
        kind: &'static str,
        started: Instant,
        result: &Result<T, NodeError>,
    ) {
        match result {
            Ok(_) => {
                self.commit_latency.observe(started.elapsed().as_secs_f64());
                self.applied.get_or_create(&KindLabels { kind }).inc();
            }
            Err(e) => self.failed("propose", e),
        }
    }

    /// Counts a failed request of kind `op`.
    pub(super) fn failed(&self, op: &'static str, e: &NodeError) {
        self.errors
            .get_or_create(&ErrorLabels {
                op,
                kind: error_kind(e),
            })
            .inc();
    }
}

/// A short, fixed name for each kind of [`NodeError`] (a metric label).
pub fn error_kind(e: &NodeError) -> &'static str {
    match e {
        NodeError::NotLeader { .. } => "not_leader",
        NodeError::LeadershipLost => "leadership_lost",
        NodeError::Dropped(_) => "dropped",
        NodeError::MembershipChangeInProgress => "membership_change_in_progress",
        NodeError::ReadUnconfirmed { .. } => "read_unconfirmed",
        NodeError::Timeout(_) => "timeout",
        NodeError::Stopped => "stopped",
        NodeError::MemberTooOld { .. } => "member_too_old",
        NodeError::VersionUnknown { .. } => "version_unknown",
        NodeError::VersionGatePending { .. } => "version_gate_pending",
    }
}
