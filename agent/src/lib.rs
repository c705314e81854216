//! The hotdeploy agent: one per host, it drains, stages, swaps, restarts, verifies and rolls back
//! one service (DESIGN §4).
//!
//! # Layout
//!
//! ```text
//! api/        the gRPC `Agent` service (thin handlers) and `Daemon`: everything wired together
//! deploy/     the engine: deploys, rollbacks, drains, maintenance runs (a command under a slot),
//!             recovery and slot reconciliation, ordering
//!             effects through two traits, `HostOps` (this host) and `SlotLock` (the lock)
//! health/     the host's health fact, the monitor that probes between deploys, the rule for
//!             what the host reports
//! journal/    the deploy journal (sled): phases, holds, write ids, the supervised child, health,
//!             the maintenance run and its recovery rule
//! metrics/    Prometheus `/metrics` on `metrics_listen`: the deploys' step durations and
//!             outcomes, errors by kind (counted by a metered `HostOps` and `SlotLock`), and
//!             the host's state read at scrape time
//! link/       the coordinator link: register, heartbeat, acquire/release/fence, slot claims,
//!             the rollout assignment and `ReportStep`
//! rollout/    the rollout driver: follows the assignment, pre-stages, deploys when admitted
//! rotation/   in/out of rotation: agent-check and /ready front ends, HAProxy runtime API
//! service/    service control (exec supervision and re-adoption, systemd, command)
//! artifact/   fetch, verify (sha256, ed25519), unpack; the artifact policy, checked at use
//! store/      the release store: releases/, `current`, `previous`, gc
//! verify/     the probes a new release must pass (and the monitor's rounds)
//! hooks       lifecycle hooks; cmd: every bounded external command (hooks, probes, scripts)
//! failpoint   test-only crash points (feature `failpoints`)
//! watchdog    the systemd watchdog, pinged only while the work loops (health monitor,
//!             reconciliation) keep beating
//! ```
//!
//! **Start-up order** (`api::daemon`): the release store (debris removed) and the journal; the
//! service (the running one adopted, nothing started while a deploy in progress may have left
//! `current` unverified); the health fact, from the journal; the rotation front ends, in the
//! state the journal gives, asserted to HAProxy; the engine (claims the journal's slots) and the
//! report task; the recovery of an interrupted deploy, in the background, which takes the health
//! fact before the monitor exists; the health monitor; the reconciliation of the slot the
//! coordinators list; the coordinator link and the rollout driver; the metrics listener; the
//! gRPC server (with `grpc.health.v1` SERVING, and reflection). Then `READY=1`.
//!
//! **Who owns what.** One shutdown signal, a `tokio_util::sync::CancellationToken` made by the
//! daemon (`Daemon::shutdown_token`), threads through every long-lived task; `Daemon::shutdown`
//! cancels it and waits (bounded) for each. Nothing is aborted.
//!
//! | task | owns | ends on shutdown |
//! |---|---|---|
//! | gRPC server (tonic) | the `Agent` API connections | stops accepting, drains calls |
//! | rotation accept loops (2) | the agent-check and `/ready` listeners | stop accepting |
//! | metrics accept loop (with `metrics_listen`) | the `/metrics` listener | stops accepting |
//! | link heartbeat | the Register/heartbeat session; publishes the coordinators' slot view | at once |
//! | engine tasks (one per operation) | the deploy/rollback/drain/undrain/recovery under way, the journal's phase, and (from a deploy's drain to its end) the health fact | at the next await point, journal left for recovery |
//! | reconcile (engine) | releasing/rebuilding slots nobody uses; returning an unheld host to rotation | at once |
//! | rollout driver | following the assignment: pre-staging and starting a rollout's deploy (the engine owns the deploy) | at once; a deploy under way ends with the engine's tasks |
//! | health monitor | the health fact between deploys (probe rounds, the exec alive flag) | at once, even mid-round |
//! | report task | the reported health (`health::reported`: the fact, a bad `current`, a failed verify) and the host report | at once |
//! | watchdog pinger (under systemd's watchdog) | `WATCHDOG=1`, only while the work loops beat | at once |
//! | exec supervisor (one per process) | the supervised process | detaches, the service keeps running |
//!
//! The engine's busy guard lets one operation run at a time; `link::SlotClaims` keeps the
//! acquire and the release of one token from overlapping; `health::HealthFact` lets the monitor
//! and a deploy never decide the health at once.

pub mod artifact;
pub(crate) mod cmd;
pub mod store;
pub use artifact::{ArtifactError, ArtifactPolicy, ArtifactSpec};
pub use store::{ReleaseEntry, ReleaseStore, StoreError};
pub mod service;
pub use service::{ChildRecord, ServiceController, ServiceError};
pub mod deploy;
pub mod failpoint;
pub mod health;
pub mod hooks;
pub mod journal;
pub mod link;
pub mod verify;
pub mod watchdog;
pub use hooks::{HookEnv, HookError, HookPoint, Hooks};
pub use verify::{ProbeError, Verifier, VerifyError, VerifyReport};
pub mod rollout;
pub mod rotation;
pub use rotation::{RotationControl, RotationError};
pub mod api;
#[cfg(test)]
mod fuzz_regressions;
pub mod metrics;
#[cfg(test)]
mod testing;
