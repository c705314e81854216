//! The raft loop's heartbeat: when it last finished a turn.
//!
//! The node's loop turns at least once per raft tick, whether or not there is work. Whatever
//! reports this node's health to the outside (the systemd watchdog, `grpc.health.v1`) reads
//! [`Progress`], so that a loop that is stuck (a hung disk, a lock that is never released) or
//! gone shows as unhealthy, even while the rest of the process still answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared between the raft loop (which beats) and the supervisor (which reads). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Progress {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    base: Instant,
    /// Milliseconds since `base` at the end of the last turn.
    last_ms: AtomicU64,
    turns: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                base: Instant::now(),
                last_ms: AtomicU64::new(0),
                turns: AtomicU64::new(0),
            }),
        }
    }

    /// The loop finished a turn.
    pub fn beat(&self) {
        let ms = self.inner.base.elapsed().as_millis() as u64;
        self.inner.last_ms.store(ms, Ordering::Release);
        self.inner.turns.fetch_add(1, Ordering::AcqRel);
    }

    /// Turns finished so far.
    pub fn turns(&self) -> u64 {
        self.inner.turns.load(Ordering::Acquire)
    }

    /// How long ago the last turn ended (since the start when none has).
    pub fn since_last_turn(&self) -> Duration {
        let now = self.inner.base.elapsed().as_millis() as u64;
        let last = self.inner.last_ms.load(Ordering::Acquire);
        Duration::from_millis(now.saturating_sub(last))
    }

    /// Whether the loop has turned at all, and within `within`.
    pub fn is_live(&self, within: Duration) -> bool {
        self.turns() > 0 && self.since_last_turn() <= within
    }
}
