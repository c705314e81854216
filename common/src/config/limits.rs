//! The `[limits]` table, shared by both daemons: how much a listener takes on at once.

use serde::Deserialize;

/// Listener limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open connections the gRPC listener holds at once. A connection past the cap is closed as
    /// soon as it is accepted, before any TLS work, so a flood of idle sockets cannot exhaust
    /// file descriptors or memory. The default leaves room for a few hundred agents per
    /// coordinator, each with one channel, plus peers and operators.
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
        }
    }
}
