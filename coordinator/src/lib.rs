//! The hotdeploy coordinator: a Raft-replicated, quorum-aware deploy lock.
//!
//! Layers, from the pure core outwards (the same split as toydb):
//! - [`state`]: the replicated state machine. Deterministic: no I/O, no clock, no randomness.
//!   Hosts, groups, slots of the lock, rollouts, client sessions; `apply(index, command)`.
//! - [`raft`]: the node driver. One task owns raft-rs's `RawNode` and runs the Ready loop over
//!   sled storage and a tonic peer transport.
//! - [`service`]: the gRPC services. Writes go through raft; reads use ReadIndex.
//! - [`liveness`]: leader-only heartbeat tracking; proposes reachability changes only.
//! - [`progress`]: leader-only rollout progress deadlines; proposes `CheckProgress` only.
//! - [`ctl`]: the `hotdeployctl` command line.

pub mod ctl;
pub mod liveness;
pub mod progress;
pub mod raft;
pub mod service;
pub mod state;
