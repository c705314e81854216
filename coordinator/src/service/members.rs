//! Membership changes (DESIGN §2): `members add` joins a node as a learner, waits until it has
//! caught up with the leader's log, then promotes it to voter; `members remove` removes it.
//! Both are ConfChangeV2 entries whose context carries the new member's address (so every node
//! learns how to reach it when the change applies) and the operator and time (so the audit
//! event names who did it, and when).
//!
//! Raft takes one change at a time; a second one while the first is being applied is answered
//! ABORTED, "another membership change is in progress", which `hotdeployctl` retries. A removal
//! that would leave the remaining voters without a reachable quorum is refused before it is
//! proposed: the cluster would stop committing anything, that removal included.
//!
//! Versions (DESIGN §8): before adding a node, the leader asks it (`RaftPeer.ClusterInfo`)
//! which command format version it knows, and refuses one that could not apply the state it
//! would be sent (the cluster already applied entries of a newer version): it would stop at
//! once. A node that does not answer yet is added anyway, since starting it after `members add`
//! is allowed; if it is too old, it stops on the first snapshot or entry it cannot apply and
//! names it. Once added, it is a learner of the configuration, and the version gate keeps new
//! kinds of command out of the log until it reports that it knows them.

use super::leader::{ensure_leader, node_status};
use crate::raft::{membership_change, ConfContext, RaftNode};
use hotdeploy_common::time::now_ms;
use raft::prelude::{ConfChangeType, ConfChangeV2};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Status;

/// How long a learner may take to catch up before `members add` gives up (it stays a learner,
/// and a second `members add` resumes the promotion).
const CATCH_UP: Duration = Duration::from_secs(60);
const CONF_TIMEOUT: Duration = Duration::from_secs(15);

fn change(kind: ConfChangeType, id: u64, address: &str, actor: &str) -> ConfChangeV2 {
    let context = ConfContext {
        address: address.to_string(),
        actor: actor.to_string(),
        at_ms: now_ms(),
    };
    membership_change(kind, id, &context)
}

/// Whether removing voter `id` leaves voters of which a majority is reachable (`active`, as the
/// leader sees it). `Err` says why not.
pub(crate) fn check_remaining_quorum(
    voters: &[u64],
    active: &BTreeMap<u64, bool>,
    id: u64,
) -> Result<(), String> {
    if !voters.contains(&id) {
        return Ok(());
    }
    let remaining: Vec<u64> = voters.iter().copied().filter(|v| *v != id).collect();
    let reachable: Vec<u64> = remaining
        .iter()
        .copied()
        .filter(|v| active.get(v).copied().unwrap_or(false))
        .collect();
    let need = remaining.len() / 2 + 1;
    if reachable.len() >= need {
        return Ok(());
    }
    Err(format!(
        "removing node {id} would leave voters {remaining:?}, of which only {reachable:?} \
         are reachable; a quorum needs {need}. Bring the others back first (or remove an \
         unreachable node instead)"
    ))
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
    if !st.learners.contains(&id) {
        check_joiner(node, id, address).await?;
    }
    tracing::info!(audit = true, %actor, id, %address, "adding member as learner");
    if !st.learners.contains(&id) {
        node.conf_change(
            change(ConfChangeType::AddLearnerNode, id, address, actor),
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
    node.conf_change(
        change(ConfChangeType::AddNode, id, address, actor),
        CONF_TIMEOUT,
    )
    .await
    .map_err(|e| node_status(node, e))?;
    tracing::info!(audit = true, %actor, id, "member promoted to voter");
    Ok(())
}

/// Refuses to add a node that knows an older command format than this cluster's state needs.
async fn check_joiner(node: &RaftNode, id: u64, address: &str) -> Result<(), Status> {
    let needs = node.state().format_version();
    match node.ask_peer(address).await {
        Ok(answer) => joiner_verdict(id, address, answer.format_version, needs),
        Err(e) => {
            tracing::warn!(
                id,
                %address,
                "cannot ask the new member which command format version it knows ({e}); adding it \
                 anyway: if it is too old, it stops on the first entry it cannot apply, naming it"
            );
            Ok(())
        }
    }
}

/// The rule of [`check_joiner`]: a node that reports `knows` (0: a coordinator from before
/// versions were reported, version 1) may join a cluster whose state needs `needs`.
fn joiner_verdict(id: u64, address: &str, knows: u32, needs: u32) -> Result<(), Status> {
    let knows = knows.max(1);
    if knows >= needs {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "node {id} at {address} knows command format version {knows}, but this cluster has \
         applied version {needs} entries: it would stop as soon as it received them. Upgrade it \
         first, then run members add again"
    )))
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
    check_remaining_quorum(&st.voters, &st.active, id).map_err(Status::failed_precondition)?;
    tracing::info!(audit = true, %actor, id, "removing member");
    node.conf_change(
        change(ConfChangeType::RemoveNode, id, "", actor),
        CONF_TIMEOUT,
    )
    .await
    .map_err(|e| node_status(node, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joiner_must_know_what_the_cluster_applied() {
        assert!(joiner_verdict(4, "a:1", 3, 2).is_ok());
        assert!(joiner_verdict(4, "a:1", 0, 1).is_ok());
        let err = joiner_verdict(4, "a:1", 0, 2).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            err.message()
                .contains("node 4 at a:1 knows command format version 1")
                && err.message().contains("applied version 2 entries"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn a_removal_must_leave_a_reachable_quorum() {
        let voters = [1, 2, 3];
        let all = BTreeMap::from([(1, true), (2, true), (3, true)]);
        assert_eq!(check_remaining_quorum(&voters, &all, 2), Ok(()));
        // Node 3 is down: removing 2 leaves {1, 3} with only 1 reachable.
        let three_down = BTreeMap::from([(1, true), (2, true), (3, false)]);
        let err = check_remaining_quorum(&voters, &three_down, 2).unwrap_err();
        assert!(
            err.contains("[1, 3]") && err.contains("quorum needs 2"),
            "{err}"
        );
        // Removing the node that is down is fine: {1, 2} are both up.
        assert_eq!(check_remaining_quorum(&voters, &three_down, 3), Ok(()));
        // Five voters, two down: removing an up one leaves 4 with 2 up, short of 3.
        let five = [1, 2, 3, 4, 5];
        let two_down = BTreeMap::from([(1, true), (2, true), (3, true), (4, false), (5, false)]);
        assert!(check_remaining_quorum(&five, &two_down, 3).is_err());
        assert_eq!(check_remaining_quorum(&five, &two_down, 5), Ok(()));
        // A learner is not a voter: removing it changes no quorum.
        assert_eq!(check_remaining_quorum(&voters, &three_down, 9), Ok(()));
    }
}
