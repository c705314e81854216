//! Register, then one heartbeat stream to the leader, until the agent shuts down.
//!
//! Reports go up on a timer and on every change; answers come down with the slot the
//! coordinator thinks the host holds, which is published for the engine (`LinkInner::slot`),
//! and the host's rollout step, published for the rollout driver (`LinkInner::assignment`).
//! The loop never waits on its own sends: a report that finds the outgoing queue full is
//! dropped (the next one carries the latest state anyway), so a stream whose sending side
//! stalls still has its answers read, and the silence check still runs.

use super::error::{classify, Verdict};
use super::{call, slot_view, LinkInner};
use futures::{Stream, StreamExt};
use hotdeploy_common::proto::coordinator_client::CoordinatorClient;
use hotdeploy_common::proto::{
    Assignment, HeartbeatRequest, HeartbeatResponse, RegisterRequest, Slot,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// How often a report goes up when nothing changes.
const BEAT: Duration = Duration::from_secs(1);
/// A stream with no answer for this long is dead.
const SILENCE: Duration = Duration::from_secs(5);
/// Reports queued for the stream; more are dropped, not waited for.
const QUEUE: usize = 16;

/// Runs sessions until `shutdown`, backing off between them.
pub(crate) async fn run(inner: Arc<LinkInner>, shutdown: CancellationToken) {
    let mut pause = Duration::from_millis(200);
    loop {
        let started = Instant::now();
        let end = tokio::select! {
            end = session(&inner) => end,
            _ = shutdown.cancelled() => SessionEnd::Shutdown,
        };
        inner.connected.send_replace(false);
        if started.elapsed() > Duration::from_secs(10) {
            pause = Duration::from_millis(200);
        }
        match end {
            SessionEnd::Refused(m) => {
                tracing::error!("the coordinators refuse this agent: {m}");
                pause = Duration::from_secs(10);
            }
            SessionEnd::Lost(m) => tracing::warn!("coordinator link lost: {m}"),
            SessionEnd::Shutdown => {
                tracing::info!("coordinator link stopped");
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

pub(crate) enum SessionEnd {
    /// Registration refused deterministically (unknown group, permission).
    Refused(String),
    /// Anything retryable.
    Lost(String),
    /// The agent is shutting down.
    Shutdown,
}

fn report(inner: &LinkInner) -> HeartbeatRequest {
    HeartbeatRequest {
        host: inner.cfg.host_id.clone(),
        report: Some(inner.report.borrow().clone()),
    }
}

/// Publishes what an answer says about this host's slot and its rollout step.
fn publish(inner: &LinkInner, slot: Option<Slot>, assignment: Option<Assignment>) {
    let view = slot_view(slot);
    inner.slot.send_if_modified(|v| {
        let changed = *v != view;
        *v = view;
        changed
    });
    inner.assignment.send_if_modified(|a| {
        let changed = *a != assignment;
        *a = assignment;
        changed
    });
}

async fn session(inner: &Arc<LinkInner>) -> SessionEnd {
    let write = match inner.journal.next_write_id() {
        Ok(w) => w,
        Err(e) => return SessionEnd::Lost(e.to_string()),
    };
    let req = RegisterRequest {
        write: Some(write.to_proto()),
        host: inner.cfg.host_id.clone(),
        groups: inner.cfg.groups.clone(),
        report: Some(inner.report.borrow().clone()),
        address: inner.cfg.address.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let r = call::unary(
        inner,
        "Register",
        deadline,
        Duration::from_secs(5),
        call::Retry::Transient,
        |mut c| {
            let req = req.clone();
            async move { c.register(req).await }
        },
    )
    .await;
    match r {
        Ok(resp) => publish(inner, resp.slot, resp.assignment),
        Err(call::CallError::Status(s)) => {
            return SessionEnd::Refused(format!("{:?}: {}", s.code(), s.message()))
        }
        Err(call::CallError::Timeout { last, .. }) => return SessionEnd::Lost(last),
    }
    let addr = inner.target();
    tracing::info!(leader = %addr, "registered with the coordinators");
    let ch = match inner.channel(&addr) {
        Ok(c) => c,
        Err(e) => return SessionEnd::Lost(e),
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    if tx.try_send(report(inner)).is_err() {
        return SessionEnd::Lost("heartbeat channel closed".into());
    }
    let mut client = CoordinatorClient::new(ch);
    let opened = tokio::time::timeout(SILENCE, client.heartbeat(ReceiverStream::new(rx))).await;
    let stream = match opened {
        Err(_) => return SessionEnd::Lost(format!("heartbeat to {addr}: no answer")),
        Ok(Err(s)) => return lost(inner, &addr, s),
        Ok(Ok(resp)) => resp.into_inner(),
    };
    beat(inner, &addr, &tx, stream).await
}

/// The heartbeat loop of one session: reports up on `tx`, answers from `answers`.
pub(crate) async fn beat<S>(
    inner: &LinkInner,
    addr: &str,
    tx: &mpsc::Sender<HeartbeatRequest>,
    mut answers: S,
) -> SessionEnd
where
    S: Stream<Item = Result<HeartbeatResponse, tonic::Status>> + Unpin,
{
    let mut tick = tokio::time::interval(BEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut changes = inner.report.clone();
    let mut last_answer = Instant::now();
    let mut watching = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if last_answer.elapsed() > SILENCE {
                    return SessionEnd::Lost(format!(
                        "heartbeat to {addr}: silent for {} s",
                        SILENCE.as_secs()
                    ));
                }
                if let Some(end) = send(tx, report(inner)) {
                    return end;
                }
            }
            changed = changes.changed(), if watching => {
                if changed.is_err() {
                    // Nobody updates the report any more: beat on the timer alone.
                    watching = false;
                    continue;
                }
                changes.borrow_and_update();
                if let Some(end) = send(tx, report(inner)) {
                    return end;
                }
            }
            msg = answers.next() => match msg {
                Some(Ok(resp)) => {
                    last_answer = Instant::now();
                    inner.connected.send_replace(true);
                    publish(inner, resp.slot, resp.assignment);
                }
                None => return SessionEnd::Lost(format!("heartbeat to {addr}: stream ended")),
                Some(Err(s)) => return lost(inner, addr, s),
            }
        }
    }
}

/// Queues a report without waiting: a full queue drops it (the next one carries the latest
/// state); a closed one ends the session.
fn send(tx: &mpsc::Sender<HeartbeatRequest>, req: HeartbeatRequest) -> Option<SessionEnd> {
    match tx.try_send(req) {
        Ok(()) => None,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::debug!("heartbeat queue full; this report is dropped");
            None
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            Some(SessionEnd::Lost("heartbeat stream closed".into()))
        }
    }
}

fn lost(inner: &LinkInner, addr: &str, s: tonic::Status) -> SessionEnd {
    match classify(&s) {
        Verdict::Redirect(Some(hint)) if hint != addr => inner.set_leader(Some(hint)),
        _ => inner.set_leader(None),
    }
    SessionEnd::Lost(format!(
        "heartbeat to {addr}: {:?}: {}",
        s.code(),
        s.message()
    ))
}
