//! The `Coordinator` gRPC service: what agents and operators call.
//!
//! Each handler does the same four things in order: check the input (names, sizes), check the
//! caller's role, route to the leader, and then either propose a command through raft or read
//! the state machine after a ReadIndex barrier. `AcquireSlot` may wait on the leader until the
//! grant fits the budget or the caller's deadline passes; that wait lives in `acquire.rs`, and
//! the handler only maps its outcome to an answer.

use super::acquire::{self, AcquireOutcome, AcquireRequest};
use super::auth::{authorize, Need};
use super::convert::{group_to_wire, host_to_wire, report_from_wire, slot_to_wire, write_id};
use super::host_signals::{HostSignals, SignalStats};
use super::leader::{
    ensure_leader, node_status, not_leader, read_barrier, state_status, write, WRITE_TIMEOUT,
};
use super::members;
use super::waiters::Waiters;
use super::{heartbeat, rollout, snapshot};
use crate::liveness::Liveness;
use crate::metrics::{GrpcErrors, LockStats, Metrics};
use crate::raft::RaftNode;
use crate::state::{Answer, Command, Reachability, Rotation};
use hotdeploy_common::config::MaxUnavailable;
use hotdeploy_common::names::{check_group, check_host};
use hotdeploy_common::proto::coordinator_server::Coordinator;
use hotdeploy_common::proto::*;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// The longest an `AcquireSlot` call may wait on the leader, whatever it asks for.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Free-text fields are bounded: they are replicated and shown in tables.
const MAX_REASON: usize = 1024;
const MAX_SHORT: usize = 128;

pub struct CoordinatorService {
    node: RaftNode,
    liveness: Arc<Liveness>,
    waiters: Waiters,
    /// Refused calls on this listener, counted by the layer `serve` puts around it.
    grpc_errors: GrpcErrors,
    /// `AcquireSlot` outcomes and waits.
    lock_stats: LockStats,
    /// Wakes each heartbeat stream when its host's answer may have changed.
    signals: HostSignals,
}

impl CoordinatorService {
    pub fn new(node: RaftNode, liveness: Arc<Liveness>) -> Self {
        Self {
            liveness,
            waiters: Waiters::new(),
            grpc_errors: GrpcErrors::default(),
            lock_stats: LockStats::default(),
            signals: HostSignals::new(node.clone()),
            node,
        }
    }

    /// How many applied entries the heartbeat streams' dispatcher looked at, and how many
    /// stream wake-ups it sent (`host_signals.rs`).
    pub fn heartbeat_signals(&self) -> SignalStats {
        self.signals.stats()
    }

    /// Counts this listener's refused calls into `metrics` (`hotdeploy_grpc_errors_total`).
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.grpc_errors = metrics.grpc_errors();
        self.lock_stats = metrics.lock();
        self
    }

    /// The counter of refused calls.
    pub(super) fn grpc_errors(&self) -> GrpcErrors {
        self.grpc_errors.clone()
    }
}

fn check_name(
    kind: &str,
    value: &str,
    check: fn(&str) -> Result<(), hotdeploy_common::NameError>,
) -> Result<(), Status> {
    check(value).map_err(|e| Status::invalid_argument(format!("{kind}: {e}")))
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes; at most {max} allowed",
            value.len()
        )));
    }
    Ok(())
}

fn check_purpose(p: &str) -> Result<(), Status> {
    let ok = !p.is_empty()
        && p.len() <= 32
        && p.bytes()
            .all(|c| c.is_ascii_lowercase() || c == b'_' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "purpose {p:?} must match [a-z_-]{{1,32}}"
        )))
    }
}

/// The slot the state machine says `host` holds. One read guard: never take a second read
/// lock while holding one (a queued writer in between would deadlock std's RwLock).
pub(super) fn held_slot(node: &RaftNode, host: &str) -> Option<Slot> {
    let st = node.state();
    let token = st.host(host)?.slot?;
    st.slot(token).map(slot_to_wire)
}

