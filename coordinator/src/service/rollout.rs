//! The rollout RPCs: what the thin handlers in `coordinator.rs` call.
//!
//! Operators start, read, list, watch, pause, resume and abort rollouts; agents report on
//! their steps. Each function checks its input first (names, the release, sizes) so that bad
//! input gets INVALID_ARGUMENT naming the field before anything reaches raft; the state
//! machine checks everything again on apply, where the state is known (an unknown group, a
//! batch over budget, a conflict). Writes go to the leader through [`propose`]; reads wait for
//! a ReadIndex barrier, so what they show includes every write acknowledged before them.
//!
//! `WatchRollout` is served by the leader: the rollout now, then again after every applied
//! entry that changes it (and at least every [`WATCH_KEEPALIVE`], so a client can tell a quiet
//! rollout from a dead connection), ending after a terminal state. A deposed leader ends the
//! stream with UNAVAILABLE and a hint; the client reconnects.

use super::leader::{not_leader, read_barrier, state_status, write, write_if_known};
use super::rollout_wire::{
    assignment_to_wire, host_report_from_wire, is_terminal, release_from_wire, report_from_wire,
    rollout_to_wire, summary_to_wire,
};
use crate::raft::RaftNode;
use crate::state::{check_release_spec, Answer, Command, RolloutSpec, WriteId};
use hotdeploy_common::names::{check_group, check_host, check_rollout};
use hotdeploy_common::proto::{
    AbortRolloutRequest, AbortRolloutResponse, Assignment, GetRolloutResponse,
    ListRolloutsResponse, PauseRolloutRequest, PauseRolloutResponse, ReportStepRequest,
    ResumeRolloutRequest, ResumeRolloutResponse, RolloutInfo, StartRolloutRequest,
    StartRolloutResponse, WatchRolloutResponse,
};
use std::pin::Pin;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::Status;

/// A watch resends the rollout at least this often, changed or not.
pub(crate) const WATCH_KEEPALIVE: Duration = Duration::from_secs(5);
/// The longest error text an agent may report (longer is cut).
const MAX_ERROR: usize = 1024;

pub(crate) type WatchStream =
    Pin<Box<dyn Stream<Item = Result<WatchRolloutResponse, Status>> + Send>>;

/// Every rollout write goes through here, and on to the raft core, whose version gate
/// (`raft/versions.rs`) refuses a rollout command while a member does not know command format
/// version 2: "member 3 knows command format version 1; StartRollout needs 2: upgrade it
/// first" (FAILED_PRECONDITION).
async fn propose(
    node: &RaftNode,
    write_id: Option<WriteId>,
    actor: &str,
    command: Command,
) -> Result<Answer, Status> {
    write(node, write_id, actor, command).await
}

fn invalid(what: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{what}: {e}"))
}

fn check_id(id: &str) -> Result<(), Status> {
    check_rollout(id).map_err(|e| invalid("rollout id", e))
}

/// The rollout `id` as the wire shows it, from this node's state.
fn info(node: &RaftNode, id: &str) -> Result<RolloutInfo, Status> {
    let st = node.state();
    st.rollout(id)
        .map(|r| rollout_to_wire(r, &st))
        .ok_or_else(|| Status::not_found(format!("no rollout {id:?}")))
}

fn rollout_answer(answer: Answer, call: &str) -> Result<(String, Option<String>), Status> {
    match answer {
        Answer::Rollout { id, rollback } => Ok((id, rollback)),
        other => Err(Status::internal(format!(
            "unexpected answer to {call}: {other:?}"
        ))),
    }
}

/// A rollout id for a start that gave none: `<group>-<release>-<6 hex>`, or `r-<16 hex>`
/// when that would be too long.
fn make_id(group: &str, release: &str) -> String {
    let named = format!(
        "{group}-{release}-{:06x}",
        rand::random::<u32>() & 0xff_ffff
    );
    if check_rollout(&named).is_ok() {
        named
    } else {
        format!("r-{:016x}", rand::random::<u64>())
    }
}

