//! The hotdeploy coordinator: a Raft-replicated, quorum-aware deploy lock.
//!
//! # Layout
//!
//! Layers, from the pure core outwards (the same split as toydb):
//! - [`state`]: the replicated state machine. Deterministic: no I/O, no clock, no randomness.
//!   Hosts, groups, slots of the lock, rollouts, client sessions; `apply(index, command)`.
//! - [`raft`]: the node driver. One thread owns raft-rs's `RawNode` and runs the Ready loop over
//!   sled storage and a tonic peer transport; a deterministic in-process simulator drives the
//!   same loop in tests. It reaches the state machine only through [`raft::Replicated`].
//! - [`service`]: the gRPC services. Writes go through raft; reads use ReadIndex.
//! - [`liveness`]: leader-only heartbeat tracking; proposes reachability changes only.
//! - [`http`]: the HTTP listener on `http_listen`: `/metrics`, FleetLock, `/leader`.
//! - [`metrics`]: the Prometheus metrics, read from the state at scrape time or fed from the
//!   service and raft edges.
//! - [`fleetlock`]: the FleetLock protocol (Zincati's reboot lock) on the replicated lock.
//! - [`supervisor`]: READY=1, the systemd watchdog and `grpc.health.v1`, from the raft loop's
//!   own progress.
//! - [`progress`]: leader-only rollout progress deadlines; proposes `CheckProgress` only.
//! - [`tls_reload`]: SIGHUP re-reads the `[tls]` files, for new connections in and out.
//! - [`recovery`]: disaster recovery: the snapshot file of `hotdeployctl snapshot save`, and
//!   `hotdeploy-coordinator restore`.
//! - [`ctl`]: the `hotdeployctl` command line.

pub mod ctl;
pub mod fleetlock;
pub mod http;
pub mod liveness;
pub mod metrics;
pub mod progress;
pub mod raft;
pub mod recovery;
pub mod service;
pub mod state;
pub mod supervisor;
pub mod tls_reload;
