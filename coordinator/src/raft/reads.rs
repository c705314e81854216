//! Pending ReadIndex requests (linearizable reads, `ReadOnlyOption::Safe`).
//!
//! raft-rs drops a ReadIndex request without a word in several cases: a leader that has not yet
//! committed an entry in its own term, a follower that knows no leader, or a forwarded request
//! lost on the way. A request it dropped would never be answered, and used to stay pending until
//! the next role change. So every request is tracked here with the tick it was made at:
//!
//! - a request raft did not take up (the driver checks right after handing it over) is handed
//!   over again on every tick, so a new leader answers it as soon as it has committed in its term;
//! - a request not answered within `expiry` ticks is failed with the retryable
//!   [`NodeError::ReadUnconfirmed`], whatever raft did with it;
//! - on a role change every request fails with [`NodeError::LeadershipLost`].
//!
//! Requests are keyed by a counter, sent to raft as its big-endian bytes (the request context).

use super::NodeError;
use std::collections::BTreeMap;
use tokio::sync::oneshot;

/// One waiting read.
struct Read {
    reply: oneshot::Sender<Result<u64, NodeError>>,
    /// The tick count when it was made.
    since: u64,
    /// Whether raft took it up (queued at the leader, or forwarded to one).
    taken: bool,
}

/// The pending reads of one node.
pub(crate) struct Reads {
    next: u64,
    pending: BTreeMap<u64, Read>,
    expiry: u64,
}

impl Reads {
    pub(crate) fn new(expiry_ticks: u64) -> Self {
        Self {
            next: 1,
            pending: BTreeMap::new(),
            expiry: expiry_ticks.max(1),
        }
    }

    /// Registers a read made at tick `now`; returns its context for raft.
    pub(crate) fn add(&mut self, reply: oneshot::Sender<Result<u64, NodeError>>, now: u64) -> u64 {
        let ctx = self.next;
        self.next += 1;
        self.pending.insert(
            ctx,
            Read {
                reply,
                since: now,
                taken: false,
            },
        );
        ctx
    }

    /// Records whether raft took up the request `ctx`.
    pub(crate) fn set_taken(&mut self, ctx: u64, taken: bool) {
        if let Some(r) = self.pending.get_mut(&ctx) {
            r.taken = taken;
        }
    }

    /// Answers the read `ctx` (raft's `ReadState`) with the index to wait for.
    pub(crate) fn answer(&mut self, ctx: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 8]>::try_from(ctx) else {
            return;
        };
        if let Some(r) = self.pending.remove(&u64::from_be_bytes(bytes)) {
            let _ = r.reply.send(Ok(index));
        }
    }

    /// At tick `now`: fails expired reads, and returns the contexts of those raft has not taken
    /// up, to hand over again.
    pub(crate) fn on_tick(&mut self, now: u64) -> Vec<u64> {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, r)| now.saturating_sub(r.since) >= self.expiry || r.reply.is_closed())
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in expired {
            if let Some(r) = self.pending.remove(&ctx) {
                let _ = r
                    .reply
                    .send(Err(NodeError::ReadUnconfirmed { ticks: self.expiry }));
            }
        }
        self.pending
            .iter()
            .filter(|(_, r)| !r.taken)
            .map(|(ctx, _)| *ctx)
            .collect()
    }

    /// Fails every read (the role or the leader changed).
    pub(crate) fn fail_all(&mut self, e: NodeError) {
        for (_, r) in std::mem::take(&mut self.pending) {
            let _ = r.reply.send(Err(e.clone()));
        }
    }

    /// Number of pending reads.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

/// The raft request context of read `ctx`.
pub(crate) fn context(ctx: u64) -> Vec<u8> {
    ctx.to_be_bytes().to_vec()
}
