//! The health this host reports (DESIGN §3: `unprovisioned`, `healthy`, `unhealthy`).

use hotdeploy_common::proto::Health;

/// Health from its three inputs: no live release is `unprovisioned`; a dead supervised child or
/// a failed last verify is `unhealthy`; anything else is `healthy`.
pub fn health(provisioned: bool, alive: bool, verify_failed: bool) -> Health {
    if !provisioned {
        Health::Unprovisioned
    } else if !alive || verify_failed {
        Health::Unhealthy
    } else {
        Health::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_rules() {
        assert_eq!(health(false, false, true), Health::Unprovisioned);
        assert_eq!(health(true, false, false), Health::Unhealthy);
        assert_eq!(health(true, true, true), Health::Unhealthy);
        assert_eq!(health(true, true, false), Health::Healthy);
    }
}
