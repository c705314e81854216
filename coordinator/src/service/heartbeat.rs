//! The agents' heartbeat stream: reports go up; the slot the host holds and its rollout
//! assignment come down.
//!
//! Each `HeartbeatRequest` is answered, as before. In addition the leader sends an answer
//! unasked as soon as the host's assignment or slot changes, so an admission (or a revoked
//! slot) reaches the agent within one commit rather than at its next beat: a rollout's speed
//! depends on the next host being told the moment a slot frees. A stream is woken only for
//! entries that may have changed its own host's answer (`host_signals.rs`), not for every
//! applied entry; woken, it compares the state with what it last told (one indexed lookup,
//! `StateMachine::assignment_is`, and the slot's token), and only a change builds an answer.
//! Heartbeats are kept in the leader's memory (liveness) and never logged.

use super::auth::{self, Need};
use super::convert::report_from_wire;
use super::coordinator::{held_slot, HeartbeatStream};
use super::host_signals::{HostSignals, Subscription};
use super::leader::not_leader;
use super::rollout_wire::assignment_to_wire;
use crate::liveness::Liveness;
use crate::raft::RaftNode;
use crate::state::Assignment;
use hotdeploy_common::names::check_host;
use hotdeploy_common::proto::{HeartbeatRequest, HeartbeatResponse};
use hotdeploy_common::tls::Role;
use std::sync::Arc;
use tonic::{Status, Streaming};

/// What woke the stream up.
enum Event {
    Beat(Result<Option<HeartbeatRequest>, Status>),
    /// An entry that may change this host's answer was applied (`false`: the node stopped).
    Changed(bool),
}

/// What the stream last told its host.
#[derive(Default)]
struct Told {
    assignment: Option<Assignment>,
    /// The token of the slot it holds.
    slot: Option<u64>,
}

impl Told {
    /// What the state says now, read under one guard.
    fn now(node: &RaftNode, host: &str) -> Self {
        let st = node.state();
        Self {
            assignment: st.assignment(host),
            slot: st.host(host).and_then(|h| h.slot),
        }
    }

    /// Whether the state still says what was told: allocates nothing.
    fn still(&self, node: &RaftNode, host: &str) -> bool {
        let st = node.state();
        st.host(host).and_then(|h| h.slot) == self.slot
            && st.assignment_is(host, self.assignment.as_ref())
    }
}

/// Waits on the subscription, if the stream has one yet.
async fn next_change(sub: &mut Option<Subscription>) -> bool {
    match sub {
        Some(s) => s.changed().await,
        None => std::future::pending().await,
    }
}

/// Serves one agent's heartbeat stream until it ends or this node stops leading.
pub(crate) fn serve(
    node: RaftNode,
    liveness: Arc<Liveness>,
    signals: HostSignals,
    role: Option<Role>,
    mut inbound: Streaming<HeartbeatRequest>,
) -> HeartbeatStream {
    let out = async_stream::try_stream! {
        let mut host: Option<String> = None;
        let mut sub: Option<Subscription> = None;
        let mut told = Told::default();
        loop {
            // Only pick the event inside `select!`: async-stream does not rewrite `?` and
            // `yield` inside another macro.
            let event = tokio::select! {
                msg = inbound.message() => Event::Beat(msg),
                changed = next_change(&mut sub) => Event::Changed(changed),
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
                    if host.as_deref() != Some(hb.host.as_str()) {
                        // Subscribe before reading what to tell: nothing after it is missed.
                        sub = Some(signals.subscribe(&hb.host));
                        host = Some(hb.host.clone());
                    }
                    told = Told::now(&node, &hb.host);
                    yield HeartbeatResponse {
                        slot: held_slot(&node, &hb.host),
                        leader: node.status().leader,
                        assignment: told.assignment.as_ref().map(assignment_to_wire),
                    };
                }
                Event::Changed(false) => break,
                Event::Changed(true) => {
                    let Some(h) = host.as_deref() else { continue };
                    if !told.still(&node, h) {
                        if !node.status().is_leader() {
                            Err(not_leader(&node))?;
                        }
                        told = Told::now(&node, h);
                        yield HeartbeatResponse {
                            slot: held_slot(&node, h),
                            leader: node.status().leader,
                            assignment: told.assignment.as_ref().map(assignment_to_wire),
                        };
                    }
                }
            }
        }
    };
    Box::pin(out)
}
