//! The coordinator link: registration, the heartbeat stream, and the lock calls the engine
//! makes (only when `coordinators` is configured).
//!
//! - **Leader following.** Writes must reach the raft leader. A follower answers UNAVAILABLE
//!   with the leader's address in `x-hotdeploy-leader`; the link retries there at once. Without
//!   a hint, or on a transport error, it tries the next configured address, backing off. Every
//!   unary call has a bounded deadline.
//! - **Write ids.** Every write carries a `(client_id, seq)` from the journal. A retry after a
//!   leader change or a lost answer reuses the same pair, so the coordinator applies it once; a
//!   fresh pair is drawn only after a definitive answer (no budget within the wait).
//! - **Fenced writes** (ReportPhase, ReleaseSlot) retry every transient answer (no leader,
//!   RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, a lost connection) until [`FENCE_DEADLINE`], and
//!   tell a stale token (FAILED_PRECONDITION, NOT_FOUND) apart from the rest.
//! - **Heartbeat.** After `Register`, one bidirectional stream to the leader: a report every
//!   second and on every state change, and in every answer the slot the coordinator thinks the
//!   host holds, published as a [`SlotView`] for the engine. The link itself never decides to
//!   release a slot: the engine does (`deploy::reconcile`), once the host is confirmed back in
//!   rotation.
//! - **Assignments.** Register and heartbeat answers also carry the host's rollout step, if
//!   any; the link publishes the latest one ([`Link::subscribe_assignment`]) for the rollout
//!   driver (`crate::rollout`), and sends that driver's `ReportStep`s ([`Link::report_step`]),
//!   retried like a fenced write. A stale attempt or a step that is gone is a refusal: the
//!   report is dropped.
//! - **Claims.** Which tokens are in use, and the rule that an acquire and a release of one
//!   token never overlap, live in `claims::SlotClaims` (see there).
//!
//! Purposes are typed ([`Purpose`]) everywhere but on the wire, where the coordinator keeps
//! strings; the mapping is here and in `journal`.

mod call;
mod claims;
mod error;
mod heartbeat;
mod lock;
#[cfg(test)]
mod tests;

pub use error::LinkError;

use crate::deploy::{Grant, HeldSlot, SlotOwner, SlotRequest, SlotView, StepSlot, StepUpdate};
use crate::journal::{Journal, Phase, Purpose, WriteId};
use claims::SlotClaims;
use hotdeploy_common::config::TlsConfig;
use hotdeploy_common::proto::coordinator_client::CoordinatorClient;
use hotdeploy_common::proto::{
    AcquireSlotRequest, Assignment, HostReport, ReleaseSlotRequest, ReportPhaseRequest,
    ReportStepRequest, Slot,
};
use hotdeploy_common::tls::{ClientTls, TlsError};
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Deadline of a release or a phase report, across retries.
const FENCE_DEADLINE: Duration = Duration::from_secs(30);
/// The most one AcquireSlot call asks the leader to wait before answering.
const MAX_WAIT_PER_CALL: Duration = Duration::from_secs(20);

/// What the link needs to know about this agent.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub host_id: String,
    pub groups: Vec<String>,
    /// The agent's own gRPC address, for operators.
    pub address: String,
    pub coordinators: Vec<String>,
    pub tls: TlsConfig,
}

pub(crate) struct LinkInner {
    cfg: LinkConfig,
    /// Current client settings; reloaded on SIGHUP (see [`Link::reload_tls`]).
    tls: ClientTls,
    journal: Journal,
    report: watch::Receiver<HostReport>,
    leader: Mutex<Option<String>>,
    next: AtomicUsize,
    channels: Mutex<HashMap<String, Channel>>,
    connected: watch::Sender<bool>,
    /// Which tokens are in use, and the acquire/release exclusion (see `claims`).
    claims: SlotClaims,
    /// The slot the coordinators said this host holds, in their last answer.
    slot: watch::Sender<SlotView>,
    /// The host's rollout step, in their last answer (`None`: no step, or no answer yet).
    assignment: watch::Sender<Option<Assignment>>,
}

