//! What the node task publishes about itself after every turn of its loop, for the services
//! (leader hints, `status`) and the liveness tracker (leadership changes).

use super::versions::Known;
use std::collections::BTreeMap;

/// This node's raft role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    Leader,
    #[default]
    Follower,
    Candidate,
    Learner,
}

impl Role {
    /// The lower-case name used in JSON and tables.
    pub fn label(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
        }
    }
}

/// A snapshot of the node's raft status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeStatus {
    pub id: u64,
    pub role: Role,
    /// The leader's id as this node knows it; 0 when unknown.
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Leader only: each member's matched log index.
    pub matched: BTreeMap<u64, u64>,
    /// Leader only: whether each member was recently active.
    pub active: BTreeMap<u64, bool>,
    /// What this node knows of each member's command format version (the version gate's view;
    /// first-hand on the leader).
    pub versions: BTreeMap<u64, Known>,
}

impl NodeStatus {
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
}
