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
//!
//! Every beat costs the leader, 10⁴ times a second with 10,000 agents, so a beat reads the
//! state once (one guard, one host lookup) for liveness and for its answer, reads the raft
//! role without copying the status, and checks the host's name and the caller's certificate
//! only when the stream first names that host (a stream that names another host later is
//! checked again).

use super::auth::{self, Need};
use super::convert::report_from_wire;
use super::convert::slot_to_wire;
use super::coordinator::HeartbeatStream;
use super::host_signals::{HostSignals, Subscription};
use super::leader::not_leader;
use super::rollout_wire::assignment_to_wire;
use crate::liveness::Liveness;
use crate::raft::RaftNode;
use crate::state::{Assignment, Command, Host, Report, StateMachine};
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
    /// What the state says now of `host` (as `st` has it), and the answer that tells it.
    fn now(st: &StateMachine, host: &Host, leader: u64) -> (Self, HeartbeatResponse) {
        let told = Self {
            assignment: st.assignment(&host.id),
            slot: host.slot,
        };
        let answer = HeartbeatResponse {
            slot: host.slot.and_then(|t| st.slot(t)).map(slot_to_wire),
            leader,
            assignment: told.assignment.as_ref().map(assignment_to_wire),
        };
        (told, answer)
    }

    /// Whether the state still says what was told: allocates nothing.
    fn still(&self, node: &RaftNode, host: &str) -> bool {
        let st = node.state();
        st.host(host).and_then(|h| h.slot) == self.slot
            && st.assignment_is(host, self.assignment.as_ref())
    }
}

/// What one beat leads to, read under one state guard.
struct Beat {
    told: Told,
    answer: HeartbeatResponse,
    /// What liveness proposes, if the report changed the host's facts.
    change: Option<Command>,
}

impl Beat {
    /// Records `host`'s beat with liveness and reads its answer: one state read and one host
    /// lookup per beat. `None`: the host is not registered.
    fn read(node: &RaftNode, liveness: &Liveness, host: &str, report: Report) -> Option<Self> {
        let leader = node.leader_id();
        let st = node.state();
        let h = st.host(host)?;
        let change = liveness.judge(h, report);
        let (told, answer) = Told::now(&st, h, leader);
        Some(Self {
            told,
            answer,
            change,
        })
    }
}

/// The answer after a change was signalled. A host that is gone (removed) holds no slot and
/// has no step, and is told so.
fn reread(node: &RaftNode, host: &str) -> (Told, HeartbeatResponse) {
    let leader = node.leader_id();
    let st = node.state();
    match st.host(host) {
        Some(h) => Told::now(&st, h, leader),
        None => (
            Told::default(),
            HeartbeatResponse {
                slot: None,
                leader,
                assignment: None,
            },
        ),
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
                    let same_host = host.as_deref() == Some(hb.host.as_str());
                    if !same_host {
                        // A stream's host is checked once, when it first (or newly) names it.
                        check_host(&hb.host)
                            .map_err(|e| Status::invalid_argument(format!("host: {e}")))?;
                        auth::check(role.as_ref(), "Heartbeat", Need::Agent(&hb.host))?;
                    }
                    if !node.is_leader() {
                        Err(not_leader(&node))?;
                    }
                    if !same_host {
                        // Subscribe before reading what to tell: nothing after it is missed.
                        sub = Some(signals.subscribe(&hb.host));
                        host = Some(hb.host.clone());
                    }
                    let report = report_from_wire(hb.report.as_ref());
                    let Some(beat) = Beat::read(&node, &liveness, &hb.host, report) else {
                        Err(Status::not_found(format!(
                            "host {} is not registered; register first",
                            hb.host
                        )))?;
                        break;
                    };
                    if let Some(change) = beat.change {
                        liveness.propose(&hb.host, change);
                    }
                    told = beat.told;
                    yield beat.answer;
                }
                Event::Changed(false) => break,
                Event::Changed(true) => {
                    let Some(h) = host.as_deref() else { continue };
                    if !told.still(&node, h) {
                        if !node.is_leader() {
                            Err(not_leader(&node))?;
                        }
                        let (now, answer) = reread(&node, h);
                        told = now;
                        yield answer;
                    }
                }
            }
        }
    };
    Box::pin(out)
}
