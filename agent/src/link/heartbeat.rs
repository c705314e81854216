//! Register, then one heartbeat stream to the leader, for as long as the agent runs.

use super::error::{classify, Verdict};
use super::{call, lock, LinkInner};
use hotdeploy_common::proto::coordinator_client::CoordinatorClient;
use hotdeploy_common::proto::{HeartbeatRequest, RegisterRequest, Slot};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

/// How often a report goes up when nothing changes.
const BEAT: Duration = Duration::from_secs(1);
/// A stream with no answer for this long is dead.
const SILENCE: Duration = Duration::from_secs(5);

/// Runs sessions forever, backing off between them.
pub(crate) async fn run(inner: Arc<LinkInner>) {
    let mut pause = Duration::from_millis(200);
    loop {
        let started = Instant::now();
        let err = session(&inner).await;
        inner.connected.send_replace(false);
        if started.elapsed() > Duration::from_secs(10) {
            pause = Duration::from_millis(200);
        }
        match err {
            SessionEnd::Refused(m) => {
                tracing::error!("the coordinators refuse this agent: {m}");
                pause = Duration::from_secs(10);
            }
            SessionEnd::Lost(m) => tracing::warn!("coordinator link lost: {m}"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

enum SessionEnd {
    /// Registration refused deterministically (unknown group, permission).
    Refused(String),
    /// Anything retryable.
    Lost(String),
}

fn report(inner: &LinkInner) -> HeartbeatRequest {
    HeartbeatRequest {
        host: inner.cfg.host_id.clone(),
        report: Some(inner.report.borrow().clone()),
    }
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
        |mut c| {
            let req = req.clone();
            async move { c.register(req).await }
        },
    )
    .await;
    match r {
        Ok(resp) => reconcile(inner, resp.slot),
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
    let (tx, rx) = mpsc::channel(16);
    if tx.send(report(inner)).await.is_err() {
        return SessionEnd::Lost("heartbeat channel closed".into());
    }
    let mut client = CoordinatorClient::new(ch);
    let opened = tokio::time::timeout(SILENCE, client.heartbeat(ReceiverStream::new(rx))).await;
    let mut stream = match opened {
        Err(_) => return SessionEnd::Lost(format!("heartbeat to {addr}: no answer")),
        Ok(Err(s)) => return lost(inner, &addr, s),
        Ok(Ok(resp)) => resp.into_inner(),
    };
    let mut tick = tokio::time::interval(BEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut changes = inner.report.clone();
    let mut last_answer = Instant::now();
    let mut watching = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if last_answer.elapsed() > SILENCE {
                    return SessionEnd::Lost(format!("heartbeat to {addr}: silent for {} s", SILENCE.as_secs()));
                }
                if tx.send(report(inner)).await.is_err() {
                    return SessionEnd::Lost("heartbeat stream closed".into());
                }
            }
            changed = changes.changed(), if watching => {
                if changed.is_err() {
                    // Nobody updates the report any more: beat on the timer alone.
                    watching = false;
                    continue;
                }
                changes.borrow_and_update();
                if tx.send(report(inner)).await.is_err() {
                    return SessionEnd::Lost("heartbeat stream closed".into());
                }
            }
            msg = stream.message() => match msg {
                Ok(Some(resp)) => {
                    last_answer = Instant::now();
                    inner.connected.send_replace(true);
                    reconcile(inner, resp.slot);
                }
                Ok(None) => return SessionEnd::Lost(format!("heartbeat to {addr}: stream ended")),
                Err(s) => return lost(inner, &addr, s),
            }
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

/// The purpose of slots that operators take for maintenance; never released by the agent.
const OPERATOR_PURPOSE: &str = "maintenance";

/// Releases the slot the coordinator says this host holds, unless something here uses it.
fn reconcile(inner: &Arc<LinkInner>, slot: Option<Slot>) {
    let Some(slot) = slot.filter(|s| s.token != 0) else {
        return;
    };
    let token = slot.token;
    if inner.acquiring.load(Ordering::SeqCst) > 0 || lock(&inner.claimed).contains(&token) {
        return;
    }
    // A maintenance slot is an operator's (`hotdeployctl locks acquire`): the host is being
    // worked on by someone else, and only they know when it is done. The agent's own
    // maintenance holds are claimed above from its journal.
    if slot.purpose == OPERATOR_PURPOSE {
        return;
    }
    if !lock(&inner.releasing).insert(token) {
        return;
    }
    tracing::warn!(
        token,
        purpose = %slot.purpose,
        "the coordinator says this host holds a slot it has no use for; releasing it"
    );
    let inner = inner.clone();
    tokio::spawn(async move {
        if let Err(e) = super::release(&inner, token).await {
            tracing::warn!(token, error = %e, "releasing an unwanted slot failed");
        }
        lock(&inner.releasing).remove(&token);
    });
}