/// `StartRollout`.
pub(crate) async fn start(
    node: &RaftNode,
    actor: &str,
    req: StartRolloutRequest,
) -> Result<StartRolloutResponse, Status> {
    check_group(&req.group).map_err(|e| invalid("group", e))?;
    let release = req
        .release
        .as_ref()
        .map(release_from_wire)
        .ok_or_else(|| Status::invalid_argument("release is required"))?;
    check_release_spec(&release).map_err(|e| state_status(&e))?;
    let id = if req.rollout_id.is_empty() {
        make_id(&req.group, &release.id)
    } else {
        check_id(&req.rollout_id)?;
        req.rollout_id.clone()
    };
    let spec = RolloutSpec {
        id,
        group: req.group.clone(),
        release,
        batch: req.batch,
        canary: req.canary,
        pause_after_canary: req.pause_after_canary,
        max_failures: req.max_failures,
        auto_rollback: req.auto_rollback.unwrap_or(true),
        supersede: req.supersede,
        progress_deadline_ms: req.progress_deadline_ms,
    };
    let write_id = super::convert::write_id(req.write)?;
    let answer = propose(node, write_id, actor, Command::StartRollout { spec }).await?;
    let (id, _) = rollout_answer(answer, "StartRollout")?;
    Ok(StartRolloutResponse {
        rollout: Some(info(node, &id)?),
    })
}

/// `GetRollout`.
pub(crate) async fn get(node: &RaftNode, id: &str) -> Result<GetRolloutResponse, Status> {
    check_id(id)?;
    read_barrier(node).await?;
    Ok(GetRolloutResponse {
        rollout: Some(info(node, id)?),
    })
}

/// `ListRollouts`, oldest first.
pub(crate) async fn list(node: &RaftNode, group: &str) -> Result<ListRolloutsResponse, Status> {
    if !group.is_empty() {
        check_group(group).map_err(|e| invalid("group", e))?;
    }
    read_barrier(node).await?;
    let st = node.state();
    let rollouts = st
        .rollouts()
        .into_iter()
        .filter(|r| group.is_empty() || r.group == group)
        .map(summary_to_wire)
        .collect();
    Ok(ListRolloutsResponse { rollouts })
}

/// `PauseRollout`.
pub(crate) async fn pause(
    node: &RaftNode,
    actor: &str,
    req: PauseRolloutRequest,
) -> Result<PauseRolloutResponse, Status> {
    check_id(&req.id)?;
    let write_id = super::convert::write_id(req.write)?;
    let answer = propose(node, write_id, actor, Command::PauseRollout { id: req.id }).await?;
    let (id, _) = rollout_answer(answer, "PauseRollout")?;
    Ok(PauseRolloutResponse {
        rollout: Some(info(node, &id)?),
    })
}

/// `ResumeRollout`.
pub(crate) async fn resume(
    node: &RaftNode,
    actor: &str,
    req: ResumeRolloutRequest,
) -> Result<ResumeRolloutResponse, Status> {
    check_id(&req.id)?;
    let write_id = super::convert::write_id(req.write)?;
    let answer = propose(node, write_id, actor, Command::ResumeRollout { id: req.id }).await?;
    let (id, _) = rollout_answer(answer, "ResumeRollout")?;
    Ok(ResumeRolloutResponse {
        rollout: Some(info(node, &id)?),
    })
}

/// `AbortRollout`.
pub(crate) async fn abort(
    node: &RaftNode,
    actor: &str,
    req: AbortRolloutRequest,
) -> Result<AbortRolloutResponse, Status> {
    check_id(&req.id)?;
    let write_id = super::convert::write_id(req.write)?;
    let command = Command::AbortRollout {
        id: req.id,
        rollback: req.rollback,
    };
    let answer = propose(node, write_id, actor, command).await?;
    let (id, rollback) = rollout_answer(answer, "AbortRollout")?;
    Ok(AbortRolloutResponse {
        rollout: Some(info(node, &id)?),
        rollback: rollback.map(|rb| info(node, &rb)).transpose()?,
    })
}

