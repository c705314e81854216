//! Error counting at the edge: a [`HostOps`] and a [`SlotLock`] that pass every call through to
//! the real one and count each failure by [`ErrorKind`].
//!
//! Counting where the effect fails, rather than where the engine decides what to do about it,
//! catches every caller (deploys, rollbacks, operator drains, recovery, pre-staging,
//! reconciliation) with no change to the engine's flow, and counts each failed attempt: a
//! fence retried three times counts three `fence_unconfirmed`. The decorators decide nothing
//! and change no result.

use super::deploy::{DeployStats, ErrorKind, Errors};
use crate::deploy::{
    ArtifactRef, Grant, Hook, HookCtx, HostOps, OpResult, ProgressFn, RotationView, SlotLock,
    SlotRequest, SlotView, StepSlot, StepUpdate,
};
use crate::journal::{Phase, WriteId};
use crate::link::LinkError;
use futures::future::BoxFuture;
use futures::FutureExt;
use hotdeploy_common::time::now_ms;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Counts `kind` if `r` is an error; passes `r` on.
fn counted<T, E>(errors: &Errors, kind: ErrorKind, r: Result<T, E>) -> Result<T, E> {
    if r.is_err() {
        errors.count(kind);
    }
    r
}

/// A [`HostOps`] whose failures are counted.
pub struct MeteredHost<H> {
    inner: H,
    errors: Errors,
}

impl<H: HostOps> MeteredHost<H> {
    pub fn new(inner: H, errors: Errors) -> Self {
        Self { inner, errors }
    }
}

impl<H: HostOps> HostOps for MeteredHost<H> {
    fn current(&self) -> OpResult<Option<String>> {
        counted(&self.errors, ErrorKind::Store, self.inner.current())
    }
    fn previous(&self) -> OpResult<Option<String>> {
        counted(&self.errors, ErrorKind::Store, self.inner.previous())
    }
    fn has_release(&self, id: &str) -> OpResult<bool> {
        counted(&self.errors, ErrorKind::Store, self.inner.has_release(id))
    }
    fn stage<'a>(
        &'a self,
        id: &'a str,
        spec: &'a ArtifactRef,
        progress: ProgressFn<'a>,
    ) -> BoxFuture<'a, OpResult> {
        self.inner
            .stage(id, spec, progress)
            .map(|r| counted(&self.errors, ErrorKind::Stage, r))
            .boxed()
    }
    fn set_current(&self, id: &str) -> OpResult {
        counted(&self.errors, ErrorKind::Store, self.inner.set_current(id))
    }
    fn clear_current(&self) -> OpResult {
        counted(&self.errors, ErrorKind::Store, self.inner.clear_current())
    }
    fn set_previous(&self, id: &str) -> OpResult {
        counted(&self.errors, ErrorKind::Store, self.inner.set_previous(id))
    }
    fn gc(&self, protect: &[&str]) -> OpResult {
        counted(&self.errors, ErrorKind::Store, self.inner.gc(protect))
    }
    fn check_release(&self, id: &str) -> OpResult {
        counted(
            &self.errors,
            ErrorKind::Policy,
            self.inner.check_release(id),
        )
    }
    fn drain(&self) -> BoxFuture<'_, OpResult<Duration>> {
        self.inner
            .drain()
            .map(|r| counted(&self.errors, ErrorKind::Drain, r))
            .boxed()
    }
    fn undrain(&self) -> BoxFuture<'_, OpResult<Duration>> {
        self.inner
            .undrain()
            .map(|r| counted(&self.errors, ErrorKind::Undrain, r))
            .boxed()
    }
    fn rotation(&self) -> RotationView {
        self.inner.rotation()
    }
    fn running(&self) -> Option<bool> {
        self.inner.running()
    }
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, OpResult> {
        self.inner
            .start(id)
            .map(|r| counted(&self.errors, ErrorKind::Service, r))
            .boxed()
    }
    fn restart<'a>(&'a self, id: &'a str) -> BoxFuture<'a, OpResult> {
        self.inner
            .restart(id)
            .map(|r| counted(&self.errors, ErrorKind::Service, r))
            .boxed()
    }
    fn stop(&self) -> BoxFuture<'_, OpResult> {
        self.inner
            .stop()
            .map(|r| counted(&self.errors, ErrorKind::Service, r))
            .boxed()
    }
    fn verify<'a>(&'a self, progress: ProgressFn<'a>) -> BoxFuture<'a, OpResult> {
        self.inner
            .verify(progress)
            .map(|r| counted(&self.errors, ErrorKind::Verify, r))
            .boxed()
    }
    fn hook<'a>(&'a self, point: Hook, ctx: &'a HookCtx) -> BoxFuture<'a, OpResult> {
        self.inner
            .hook(point, ctx)
            .map(|r| counted(&self.errors, ErrorKind::Hook, r))
            .boxed()
    }
    fn has_hook(&self, point: Hook) -> bool {
        self.inner.has_hook(point)
    }
}

/// A [`SlotLock`] whose failures are counted, and whose grants are timed (for the slot's age).
pub struct MeteredLock {
    inner: Arc<dyn SlotLock>,
    stats: DeployStats,
}

impl MeteredLock {
    pub fn new(inner: Arc<dyn SlotLock>, stats: DeployStats) -> Self {
        Self { inner, stats }
    }
}

impl SlotLock for MeteredLock {
    fn acquire(&self, req: SlotRequest, write: WriteId) -> BoxFuture<'_, Result<Grant, LinkError>> {
        self.inner
            .acquire(req, write)
            .map(|r| {
                if let Ok(grant) = &r {
                    self.stats.granted(grant.token, now_ms());
                }
                counted(&self.stats.errors, ErrorKind::Slot, r)
            })
            .boxed()
    }
    fn release(&self, token: u64) -> BoxFuture<'_, Result<(), LinkError>> {
        self.inner
            .release(token)
            .map(|r| counted(&self.stats.errors, ErrorKind::SlotRelease, r))
            .boxed()
    }
    fn report_phase(&self, token: u64, phase: Phase) -> BoxFuture<'_, Result<(), LinkError>> {
        self.inner
            .report_phase(token, phase)
            .map(|r| {
                match &r {
                    Err(LinkError::Stale(_)) => self.stats.errors.count(ErrorKind::Fenced),
                    Err(_) => self.stats.errors.count(ErrorKind::FenceUnconfirmed),
                    Ok(()) => {}
                }
                r
            })
            .boxed()
    }
    fn claim(&self, token: u64) {
        self.inner.claim(token)
    }
    fn unclaim(&self, token: u64) {
        self.inner.unclaim(token)
    }
    fn adopt(&self, token: u64) -> bool {
        self.inner.adopt(token)
    }
    fn slot(&self) -> watch::Receiver<SlotView> {
        self.inner.slot()
    }
    fn report_step(&self, update: StepUpdate) -> BoxFuture<'_, Result<StepSlot, LinkError>> {
        self.inner
            .report_step(update)
            .map(|r| counted(&self.stats.errors, ErrorKind::Report, r))
            .boxed()
    }
}
