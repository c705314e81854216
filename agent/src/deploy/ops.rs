//! The effects the engine orders, behind two small traits.
//!
//! The engine decides *what* happens and in which order; [`HostOps`] does it on this host
//! (release store, rotation, service, probes, hooks) and [`SlotLock`] talks to the coordinators
//! (the lock and its fencing). Tests drive the engine with fakes that record every effect, and
//! the daemon plugs in the real modules. Both traits are object-safe: methods return boxed
//! futures.

use crate::journal::{Outcome, Phase, Purpose, WriteId};
use crate::link::LinkError;
use futures::future::BoxFuture;
use hotdeploy_common::proto::Rotation;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;

/// An effect on the host that did not happen. `retryable` tells a transient failure (a network
/// fetch, a busy socket) from a deterministic one (a bad checksum, a hostile archive).
#[derive(Debug, Clone, Error)]
#[error("{message}")]
pub struct OpError {
    pub message: String,
    pub retryable: bool,
}

impl OpError {
    /// A deterministic failure.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// A transient failure.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }
}

/// The result of a host effect.
pub type OpResult<T = ()> = Result<T, OpError>;

/// Where to fetch a release from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRef {
    pub url: String,
    /// Lower-case hex.
    pub sha256: String,
    /// Base64 ed25519 signature over the raw digest.
    pub signature: Option<String>,
}

/// The lifecycle hook points (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    BeforeDrain,
    AfterDrain,
    BeforeSwap,
    AfterSwap,
    AfterVerify,
    OnRollback,
}

/// What a hook is told about the deploy.
#[derive(Debug, Clone, Default)]
pub struct HookCtx {
    pub host: String,
    /// The release being installed (or swapped back in).
    pub release: String,
    pub from: Option<String>,
    pub rollout: String,
    pub phase: String,
}

/// The rotation state as the engine needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationView {
    /// What the host reports (only `InRotation` once that was confirmed).
    pub state: Rotation,
    /// No change is under way, and the state has been confirmed with the load balancer.
    pub settled: bool,
}

/// A progress sink for long effects (staging, verify).
pub type ProgressFn<'a> = &'a (dyn Fn(String) + Send + Sync);

/// Effects on this host.
pub trait HostOps: Send + Sync + 'static {
    /// The live release id.
    fn current(&self) -> OpResult<Option<String>>;
    /// The last good release before it.
    fn previous(&self) -> OpResult<Option<String>>;
    /// Whether a release is unpacked in the store.
    fn has_release(&self, id: &str) -> OpResult<bool>;
    /// Fetches, checks and unpacks a release (idempotent).
    fn stage<'a>(
        &'a self,
        id: &'a str,
        spec: &'a ArtifactRef,
        progress: ProgressFn<'a>,
    ) -> BoxFuture<'a, OpResult>;
    /// Swaps `current` atomically.
    fn set_current(&self, id: &str) -> OpResult;
    /// Removes `current`: the host is unprovisioned again (after a failed first deploy).
    fn clear_current(&self) -> OpResult;
    /// Moves `previous`.
    fn set_previous(&self, id: &str) -> OpResult;
    /// Deletes old releases beyond `keep_releases`, never those named.
    fn gc(&self, protect: &[&str]) -> OpResult;
    /// Checks, at use, that release `id` may go live under the artifact policy (a signature
    /// that verifies when `require_signature` is on, whenever it was staged).
    fn check_release(&self, id: &str) -> OpResult;
    /// Leaves rotation, confirmed; answers how long it took.
    fn drain(&self) -> BoxFuture<'_, OpResult<Duration>>;
    /// Returns to rotation, confirmed.
    fn undrain(&self) -> BoxFuture<'_, OpResult<Duration>>;
    /// The rotation state.
    fn rotation(&self) -> RotationView;
    /// Whether the service runs: `Some` where the agent can tell (`exec`), `None` otherwise.
    fn running(&self) -> Option<bool>;
    /// Starts the service on release `id` if it does not run (`exec`; a no-op elsewhere). Not
    /// a restart: nothing that runs is stopped.
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, OpResult>;
    /// (Re)starts the service on release `id`.
    fn restart<'a>(&'a self, id: &'a str) -> BoxFuture<'a, OpResult>;
    /// Stops the service.
    fn stop(&self) -> BoxFuture<'_, OpResult>;
    /// Runs the probes until the release is judged.
    fn verify<'a>(&'a self, progress: ProgressFn<'a>) -> BoxFuture<'a, OpResult>;
    /// Runs a hook if configured.
    fn hook<'a>(&'a self, point: Hook, ctx: &'a HookCtx) -> BoxFuture<'a, OpResult>;
    /// Whether a hook is configured at `point` (one that [`HostOps::hook`] would run).
    fn has_hook(&self, point: Hook) -> bool;
}

/// A slot request.
#[derive(Debug, Clone)]
pub struct SlotRequest {
    pub purpose: Purpose,
    pub reason: String,
    pub rollout: String,
    /// A rollout's canary host: served first (the coordinators set it from the step anyway).
    pub canary: bool,
    /// How long to keep asking (no budget, no leader) before giving up.
    pub wait: Duration,
    /// Ask the coordinators to commit `draining` with the grant, so that the grant is the
    /// drain's fence: only for a holder that drains right after it, with no hook in between.
    pub fence_draining: bool,
}

/// A granted slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub token: u64,
    /// The grant's entry also committed `draining` with this token: the drain is fenced. False
    /// when not asked, or from coordinators that could not take it (an older member); the
    /// holder then fences `draining` itself.
    pub draining_fenced: bool,
}

