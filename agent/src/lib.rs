//! The hotdeploy agent: one per host, it drains, stages, swaps, restarts, verifies and rolls back
//! one service (DESIGN §4).

pub mod artifact;
pub(crate) mod cmd;
pub mod store;
pub use artifact::{ArtifactError, ArtifactPolicy, ArtifactSpec};
pub use store::{ReleaseEntry, ReleaseStore, StoreError};
pub mod service;
pub use service::{ChildRecord, ServiceController, ServiceError};
pub mod deploy;
pub mod failpoint;
pub mod hooks;
pub mod journal;
pub mod link;
pub mod verify;
pub use hooks::{HookEnv, HookError, HookPoint, Hooks};
pub use verify::{ProbeError, Verifier, VerifyError, VerifyReport};
pub mod rotation;
pub use rotation::{RotationControl, RotationError};
pub mod api;
#[cfg(test)]
mod fuzz_regressions;
