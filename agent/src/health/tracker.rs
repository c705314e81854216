//! The counting rule of the health monitor, with no clock and no I/O.
//!
//! `healthy` turns `unhealthy` after `unhealthy_after` consecutive failed rounds; `unhealthy`
//! turns `healthy` after `healthy_after` consecutive good rounds. A round of the other kind
//! resets the count, so a flapping service stays where it is. A dead process is `unhealthy` at
//! once ([`Tracker::dead`]). The tracker never sees `unprovisioned`: the monitor does not probe
//! an unprovisioned host.

use hotdeploy_common::proto::Health;

/// Consecutive good and bad rounds, and the health they established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    health: Health,
    failures: u32,
    successes: u32,
    unhealthy_after: u32,
    healthy_after: u32,
}

impl Tracker {
    /// A tracker starting at `health` (`healthy` or `unhealthy`); both thresholds are at least 1.
    pub fn new(health: Health, unhealthy_after: u32, healthy_after: u32) -> Self {
        Self {
            health: judged(health),
            failures: 0,
            successes: 0,
            unhealthy_after: unhealthy_after.max(1),
            healthy_after: healthy_after.max(1),
        }
    }

    /// The health established so far.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Starts over from `health`, as handed over by the engine: counts reset.
    pub fn resume(&mut self, health: Health) {
        self.health = judged(health);
        self.failures = 0;
        self.successes = 0;
    }

    /// One probe round; returns the health after it.
    pub fn observe(&mut self, ok: bool) -> Health {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.health != Health::Healthy && self.successes >= self.healthy_after {
                self.health = Health::Healthy;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.health != Health::Unhealthy && self.failures >= self.unhealthy_after {
                self.health = Health::Unhealthy;
            }
        }
        self.health
    }

    /// The supervised process is gone: `unhealthy` now, and `healthy_after` good rounds to come
    /// back.
    pub fn dead(&mut self) -> Health {
        self.health = Health::Unhealthy;
        self.successes = 0;
        self.failures = self.unhealthy_after;
        self.health
    }
}

/// Anything but `healthy` is treated as `unhealthy` by the counting rule.
fn judged(h: Health) -> Health {
    if h == Health::Healthy {
        Health::Healthy
    } else {
        Health::Unhealthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::{Healthy, Unhealthy};

    #[test]
    fn unhealthy_after_n_consecutive_failures_only() {
        let mut t = Tracker::new(Healthy, 3, 2);
        assert_eq!(t.observe(false), Healthy);
        assert_eq!(t.observe(false), Healthy);
        // A success in between resets the count.
        assert_eq!(t.observe(true), Healthy);
        assert_eq!(t.observe(false), Healthy);
        assert_eq!(t.observe(false), Healthy);
        assert_eq!(t.observe(false), Unhealthy);
        assert_eq!(t.observe(false), Unhealthy);
    }

    #[test]
    fn healthy_again_after_m_consecutive_successes() {
        let mut t = Tracker::new(Unhealthy, 3, 2);
        assert_eq!(t.observe(true), Unhealthy);
        assert_eq!(t.observe(false), Unhealthy);
        assert_eq!(t.observe(true), Unhealthy);
        assert_eq!(t.observe(true), Healthy);
    }

    #[test]
    fn a_dead_process_is_unhealthy_at_once_and_must_prove_itself() {
        let mut t = Tracker::new(Healthy, 3, 2);
        assert_eq!(t.dead(), Unhealthy);
        assert_eq!(t.observe(true), Unhealthy);
        assert_eq!(t.observe(true), Healthy);
    }

    #[test]
    fn resume_resets_the_counts() {
        let mut t = Tracker::new(Healthy, 2, 2);
        t.observe(false);
        t.resume(Healthy);
        assert_eq!(
            t.observe(false),
            Healthy,
            "the count before the handover is gone"
        );
        assert_eq!(t.observe(false), Unhealthy);
        t.resume(Health::Unprovisioned);
        assert_eq!(t.health(), Unhealthy);
    }

    #[test]
    fn thresholds_of_one() {
        let mut t = Tracker::new(Healthy, 1, 1);
        assert_eq!(t.observe(false), Unhealthy);
        assert_eq!(t.observe(true), Healthy);
    }
}
