//! The scrape-time metrics: a prometheus-client [`Collector`] that takes a [`Sample`] of the
//! node and its replicated state on every scrape and writes it out.
//!
//! Gauges only: each is what the state says now. Where a value is one of a fixed set (a raft
//! role, a rollout's state, a step's phase) every value gets a series, 0 or 1 (or a count), so
//! that a series never vanishes when its value changes and dashboards can stack them.

use super::sample::{FleetSample, RaftSample, ROLES, ROLLOUT_STATES};
use crate::raft::RaftNode;
use hotdeploy_common::time::now_ms;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use std::fmt;

/// Where a scrape's sample comes from: the running node, or a fixed one in tests.
pub trait Source: Send + Sync + 'static {
    fn sample(&self) -> (RaftSample, FleetSample);
}

impl Source for RaftNode {
    fn sample(&self) -> (RaftSample, FleetSample) {
        let raft = RaftSample::of(&self.status(), self.progress().since_last_turn());
        let fleet = FleetSample::of(&self.state(), now_ms());
        (raft, fleet)
    }
}

/// Writes a [`Source`]'s sample on every scrape.
pub struct StateCollector<S> {
    source: S,
}

impl<S> StateCollector<S> {
    pub fn new(source: S) -> Self {
        Self { source }
    }
}

impl<S> fmt::Debug for StateCollector<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateCollector")
    }
}

impl<S: Source> Collector for StateCollector<S> {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (raft, fleet) = self.source.sample();
        encode_raft(&mut enc, &raft)?;
        encode_fleet(&mut enc, &fleet)
    }
}

/// One gauge without labels.
fn gauge<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: V,
) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(value).encode(m)
}

/// A gauge with one series per label set.
fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn encode_raft(enc: &mut DescriptorEncoder, r: &RaftSample) -> fmt::Result {
    gauges(
        enc,
        "raft_role",
        "This node's raft role: 1 for the role it has, 0 for the others.",
        None,
        ROLES
            .iter()
            .map(|role| ([("role", role.label())], i64::from(*role == r.role))),
    )?;
    gauge(
        enc,
        "raft_leader_id",
        "The raft id of the leader this node knows; 0 when it knows none.",
        None,
        r.leader,
    )?;
    gauge(enc, "raft_term", "This node's raft term.", None, r.term)?;
    gauge(
        enc,
        "raft_commit_index",
        "The highest log index this node knows to be committed.",
        None,
        r.commit,
    )?;
    gauge(
        enc,
        "raft_applied_index",
        "The highest log index applied to this node's state machine.",
        None,
        r.applied,
    )?;
    gauges(
        enc,
        "raft_members",
        "Members of the cluster's configuration, by kind.",
        None,
        [
            ([("kind", "voter")], r.voters),
            ([("kind", "learner")], r.learners),
        ],
    )?;
    gauges(
        enc,
        "raft_peer_active",
        "Leader only: 1 if the peer was heard from within an election timeout.",
        None,
        r.peers
            .iter()
            .map(|p| ([("peer", p.id.to_string())], i64::from(p.active))),
    )?;
    gauges(
        enc,
        "raft_member_format_version",
        "The newest command format version each member knows, as this node knows it (0 while \
         not known). Members below the newest are not upgraded yet; the version gate keeps \
         newer commands out of the log until none is.",
        None,
        r.member_versions
            .iter()
            .map(|(id, v)| ([("member", id.to_string())], i64::from(*v))),
    )?;
    gauges(
        enc,
        "raft_peer_lag_entries",
        "Leader only: committed entries the peer has not acknowledged yet.",
        None,
        r.peers
            .iter()
            .map(|p| ([("peer", p.id.to_string())], p.lag)),
    )?;
    gauge(
        enc,
        "raft_loop_stall",
        "Time since the raft loop last finished a turn (it turns at least once per tick).",
        Some(&Unit::Seconds),
        r.since_last_turn.as_secs_f64(),
    )
}

