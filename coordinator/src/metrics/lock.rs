//! The lock's traffic, counted at the `AcquireSlot` edge: how each call ended, how long a grant
//! took to come (the wait for budget included), and how many calls wait on the leader now.
//!
//! - `hotdeploy_lock_acquires_total{purpose, result}`: every `AcquireSlot` answered, `result`
//!   one of [`AcquireResult`];
//! - `hotdeploy_lock_grant_wait_seconds`: call to grant, of the granted calls; a grant that had
//!   to wait for budget shows in the upper buckets;
//! - `hotdeploy_lock_waiters`: calls inside `AcquireSlot` now (on the leader, the queue).
//!
//! The purpose is the caller's word, so it is folded into a fixed set ([`purpose_label`]) before
//! it becomes a label. FleetLock never waits and is counted by its own
//! `hotdeploy_fleetlock_requests_total`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::time::Duration;

/// Upper bounds of the grant-wait buckets, in seconds: a free slot is a commit away (ms), a
/// slot that waits for a batch waits as long as a deploy takes (minutes).
pub const GRANT_WAIT_BUCKETS: [f64; 12] = [
    0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The purposes hotdeploy itself asks for; any other is counted as `other`.
pub const KNOWN_PURPOSES: [&str; 5] = ["deploy", "drain", "rollback", "maintenance", "fleetlock"];

/// How one `AcquireSlot` call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireResult {
    Granted,
    /// Refused by the lock (budget still used when the wait ran out, another purpose holds the
    /// slot, a rollout's gate, ...).
    Refused,
    /// The wait ran out while waiters ahead were served.
    QueueTimeout,
    /// Asked a follower, or leadership moved during the wait.
    NotLeader,
    /// Raft could not carry the grant (timeout, stopped) or answered something unexpected.
    Failed,
}

impl AcquireResult {
    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            AcquireResult::Granted => "granted",
            AcquireResult::Refused => "refused",
            AcquireResult::QueueTimeout => "queue_timeout",
            AcquireResult::NotLeader => "not_leader",
            AcquireResult::Failed => "failed",
        }
    }
}

/// The labels of one answered `AcquireSlot`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcquireLabels {
    pub purpose: &'static str,
    pub result: &'static str,
}

/// `purpose` if hotdeploy knows it, else `other`.
pub fn purpose_label(purpose: &str) -> &'static str {
    KNOWN_PURPOSES
        .iter()
        .find(|p| **p == purpose)
        .copied()
        .unwrap_or("other")
}

/// The lock's instruments. Cheap to clone; clones share the counts.
#[derive(Clone, Debug)]
pub struct LockStats {
    pub acquires: Family<AcquireLabels, Counter>,
    pub grant_wait: Histogram,
    pub waiters: Gauge,
}

impl Default for LockStats {
    fn default() -> Self {
        Self {
            acquires: Family::default(),
            grant_wait: Histogram::new(GRANT_WAIT_BUCKETS),
            waiters: Gauge::default(),
        }
    }
}

/// One call counted in `hotdeploy_lock_waiters` until it is dropped.
#[derive(Debug)]
pub struct Waiting {
    waiters: Gauge,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.waiters.dec();
    }
}

impl LockStats {
    /// Counts a call as waiting until the guard drops (the call answered or went away).
    pub fn waiting(&self) -> Waiting {
        self.waiters.inc();
        Waiting {
            waiters: self.waiters.clone(),
        }
    }

    /// Counts one answered call for `purpose` that took `took`.
    pub fn answered(&self, purpose: &str, result: AcquireResult, took: Duration) {
        self.acquires
            .get_or_create(&AcquireLabels {
                purpose: purpose_label(purpose),
                result: result.label(),
            })
            .inc();
        if result == AcquireResult::Granted {
            self.grant_wait.observe(took.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_known_purpose_and_result_and_waiters_leave() {
        let s = LockStats::default();
        {
            let _a = s.waiting();
            let _b = s.waiting();
            assert_eq!(s.waiters.get(), 2);
        }
        assert_eq!(s.waiters.get(), 0);
        s.answered("deploy", AcquireResult::Granted, Duration::from_millis(3));
        s.answered("deploy", AcquireResult::Refused, Duration::from_secs(1));
        s.answered("whatever-else", AcquireResult::Granted, Duration::ZERO);
        let get = |purpose, result| {
            s.acquires
                .get_or_create(&AcquireLabels { purpose, result })
                .get()
        };
        assert_eq!(get("deploy", "granted"), 1);
        assert_eq!(get("deploy", "refused"), 1);
        assert_eq!(get("other", "granted"), 1);
        assert_eq!(purpose_label("maintenance"), "maintenance");
    }
}