/// The link to the coordinators. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    inner: Arc<LinkInner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Link {
    /// A link that reports what `report` says. Nothing is sent until [`Link::start`].
    pub fn new(
        cfg: LinkConfig,
        journal: Journal,
        report: watch::Receiver<HostReport>,
    ) -> Result<Self, LinkError> {
        let tls = ClientTls::load(&cfg.tls)
            .map_err(|e| LinkError::Local(format!("coordinator TLS: {e}")))?;
        if cfg.coordinators.is_empty() {
            return Err(LinkError::Standalone);
        }
        let (connected, _) = watch::channel(false);
        let (slot, _) = watch::channel(SlotView::Unknown);
        let (assignment, _) = watch::channel(None);
        Ok(Self {
            inner: Arc::new(LinkInner {
                cfg,
                tls,
                journal,
                report,
                leader: Mutex::new(None),
                next: AtomicUsize::new(0),
                channels: Mutex::new(HashMap::new()),
                connected,
                claims: SlotClaims::default(),
                slot,
                assignment,
            }),
        })
    }

    /// Re-reads the `[tls]` files. Cached channels are dropped, so the next calls connect with
    /// the new certificate; calls and the heartbeat stream already under way finish on theirs.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        self.inner.tls.reload()?;
        lock(&self.inner.channels).clear();
        Ok(())
    }

    /// Starts registering and heartbeating, until `shutdown` is cancelled.
    pub fn start(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move { heartbeat::run(inner, shutdown).await })
    }

    /// Whether the heartbeat stream to a leader is up right now.
    pub fn connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    /// Follows [`Link::connected`].
    pub fn subscribe_connected(&self) -> watch::Receiver<bool> {
        self.inner.connected.subscribe()
    }

    /// Follows what the coordinators say about this host's slot.
    pub fn subscribe_slot(&self) -> watch::Receiver<SlotView> {
        self.inner.slot.subscribe()
    }

    /// Follows the host's rollout step, as the coordinators' last answer gave it.
    pub fn subscribe_assignment(&self) -> watch::Receiver<Option<Assignment>> {
        self.inner.assignment.subscribe()
    }

    /// Takes a slot of the lock. Retryable answers (no leader, no budget yet) are retried until
    /// `wait` has passed; the first attempt carries `write`, and a fresh id is drawn only after a
    /// definitive "not now". Nothing is sent while a release of this host's slot is in flight
    /// (see `claims`). The granted token is claimed before it is returned.
    pub async fn acquire(&self, slot: &SlotRequest, write: WriteId) -> Result<Grant, LinkError> {
        let inner = &self.inner;
        let purpose = slot.purpose;
        let start = Instant::now();
        let deadline = start + slot.wait;
        let Some(ticket) = inner.claims.begin_acquire(deadline).await else {
            return Err(LinkError::Timeout {
                waited_ms: start.elapsed().as_millis() as u64,
                last: "the release of this host's previous slot was still in flight".into(),
            });
        };
        let mut write = write;
        let mut pause = Duration::from_millis(200);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(LinkError::Timeout {
                    waited_ms: start.elapsed().as_millis() as u64,
                    last: "no slot granted within the wait".into(),
                });
            }
            let wait_ms = remaining.min(MAX_WAIT_PER_CALL).as_millis() as u64;
            let req = AcquireSlotRequest {
                write: Some(write.to_proto()),
                host: inner.cfg.host_id.clone(),
                purpose: purpose.wire().to_owned(),
                reason: slot.reason.clone(),
                rollout: slot.rollout.clone(),
                wait_ms,
                canary: slot.canary,
                fence_draining: slot.fence_draining,
            };
            let per_call = Duration::from_millis(wait_ms) + Duration::from_secs(5);
            let r = call::unary(
                inner,
                "AcquireSlot",
                deadline,
                per_call,
                call::Retry::Transient,
                |mut c| {
                    let req = req.clone();
                    async move { c.acquire_slot(req).await }
                },
            )
            .await;
            match r {
                Ok(resp) => {
                    let token = resp.slot.map(|s| s.token).unwrap_or(0);
                    if token == 0 {
                        return Err(LinkError::Refused(
                            "the coordinator granted no token".into(),
                        ));
                    }
                    ticket.granted(token);
                    // Only an answer to this request's ask counts as its fence.
                    let draining_fenced = slot.fence_draining && resp.draining_fenced;
                    tracing::info!(token, %purpose, draining_fenced, "slot granted");
                    return Ok(Grant {
                        token,
                        draining_fenced,
                    });
                }
                Err(call::CallError::Status(s)) => match error::classify(&s) {
                    error::Verdict::NotNow => {
                        tracing::info!(%purpose, "no slot yet: {}", s.message());
                        write = inner
                            .journal
                            .next_write_id()
                            .map_err(|e| LinkError::Local(e.to_string()))?;
                        tokio::time::sleep(pause.min(remaining)).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                    _ => return Err(LinkError::Refused(s.message().to_owned())),
                },
                Err(call::CallError::Timeout { waited_ms, last }) => {
                    return Err(LinkError::Timeout { waited_ms, last })
                }
            }
        }
    }

    /// Releases a slot. A token the coordinator no longer knows counts as released.
    pub async fn release(&self, token: u64) -> Result<(), LinkError> {
        release(&self.inner, token).await
    }

    /// Commits `phase` with `token` before the agent acts on it. [`LinkError::Stale`] means the
    /// agent is fenced.
    pub async fn report_phase(&self, token: u64, phase: Phase) -> Result<(), LinkError> {
        let inner = &self.inner;
        let write = next_write(inner)?;
        let req = ReportPhaseRequest {
            write: Some(write.to_proto()),
            host: inner.cfg.host_id.clone(),
            token,
            phase: phase.as_str().to_owned(),
        };
        let r = fenced_call(inner, "ReportPhase", |mut c| {
            let req = req.clone();
            async move { c.report_phase(req).await.map(|_| ()) }
        })
        .await;
        match r {
            Err(Fenced::Stale(msg)) => Err(LinkError::Stale(msg)),
            Err(Fenced::Other(e)) => Err(e),
            Ok(()) => Ok(()),
        }
    }

    /// Sends a `ReportStep`, with this host's report (its `release` replaced by
    /// `update.release` when given), retrying transient failures until [`FENCE_DEADLINE`] with
    /// one write id. A stale attempt, or a rollout or step the coordinators do not know, is
    /// [`LinkError::Refused`]: the report will never be taken and is to be dropped. With a
    /// `release_token`, the release is in flight for the claims (as in [`Link::release`]) until
    /// the answer says whether the slot went with the outcome.
    pub async fn report_step(&self, update: StepUpdate) -> Result<StepSlot, LinkError> {
        let inner = &self.inner;
        let ticket =
            (update.release_token != 0).then(|| inner.claims.begin_release(update.release_token));
        let write = next_write(inner)?;
        let mut host_report = inner.report.borrow().clone();
        if let Some(r) = &update.release {
            host_report.release = r.clone();
        }
        let req = ReportStepRequest {
            write: Some(write.to_proto()),
            host: inner.cfg.host_id.clone(),
            rollout: update.rollout.clone(),
            attempt: update.attempt,
            report: update.report.to_proto() as i32,
            error: update.error.clone(),
            host_report: Some(host_report),
            release_token: update.release_token,
        };
        let r = fenced_call(inner, "ReportStep", |mut c| {
            let req = req.clone();
            async move { c.report_step(req).await.map(|r| r.into_inner().released) }
        })
        .await;
        match r {
            Ok(released) => {
                tracing::info!(
                    rollout = %update.rollout,
                    attempt = update.attempt,
                    report = %update.report,
                    released,
                    "step reported"
                );
                match ticket {
                    Some(t) if released => {
                        t.released();
                        tracing::info!(token = update.release_token, "slot released");
                        Ok(StepSlot::Released)
                    }
                    _ => Ok(StepSlot::NotReleased),
                }
            }
            Err(Fenced::Stale(msg)) => Err(LinkError::Refused(msg)),
            Err(Fenced::Other(e)) => Err(e),
        }
    }

    /// Marks `token` as in use.
    pub fn claim(&self, token: u64) {
        self.inner.claims.claim(token);
    }

    /// Marks `token` as unused: if the coordinator still lists it, the engine releases it.
    pub fn unclaim(&self, token: u64) {
        self.inner.claims.unclaim(token);
    }

    /// Claims an unclaimed token (see `claims::SlotClaims::try_adopt`).
    pub fn adopt(&self, token: u64) -> bool {
        self.inner.claims.try_adopt(token)
    }
}

