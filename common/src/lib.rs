//! Pieces that every hotdeploy binary shares.
//!
//! - [`proto`]: the gRPC code generated from `proto/hotdeploy/v1`, for the coordinator, the peer
//!   transport and the agent.
//! - [`codec`]: the protobuf codec of every generated client and server (small per-call buffers).
//! - [`config`]: the TOML config files of both daemons, parsed with serde and checked as a whole
//!   before anything starts, so that a bad config fails with a message that names the key.
//! - [`names`]: the charsets of host, group and release names. Every name that crosses a network
//!   boundary is checked here.
//! - [`tls`]: channel security: server and client TLS settings from `[tls]`, and the roles that
//!   certificates carry in their SAN URIs.
//! - [`tls_pki`]: the CA and certificates `hotdeployctl certs init` writes.
//! - [`signing`]: ed25519 release signing keys and signatures.
//! - [`maint_progress`]: following a `RunMaintenance` stream, for its two clients.
//! - [`telemetry`]: `tracing` set-up; logs go to stderr, which systemd hands to journald.
//!
//! Deliberately absent: anything with state. This crate holds types and pure helpers only.

pub mod codec;
pub mod config;
pub mod maint_progress;
pub mod names;
pub mod proto;
pub mod signing;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod tls_crl;
pub mod tls_pki;

pub use names::NameError;
