//! `AcquireSlot` on the leader: wait in the queue until the grant fits, then propose it.
//!
//! [`acquire`] holds the call until one of the [`AcquireOutcome`]s: granted, refused for a
//! reason waiting does not change, out of time, not (or no longer) the leader, or the node
//! failed. It proposes only when the queue says it is this caller's turn ([`Turn::Propose`]),
//! and otherwise sleeps until something changes: an entry is applied, a waiter leaves, the
//! deadline, or a periodic re-check.
//!
//! Losing a race (the budget was taken between the turn and the apply) is answered with a
//! retryable refusal, which the state machine does not cache in the client's session: the next
//! proposal of the same `(client_id, seq)`, when the turn comes again, is judged afresh. The
//! refusal's own entry moves the applied index, so the loop looks again at once, finds the
//! budget full, and waits; it never proposes in a loop.
//!
//! A request with `fence_draining` proposes the grant with the phase `draining` (command format
//! version 6): the one entry grants the slot and fences the drain. While a member of the cluster
//! does not know that version, the leader's gate refuses it, and the grant is proposed alone
//! with the same write id; the answer then says the drain is not fenced, and the agent fences it
//! itself, as before.

use super::waiters::{Turn, Waiters};
use crate::metrics::AcquireResult;
use crate::raft::{NodeError, RaftNode};
use crate::state::{Answer, Command, Proposal, Slot, StateError, WriteId};
use hotdeploy_common::time::now_ms;
use std::time::Duration;
use tokio::time::Instant;

/// How often a waiting acquire re-checks even without a state change (leadership, deadline).
const RECHECK: Duration = Duration::from_millis(500);

/// One `AcquireSlot` call, checked and authorized.
pub(crate) struct AcquireRequest {
    pub host: String,
    pub purpose: String,
    pub reason: String,
    pub rollout: String,
    pub canary: bool,
    /// Commit `draining` with the grant (see the module docs).
    pub fence_draining: bool,
    pub write: Option<WriteId>,
    /// The caller's identity, for the proposal.
    pub actor: String,
    /// How long it may wait for its turn.
    pub wait: Duration,
}

/// How an acquire ended.
#[derive(Debug)]
pub(crate) enum AcquireOutcome {
    /// `fenced`: the grant's entry also committed `draining` for the slot.
    Granted { slot: Slot, fenced: bool },
    /// Refused by the lock; for a budget refusal, the wait ran out.
    Refused(StateError),
    /// The wait ran out while waiters ahead in the same groups could be granted.
    QueueTimeout { waited: Duration },
    /// This node is not the leader (or stopped being it).
    NotLeader,
    /// Raft could not carry the proposal (leadership lost, timeout, stopped).
    NodeFailed(NodeError),
    /// The state machine answered something other than a slot.
    Unexpected(Answer),
}

impl AcquireOutcome {
    /// How the call ended, for the metrics.
    pub(crate) fn result(&self) -> AcquireResult {
        match self {
            AcquireOutcome::Granted { .. } => AcquireResult::Granted,
            AcquireOutcome::Refused(_) => AcquireResult::Refused,
            AcquireOutcome::QueueTimeout { .. } => AcquireResult::QueueTimeout,
            AcquireOutcome::NotLeader => AcquireResult::NotLeader,
            AcquireOutcome::NodeFailed(_) | AcquireOutcome::Unexpected(_) => AcquireResult::Failed,
        }
    }
}

