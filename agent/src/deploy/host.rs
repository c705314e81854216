//! The real [`HostOps`]: the release store, artifacts, rotation, the service, verify and hooks.

use super::{ArtifactRef, Hook, HookCtx, HostOps, OpError, OpResult, ProgressFn, RotationView};
use crate::artifact::{self, ArtifactPolicy, ArtifactSpec};
use crate::hooks::{HookEnv, HookPoint, Hooks};
use crate::rotation::RotationControl;
use crate::service::ServiceController;
use crate::store::ReleaseStore;
use crate::verify::Verifier;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::sync::Arc;
use std::time::Duration;

/// This host, as the engine drives it.
pub struct RealHost {
    pub store: ReleaseStore,
    pub policy: ArtifactPolicy,
    pub rotation: Arc<RotationControl>,
    pub service: Arc<ServiceController>,
    pub verifier: Verifier,
    pub hooks: Hooks,
    pub service_name: String,
}

fn store_err(e: impl std::fmt::Display) -> OpError {
    OpError::fatal(e.to_string())
}

impl HostOps for RealHost {
    fn current(&self) -> OpResult<Option<String>> {
        self.store.current().map_err(store_err)
    }

    fn previous(&self) -> OpResult<Option<String>> {
        self.store.previous().map_err(store_err)
    }

    fn has_release(&self, id: &str) -> OpResult<bool> {
        Ok(self.store.has_release(id))
    }

    fn stage<'a>(
        &'a self,
        id: &'a str,
        spec: &'a ArtifactRef,
        progress: ProgressFn<'a>,
    ) -> BoxFuture<'a, OpResult> {
        async move {
            let spec = ArtifactSpec {
                url: spec.url.clone(),
                sha256: spec.sha256.clone(),
                signature: spec.signature.clone(),
            };
            artifact::stage(&self.store, id, &spec, &self.policy, progress)
                .await
                .map(|_| ())
                .map_err(|e| OpError {
                    retryable: e.is_retryable(),
                    message: e.to_string(),
                })
        }
        .boxed()
    }

    fn set_current(&self, id: &str) -> OpResult {
        self.store.set_current(id).map_err(store_err)
    }

    fn clear_current(&self) -> OpResult {
        // The store has no "unset": removing the symlink is atomic, and a missing `current`
        // is exactly what the store reads as "unprovisioned".
        let link = self.store.root().join("current");
        match std::fs::remove_file(&link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(OpError::fatal(format!("remove {}: {e}", link.display()))),
        }
    }

    fn set_previous(&self, id: &str) -> OpResult {
        self.store.set_previous(id).map_err(store_err)
    }

    fn gc(&self, protect: &[&str]) -> OpResult {
        self.store.gc(protect).map(|_| ()).map_err(store_err)
    }

    fn check_release(&self, id: &str) -> OpResult {
        artifact::check_staged(&self.store, id, &self.policy).map_err(|e| OpError {
            retryable: e.is_retryable(),
            message: e.to_string(),
        })
    }

    fn rotation(&self) -> RotationView {
        RotationView {
            state: self.rotation.state(),
            settled: self.rotation.settled(),
        }
    }

    fn running(&self) -> Option<bool> {
        self.service.running()
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, OpResult> {
        async move {
            self.service
                .start(id)
                .await
                .map_err(|e| OpError::fatal(e.to_string()))
        }
        .boxed()
    }

    fn drain(&self) -> BoxFuture<'_, OpResult<Duration>> {
        async move {
            self.rotation
                .drain()
                .await
                .map_err(|e| OpError::transient(e.to_string()))
        }
        .boxed()
    }

    fn undrain(&self) -> BoxFuture<'_, OpResult<Duration>> {
        async move {
            self.rotation
                .undrain()
                .await
                .map_err(|e| OpError::transient(e.to_string()))
        }
        .boxed()
    }

    fn restart<'a>(&'a self, id: &'a str) -> BoxFuture<'a, OpResult> {
        async move {
            self.service
                .restart(id)
                .await
                .map_err(|e| OpError::fatal(e.to_string()))
        }
        .boxed()
    }

    fn stop(&self) -> BoxFuture<'_, OpResult> {
        async move {
            self.service
                .stop()
                .await
                .map_err(|e| OpError::fatal(e.to_string()))
        }
        .boxed()
    }

    fn verify<'a>(&'a self, progress: ProgressFn<'a>) -> BoxFuture<'a, OpResult> {
        async move {
            self.verifier
                .verify(progress)
                .await
                .map(|report| {
                    tracing::info!(
                        rounds = report.rounds,
                        failures = report.failures,
                        "verify passed in {:?}",
                        report.total
                    );
                })
                .map_err(|e| OpError::fatal(e.to_string()))
        }
        .boxed()
    }

    fn hook<'a>(&'a self, point: Hook, ctx: &'a HookCtx) -> BoxFuture<'a, OpResult> {
        async move {
            let point = hook_point(point);
            let env = HookEnv {
                host: ctx.host.clone(),
                service: self.service_name.clone(),
                from_release: ctx.from.clone().unwrap_or_default(),
                to_release: ctx.release.clone(),
                rollout: ctx.rollout.clone(),
                phase: ctx.phase.clone(),
            };
            self.hooks
                .run(point, &env)
                .await
                .map_err(|e| OpError::fatal(e.to_string()))
        }
        .boxed()
    }

    fn has_hook(&self, point: Hook) -> bool {
        self.hooks.configured(hook_point(point))
    }
}

/// The hook runner's name for an engine hook point.
fn hook_point(point: Hook) -> HookPoint {
    match point {
        Hook::BeforeDrain => HookPoint::BeforeDrain,
        Hook::AfterDrain => HookPoint::AfterDrain,
        Hook::BeforeSwap => HookPoint::BeforeSwap,
        Hook::AfterSwap => HookPoint::AfterSwap,
        Hook::AfterVerify => HookPoint::AfterVerify,
        Hook::OnRollback => HookPoint::OnRollback,
    }
}