pub(super) type HeartbeatStream =
    Pin<Box<dyn Stream<Item = Result<HeartbeatResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let r = req.get_ref();
        check_name("host", &r.host, check_host)?;
        if r.groups.is_empty() {
            return Err(Status::invalid_argument(format!(
                "host {} registered with no groups; every host must belong to at least one group",
                r.host
            )));
        }
        for g in &r.groups {
            check_name("group", g, check_group)?;
        }
        check_len("address", &r.address, MAX_SHORT)?;
        let actor = authorize(&req, "Register", Need::Agent(&r.host))?;
        let r = req.into_inner();
        let write_id = write_id(r.write)?;
        let report = report_from_wire(r.report.as_ref());
        let cmd = Command::Register {
            host: r.host.clone(),
            groups: r.groups,
            address: r.address,
            report: report.clone(),
        };
        write(&self.node, write_id, &actor, cmd).await?;
        self.liveness.observe(&r.host, report);
        Ok(Response::new(RegisterResponse {
            slot: held_slot(&self.node, &r.host),
            assignment: rollout::assignment_of(&self.node, &r.host),
        }))
    }

    type HeartbeatStream = HeartbeatStream;

    async fn heartbeat(
        &self,
        req: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<HeartbeatStream>, Status> {
        ensure_leader(&self.node)?;
        let role = hotdeploy_common::tls::caller_role(&req);
        Ok(Response::new(heartbeat::serve(
            self.node.clone(),
            self.liveness.clone(),
            self.signals.clone(),
            role,
            req.into_inner(),
        )))
    }

    async fn acquire_slot(
        &self,
        req: Request<AcquireSlotRequest>,
    ) -> Result<Response<AcquireSlotResponse>, Status> {
        let r = req.get_ref();
        check_name("host", &r.host, check_host)?;
        let purpose = if r.purpose.is_empty() {
            "deploy".to_string()
        } else {
            r.purpose.clone()
        };
        check_purpose(&purpose)?;
        check_len("reason", &r.reason, MAX_REASON)?;
        check_len("rollout", &r.rollout, MAX_SHORT)?;
        let actor = authorize(&req, "AcquireSlot", Need::Host(&r.host))?;
        let r = req.into_inner();
        ensure_leader(&self.node)?;
        // A rollout's gate answers at once (paused, not admitted): no budget will change it.
        let canary = {
            let st = self.node.state();
            st.check_rollout_gate(&r.host, &purpose, &r.rollout)
                .map_err(|e| state_status(&e))?;
            r.canary || st.is_canary(&r.host, &r.rollout)
        };
        let wait = Duration::from_millis(r.wait_ms).min(MAX_WAIT);
        let request = AcquireRequest {
            write: write_id(r.write)?,
            host: r.host,
            purpose,
            reason: r.reason,
            rollout: r.rollout,
            canary,
            fence_draining: r.fence_draining,
            actor,
            wait,
        };
        let host = request.host.clone();
        let purpose = request.purpose.clone();
        let started = std::time::Instant::now();
        let waiting = self.lock_stats.waiting();
        let outcome = acquire::acquire(&self.node, &self.waiters, request, WRITE_TIMEOUT).await;
        drop(waiting);
        self.lock_stats
            .answered(&purpose, outcome.result(), started.elapsed());
        match outcome {
            AcquireOutcome::Granted { slot, fenced } => Ok(Response::new(AcquireSlotResponse {
                slot: Some(slot_to_wire(&slot)),
                draining_fenced: fenced,
            })),
            AcquireOutcome::Refused(e) => Err(state_status(&e)),
            AcquireOutcome::QueueTimeout { waited } => Err(Status::resource_exhausted(format!(
                "no slot for {host} within {waited:?}: other waiters are ahead"
            ))),
            AcquireOutcome::NotLeader => Err(not_leader(&self.node)),
            AcquireOutcome::NodeFailed(e) => Err(node_status(&self.node, e)),
            AcquireOutcome::Unexpected(other) => Err(Status::internal(format!(
                "unexpected answer to Acquire: {other:?}"
            ))),
        }
    }

    async fn release_slot(
        &self,
        req: Request<ReleaseSlotRequest>,
    ) -> Result<Response<ReleaseSlotResponse>, Status> {
        check_name("host", &req.get_ref().host, check_host)?;
        let actor = authorize(&req, "ReleaseSlot", Need::Host(&req.get_ref().host))?;
        let r = req.into_inner();
        write(
            &self.node,
            write_id(r.write)?,
            &actor,
            Command::Release {
                host: r.host,
                token: r.token,
            },
        )
        .await?;
        Ok(Response::new(ReleaseSlotResponse {}))
    }

    async fn report_phase(
        &self,
        req: Request<ReportPhaseRequest>,
    ) -> Result<Response<ReportPhaseResponse>, Status> {
        check_name("host", &req.get_ref().host, check_host)?;
        check_purpose(&req.get_ref().phase)
            .map_err(|_| Status::invalid_argument("phase must match [a-z_-]{1,32}"))?;
        let actor = authorize(&req, "ReportPhase", Need::Host(&req.get_ref().host))?;
        let r = req.into_inner();
        let cmd = Command::ReportPhase {
            host: r.host,
            token: r.token,
            phase: r.phase,
        };
        write(&self.node, write_id(r.write)?, &actor, cmd).await?;
        Ok(Response::new(ReportPhaseResponse {}))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        authorize(&req, "Status", Need::Operator)?;
        let st = self.node.status();
        let members = self
            .node
            .members()
            .into_iter()
            .map(|(id, address)| {
                let role = if id == st.leader {
                    "leader"
                } else if st.learners.contains(&id) {
                    "learner"
                } else {
                    "follower"
                };
                let reachable = if st.is_leader() {
                    st.active.get(&id).copied().unwrap_or(false)
                } else {
                    id == st.id || id == st.leader
                };
                Member {
                    id,
                    address,
                    role: role.into(),
                    reachable,
                    format_version: st.versions.get(&id).and_then(|k| k.version()).unwrap_or(0),
                }
            })
            .collect();
        let state = self.node.state();
        let groups = state.group_views().iter().map(group_to_wire).collect();
        let hosts = HostCounts {
            total: state.hosts().count() as u64,
            in_rotation: state
                .hosts()
                .filter(|h| h.rotation == Rotation::InRotation)
                .count() as u64,
            unreachable: state
                .hosts()
                .filter(|h| h.reachability == Reachability::Unreachable)
                .count() as u64,
            lock_only: state.hosts().filter(|h| h.is_lock_only()).count() as u64,
        };
        Ok(Response::new(StatusResponse {
            leader: st.leader,
            term: st.term,
            members,
            groups,
            hosts: Some(hosts),
            commit_index: st.commit,
            applied_index: st.applied,
            node: st.id,
        }))
    }

    async fn list_hosts(
        &self,
        req: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        authorize(&req, "ListHosts", Need::Operator)?;
        let r = req.into_inner();
        if !r.group.is_empty() {
            check_name("group", &r.group, check_group)?;
        }
        if !r.host.is_empty() {
            check_name("host", &r.host, check_host)?;
        }
        read_barrier(&self.node).await?;
        let st = self.node.state();
        if !r.group.is_empty() && st.group_view(&r.group).is_none() {
            return Err(Status::not_found(format!("no group {:?}", r.group)));
        }
        if !r.host.is_empty() && st.host(&r.host).is_none() {
            return Err(Status::not_found(format!("no host {:?}", r.host)));
        }
        let hosts = st
            .hosts()
            .filter(|h| r.group.is_empty() || h.groups.contains(&r.group))
            .filter(|h| r.host.is_empty() || h.id == r.host)
            .map(|h| host_to_wire(h, self.liveness.last_seen_ms(&h.id)))
            .collect();
        Ok(Response::new(ListHostsResponse { hosts }))
    }

    async fn list_groups(
        &self,
        req: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        authorize(&req, "ListGroups", Need::Operator)?;
        read_barrier(&self.node).await?;
        let groups = self
            .node
            .state()
            .group_views()
            .iter()
            .map(group_to_wire)
            .collect();
        Ok(Response::new(ListGroupsResponse { groups }))
    }

    async fn set_group_policy(
        &self,
        req: Request<SetGroupPolicyRequest>,
    ) -> Result<Response<SetGroupPolicyResponse>, Status> {
        let actor = authorize(&req, "SetGroupPolicy", Need::Operator)?;
        let r = req.into_inner();
        check_name("group", &r.group, check_group)?;
        let max_unavailable = if r.max_unavailable.is_empty() {
            None
        } else {
            Some(
                MaxUnavailable::parse(&r.max_unavailable)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            )
        };
        if max_unavailable.is_none() && r.allow_zero_available.is_none() {
            return Err(Status::invalid_argument(
                "nothing to change: give max_unavailable and/or allow_zero_available",
            ));
        }
        let cmd = Command::SetGroupPolicy {
            group: r.group,
            max_unavailable,
            allow_zero_available: r.allow_zero_available,
        };
        match write(&self.node, write_id(r.write)?, &actor, cmd).await? {
            Answer::Group(g) => Ok(Response::new(SetGroupPolicyResponse {
                group: Some(group_to_wire(&g)),
            })),
            other => Err(Status::internal(format!(
                "unexpected answer to SetGroupPolicy: {other:?}"
            ))),
        }
    }

    async fn list_slots(
        &self,
        req: Request<ListSlotsRequest>,
    ) -> Result<Response<ListSlotsResponse>, Status> {
        authorize(&req, "ListSlots", Need::Operator)?;
        read_barrier(&self.node).await?;
        let slots = self
            .node
            .state()
            .slots()
            .into_iter()
            .map(slot_to_wire)
            .collect();
        Ok(Response::new(ListSlotsResponse { slots }))
    }

    async fn force_release(
        &self,
        req: Request<ForceReleaseRequest>,
    ) -> Result<Response<ForceReleaseResponse>, Status> {
        let actor = authorize(&req, "ForceRelease", Need::Operator)?;
        let r = req.into_inner();
        check_name("host", &r.host, check_host)?;
        match write(
            &self.node,
            write_id(r.write)?,
            &actor,
            Command::ForceRelease { host: r.host },
        )
        .await?
        {
            Answer::Released { token } => Ok(Response::new(ForceReleaseResponse { token })),
            _ => Ok(Response::new(ForceReleaseResponse { token: 0 })),
        }
    }

    async fn add_member(
        &self,
        req: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        let actor = authorize(&req, "AddMember", Need::Operator)?;
        let r = req.into_inner();
        members::add(&self.node, &actor, r.id, &r.address).await?;
        Ok(Response::new(AddMemberResponse {}))
    }

    async fn remove_member(
        &self,
        req: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        let actor = authorize(&req, "RemoveMember", Need::Operator)?;
        members::remove(&self.node, &actor, req.into_inner().id).await?;
        Ok(Response::new(RemoveMemberResponse {}))
    }

    async fn list_audit(
        &self,
        req: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        authorize(&req, "ListAudit", Need::Operator)?;
        read_barrier(&self.node).await?;
        let events = self
            .node
            .state()
            .audit()
            .map(|e| AuditEvent {
                index: e.index,
                at_ms: e.at_ms,
                actor: e.actor.clone(),
                action: e.action.clone(),
                detail: e.detail.clone(),
            })
            .collect();
        Ok(Response::new(ListAuditResponse { events }))
    }

    async fn save_snapshot(
        &self,
        req: Request<SaveSnapshotRequest>,
    ) -> Result<Response<SaveSnapshotResponse>, Status> {
        let actor = authorize(&req, "SaveSnapshot", Need::Operator)?;
        Ok(Response::new(snapshot::save(&self.node, &actor).await?))
    }

    async fn remove_host(
        &self,
        req: Request<RemoveHostRequest>,
    ) -> Result<Response<RemoveHostResponse>, Status> {
        let actor = authorize(&req, "RemoveHost", Need::Operator)?;
        let r = req.into_inner();
        check_name("host", &r.host, check_host)?;
        write(
            &self.node,
            write_id(r.write)?,
            &actor,
            Command::RemoveHost {
                host: r.host,
                force: r.force,
            },
        )
        .await?;
        Ok(Response::new(RemoveHostResponse {}))
    }

    // ---- rollouts: the logic is in `rollout.rs` ----

    async fn report_step(
        &self,
        req: Request<ReportStepRequest>,
    ) -> Result<Response<ReportStepResponse>, Status> {
        check_name("host", &req.get_ref().host, check_host)?;
        let actor = authorize(&req, "ReportStep", Need::Host(&req.get_ref().host))?;
        let released = rollout::report_step(&self.node, &actor, req.into_inner()).await?;
        Ok(Response::new(ReportStepResponse { released }))
    }

    async fn start_rollout(
        &self,
        req: Request<StartRolloutRequest>,
    ) -> Result<Response<StartRolloutResponse>, Status> {
        let actor = authorize(&req, "StartRollout", Need::Operator)?;
        let r = rollout::start(&self.node, &actor, req.into_inner()).await?;
        Ok(Response::new(r))
    }

    async fn get_rollout(
        &self,
        req: Request<GetRolloutRequest>,
    ) -> Result<Response<GetRolloutResponse>, Status> {
        authorize(&req, "GetRollout", Need::Operator)?;
        let r = rollout::get(&self.node, &req.get_ref().id).await?;
        Ok(Response::new(r))
    }

    async fn list_rollouts(
        &self,
        req: Request<ListRolloutsRequest>,
    ) -> Result<Response<ListRolloutsResponse>, Status> {
        authorize(&req, "ListRollouts", Need::Operator)?;
        let r = rollout::list(&self.node, &req.get_ref().group).await?;
        Ok(Response::new(r))
    }

    type WatchRolloutStream = rollout::WatchStream;

    async fn watch_rollout(
        &self,
        req: Request<WatchRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        authorize(&req, "WatchRollout", Need::Operator)?;
        let s = rollout::watch(&self.node, req.into_inner().id).await?;
        Ok(Response::new(s))
    }

    async fn pause_rollout(
        &self,
        req: Request<PauseRolloutRequest>,
    ) -> Result<Response<PauseRolloutResponse>, Status> {
        let actor = authorize(&req, "PauseRollout", Need::Operator)?;
        let r = rollout::pause(&self.node, &actor, req.into_inner()).await?;
        Ok(Response::new(r))
    }

    async fn resume_rollout(
        &self,
        req: Request<ResumeRolloutRequest>,
    ) -> Result<Response<ResumeRolloutResponse>, Status> {
        let actor = authorize(&req, "ResumeRollout", Need::Operator)?;
        let r = rollout::resume(&self.node, &actor, req.into_inner()).await?;
        Ok(Response::new(r))
    }

    async fn abort_rollout(
        &self,
        req: Request<AbortRolloutRequest>,
    ) -> Result<Response<AbortRolloutResponse>, Status> {
        let actor = authorize(&req, "AbortRollout", Need::Operator)?;
        let r = rollout::abort(&self.node, &actor, req.into_inner()).await?;
        Ok(Response::new(r))
    }
}
