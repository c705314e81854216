//! The simulated host of `hd-bench rollout`: a [`HostOps`] whose effects cost fixed times.
//!
//! The rollout benchmark asks how close the real agent logic (link, rollout driver, deploy
//! engine) and a real coordinator cluster come to the physical floor of a rollout. The host
//! under them is therefore reduced to its clock: a restart takes exactly `restart` (T), a
//! verify passes after exactly `verify`, and everything else is free — staging, the swap of
//! `current`, gc, hooks, and the rotation (no HAProxy: a drain and an undrain complete at once,
//! confirmed). So whatever the rollout takes beyond ceil(N/B) × (T + verify) is the agent's and
//! the coordinators' own overhead.
//!
//! Each host records when its verify passed, so the bench can tell the last host's finish from
//! the coordinators' view of the rollout's end.
//!
//! Deliberately left out: failures (every verify passes), a service that can be seen to run
//! (`running` is `None`, as under `systemd`/`command` control), and signatures (every release
//! may go live).

use futures::future::BoxFuture;
use futures::FutureExt;
use hotdeploy_agent::deploy::{
    ArtifactRef, Hook, HookCtx, HostOps, OpResult, ProgressFn, RotationView,
};
use hotdeploy_common::proto::Rotation;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The fixed costs of one simulated host.
#[derive(Debug, Clone, Copy)]
pub struct Costs {
    /// How long a restart takes (T).
    pub restart: Duration,
    /// How long a verify takes before it passes.
    pub verify: Duration,
}

#[derive(Debug)]
struct State {
    current: Option<String>,
    previous: Option<String>,
    staged: Vec<String>,
    rotation: Rotation,
    verified_at: Option<Instant>,
}

/// One simulated host.
#[derive(Debug, Clone)]
pub struct SimHost {
    costs: Costs,
    state: Arc<Mutex<State>>,
}

impl SimHost {
    /// A host running release `current`, in rotation.
    pub fn new(current: &str, costs: Costs) -> SimHost {
        SimHost {
            costs,
            state: Arc::new(Mutex::new(State {
                current: Some(current.into()),
                previous: None,
                staged: vec![current.into()],
                rotation: Rotation::InRotation,
                verified_at: None,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the last verify passed.
    pub fn verified_at(&self) -> Option<Instant> {
        self.state().verified_at
    }

    /// The live release.
    pub fn live(&self) -> Option<String> {
        self.state().current.clone()
    }
}

impl HostOps for SimHost {
    fn current(&self) -> OpResult<Option<String>> {
        Ok(self.state().current.clone())
    }

    fn previous(&self) -> OpResult<Option<String>> {
        Ok(self.state().previous.clone())
    }

    fn has_release(&self, id: &str) -> OpResult<bool> {
        Ok(self.state().staged.iter().any(|s| s == id))
    }

    fn stage<'a>(
        &'a self,
        id: &'a str,
        _spec: &'a ArtifactRef,
        _progress: ProgressFn<'a>,
    ) -> BoxFuture<'a, OpResult> {
        let mut s = self.state();
        if !s.staged.iter().any(|x| x == id) {
            s.staged.push(id.into());
        }
        futures::future::ready(Ok(())).boxed()
    }

    fn set_current(&self, id: &str) -> OpResult {
        self.state().current = Some(id.into());
        Ok(())
    }

    fn clear_current(&self) -> OpResult {
        self.state().current = None;
        Ok(())
    }

    fn set_previous(&self, id: &str) -> OpResult {
        self.state().previous = Some(id.into());
        Ok(())
    }

    fn gc(&self, _protect: &[&str]) -> OpResult {
        Ok(())
    }

    fn check_release(&self, _id: &str) -> OpResult {
        Ok(())
    }

    fn drain(&self) -> BoxFuture<'_, OpResult<Duration>> {
        self.state().rotation = Rotation::OutOfRotation;
        futures::future::ready(Ok(Duration::ZERO)).boxed()
    }

    fn undrain(&self) -> BoxFuture<'_, OpResult<Duration>> {
        self.state().rotation = Rotation::InRotation;
        futures::future::ready(Ok(Duration::ZERO)).boxed()
    }

    fn rotation(&self) -> RotationView {
        RotationView {
            state: self.state().rotation,
            settled: true,
        }
    }

    fn running(&self) -> Option<bool> {
        None
    }

    fn start<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, OpResult> {
        futures::future::ready(Ok(())).boxed()
    }

    fn restart<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, OpResult> {
        let t = self.costs.restart;
        async move {
            tokio::time::sleep(t).await;
            Ok(())
        }
        .boxed()
    }

    fn stop(&self) -> BoxFuture<'_, OpResult> {
        futures::future::ready(Ok(())).boxed()
    }

    fn verify<'a>(&'a self, _progress: ProgressFn<'a>) -> BoxFuture<'a, OpResult> {
        let t = self.costs.verify;
        async move {
            tokio::time::sleep(t).await;
            self.state().verified_at = Some(Instant::now());
            Ok(())
        }
        .boxed()
    }

    fn hook<'a>(&'a self, _point: Hook, _ctx: &'a HookCtx) -> BoxFuture<'a, OpResult> {
        futures::future::ready(Ok(())).boxed()
    }

    fn has_hook(&self, _point: Hook) -> bool {
        false
    }
}