/// Waits for the slot on the leader; see the module docs.
pub(crate) async fn acquire(
    node: &RaftNode,
    waiters: &Waiters,
    req: AcquireRequest,
    write_timeout: Duration,
) -> AcquireOutcome {
    if !node.is_leader() {
        return AcquireOutcome::NotLeader;
    }
    let deadline = Instant::now() + req.wait;
    let ticket = waiters.enqueue(&req.host, &req.purpose, req.canary);
    let mut applied = node.subscribe_applied();
    let mut queue = waiters.subscribe();
    loop {
        if !node.is_leader() {
            return AcquireOutcome::NotLeader;
        }
        let turn = {
            let st = node.state();
            waiters.turn(&ticket, &st)
        };
        match turn {
            Turn::Propose => match propose(node, &req, write_timeout).await {
                Ok((Ok(Answer::Slot(slot)), with_phase)) => {
                    let fenced = with_phase && slot.phase == DRAINING;
                    return AcquireOutcome::Granted { slot, fenced };
                }
                Ok((Ok(other), _)) => return AcquireOutcome::Unexpected(other),
                Ok((Err(e), _)) if e.is_retryable() && Instant::now() < deadline => {
                    tracing::debug!(host = %req.host, "grant lost a race: {e}");
                }
                Ok((Err(e), _)) => return AcquireOutcome::Refused(e),
                Err(e) => return AcquireOutcome::NodeFailed(e),
            },
            Turn::Refused => {
                if let Err(e) = node.state().check_grant(&req.host, &req.purpose) {
                    return AcquireOutcome::Refused(e);
                }
            }
            Turn::Wait => {}
        }
        if Instant::now() >= deadline {
            return match node.state().check_grant(&req.host, &req.purpose) {
                Err(e) => AcquireOutcome::Refused(e),
                Ok(()) => AcquireOutcome::QueueTimeout { waited: req.wait },
            };
        }
        tokio::select! {
            _ = applied.changed() => {}
            _ = queue.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// The phase a `fence_draining` grant commits: the agent's journal and `ReportPhase` name.
const DRAINING: &str = "draining";

/// Proposes the grant, with `draining` when asked and the cluster knows it (version 6), else
/// alone. Answers the state machine's response, and whether the phase went with it.
async fn propose(
    node: &RaftNode,
    req: &AcquireRequest,
    timeout: Duration,
) -> Result<(crate::state::Response, bool), NodeError> {
    let cmd = |phase: Option<&str>| Command::Acquire {
        host: req.host.clone(),
        purpose: req.purpose.clone(),
        reason: req.reason.clone(),
        rollout: req.rollout.clone(),
        phase: phase.map(str::to_owned),
    };
    let proposal = |phase| Proposal::new(req.write.clone(), now_ms(), &req.actor, cmd(phase));
    if req.fence_draining {
        match node.propose(proposal(Some(DRAINING)), timeout).await {
            Err(e) if e.is_version_gate() => {
                tracing::debug!(host = %req.host, "{e}; granting without the phase");
            }
            r => return r.map(|answer| (answer, true)),
        }
    }
    node.propose(proposal(None), timeout)
        .await
        .map(|answer| (answer, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::test_node;
    use crate::state::{Health, Report, Rotation};
    use hotdeploy_common::config::MaxUnavailable;

    async fn write(
        node: &RaftNode,
        write: Option<WriteId>,
        command: Command,
    ) -> crate::state::Response {
        node.propose(
            Proposal::new(write, now_ms(), "operator/test", command),
            Duration::from_secs(10),
        )
        .await
        .expect("the node commits")
    }

    fn register(host: &str) -> Command {
        Command::Register {
            host: host.into(),
            groups: vec!["web".into()],
            address: String::new(),
            report: Report {
                health: Health::Healthy,
                rotation: Rotation::InRotation,
                release: "v1".into(),
                phase: String::new(),
            },
        }
    }

    fn acquire_cmd(host: &str) -> Command {
        Command::Acquire {
            host: host.into(),
            purpose: "deploy".into(),
            reason: String::new(),
            rollout: String::new(),
            phase: None,
        }
    }

    /// A waiter that lost a race once (its write was refused for budget) is granted with the
    /// same write id as soon as the budget frees, and waits quietly meanwhile: a handful of log
    /// entries, not one per commit until its deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_that_lost_a_race_is_granted_without_spinning() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_node::config(dir.path(), "127.0.0.1:1");
        let node = test_node::start(&cfg).await;
        write(
            &node,
            None,
            Command::SetGroupPolicy {
                group: "web".into(),
                max_unavailable: Some(MaxUnavailable::parse("1").unwrap()),
                allow_zero_available: None,
            },
        )
        .await
        .unwrap();
        for h in ["web-1", "web-2", "web-3"] {
            write(&node, None, register(h)).await.unwrap();
        }
        let Answer::Slot(held) = write(&node, None, acquire_cmd("web-2")).await.unwrap() else {
            panic!("web-2 holds a slot");
        };
        // web-1's first attempt lost the race: refused for budget, with its write id.
        let id = WriteId {
            client_id: "agent/web-1/x".into(),
            seq: 7,
        };
        let lost = write(&node, Some(id.clone()), acquire_cmd("web-1")).await;
        assert!(
            matches!(lost, Err(StateError::OverBudget { .. })),
            "{lost:?}"
        );
        // web-2 releases: the lock now fits web-1, but a cached refusal would not.
        write(
            &node,
            None,
            Command::Release {
                host: "web-2".into(),
                token: held.token,
            },
        )
        .await
        .unwrap();
        let before = node.state().applied_index();
        let waiters = Waiters::new();
        let req = AcquireRequest {
            host: "web-1".into(),
            purpose: "deploy".into(),
            reason: "test".into(),
            rollout: String::new(),
            canary: false,
            fence_draining: false,
            write: Some(id),
            actor: "agent/web-1".into(),
            wait: Duration::from_secs(3),
        };
        let outcome = acquire(&node, &waiters, req, Duration::from_secs(10)).await;
        let entries = node.state().applied_index() - before;
        let AcquireOutcome::Granted { slot, .. } = outcome else {
            panic!("web-1 must be granted, got {outcome:?} after {entries} entries");
        };
        assert_eq!(slot.host, "web-1");
        assert!(entries <= 3, "the waiter proposed {entries} entries");

        // Now web-1 holds the budget: web-3 waits, one entry at most, and times out.
        let before = node.state().applied_index();
        let req = AcquireRequest {
            host: "web-3".into(),
            purpose: "deploy".into(),
            reason: "test".into(),
            rollout: String::new(),
            canary: false,
            fence_draining: false,
            write: Some(WriteId {
                client_id: "agent/web-3/x".into(),
                seq: 1,
            }),
            actor: "agent/web-3".into(),
            wait: Duration::from_secs(2),
        };
        let outcome = acquire(&node, &waiters, req, Duration::from_secs(10)).await;
        assert!(
            matches!(
                outcome,
                AcquireOutcome::Refused(StateError::OverBudget { .. })
            ),
            "{outcome:?}"
        );
        let entries = node.state().applied_index() - before;
        assert!(
            entries <= 1,
            "a waiter that never fits proposed {entries} entries"
        );
    }
}