/// `ReportStep`, from an agent: answers whether the slot of `release_token` was released
/// with the outcome.
///
/// An outcome with a token is one entry, version 5 ([`Command::version`]). While a member does
/// not know that version, the leader's gate keeps it out of the log, and the outcome is
/// proposed alone (same write id: the refused proposal never reached the log): the answer then
/// says not released, and the agent releases on its own, as before version 5.
pub(crate) async fn report_step(
    node: &RaftNode,
    actor: &str,
    req: ReportStepRequest,
) -> Result<bool, Status> {
    check_host(&req.host).map_err(|e| invalid("host", e))?;
    check_id(&req.rollout)?;
    let report = report_from_wire(req.report).ok_or_else(|| {
        Status::invalid_argument(format!(
            "report {} is not a known step report (STAGING, STAGED, SWAPPING, VERIFYING, \
             SUCCEEDED, FAILED, ROLLED_BACK, FENCED)",
            req.report
        ))
    })?;
    if req.attempt == 0 {
        return Err(Status::invalid_argument(
            "attempt must be the assignment's attempt (1 or more)",
        ));
    }
    if req.release_token != 0 && !report.is_outcome() {
        return Err(Status::invalid_argument(format!(
            "release_token: only an outcome (SUCCEEDED, FAILED, ROLLED_BACK, FENCED) releases \
             a slot, not {}",
            report.as_str()
        )));
    }
    let write_id = super::convert::write_id(req.write)?;
    let error: String = req.error.chars().take(MAX_ERROR).collect();
    let host_report = host_report_from_wire(req.host_report.as_ref());
    let step = |release: Option<u64>| Command::ReportStep {
        host: req.host.clone(),
        rollout: req.rollout.clone(),
        attempt: req.attempt,
        report,
        error: error.clone(),
        host_report: host_report.clone(),
        release,
    };
    if req.release_token != 0 {
        let both = step(Some(req.release_token));
        if let Some(answer) = write_if_known(node, write_id.clone(), actor, both).await? {
            return Ok(matches!(answer, Answer::Released { .. }));
        }
    }
    propose(node, write_id, actor, step(None)).await?;
    Ok(false)
}

/// The assignment of `host` as the wire carries it.
pub(crate) fn assignment_of(node: &RaftNode, host: &str) -> Option<Assignment> {
    node.state()
        .assignment(host)
        .map(|a| assignment_to_wire(&a))
}

/// `WatchRollout`: see the module docs.
pub(crate) async fn watch(node: &RaftNode, id: String) -> Result<WatchStream, Status> {
    check_id(&id)?;
    read_barrier(node).await?;
    info(node, &id)?;
    let node = node.clone();
    let out = async_stream::try_stream! {
        let mut applied = node.subscribe_applied();
        let mut last: Option<RolloutInfo> = None;
        let mut sent_at = tokio::time::Instant::now();
        loop {
            if !node.is_leader() {
                Err(not_leader(&node))?;
            }
            let now = info(&node, &id)?;
            if last.as_ref() != Some(&now) || sent_at.elapsed() >= WATCH_KEEPALIVE {
                let done = is_terminal(&now);
                yield WatchRolloutResponse { rollout: Some(now.clone()) };
                sent_at = tokio::time::Instant::now();
                if done {
                    break;
                }
                last = Some(now);
            }
            // Only wait inside `select!`: async-stream does not rewrite `?` in another macro.
            let stopped = tokio::select! {
                changed = applied.changed() => changed.is_err(),
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            };
            if stopped {
                Err(Status::unavailable("the raft node stopped"))?;
            }
        }
    };
    Ok(Box::pin(out))
}