fn encode_fleet(enc: &mut DescriptorEncoder, f: &FleetSample) -> fmt::Result {
    let by_group = |value: fn(&super::sample::GroupSample) -> u64| {
        f.groups
            .iter()
            .map(move |g| ([("group", g.name.clone())], value(g)))
    };
    gauges(
        enc,
        "group_budget",
        "The group's budget in force: how many of its hosts may be unavailable at once.",
        None,
        by_group(|g| g.budget),
    )?;
    gauges(
        enc,
        "group_unavailable",
        "Hosts of the group unavailable now (holding a slot, unreachable, unhealthy or out of \
         rotation).",
        None,
        by_group(|g| g.unavailable),
    )?;
    gauges(
        enc,
        "group_size",
        "Hosts counted in the group (provisioned, or holding a slot).",
        None,
        by_group(|g| g.size),
    )?;
    gauges(
        enc,
        "group_holders",
        "Hosts of the group holding a slot.",
        None,
        by_group(|g| g.holders),
    )?;

    let mut by_purpose: Vec<(&str, u64)> = Vec::new();
    for s in &f.slots {
        match by_purpose.iter_mut().find(|(p, _)| *p == s.purpose) {
            Some((_, n)) => *n += 1,
            None => by_purpose.push((s.purpose.as_str(), 1)),
        }
    }
    by_purpose.sort();
    gauges(
        enc,
        "slots_held",
        "Slots held now, by purpose.",
        None,
        by_purpose.into_iter().map(|(p, n)| ([("purpose", p)], n)),
    )?;
    gauges(
        enc,
        "slot_age",
        "How long each held slot has been held, by holder.",
        Some(&Unit::Seconds),
        f.slots.iter().map(|s| {
            (
                [("host", s.host.as_str()), ("purpose", s.purpose.as_str())],
                s.age.as_secs_f64(),
            )
        }),
    )?;
    gauge(
        enc,
        "slot_oldest_age",
        "How long the oldest held slot has been held; 0 when none is held.",
        Some(&Unit::Seconds),
        f.slots
            .iter()
            .map(|s| s.age.as_secs_f64())
            .fold(0.0, f64::max),
    )?;

    gauges(
        enc,
        "hosts",
        "Registered hosts, by kind (agent, or FleetLock's lock-only).",
        None,
        [
            ([("kind", "agent")], f.agent_hosts),
            ([("kind", "lock_only")], f.lock_only_hosts),
        ],
    )?;
    gauge(
        enc,
        "hosts_unreachable",
        "Hosts whose heartbeats the leader has stopped hearing.",
        None,
        f.unreachable,
    )?;
    gauge(
        enc,
        "hosts_unhealthy",
        "Hosts whose agent reports their service unhealthy.",
        None,
        f.unhealthy,
    )?;
    gauges(
        enc,
        "hosts_health",
        "Registered hosts by health as their agents report it (lock-only hosts count as healthy).",
        None,
        [
            ([("health", "unprovisioned")], f.unprovisioned),
            ([("health", "healthy")], f.healthy),
            ([("health", "unhealthy")], f.unhealthy),
        ],
    )?;
    gauge(
        enc,
        "hosts_out_of_rotation",
        "Hosts not in load-balancer rotation (draining or out).",
        None,
        f.out_of_rotation,
    )?;

    gauges(
        enc,
        "rollouts",
        "Rollouts kept in the state, by state.",
        None,
        f.rollouts_by_state
            .iter()
            .map(|(state, n)| ([("state", *state)], *n)),
    )?;
    gauges(
        enc,
        "rollout_state",
        "Active rollouts and each group's latest: 1 for the state it is in, 0 for the others.",
        None,
        f.rollouts.iter().flat_map(|r| {
            ROLLOUT_STATES.iter().map(move |s| {
                (
                    [
                        ("rollout", r.id.as_str()),
                        ("group", r.group.as_str()),
                        ("state", s.as_str()),
                    ],
                    i64::from(*s == r.state),
                )
            })
        }),
    )?;
    gauges(
        enc,
        "rollout_hosts",
        "Hosts of a rollout (active, or its group's latest) by step phase.",
        None,
        f.rollouts.iter().flat_map(|r| {
            r.hosts.iter().map(move |(phase, n)| {
                (
                    [
                        ("rollout", r.id.as_str()),
                        ("group", r.group.as_str()),
                        ("phase", *phase),
                    ],
                    *n,
                )
            })
        }),
    )?;
    gauges(
        enc,
        "rollout_since_progress",
        "Running rollouts: time since their last progress; the rollout halts when it reaches \
         its progress deadline.",
        Some(&Unit::Seconds),
        f.rollouts.iter().filter_map(|r| {
            r.since_progress.map(|d| {
                (
                    [("rollout", r.id.as_str()), ("group", r.group.as_str())],
                    d.as_secs_f64(),
                )
            })
        }),
    )
}
