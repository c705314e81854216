//! Errors of the node driver, as seen by the services that propose and read through it.

use thiserror::Error;

/// Why a proposal or a read did not go through.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum NodeError {
    /// This node is not the leader. `leader` is the leader's id when known (0 when not).
    #[error("not the leader (leader is {leader})")]
    NotLeader { leader: u64 },
    /// Leadership changed while the proposal was pending: it may or may not commit. Retry with
    /// the same (client_id, seq); the state machine dedups it.
    #[error("leadership changed while the request was pending; retry")]
    LeadershipLost,
    /// Raft dropped the proposal (for example during a leader transfer or a pending conf change).
    #[error("proposal dropped by raft: {0}")]
    Dropped(String),
    /// The request took longer than its deadline.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The node task has stopped (fatal storage error or shutdown).
    #[error("raft node stopped")]
    Stopped,
}

impl NodeError {
    /// Whether the same request may succeed if tried again (here or at the leader).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, NodeError::Stopped)
    }
}
