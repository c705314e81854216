//! The simulator's network: every raft message between nodes sits here until the test delivers
//! it, and the test decides which links are cut, how long messages take, and which are lost.
//!
//! Messages are queued by (delivery tick, sequence number), so two messages sent at the same
//! tick on the same link arrive in the order they were sent, and a run depends only on the
//! seed. A message on a cut link, or lost at random, is dropped when it is sent; a message to a
//! node that is down when it arrives is dropped then. A lost snapshot is reported to its sender
//! as failed, a delivered one as finished (as the tonic transport does).

use raft::prelude::{Message, MessageType};
use raft::SnapshotStatus;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};

/// One message in flight.
pub(super) struct Envelope {
    pub from: u64,
    pub to: u64,
    pub msg: Message,
}

/// A snapshot send's outcome, for its sender.
pub(super) struct SnapshotReport {
    pub from: u64,
    pub to: u64,
    pub status: SnapshotStatus,
}

#[derive(Default)]
pub(super) struct Net {
    queue: BTreeMap<(u64, u64), Envelope>,
    seq: u64,
    /// Directed links that lose everything.
    cut: BTreeSet<(u64, u64)>,
    /// Chance of losing any one message.
    pub loss: f64,
    /// Longest delay, in ticks (each message draws 0..=max).
    pub max_delay: u64,
    pub reports: Vec<SnapshotReport>,
    /// Messages sent, delivered and lost so far (for the run's summary).
    pub sent: u64,
    pub lost: u64,
}

impl Net {
    /// Queues `msg` from `from` at tick `now`, or drops it.
    pub fn send(&mut self, rng: &mut StdRng, now: u64, msg: Message) {
        self.sent += 1;
        let (from, to) = (msg.from, msg.to);
        let lost = self.cut.contains(&(from, to)) || (self.loss > 0.0 && rng.gen_bool(self.loss));
        if lost {
            self.lost += 1;
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                self.reports.push(SnapshotReport {
                    from,
                    to,
                    status: SnapshotStatus::Failure,
                });
            }
            return;
        }
        let delay = if self.max_delay == 0 {
            0
        } else {
            rng.gen_range(0..=self.max_delay)
        };
        self.seq += 1;
        self.queue
            .insert((now + delay, self.seq), Envelope { from, to, msg });
    }

    /// The next message due at or before `now`.
    pub fn next_due(&mut self, now: u64) -> Option<Envelope> {
        let (&key, _) = self.queue.first_key_value()?;
        if key.0 > now {
            return None;
        }
        self.queue.remove(&key)
    }

    /// The first message due at or before `now` that `pick` chooses.
    pub fn next_due_matching(
        &mut self,
        now: u64,
        pick: impl Fn(&Message) -> bool,
    ) -> Option<Envelope> {
        let key = self
            .queue
            .iter()
            .take_while(|(k, _)| k.0 <= now)
            .find(|(_, e)| pick(&e.msg))
            .map(|(k, _)| *k)?;
        self.queue.remove(&key)
    }

    /// Messages still in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Cuts every link between `side` and the other nodes of `all`, both ways.
    pub fn partition(&mut self, side: &[u64], all: &[u64]) {
        for a in side {
            for b in all.iter().filter(|b| !side.contains(b)) {
                self.cut.insert((*a, *b));
                self.cut.insert((*b, *a));
            }
        }
    }

    /// Cuts the one link `from → to`.
    pub fn cut(&mut self, from: u64, to: u64) {
        self.cut.insert((from, to));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Whether `a` and `b` can talk both ways.
    pub fn connected(&self, a: u64, b: u64) -> bool {
        !self.cut.contains(&(a, b)) && !self.cut.contains(&(b, a))
    }

    /// Drops everything in flight (lost snapshots are reported as failed).
    pub fn clear(&mut self) {
        self.lost += self.queue.len() as u64;
        for (_, env) in std::mem::take(&mut self.queue) {
            if env.msg.get_msg_type() == MessageType::MsgSnapshot {
                self.reports.push(SnapshotReport {
                    from: env.from,
                    to: env.to,
                    status: SnapshotStatus::Failure,
                });
            }
        }
    }
}
