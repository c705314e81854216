//! Progress deadlines: the one clock of rollouts (leader only).
//!
//! Admission and everything else about a rollout is derived on apply, with no timer. Only "no
//! progress for `progress_deadline`" needs time, and the state machine has no clock. So the
//! leader looks once a second for running rollouts that are past their deadline by its own
//! clock, and proposes `CheckProgress{rollout}` stamped with that clock. The machine halts the
//! rollout only if the proposal's `at_ms` is past the deadline too and the rollout still runs,
//! so a proposal made just before some progress, or repeated by a second leader, is harmless.
//! Followers do nothing; a new leader simply starts looking.

use crate::raft::RaftNode;
use crate::state::{Command, Proposal};
use hotdeploy_common::time::now_ms;
use std::time::Duration;
use tokio::sync::watch;

/// How often the leader looks.
const EVERY: Duration = Duration::from_secs(1);
/// How long one proposal may take.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs until `shutdown` turns true (or its sender goes).
pub async fn run(node: RaftNode, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
        if !node.is_leader() {
            continue;
        }
        let overdue = node.state().overdue_rollouts(now_ms());
        for rollout in overdue {
            let p = Proposal::new(
                None,
                now_ms(),
                "leader",
                Command::CheckProgress {
                    rollout: rollout.clone(),
                },
            );
            match node.propose(p, PROPOSE_TIMEOUT).await {
                Ok(Ok(_)) => tracing::warn!(%rollout, "progress deadline passed: rollout halted"),
                Ok(Err(e)) => tracing::debug!(%rollout, "progress check refused: {e}"),
                Err(e) => tracing::debug!(%rollout, "progress check not proposed: {e}"),
            }
        }
    }
}
