//! The health record kept in the journal.

use hotdeploy_common::proto::Health;
use serde::{Deserialize, Serialize};

/// Health as the journal keeps it: the three values of DESIGN §3, nothing unspecified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostHealth {
    Unprovisioned,
    Healthy,
    Unhealthy,
}

impl From<Health> for HostHealth {
    fn from(h: Health) -> Self {
        match h {
            Health::Unprovisioned => HostHealth::Unprovisioned,
            Health::Healthy => HostHealth::Healthy,
            // Unspecified is never published; if it were, it would not vouch for anything.
            Health::Unhealthy | Health::Unspecified => HostHealth::Unhealthy,
        }
    }
}

impl From<HostHealth> for Health {
    fn from(h: HostHealth) -> Self {
        match h {
            HostHealth::Unprovisioned => Health::Unprovisioned,
            HostHealth::Healthy => Health::Healthy,
            HostHealth::Unhealthy => Health::Unhealthy,
        }
    }
}

/// The last health this host established, and the release it was established on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    pub health: HostHealth,
    /// The live release at the time; `None` on an unprovisioned host.
    pub release: Option<String>,
    pub at_ms: u64,
}
