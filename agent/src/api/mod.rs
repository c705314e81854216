//! The agent's local gRPC API (DESIGN §4, "Local API") and the assembled daemon.
//!
//! - [`service`]: the `Agent` service. Status, Deploy and Rollback (server-streaming progress,
//!   so no call deadline cuts a long deploy short; the deploy itself runs in a task that
//!   survives the client hanging up), Drain/Undrain and Maintenance (under a slot of that
//!   purpose when coordinators are configured), ListReleases.
//! - [`validate`]: input checks; bad input is INVALID_ARGUMENT with a clear message.
//! - `auth`: only operator certificates may call (PERMISSION_DENIED otherwise).
//! - [`daemon`]: everything wired together, in start-up order.

mod auth;
pub mod daemon;
pub mod service;
pub mod validate;

#[cfg(test)]
mod e2e_tests;

pub use daemon::{Daemon, StartError};
pub use service::AgentService;