/// Releases `token`; while the call is in flight no acquire is sent (see `claims`).
async fn release(inner: &Arc<LinkInner>, token: u64) -> Result<(), LinkError> {
    let ticket = inner.claims.begin_release(token);
    let write = next_write(inner)?;
    let req = ReleaseSlotRequest {
        write: Some(write.to_proto()),
        host: inner.cfg.host_id.clone(),
        token,
    };
    let r = fenced_call(inner, "ReleaseSlot", |mut c| {
        let req = req.clone();
        async move { c.release_slot(req).await.map(|_| ()) }
    })
    .await;
    let out = match r {
        Ok(()) => Ok(()),
        Err(Fenced::Stale(msg)) => {
            tracing::info!(token, "slot already released: {msg}");
            Ok(())
        }
        Err(Fenced::Other(e)) => Err(e),
    };
    if out.is_ok() {
        ticket.released();
        tracing::info!(token, "slot released");
    }
    out
}

/// What a Register or heartbeat answer says about this host's slot.
pub(crate) fn slot_view(slot: Option<Slot>) -> SlotView {
    match slot.filter(|s| s.token != 0) {
        None => SlotView::Free,
        Some(s) => SlotView::Held(HeldSlot {
            token: s.token,
            owner: match Purpose::from_wire(&s.purpose) {
                Some(p) => SlotOwner::Agent(p),
                None => SlotOwner::Other(s.purpose),
            },
            phase: Phase::parse(&s.phase),
        }),
    }
}

