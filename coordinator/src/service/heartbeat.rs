//! The agents' heartbeat stream: reports go up; the slot the host holds and its rollout
//! assignment come down.
//!
//! Each `HeartbeatRequest` is answered, as before. In addition the leader sends an answer
//! unasked as soon as the host's assignment changes (it watches the applied index), so an
//! admission reaches the agent within one commit rather than at its next beat: a rollout's
//! speed depends on the next host being told the moment a slot frees. Every stream asks after
//! every applied entry, so the question must be cheap: one indexed lookup that compares the
//! state with what the stream last told (`StateMachine::assignment_is`), allocating nothing;
//! only a change builds an answer. Heartbeats are kept in
//! the leader's memory (liveness) and never logged.

use super::auth::{self, Need};
use super::convert::report_from_wire;
use super::coordinator::{held_slot, HeartbeatStream};
use super::leader::not_leader;
use super::rollout_wire::assignment_to_wire;
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
                    told = node.state().assignment(&hb.host);
                    let assignment = told.as_ref().map(assignment_to_wire);
                    host = Some(hb.host.clone());
                    yield HeartbeatResponse {
                        slot: held_slot(&node, &hb.host),
                        leader: node.status().leader,
                        assignment,
                    };
                }
                Event::Applied(false) => break,
                Event::Applied(true) => {
                    let Some(h) = host.as_deref() else { continue };
                    // Every stream asks after every entry: a lookup that allocates nothing.
                    let unchanged = node.state().assignment_is(h, told.as_ref());
                    if !unchanged {
                        if !node.status().is_leader() {
                            Err(not_leader(&node))?;
                        }
                        told = node.state().assignment(h);
                        let assignment = told.as_ref().map(assignment_to_wire);
                        yield HeartbeatResponse {
                            slot: held_slot(&node, h),
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
