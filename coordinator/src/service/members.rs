//! Membership changes (DESIGN §2): `members add` joins a node as a learner, waits until it has
//! caught up with the leader's log, then promotes it to voter; `members remove` removes it.
//! Both are ConfChangeV2 entries; the new member's address rides in the change's context, so
//! every node learns how to reach it when the change applies.

use super::leader::{ensure_leader, node_status};
use crate::raft::RaftNode;
use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use std::time::Duration;
use tonic::Status;

/// How long a learner may take to catch up before `members add` gives up (it stays a learner,
/// and a second `members add` resumes the promotion).
const CATCH_UP: Duration = Duration::from_secs(60);
const CONF_TIMEOUT: Duration = Duration::from_secs(15);

fn change(kind: ConfChangeType, id: u64, address: &str) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    cc.context = address.as_bytes().to_vec().into();
    cc
}

fn check_address(address: &str) -> Result<(), Status> {
    let ok = address.len() <= 256
        && address
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "member address {address:?} is not host:port"
        )))
    }
}

pub(crate) async fn add(
    node: &RaftNode,
    actor: &str,
    id: u64,
    address: &str,
) -> Result<(), Status> {
    if id == 0 {
        return Err(Status::invalid_argument(
            "member id must be a positive integer",
        ));
    }
    check_address(address)?;
    ensure_leader(node)?;
    let st = node.status();
    if st.voters.contains(&id) {
        return Err(Status::already_exists(format!(
            "node {id} is already a voting member"
        )));
    }
    tracing::info!(audit = true, %actor, id, %address, "adding member as learner");
    if !st.learners.contains(&id) {
        node.conf_change(
            change(ConfChangeType::AddLearnerNode, id, address),
            CONF_TIMEOUT,
        )
        .await
        .map_err(|e| node_status(node, e))?;
    }
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        ensure_leader(node)?;
        let st = node.status();
        let matched = st.matched.get(&id).copied().unwrap_or(0);
        if matched > 0 && matched + 1 >= st.commit {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Status::deadline_exceeded(format!(
                "node {id} joined as a learner but has not caught up ({matched} of {}); is it running with initial_cluster_state = \"existing\" at {address}? Run members add again to promote it",
                st.commit
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.conf_change(change(ConfChangeType::AddNode, id, address), CONF_TIMEOUT)
        .await
        .map_err(|e| node_status(node, e))?;
    tracing::info!(audit = true, %actor, id, "member promoted to voter");
    Ok(())
}

pub(crate) async fn remove(node: &RaftNode, actor: &str, id: u64) -> Result<(), Status> {
    ensure_leader(node)?;
    let st = node.status();
    if !st.voters.contains(&id) && !st.learners.contains(&id) {
        return Err(Status::not_found(format!("node {id} is not a member")));
    }
    if st.voters.len() == 1 && st.voters.contains(&id) {
        return Err(Status::failed_precondition(
            "cannot remove the last voting member",
        ));
    }
    tracing::info!(audit = true, %actor, id, "removing member");
    node.conf_change(change(ConfChangeType::RemoveNode, id, ""), CONF_TIMEOUT)
        .await
        .map_err(|e| node_status(node, e))
}
