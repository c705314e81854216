//! FleetLock on the replicated lock: what `pre-reboot` and `steady-state` propose, as a client
//! of the leader.
//!
//! - **pre-reboot**: make the id known (`RegisterLockOnly`, when the state says it would
//!   change anything), then `Acquire{purpose: "fleetlock"}`, re-entrant for the same host. A
//!   grant the state already refuses (the budget is used up, the group has one host, another
//!   purpose holds the slot) is answered at once without a log entry: Zincati asks again every
//!   few minutes while it waits, and a refusal from the leader's own state is safe to give (a
//!   grant, never: that one is always proposed and answered when applied).
//! - **steady-state**: make the id known the same way (a host reports at every boot, so the
//!   group's size counts it from its first boot on), then, after a ReadIndex barrier, free the
//!   slot it holds through FleetLock, if any (`Release` with its token). A slot of any other
//!   purpose is left alone: the answer is still 200, since no FleetLock lock is held.
//!
//! Every write carries a `(client_id, seq)`: one session per FleetLock client per coordinator
//! process (`fleetlock/<node>/<nonce>/<id>`), seqs from one counter, so a client's writes are
//! in order and a burst of many clients never crowds one session's window.
//!
//! Every proposal goes through [`Lock::propose`], and so through the raft node's version gate
//! ("propose a new kind of command only once every member knows it", `raft/versions.rs`):
//! `RegisterLockOnly` and the `fleetlock` `Acquire` need command format version 4, so while a
//! member knows less (a rolling upgrade from an older release is not finished) a request is
//! refused with `member_too_old` (503), naming the member; while a member's version is not known
//! yet, `unavailable` (503, retry).

use super::protocol::{ErrorKind, Refusal};
use crate::raft::{NodeError, RaftNode};
use crate::service::leader_hint;
use crate::state::FLEETLOCK;
use crate::state::{Answer, Command, LockOnlyPlan, Proposal, Slot, StateError, WriteId};
use hotdeploy_common::time::now_ms;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long one write may take. FleetLock answers at once; the client retries.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the steady-state read barrier may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A release that races a change of the slot is tried again this many times.
const RELEASE_TRIES: usize = 3;

/// The lock, as FleetLock uses it.
pub(super) struct Lock {
    node: RaftNode,
    /// `fleetlock/<node id>/<nonce>`: this process's sessions' prefix.
    client_prefix: String,
    seq: AtomicU64,
}

impl Lock {
    pub(super) fn new(node: RaftNode) -> Self {
        let nonce: u32 = rand::random();
        Self {
            client_prefix: format!("fleetlock/{}/{nonce:08x}", node.id()),
            node,
            seq: AtomicU64::new(0),
        }
    }

    /// `pre-reboot` for `host` in `group`: the slot held through FleetLock.
    pub(super) async fn pre_reboot(
        &self,
        host: &str,
        group: &str,
        actor: &str,
    ) -> Result<Slot, Refusal> {
        self.ensure_leader()?;
        self.make_known(host, group, actor).await?;
        if let Err(e) = self.node.state().check_grant(host, FLEETLOCK) {
            return Err(refusal(e));
        }
        let cmd = Command::Acquire {
            host: host.to_string(),
            purpose: FLEETLOCK.to_string(),
            reason: format!("FleetLock pre-reboot (group {group})"),
            rollout: String::new(),
            phase: None,
        };
        match self.propose(host, actor, cmd).await? {
            Answer::Slot(s) => Ok(s),
            other => Err(unexpected("Acquire", &other)),
        }
    }

    /// `steady-state` for `host` in `group`: the token of the FleetLock slot freed, if one was
    /// held.
    pub(super) async fn steady_state(
        &self,
        host: &str,
        group: &str,
        actor: &str,
    ) -> Result<Option<u64>, Refusal> {
        self.ensure_leader()?;
        self.make_known(host, group, actor).await?;
        for _ in 0..RELEASE_TRIES {
            self.node
                .read_barrier(READ_TIMEOUT)
                .await
                .map_err(|e| self.node_refusal(e))?;
            let Some(token) = self.node.state().fleetlock_slot(host).map(|s| s.token) else {
                return Ok(None);
            };
            let cmd = Command::Release {
                host: host.to_string(),
                token,
            };
            match self.propose(host, actor, cmd).await {
                Ok(_) => return Ok(Some(token)),
                // The slot changed between the read and the release: look again.
                Err(r) if r.kind == ErrorKind::Unavailable => continue,
                Err(r) => return Err(r),
            }
        }
        Err(Refusal::new(
            ErrorKind::Unavailable,
            format!("the slot of {host} kept changing while it was being released; retry"),
        ))
    }

