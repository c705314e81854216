//! The health this host reports: the fact, with what the engine knows is broken on top.
//!
//! The [`HealthFact`](super::HealthFact) says how the *service* is doing (the monitor's probes
//! between deploys, the engine's verdicts during them). Two things the engine knows about the
//! *host* override it, and nothing else does:
//!
//! - **`problem`**: the `current` link is unusable. Something is installed and it is broken,
//!   whatever the probes say, until the link is repaired: `unhealthy`.
//! - **`verify_failed`**: the last verify failed and nothing good has been verified since: a
//!   deploy failed whose rollback did not verify either (the host keeps its slot under a
//!   `verify_failed` hold until a deploy repairs it), or a verify failed in the deploy under
//!   way. The probes may pass again meanwhile (a transient fault, a restart by the supervisor),
//!   but no release has been *verified*: `unhealthy`, until a verify passes. An unprovisioned
//!   host stays `unprovisioned` (a failing first deploy never makes it look installed).
//!
//! No other hold changes the health: a host left out only because its undrain failed, or
//! because a deploy was interrupted, reports the health of its service (and is unavailable
//! anyway, since it holds a slot and is out of rotation).
//!
//! The daemon's report task is the one place that applies this rule, and it publishes the
//! result to the rotation front ends (agent-check `down`, `/ready` 503), to `Status` and to the
//! coordinators.

use hotdeploy_common::proto::Health;

/// The health to report, from the fact and the engine's view (see the module docs).
pub fn reported(fact: Health, verify_failed: bool, problem: bool) -> Health {
    if problem {
        return Health::Unhealthy;
    }
    match fact {
        Health::Unprovisioned => Health::Unprovisioned,
        _ if verify_failed => Health::Unhealthy,
        h => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::{Healthy, Unhealthy, Unprovisioned};

    #[test]
    fn the_fact_stands_when_nothing_is_known_to_be_broken() {
        for h in [Healthy, Unhealthy, Unprovisioned] {
            assert_eq!(reported(h, false, false), h);
        }
    }

    #[test]
    fn a_broken_current_link_is_unhealthy_whatever_the_fact() {
        for h in [Healthy, Unhealthy, Unprovisioned] {
            assert_eq!(reported(h, false, true), Unhealthy);
            assert_eq!(reported(h, true, true), Unhealthy);
        }
    }

    #[test]
    fn a_failed_verify_is_unhealthy_even_if_the_probes_pass_but_unprovisioned_stays() {
        assert_eq!(reported(Healthy, true, false), Unhealthy);
        assert_eq!(reported(Unhealthy, true, false), Unhealthy);
        assert_eq!(reported(Unprovisioned, true, false), Unprovisioned);
    }
}
