//! The agent benchmarks behind `hd-agent-bench` (DESIGN §4 and §9: benchmarks are not timed
//! tests; each has a command and a results table).
//!
//! Three questions are asked of a real release-built `hotdeploy-agent` on loopback:
//!
//! - [`idle`]: how much memory and CPU a standalone agent supervising the sample app uses while
//!   nothing happens (target: RSS ≤ 15 MB).
//! - [`window`]: how long one deploy keeps the host out of rotation behind a real HAProxy, per
//!   phase (drain, swap, restart, verify, undrain), and how much of that is the agent's own
//!   overhead once the unavoidable waits are taken out (target: ≤ 100 ms). Standalone agents
//!   by default; with `--coordinators 3`, [`fleet`] runs the same question as a rollout host
//!   sees it: a real 3-node cluster, one `StartRollout` per cycle, the slot's fences inside.
//! - [`staging`]: how long staging a ~200 MB artifact (fetch from `file://`, sha256, unpack,
//!   commit) takes through the agent, against `sha256sum` + `tar -x` of the same file
//!   (target: ≤ 1.2×).
//!
//! The pieces shared by all three:
//!
//! - [`agent_log`] reads the agent's own log back as timed transitions (for rollout-driven
//!   deploys, which have no Deploy stream).
//! - [`client`] runs a Deploy over gRPC and keeps every progress message, so the per-phase
//!   times come from the agent itself (`at_ms` of each phase entry and note).
//! - [`procfs`] reads RSS and CPU time from `/proc/<pid>/{status,stat}`.
//! - [`stats`] holds percentiles and the small formatting helpers.
//! - [`guard`] kills every process the bench started when it is interrupted.
//!
//! Every process is owned by a harness guard ([`crate::agents::AgentProc`],
//! [`crate::haproxy::HaProxy`], [`crate::proc::ChildGuard`]) or by [`guard::Spawned`], so a
//! bench that fails halfway still kills what it started. Every loop is bounded.

pub mod agent_log;
pub mod client;
pub mod fleet;
pub mod guard;
pub mod idle;
pub mod procfs;
pub mod staging;
pub mod stats;
pub mod window;
