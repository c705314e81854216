//! The leader's table of pending proposals.
//!
//! A proposal is keyed by the (index, term) its entry got when the leader appended it. When an
//! entry at that index is applied, the waiter is answered with the state machine's response if
//! the term matches; if another term's entry landed there, leadership changed and the original
//! proposal was overwritten, so the waiter gets [`NodeError::LeadershipLost`] and retries with
//! the same (client_id, seq). On losing leadership every waiter fails the same way: their
//! entries may still commit, which dedup makes harmless.
//!
//! Every waiter is answered: a waiter is never simply dropped, because a dropped reply reads as
//! "raft node stopped" to the caller.

use super::NodeError;
use std::collections::BTreeMap;
use tokio::sync::oneshot;

/// Who waits for an entry; `A` is the state machine's answer.
pub(crate) enum Waiter<A> {
    Command(oneshot::Sender<Result<A, NodeError>>),
    ConfChange(oneshot::Sender<Result<(), NodeError>>),
}

impl<A> Waiter<A> {
    pub(crate) fn fail(self, e: NodeError) {
        match self {
            Waiter::Command(tx) => drop(tx.send(Err(e))),
            Waiter::ConfChange(tx) => drop(tx.send(Err(e))),
        }
    }
}

/// Pending proposals by log index.
pub(crate) struct Pending<A> {
    by_index: BTreeMap<u64, (u64, Waiter<A>)>,
}

impl<A> Default for Pending<A> {
    fn default() -> Self {
        Self {
            by_index: BTreeMap::new(),
        }
    }
}

impl<A> Pending<A> {
    pub(crate) fn insert(&mut self, index: u64, term: u64, w: Waiter<A>) {
        if let Some((_, old)) = self.by_index.insert(index, (term, w)) {
            // A new entry at an index we were waiting on: the old one was overwritten.
            old.fail(NodeError::LeadershipLost);
        }
    }

    /// Takes the waiter for the entry applied at `index` with `term`. A waiter with another
    /// term is failed here and `None` is returned.
    pub(crate) fn take(&mut self, index: u64, term: u64) -> Option<Waiter<A>> {
        // Anything below `index` that is still here can never be answered.
        while let Some((&i, _)) = self.by_index.first_key_value() {
            if i >= index {
                break;
            }
            if let Some((_, (_, w))) = self.by_index.pop_first() {
                w.fail(NodeError::LeadershipLost);
            }
        }
        match self.by_index.remove(&index) {
            Some((t, w)) if t == term => Some(w),
            Some((_, w)) => {
                w.fail(NodeError::LeadershipLost);
                None
            }
            None => None,
        }
    }

    /// Fails every waiter (leadership lost).
    pub(crate) fn fail_all(&mut self, e: NodeError) {
        for (_, (_, w)) in std::mem::take(&mut self.by_index) {
            w.fail(e.clone());
        }
    }

    /// Number of pending proposals.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_index.len()
    }
}
