//! The hotdeploy integration harness: everything a multi-process test needs to run the real
//! binaries on one machine and judge them from the outside.
//!
//! DESIGN §9 asks for tests with real processes on loopback, real faults, and hard deadlines.
//! This crate provides the pieces, each in its own module:
//!
//! - [`bins`] finds the workspace's built binaries next to the running test.
//! - [`proc`] spawns a process in its own process group with its output in a log file, and kills
//!   the whole group (and any stray it left behind) when dropped, even if the test panics.
//! - [`net`] hands out loopback addresses in 127.0.0.0/8 that no concurrent test process uses,
//!   and waits for ports.
//! - [`http_probe`] is a tiny blocking HTTP/1.1 GET for checks from synchronous test code.
//! - [`prom_text`] parses a `/metrics` scrape strictly, series by series.
//! - [`background`] is the harness's own tokio runtime, so proxies, load and observers run while
//!   a plain `#[test]` blocks on processes.
//! - [`fault_proxy`] is a TCP proxy that can be told to cut traffic: the harness's partitions.
//! - [`pack`] builds release artifacts (`.tar`, `.tar.gz`, `.tar.zst`) and the sample release.
//! - [`load`] is a steady-rate keep-alive HTTP load generator that counts every failure.
//! - [`toml_config`] writes the daemons' TOML config files, keyed exactly as DESIGN §6.
//! - [`cluster`] runs N coordinators, optionally with a fault proxy between every pair.
//! - [`scripted_agent`] plays agents over gRPC, following the rollout protocol, for tests of
//!   the coordinator side of rollouts.
//! - [`agents`] runs `hotdeploy-agent` supervising the sample app in `exec` mode.
//! - [`haproxy`] runs a real HAProxy in front of the agents and observes it through its stats
//!   socket.
//! - [`nspawn`] boots a Debian container under `systemd-nspawn`: a real systemd as PID 1, for
//!   the agent's `systemd` control mode (and anything else that must be tested under systemd).
//!
//! The harness panics with clear messages when something it needs is missing; the binaries in
//! this crate (`sample-app`, `hd-pack`, `hd-load`) never panic in their long-running paths.

pub mod agent_bench;
pub mod agents;
pub mod background;
pub mod bench;
pub mod bins;
pub mod cluster;
pub mod coord_client;
pub mod fault_proxy;
pub mod haproxy;
pub mod http_probe;
pub mod load;
pub mod net;
pub mod nspawn;
pub mod pack;
pub mod proc;
pub mod prom_text;
pub mod scripted_agent;
pub mod toml_config;