/// How a token-fenced write (ReportPhase, ReleaseSlot) ended, when not in success.
enum Fenced {
    /// The coordinator says the token is not (or no longer) this host's slot.
    Stale(String),
    Other(LinkError),
}

/// The next write id from the journal (persisted before use).
fn next_write(inner: &LinkInner) -> Result<WriteId, LinkError> {
    inner
        .journal
        .next_write_id()
        .map_err(|e| LinkError::Local(e.to_string()))
}

/// Calls a token-fenced write at the leader until [`FENCE_DEADLINE`], and tells a stale token
/// (FAILED_PRECONDITION or NOT_FOUND) apart from other refusals and from timeouts.
async fn fenced_call<F, Fut, T>(
    inner: &Arc<LinkInner>,
    what: &'static str,
    f: F,
) -> Result<T, Fenced>
where
    F: Fn(CoordinatorClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + FENCE_DEADLINE;
    match call::unary(
        inner,
        what,
        deadline,
        Duration::from_secs(5),
        call::Retry::AlsoBusy,
        |c| {
            let fut = f(c);
            async move { fut.await.map(tonic::Response::new) }
        },
    )
    .await
    {
        Ok(answer) => Ok(answer),
        Err(call::CallError::Status(s))
            if matches!(
                s.code(),
                tonic::Code::FailedPrecondition | tonic::Code::NotFound
            ) =>
        {
            Err(Fenced::Stale(s.message().to_owned()))
        }
        Err(call::CallError::Status(s)) => {
            Err(Fenced::Other(LinkError::Refused(s.message().to_owned())))
        }
        Err(call::CallError::Timeout { waited_ms, last }) => {
            Err(Fenced::Other(LinkError::Timeout { waited_ms, last }))
        }
    }
}