/// What an agent tells the coordinators about its rollout step (`ReportStep`). The phases of a
/// deploy under a slot travel with the fenced `ReportPhase` instead; these are what only the
/// agent knows: staging, a first install's progress (it holds no slot), and the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepReport {
    Staging,
    Staged,
    /// A first install swapping in and starting.
    Swapping,
    /// A first install verifying.
    Verifying,
    Succeeded,
    /// Staging or the deploy failed (counts toward `max_failures`).
    Failed,
    RolledBack,
    /// The deploy stopped because its slot was revoked or a fence could not be confirmed: not
    /// a failure; the step is driven again.
    Fenced,
}

impl StepReport {
    /// The report of a deploy's outcome.
    pub fn of(outcome: Outcome) -> StepReport {
        match outcome {
            Outcome::Succeeded => StepReport::Succeeded,
            Outcome::Failed => StepReport::Failed,
            Outcome::RolledBack => StepReport::RolledBack,
            Outcome::Fenced => StepReport::Fenced,
        }
    }

    /// The wire enum.
    pub fn to_proto(self) -> hotdeploy_common::proto::StepReport {
        use hotdeploy_common::proto::StepReport as P;
        match self {
            StepReport::Staging => P::Staging,
            StepReport::Staged => P::Staged,
            StepReport::Swapping => P::Swapping,
            StepReport::Verifying => P::Verifying,
            StepReport::Succeeded => P::Succeeded,
            StepReport::Failed => P::Failed,
            StepReport::RolledBack => P::RolledBack,
            StepReport::Fenced => P::Fenced,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepReport::Staging => "staging",
            StepReport::Staged => "staged",
            StepReport::Swapping => "swapping",
            StepReport::Verifying => "verifying",
            StepReport::Succeeded => "succeeded",
            StepReport::Failed => "failed",
            StepReport::RolledBack => "rolled_back",
            StepReport::Fenced => "fenced",
        }
    }
}

impl std::fmt::Display for StepReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `ReportStep`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUpdate {
    pub rollout: String,
    pub attempt: u32,
    pub report: StepReport,
    /// Why (failed, rolled back, fenced); empty otherwise.
    pub error: String,
    /// The live release as the engine knows it, sent in the host report with an outcome so the
    /// coordinators know the host's release the moment the step ends; `None` leaves the report
    /// as the heartbeat has it.
    pub release: Option<String>,
    /// With an outcome: the token of the slot the deploy holds, released in the same log entry
    /// once the outcome is recorded; 0 releases nothing.
    pub release_token: u64,
}

/// What became of the slot named by a step report's `release_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepSlot {
    /// Released with the outcome, and unclaimed.
    Released,
    /// Not released: none was named, the host no longer held it, or the coordinators took the
    /// outcome alone (a member, or the coordinator, predates the combined entry). The caller
    /// releases it on its own.
    NotReleased,
}

/// Whose a slot the coordinators list for this host is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOwner {
    /// One of the agent's own purposes.
    Agent(Purpose),
    /// Anyone else's (an operator's `locks acquire`, whose purpose is `maintenance`): never
    /// adopted nor released by the agent.
    Other(String),
}

/// A slot the coordinators say this host holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldSlot {
    pub token: u64,
    pub owner: SlotOwner,
    /// The last phase committed with the token (`None`: none, or one the agent does not know).
    pub phase: Option<Phase>,
}

/// What the coordinators last said about this host's slot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SlotView {
    /// No answer yet since the agent started.
    #[default]
    Unknown,
    /// The host holds no slot.
    Free,
    /// The host holds this one.
    Held(HeldSlot),
}

/// The coordinators' lock, as the engine needs it.
pub trait SlotLock: Send + Sync + 'static {
    /// Takes a slot; the first attempt carries `write`. The granted token is claimed before it
    /// is returned. No acquire is sent while a release of this host's slot is in flight.
    fn acquire(&self, req: SlotRequest, write: WriteId) -> BoxFuture<'_, Result<Grant, LinkError>>;
    /// Releases a slot (a stale token counts as released) and unclaims it.
    fn release(&self, token: u64) -> BoxFuture<'_, Result<(), LinkError>>;
    /// Commits the phase about to be acted on; [`LinkError::Stale`] when fenced.
    fn report_phase(&self, token: u64, phase: Phase) -> BoxFuture<'_, Result<(), LinkError>>;
    /// Marks a token as in use (from the journal, at start), so that it is not released as
    /// unwanted.
    fn claim(&self, token: u64);
    /// Marks a token as no longer in use: if the coordinator still lists it, the engine
    /// releases it.
    fn unclaim(&self, token: u64);
    /// Claims a token nothing uses, to release or rebuild it; `false` while it is claimed or an
    /// acquire or a release is in flight.
    fn adopt(&self, token: u64) -> bool;
    /// Follows what the coordinators say about this host's slot.
    fn slot(&self) -> watch::Receiver<SlotView>;
    /// Reports on a rollout step, retrying transient failures for a bounded time (same write
    /// id). [`LinkError::Refused`]: the coordinators will never take it (a stale attempt, a
    /// step that no longer exists), so it is dropped; [`LinkError::Timeout`]: try again later.
    /// What became of `update.release_token`'s slot is the answer: a released token is
    /// unclaimed, and no acquire is sent while the report that releases it is in flight.
    fn report_step(&self, update: StepUpdate) -> BoxFuture<'_, Result<StepSlot, LinkError>>;
}
