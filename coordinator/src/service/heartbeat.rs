//! The agents' heartbeat stream: reports go up; the slot the host holds and its rollout
//! assignment come down.
//!
//! Each `HeartbeatRequest` is answered, as before. In addition the leader sends an answer
//! unasked as soon as the host's assignment changes (it watches the applied index), so an
//! admission reaches the agent within one commit rather than at its next beat: a rollout's
//! speed depends on the next host being told the moment a slot frees. Heartbeats are kept in
//! the leader's memory (liveness) and never logged.

use super::auth::{self, Need};
use super::convert::report_from_wire;
use super::coordinator::{held_slot, HeartbeatStream};
use super::leader::not_leader;
use super::rollout::assignment_of;
use crate::liveness::Liveness;
use crate::raft::RaftNode;
use hotdeploy_common::names::check_host;
use hotdeploy_common::proto::{HeartbeatRequest, HeartbeatResponse};
use hotdeploy_common::tls::Role;
use std::sync::Arc;
use tonic::{Status, Streaming};

/// What woke the stream up.
enum Event {
    Beat(Result<Option<HeartbeatRequest>, Status>),
    /// An entry was applied (`false`: the node stopped).
    Applied(bool),
}

/// Serves one agent's heartbeat stream until it ends or this node stops leading.
pub(crate) fn serve(
    node: RaftNode,
    liveness: Arc<Liveness>,
    role: Option<Role>,
    mut inbound: Streaming<HeartbeatRequest>,
) -> HeartbeatStream {
    let out = async_stream::try_stream! {
        let mut applied = node.subscribe_applied();
        let mut host: Option<String> = None;
        let mut told = None;
        loop {
            // Only pick the event inside `select!`: async-stream does not rewrite `?` and
            // `yield` inside another macro.
            let event = tokio::select! {
                msg = inbound.message() => Event::Beat(msg),
                changed = applied.changed(), if host.is_some() => Event::Applied(changed.is_ok()),
            };
            match event {
                Event::Beat(msg) => {
                    let Some(hb) = msg? else { break };
                    check_host(&hb.host)
                        .map_err(|e| Status::invalid_argument(format!("host: {e}")))?;
                    auth::check(role.as_ref(), "Heartbeat", Need::Agent(&hb.host))?;
                    if !node.status().is_leader() {
                        Err(not_leader(&node))?;
                    }
                    if node.state().host(&hb.host).is_none() {
                        Err(Status::not_found(format!(
                            "host {} is not registered; register first",
                            hb.host
                        )))?;
                    }
                    liveness.observe(&hb.host, report_from_wire(hb.report.as_ref()));
                    let assignment = assignment_of(&node, &hb.host);
                    told = assignment.clone();
                    host = Some(hb.host.clone());
                    yield HeartbeatResponse {
                        slot: held_slot(&node, &hb.host),
                        leader: node.status().leader,
                        assignment,
                    };
                }
                Event::Applied(false) => break,
                Event::Applied(true) => {
                    let Some(h) = host.clone() else { continue };
                    let assignment = assignment_of(&node, &h);
                    if assignment != told {
                        if !node.status().is_leader() {
                            Err(not_leader(&node))?;
                        }
                        told = assignment.clone();
                        yield HeartbeatResponse {
                            slot: held_slot(&node, &h),
                            leader: node.status().leader,
                            assignment,
                        };
                    }
                }
            }
        }
    };
    Box::pin(out)
}
