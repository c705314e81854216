//! Routing to the leader, and turning raft/state outcomes into gRPC statuses.
//!
//! Writes and linearizable reads are served by the leader. A follower answers UNAVAILABLE with
//! the leader's address in the `x-hotdeploy-leader` metadata (and its id in
//! `x-hotdeploy-leader-id`); clients retry there. Errors keep their meaning on the wire:
//! deterministic state errors carry their own codes (FAILED_PRECONDITION, NOT_FOUND, ...), and
//! so does the version gate's "member 3 knows command format version 1; StartRollout needs 2:
//! upgrade it first" (FAILED_PRECONDITION); anything that may succeed on retry is UNAVAILABLE
//! (a member whose version is not known yet among them), ABORTED (another membership change is
//! in progress) or RESOURCE_EXHAUSTED.

use crate::raft::{NodeError, RaftNode};
use crate::state::{Answer, Command, Proposal, StateError, WriteId};
use hotdeploy_common::proto::{LEADER_ADDRESS_KEY, LEADER_ID_KEY};
use hotdeploy_common::time::now_ms;
use std::time::Duration;
use tonic::Status;

/// How long a write may wait for its entry to apply.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read may wait for its ReadIndex barrier.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// "not the leader; the leader is node 2 at HOST:PORT", or that no leader is known.
pub fn leader_hint(node: &RaftNode) -> String {
    let leader = node.leader_id();
    let address = (leader != 0).then(|| node.address_of(leader)).flatten();
    match (&address, leader) {
        (Some(a), l) => format!("not the leader; the leader is node {l} at {a}"),
        (None, 0) => "no leader elected right now; retry shortly".to_string(),
        (None, l) => format!("not the leader; the leader is node {l} (address unknown)"),
    }
}

/// UNAVAILABLE with a leader hint when one is known.
pub(crate) fn not_leader(node: &RaftNode) -> Status {
    let leader = node.leader_id();
    let address = (leader != 0).then(|| node.address_of(leader)).flatten();
    let mut status = Status::unavailable(leader_hint(node));
    if let Some(a) = address {
        if let Ok(v) = a.parse() {
            status.metadata_mut().insert(LEADER_ADDRESS_KEY, v);
        }
        if let Ok(v) = leader.to_string().parse() {
            status.metadata_mut().insert(LEADER_ID_KEY, v);
        }
    }
    status
}

pub(crate) fn ensure_leader(node: &RaftNode) -> Result<(), Status> {
    if node.is_leader() {
        Ok(())
    } else {
        Err(not_leader(node))
    }
}

pub(crate) fn state_status(e: &StateError) -> Status {
    Status::new(e.code(), e.to_string())
}

pub(crate) fn node_status(node: &RaftNode, e: NodeError) -> Status {
    match e {
        NodeError::NotLeader { .. } => not_leader(node),
        NodeError::Stopped => Status::internal("raft node stopped"),
        // A concurrency conflict, not an outage: clients retry it (ABORTED).
        e @ NodeError::MembershipChangeInProgress => Status::aborted(e.to_string()),
        // The version gate: a member must be upgraded first; retrying will not help.
        e @ NodeError::MemberTooOld { .. } => Status::failed_precondition(e.to_string()),
        other => Status::unavailable(other.to_string()),
    }
}

/// Proposes a command at the leader and returns the state machine's answer.
pub(crate) async fn write(
    node: &RaftNode,
    write: Option<WriteId>,
    actor: &str,
    command: Command,
) -> Result<Answer, Status> {
    ensure_leader(node)?;
    let p = Proposal::new(write, now_ms(), actor, command);
    answer(node, node.propose(p, WRITE_TIMEOUT).await)
}

/// Like [`write`], but a command the leader's version gate keeps out of the log (a member does
/// not know its version yet) answers `None`, for a caller with an older way to do the same.
pub(crate) async fn write_if_known(
    node: &RaftNode,
    write: Option<WriteId>,
    actor: &str,
    command: Command,
) -> Result<Option<Answer>, Status> {
    ensure_leader(node)?;
    let p = Proposal::new(write, now_ms(), actor, command);
    match node.propose(p, WRITE_TIMEOUT).await {
        Err(e) if e.is_version_gate() => {
            tracing::debug!("{e}; proposing the older form");
            Ok(None)
        }
        r => answer(node, r).map(Some),
    }
}

fn answer(node: &RaftNode, r: Result<crate::state::Response, NodeError>) -> Result<Answer, Status> {
    match r {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(state_status(&e)),
        Err(e) => Err(node_status(node, e)),
    }
}

/// A linearizable read barrier at the leader.
pub(crate) async fn read_barrier(node: &RaftNode) -> Result<(), Status> {
    ensure_leader(node)?;
    node.read_barrier(READ_TIMEOUT)
        .await
        .map_err(|e| node_status(node, e))
}
