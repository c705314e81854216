//! What a scrape reports about the replicated state and the raft node, read at scrape time.
//!
//! A scrape takes a [`Sample`]: plain numbers copied out of the node's status and its state
//! machine under one short read lock, with slot ages against the scraping node's clock. The
//! state machine stays as it is (pure, no counters in it); the metrics read it from outside.
//! The encoding (`collector.rs`) then works on the sample alone, with no lock held.
//!
//! Every label is bounded by the fleet: groups, slot holders (at most the sum of the budgets),
//! members, and the rollouts that matter now: the active ones, and the latest of each group (so
//! that a halted or aborted rollout stays visible until the next one starts). Rollouts of the
//! past are counted by state, not listed.

use crate::raft::{NodeStatus, Role};
use crate::state::{Health, StepPhase};
use crate::state::{HostKind, Reachability, Rollout, RolloutState, Rotation, StateMachine};
use std::collections::BTreeMap;
use std::time::Duration;

/// Every rollout state, so that each has a series (zero or not).
pub const ROLLOUT_STATES: [RolloutState; 5] = [
    RolloutState::Running,
    RolloutState::Paused,
    RolloutState::Completed,
    RolloutState::Halted,
    RolloutState::Aborted,
];

/// Every step phase, so that each has a series (zero or not).
pub const STEP_PHASES: [StepPhase; 11] = [
    StepPhase::Pending,
    StepPhase::Staging,
    StepPhase::Staged,
    StepPhase::Waiting,
    StepPhase::Draining,
    StepPhase::Swapping,
    StepPhase::Verifying,
    StepPhase::RollingBack,
    StepPhase::Succeeded,
    StepPhase::Failed,
    StepPhase::RolledBack,
];

/// Every raft role, for the one-hot role series.
pub const ROLES: [Role; 4] = [Role::Leader, Role::Follower, Role::Candidate, Role::Learner];

/// The raft node as a scrape sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RaftSample {
    pub role: Role,
    /// 0 when no leader is known.
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub voters: u64,
    pub learners: u64,
    /// Leader only: each other member's id, whether it was recently active, and how many
    /// committed entries it has yet to acknowledge.
    pub peers: Vec<PeerSample>,
    /// Each member's command format version as this node knows it (the version gate's view;
    /// 0 while not known), by member id.
    pub member_versions: Vec<(u64, u32)>,
    /// How long ago the raft loop last finished a turn.
    pub since_last_turn: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerSample {
    pub id: u64,
    pub active: bool,
    pub lag: u64,
}

impl RaftSample {
    pub fn of(st: &NodeStatus, since_last_turn: Duration) -> Self {
        let peers = if st.is_leader() {
            st.voters
                .iter()
                .chain(st.learners.iter())
                .filter(|id| **id != st.id)
                .map(|id| PeerSample {
                    id: *id,
                    active: st.active.get(id).copied().unwrap_or(false),
                    lag: st
                        .commit
                        .saturating_sub(st.matched.get(id).copied().unwrap_or(0)),
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            role: st.role,
            leader: st.leader,
            term: st.term,
            commit: st.commit,
            applied: st.applied,
            voters: st.voters.len() as u64,
            learners: st.learners.len() as u64,
            peers,
            member_versions: st
                .versions
                .iter()
                .map(|(id, known)| (*id, known.version().unwrap_or(0)))
                .collect(),
            since_last_turn,
        }
    }
}

/// One group's use of its budget.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSample {
    pub name: String,
    pub budget: u64,
    pub unavailable: u64,
    pub size: u64,
    pub holders: u64,
}

/// One held slot.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotSample {
    pub host: String,
    pub purpose: String,
    pub age: Duration,
}

/// One rollout that matters now.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSample {
    pub id: String,
    pub group: String,
    pub state: RolloutState,
    /// Hosts by phase, every phase listed.
    pub hosts: Vec<(&'static str, u64)>,
    /// Running rollouts: time since their last progress (the progress deadline's clock).
    pub since_progress: Option<Duration>,
}

/// The replicated state as a scrape sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FleetSample {
    pub groups: Vec<GroupSample>,
    /// Oldest grant first.
    pub slots: Vec<SlotSample>,
    pub agent_hosts: u64,
    pub lock_only_hosts: u64,
    pub unreachable: u64,
    pub unprovisioned: u64,
    pub healthy: u64,
    pub unhealthy: u64,
    pub out_of_rotation: u64,
    /// Every rollout kept, by state (every state listed).
    pub rollouts_by_state: Vec<(&'static str, u64)>,
    pub rollouts: Vec<RolloutSample>,
}

impl FleetSample {
    /// Reads `st` at `now_ms` (the scraping node's clock).
    pub fn of(st: &StateMachine, now_ms: u64) -> Self {
        let since = |at_ms: u64| Duration::from_millis(now_ms.saturating_sub(at_ms));
        let groups = st
            .group_views()
            .into_iter()
            .map(|g| GroupSample {
                holders: g.holders.len() as u64,
                name: g.name,
                budget: g.budget,
                unavailable: g.unavailable,
                size: g.size,
            })
            .collect();
        let slots = st
            .slots()
            .into_iter()
            .map(|s| SlotSample {
                host: s.host.clone(),
                purpose: s.purpose.clone(),
                age: since(s.granted_at_ms),
            })
            .collect();
        let mut sample = FleetSample {
            groups,
            slots,
            ..FleetSample::default()
        };
        for h in st.hosts() {
            match h.kind {
                HostKind::Agent => sample.agent_hosts += 1,
                HostKind::LockOnly => sample.lock_only_hosts += 1,
            }
            sample.unreachable += u64::from(h.reachability == Reachability::Unreachable);
            match h.health {
                Health::Unprovisioned => sample.unprovisioned += 1,
                Health::Healthy => sample.healthy += 1,
                Health::Unhealthy => sample.unhealthy += 1,
            }
            sample.out_of_rotation += u64::from(h.rotation != Rotation::InRotation);
        }
        let all = st.rollouts();
        let mut by_state: BTreeMap<&'static str, u64> =
            ROLLOUT_STATES.iter().map(|s| (s.as_str(), 0)).collect();
        let mut latest: BTreeMap<&str, &Rollout> = BTreeMap::new();
        for r in &all {
            *by_state.entry(r.state.as_str()).or_default() += 1;
            // `rollouts()` is oldest first: the last one seen per group is its latest.
            latest.insert(r.group.as_str(), r);
        }
        sample.rollouts_by_state = ROLLOUT_STATES
            .iter()
            .map(|s| (s.as_str(), by_state.get(s.as_str()).copied().unwrap_or(0)))
            .collect();
        sample.rollouts = all
            .iter()
            .filter(|r| {
                r.state.is_active() || latest.get(r.group.as_str()).is_some_and(|l| l.id == r.id)
            })
            .map(|r| rollout_sample(r, now_ms))
            .collect();
        sample
    }
}

fn rollout_sample(r: &Rollout, now_ms: u64) -> RolloutSample {
    let mut hosts: Vec<(&'static str, u64)> = STEP_PHASES.iter().map(|p| (p.as_str(), 0)).collect();
    for step in &r.steps {
        let phase = step.phase.as_str();
        match hosts.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, n)) => *n += 1,
            None => hosts.push((phase, 1)),
        }
    }
    RolloutSample {
        id: r.id.clone(),
        group: r.group.clone(),
        state: r.state,
        hosts,
        since_progress: (r.state == RolloutState::Running)
            .then(|| Duration::from_millis(now_ms.saturating_sub(r.last_progress_at_ms))),
    }
}
