//! The effects the engine orders, behind two small traits.
//!
//! The engine decides *what* happens and in which order; [`HostOps`] does it on this host
//! (release store, rotation, service, probes, hooks) and [`SlotLock`] talks to the coordinators
//! (the lock and its fencing). Tests drive the engine with fakes that record every effect, and
//! the daemon plugs in the real modules. Both traits are object-safe: methods return boxed
//! futures.

use crate::journal::WriteId;
use crate::link::LinkError;
use futures::future::BoxFuture;
use std::time::Duration;
use thiserror::Error;

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
    /// Leaves rotation, confirmed; answers how long it took.
    fn drain(&self) -> BoxFuture<'_, OpResult<Duration>>;
    /// Returns to rotation, confirmed.
    fn undrain(&self) -> BoxFuture<'_, OpResult<Duration>>;
    /// (Re)starts the service on release `id`.
    fn restart<'a>(&'a self, id: &'a str) -> BoxFuture<'a, OpResult>;
    /// Stops the service.
    fn stop(&self) -> BoxFuture<'_, OpResult>;
    /// Runs the probes until the release is judged.
    fn verify<'a>(&'a self, progress: ProgressFn<'a>) -> BoxFuture<'a, OpResult>;
    /// Runs a hook if configured.
    fn hook<'a>(&'a self, point: Hook, ctx: &'a HookCtx) -> BoxFuture<'a, OpResult>;
}

/// A slot request.
#[derive(Debug, Clone)]
pub struct SlotRequest {
    pub purpose: String,
    pub reason: String,
    pub rollout: String,
    /// How long to keep asking (no budget, no leader) before giving up.
    pub wait: Duration,
}

/// The coordinators' lock, as the engine needs it.
pub trait SlotLock: Send + Sync + 'static {
    /// Takes a slot; the first attempt carries `write`. The granted token is marked in use.
    fn acquire(&self, req: SlotRequest, write: WriteId) -> BoxFuture<'_, Result<u64, LinkError>>;
    /// Releases a slot (a stale token counts as released) and marks it unused.
    fn release(&self, token: u64) -> BoxFuture<'_, Result<(), LinkError>>;
    /// Commits the phase about to be acted on; [`LinkError::Stale`] when fenced.
    fn report_phase<'a>(
        &'a self,
        token: u64,
        phase: &'a str,
    ) -> BoxFuture<'a, Result<(), LinkError>>;
    /// Marks a token as in use (from the journal, at start), so that it is not released as
    /// unwanted.
    fn claim(&self, token: u64);
    /// Marks a token as no longer in use: if the coordinator still lists it, it is released.
    fn unclaim(&self, token: u64);
}