    /// Proposes `RegisterLockOnly` when the state says it would change anything.
    async fn make_known(&self, host: &str, group: &str, actor: &str) -> Result<(), Refusal> {
        let plan = self.node.state().lock_only_plan(host, group);
        match plan.map_err(refusal)? {
            LockOnlyPlan::Known => Ok(()),
            LockOnlyPlan::Create | LockOnlyPlan::Move { .. } => {
                let cmd = Command::RegisterLockOnly {
                    host: host.to_string(),
                    group: group.to_string(),
                };
                self.propose(host, actor, cmd).await.map(|_| ())
            }
        }
    }

    /// Every FleetLock write goes through here (see the module docs).
    async fn propose(&self, host: &str, actor: &str, command: Command) -> Result<Answer, Refusal> {
        let write = WriteId {
            client_id: format!("{}/{host}", self.client_prefix),
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let p = Proposal::new(Some(write), now_ms(), actor, command);
        match self.node.propose(p, WRITE_TIMEOUT).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(refusal(e)),
            Err(e) => Err(self.node_refusal(e)),
        }
    }

    fn ensure_leader(&self) -> Result<(), Refusal> {
        if self.node.is_leader() {
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }

    fn not_leader(&self) -> Refusal {
        Refusal::new(
            ErrorKind::NotLeader,
            format!(
                "{}; FleetLock is served by the leader only: point the client at the leader's \
                 http_listen, or at a load balancer that checks GET /leader; retry",
                leader_hint(&self.node)
            ),
        )
    }

    fn node_refusal(&self, e: NodeError) -> Refusal {
        match e {
            NodeError::NotLeader { .. } | NodeError::LeadershipLost => self.not_leader(),
            NodeError::Stopped => Refusal::new(ErrorKind::Internal, e.to_string()),
            // The version gate: a member cannot apply the entry yet. Its message names it.
            e @ NodeError::MemberTooOld { .. } => Refusal::new(
                ErrorKind::MemberTooOld,
                format!("{e}; FleetLock waits for it"),
            ),
            e => Refusal::new(ErrorKind::Unavailable, format!("{e}")),
        }
    }
}

/// The FleetLock answer to a refusal of the state machine.
pub(super) fn refusal(e: StateError) -> Refusal {
    let kind = match &e {
        StateError::OverBudget { .. } | StateError::ZeroAvailable { .. } => {
            ErrorKind::SemaphoreFull
        }
        StateError::LoneHost { host, group } => {
            return Refusal::new(
                ErrorKind::LoneHost,
                format!(
                    "group {group:?} has a single host ({host:?}), so a reboot would leave it \
                     with none available; allow it with `hotdeployctl groups set {group} \
                     --allow-zero-available true`, or wait until more hosts of the group have \
                     reported (every host does at boot, with steady-state)"
                ),
            )
        }
        StateError::HeldForOtherPurpose { .. } => ErrorKind::HeldForOtherPurpose,
        StateError::UnknownGroup { .. } => ErrorKind::UnknownGroup,
        StateError::NotInGroup { .. } | StateError::GroupsChangeWhileHolding { .. } => {
            ErrorKind::GroupMismatch
        }
        StateError::InvalidName { kind, .. } if kind == "group" => ErrorKind::InvalidGroup,
        StateError::InvalidName { .. } => ErrorKind::InvalidClientId,
        // The host was removed, or its slot changed, between two steps: asking again helps.
        StateError::UnknownHost { .. }
        | StateError::StaleToken { .. }
        | StateError::NoSlot { .. }
        | StateError::SeqTooOld { .. } => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    };
    Refusal::new(kind, e.to_string())
}

fn unexpected(call: &str, answer: &Answer) -> Refusal {
    Refusal::new(
        ErrorKind::Internal,
        format!("unexpected answer to {call}: {answer:?}"),
    )
}
