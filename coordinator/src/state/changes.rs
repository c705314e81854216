//! Which hosts' heartbeat answers each applied entry may have changed.
//!
//! A heartbeat answer tells a host two things: the slot it holds and its rollout assignment.
//! The leader pushes an answer as soon as either changes, so that an admission or a revoked
//! slot reaches the agent within one commit. Asking every host's stream after every entry
//! whether its answer changed costs O(streams) per entry (10⁴ wake-ups per entry with 10,000
//! agents); instead the machine records, per applied entry, the hosts whose answer it may have
//! changed, and the service side wakes only their streams (`service/host_signals.rs`).
//!
//! [`HostChanges`] is a bounded log of (raft index, host), oldest first. It is derived and
//! local: never serialized, and two machines compare equal whatever their logs hold (a replica
//! restored from a snapshot has an empty one). A reader that has seen everything up to index
//! `i` asks [`HostChanges::after`]`(i)`: either the hosts changed since, or [`Changed::All`]
//! when the log no longer reaches back that far (it overflowed, or the state was restored), and
//! the reader must treat every host as changed.
//!
//! A host is recorded when a command changed its slot (a grant, a release, a force-release,
//! its removal), registered it, or touched its step in a rollout (see `rollout/index.rs`). The
//! record may be spurious (a wake-up that finds nothing new); it must never be missing, which
//! the property test checks against a full comparison of every host's answer before and after
//! each command.

use std::collections::VecDeque;

/// The most (index, host) records kept: a reader further behind than this sees `All`.
pub const MAX_RECORDS: usize = 1 << 16;

/// The recent hosts whose heartbeat answers changed, by raft index.
#[derive(Clone, Debug, Default)]
pub struct HostChanges {
    log: VecDeque<(u64, String)>,
    /// Every change at an index above this one is still in `log`.
    complete_after: u64,
}

/// Derived and local: not part of the replicated state's equality.
impl PartialEq for HostChanges {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What changed after an index.
#[derive(Debug, PartialEq, Eq)]
pub enum Changed<'a> {
    /// The log does not reach back that far: treat every host as changed.
    All,
    /// These hosts (possibly repeated), oldest change first.
    Hosts(Vec<&'a str>),
}

impl HostChanges {
    /// A log that starts at `index` (a restored state): nothing before it is known.
    pub fn starting_at(index: u64) -> Self {
        Self {
            log: VecDeque::new(),
            complete_after: index,
        }
    }

    /// Records that the entry at `index` may have changed `host`'s answer.
    pub fn record(&mut self, index: u64, host: String) {
        self.log.push_back((index, host));
        while self.log.len() > MAX_RECORDS {
            if let Some((dropped, _)) = self.log.pop_front() {
                self.complete_after = self.complete_after.max(dropped);
            }
        }
    }

    /// The hosts changed by entries above `index`.
    pub fn after(&self, index: u64) -> Changed<'_> {
        if index < self.complete_after {
            return Changed::All;
        }
        let newer = self.log.partition_point(|(i, _)| *i <= index);
        Changed::Hosts(self.log.range(newer..).map(|(_, h)| h.as_str()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_gets_the_hosts_changed_after_what_it_saw() {
        let mut c = HostChanges::default();
        c.record(3, "a".into());
        c.record(5, "b".into());
        c.record(5, "c".into());
        c.record(9, "a".into());
        assert_eq!(c.after(0), Changed::Hosts(vec!["a", "b", "c", "a"]));
        assert_eq!(c.after(4), Changed::Hosts(vec!["b", "c", "a"]));
        assert_eq!(c.after(5), Changed::Hosts(vec!["a"]));
        assert_eq!(c.after(9), Changed::Hosts(vec![]));
    }

    #[test]
    fn a_reader_behind_the_log_or_a_restore_is_told_everything_changed() {
        let restored = HostChanges::starting_at(100);
        assert_eq!(restored.after(99), Changed::All);
        assert_eq!(restored.after(100), Changed::Hosts(vec![]));

        let mut c = HostChanges::default();
        for i in 1..=(MAX_RECORDS as u64 + 10) {
            c.record(i, format!("h{i}"));
        }
        assert_eq!(c.after(5), Changed::All);
        assert_eq!(c.after(9), Changed::All);
        let Changed::Hosts(hosts) = c.after(10) else {
            panic!("the log still holds every change after index 10");
        };
        assert_eq!(hosts.len(), MAX_RECORDS);
        assert_eq!(hosts[0], "h11");
    }
}
