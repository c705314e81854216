//! The host → active step index, kept up to date incrementally.
//!
//! Every heartbeat answer carries its host's assignment: the one non-terminal step it has in an
//! active rollout. Walking every rollout and its steps to find it would cost O(active steps) per
//! question, so [`ActiveIndex`] keeps host → (rollout id, position of the step in it). It is
//! derived state: never serialized, rebuilt in full on restore ([`ActiveIndex::rebuild`]), and
//! otherwise brought up to date after each applied command by [`ActiveIndex::refresh`], which
//! costs what the command touched, not what the rollouts hold.
//!
//! **How it learns what changed.** The code that changes a rollout marks what it changed, as it
//! goes:
//! - [`ActiveIndex::touch_step`] for one step whose phase, attempt, token or admission may
//!   have changed, or that was added or removed;
//! - [`ActiveIndex::touch_rollout`] for a rollout that was created, changed state (pause,
//!   resume, halt, complete, abort, supersede) or had a step removed (which moves the positions
//!   of the steps after it).
//!
//! A mark is cheap and may be spurious; a change that is not marked leaves the index stale, so
//! the property tests compare the index with a full rebuild after every command. `refresh`
//! re-derives every marked entry from the rollouts as they are then, so the order of the marks
//! and of the changes does not matter, and a mark on something that did not change is a no-op.
//!
//! Between commands the index is exact; while a command applies it may be stale, so code that
//! runs then walks the rollouts instead (`Rollouts::scan_active_step_of`).
//!
//! `refresh` also returns the hosts it looked at: every host whose assignment may have changed.
//! The machine adds them to its change log (`state/changes.rs`), which is how a heartbeat
//! stream knows it has something to tell without asking after every entry.

use super::model::Rollout;
use std::collections::{BTreeMap, BTreeSet};

/// Host → (active rollout, index of its non-terminal step in it), and what the command being
/// applied has marked as changed.
#[derive(Clone, Debug, Default)]
pub(super) struct ActiveIndex {
    by_host: BTreeMap<String, (String, usize)>,
    /// Rollouts to re-derive as a whole.
    dirty_rollouts: BTreeSet<String>,
    /// (rollout, host) steps to re-derive.
    dirty_steps: BTreeSet<(String, String)>,
}

/// Two indexes are equal when they map the same hosts to the same steps (the marks are empty
/// between commands).
impl PartialEq for ActiveIndex {
    fn eq(&self, other: &Self) -> bool {
        self.by_host == other.by_host
    }
}

impl ActiveIndex {
    /// The rollout and step position `host` works on, if any.
    pub fn get(&self, host: &str) -> Option<(&str, usize)> {
        self.by_host.get(host).map(|(id, i)| (id.as_str(), *i))
    }

    /// Hosts indexed.
    pub fn len(&self) -> usize {
        self.by_host.len()
    }

    /// Marks the step of `host` in rollout `id` as changed (or added, or removed).
    pub fn touch_step(&mut self, id: &str, host: &str) {
        self.dirty_steps.insert((id.to_string(), host.to_string()));
    }

    /// Marks rollout `id` as changed as a whole.
    pub fn touch_rollout(&mut self, id: &str) {
        self.dirty_rollouts.insert(id.to_string());
    }

    /// Rebuilds the whole index from `rollouts` (on restore). Linear in the steps of the active
    /// rollouts.
    pub fn rebuild(&mut self, rollouts: &BTreeMap<String, Rollout>) {
        self.by_host.clear();
        self.dirty_rollouts.clear();
        self.dirty_steps.clear();
        for r in rollouts.values().filter(|r| r.state.is_active()) {
            for (i, s) in r.steps.iter().enumerate() {
                if !s.phase.is_terminal() {
                    self.by_host.insert(s.host.clone(), (r.id.clone(), i));
                }
            }
        }
    }

    /// Re-derives every marked entry from `rollouts`, clears the marks, and returns the hosts
    /// looked at (a superset of those whose assignment changed). Costs the marked steps, plus
    /// the steps of each rollout marked as a whole.
    pub fn refresh(&mut self, rollouts: &BTreeMap<String, Rollout>) -> BTreeSet<String> {
        let mut looked = BTreeSet::new();
        for id in std::mem::take(&mut self.dirty_rollouts) {
            match rollouts.get(&id) {
                Some(r) => {
                    for (i, s) in r.steps.iter().enumerate() {
                        self.set(r, i);
                        looked.insert(s.host.clone());
                    }
                }
                // Forgotten in the same command: nothing may point at it any more.
                None => self.by_host.retain(|host, (rid, _)| {
                    let stale = *rid == id;
                    if stale {
                        looked.insert(host.clone());
                    }
                    !stale
                }),
            }
            // A removed step's host may still point at this rollout: its step mark (which
            // the removal made) clears it below.
        }
        for (id, host) in std::mem::take(&mut self.dirty_steps) {
            let found = rollouts
                .get(&id)
                .and_then(|r| self.position(r, &host).map(|i| (r, i)));
            match found {
                Some((r, i)) => self.set(r, i),
                None => {
                    if self.by_host.get(&host).is_some_and(|(rid, _)| *rid == id) {
                        self.by_host.remove(&host);
                    }
                }
            }
            looked.insert(host);
        }
        looked
    }

    /// Where `host`'s step is in `r`: where the index says, if that is still it (the common
    /// case: a report on a step already indexed), else by a walk from the end (a new step is
    /// pushed there).
    fn position(&self, r: &Rollout, host: &str) -> Option<usize> {
        if let Some((rid, i)) = self.by_host.get(host) {
            if *rid == r.id && r.steps.get(*i).is_some_and(|s| s.host == host) {
                return Some(*i);
            }
        }
        r.steps.iter().rposition(|s| s.host == host)
    }

    /// Makes the entry of step `i` of `r`'s host what the step says now.
    fn set(&mut self, r: &Rollout, i: usize) {
        let s = &r.steps[i];
        if r.state.is_active() && !s.phase.is_terminal() {
            match self.by_host.get_mut(&s.host) {
                Some((rid, at)) if *rid == r.id => *at = i,
                Some(entry) => *entry = (r.id.clone(), i),
                None => {
                    self.by_host.insert(s.host.clone(), (r.id.clone(), i));
                }
            }
        } else if self
            .by_host
            .get(&s.host)
            .is_some_and(|(rid, _)| *rid == r.id)
        {
            // A host has one step per rollout: an entry naming `r` is this step's.
            self.by_host.remove(&s.host);
        }
    }

    /// The entries, for tests that compare them with a rebuild.
    #[cfg(test)]
    pub fn entries(&self) -> &BTreeMap<String, (String, usize)> {
        &self.by_host
    }
}
