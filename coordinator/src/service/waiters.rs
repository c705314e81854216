//! The leader's queue of `AcquireSlot` calls waiting for budget.
//!
//! Waiters are served canary hosts first, then first come, first served, **as many at once as
//! the budget holds**: the plan judges the waiters in queue order, and each waiter it lets
//! propose is counted against its groups' budget before the next one is judged
//! ([`GrantChecker::reserve`](crate::state::GrantChecker::reserve)). So a group with room for
//! five proposes its first five waiters together, and their grants share one raft round trip
//! (and one sync), instead of one commit after another: a rollout's wave of B hosts asking at
//! once would otherwise wait B commits for its last slot (BENCHMARKS.md §5). A grant being
//! proposed keeps its budget in every plan until it applies, so nobody behind it (least of all
//! the host that just released) can take that budget by proposing faster. Waiters of
//! unrelated groups never hold each other up, and a waiter that cannot be granted holds up no
//! one. The state machine still judges every grant when it applies; a plan that was wrong
//! (another entry took the budget first) costs a retryable refusal, and the waiter waits again.
//! A waiter leaves the queue when its call ends for any reason (granted, refused,
//! deadline, or the client going away: tonic drops the call's future, and with it the
//! [`Ticket`]), so the leader never proposes a grant for a caller that has gone. The queue lives
//! in the leader's memory only; after a leader change, agents ask again with the same
//! `(client_id, seq)`.
//!
//! **Cost.** Every applied entry wakes every waiter. Each waiter asking "may I?" on its own would
//! cost O(W) waiters ahead × a budget check over the group's hosts, O(W²·G) per entry: with 1,000
//! waiters in a 1,000-host group, 10⁹ steps per commit, under the state lock. Instead the first
//! waiter to ask after a change computes a [`Plan`] for the whole queue in one pass: the lock's
//! [`GrantChecker`](crate::state::GrantChecker) counts every group once (O(hosts)), then each
//! waiter, in queue order, costs its host's groups. The plan is cached under the applied index
//! and the queue's version, and every other waiter reads its [`Turn`] from it.

use crate::state::{Outlook, StateMachine};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Queue order: canaries first (false sorts before true, so the key holds `!canary`), then by
/// arrival.
type Key = (bool, u64);

/// What a waiter should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// It fits, after the grants of the waiters ahead of it that fit: propose the grant.
    Propose,
    /// Not yet: its budget is full, counting the grants of the waiters ahead of it.
    Wait,
    /// Refused for a reason waiting does not change: answer the refusal.
    Refused,
}

/// One waiting call.
struct Waiting {
    host: String,
    purpose: String,
}

/// Every waiter's turn at one applied index and queue version.
struct Plan {
    applied: u64,
    version: u64,
    turns: HashMap<Key, Turn>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// Bumped on every arrival and departure.
    version: u64,
    queue: BTreeMap<Key, Waiting>,
    plan: Option<Plan>,
}

impl Inner {
    fn plan(&self, st: &StateMachine) -> Plan {
        let checker = st.grant_checker();
        let mut turns = HashMap::with_capacity(self.queue.len());
        for (key, w) in &self.queue {
            let turn = match checker.outlook(&w.host, &w.purpose) {
                Outlook::Refused => Turn::Refused,
                Outlook::Grantable => {
                    // Its grant will take budget: the waiters behind it see that.
                    checker.reserve(&w.host);
                    Turn::Propose
                }
                Outlook::Wait => Turn::Wait,
            };
            turns.insert(*key, turn);
        }
        Plan {
            applied: st.applied_index(),
            version: self.version,
            turns,
        }
    }
}

/// The queue. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Waiters {
    inner: Arc<Mutex<Inner>>,
    /// Bumped whenever a waiter leaves, so the ones behind it look again.
    changed: watch::Sender<u64>,
}

/// A place in the queue; leaving it (drop) wakes the others.
pub(crate) struct Ticket {
    key: Key,
    waiters: Waiters,
}

impl Waiters {
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::default(),
            changed: watch::channel(0).0,
        }
    }

    pub(crate) fn enqueue(&self, host: &str, purpose: &str, canary: bool) -> Ticket {
        let mut g = self.lock();
        g.next += 1;
        g.version += 1;
        let key = (!canary, g.next);
        let w = Waiting {
            host: host.to_owned(),
            purpose: purpose.to_owned(),
        };
        g.queue.insert(key, w);
        Ticket {
            key,
            waiters: self.clone(),
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// What `ticket` should do now, judged against `st` (the caller holds its read guard).
    pub(crate) fn turn(&self, ticket: &Ticket, st: &StateMachine) -> Turn {
        let mut g = self.lock();
        let fresh = g
            .plan
            .as_ref()
            .is_some_and(|p| p.applied == st.applied_index() && p.version == g.version);
        if !fresh {
            let plan = g.plan(st);
            g.plan = Some(plan);
        }
        g.plan
            .as_ref()
            .and_then(|p| p.turns.get(&ticket.key).copied())
            .unwrap_or(Turn::Wait)
    }

    /// Number of waiting calls.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().queue.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut g = self.waiters.lock();
        g.queue.remove(&self.key);
        g.version += 1;
        drop(g);
        self.waiters.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Health, Proposal, Report, Rotation};
    use hotdeploy_common::config::MaxUnavailable;

    struct Fleet {
        sm: StateMachine,
        index: u64,
    }

    impl Fleet {
        fn new(groups: &[(&str, &str)]) -> Self {
            let mut f = Fleet {
                sm: StateMachine::new(),
                index: 0,
            };
            for (g, max) in groups {
                f.apply(Command::SetGroupPolicy {
                    group: g.to_string(),
                    max_unavailable: Some(MaxUnavailable::parse(max).unwrap()),
                    allow_zero_available: None,
                })
                .unwrap();
            }
            f
        }

        fn apply(&mut self, command: Command) -> crate::state::Response {
            self.index += 1;
            self.sm
                .apply(self.index, Proposal::new(None, 1, "operator/t", command))
        }

        fn host(&mut self, host: &str, groups: &[&str]) {
            self.apply(Command::Register {
                host: host.into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                address: String::new(),
                report: Report {
                    health: Health::Healthy,
                    rotation: Rotation::InRotation,
                    release: "v1".into(),
                    phase: String::new(),
                },
            })
            .unwrap();
        }

        fn grant(&mut self, host: &str) {
            self.apply(Command::Acquire {
                host: host.into(),
                purpose: "deploy".into(),
                reason: String::new(),
                rollout: String::new(),
                phase: None,
            })
            .unwrap();
        }
    }

    #[test]
    fn canaries_first_then_fifo() {
        let mut f = Fleet::new(&[("web", "1")]);
        for h in ["a", "b", "c", "d"] {
            f.host(h, &["web"]);
        }
        let w = Waiters::new();
        let a = w.enqueue("a", "deploy", false);
        let b = w.enqueue("b", "deploy", false);
        let c = w.enqueue("c", "deploy", true);
        assert_eq!(w.turn(&c, &f.sm), Turn::Propose);
        assert_eq!(w.turn(&a, &f.sm), Turn::Wait);
        drop(c);
        assert_eq!(w.turn(&a, &f.sm), Turn::Propose);
        assert_eq!(w.turn(&b, &f.sm), Turn::Wait);
        // Once the budget is spent, nobody may propose.
        f.grant("d");
        assert_eq!(w.turn(&a, &f.sm), Turn::Wait);
        assert_eq!(w.turn(&b, &f.sm), Turn::Wait);
    }

    #[test]
    fn a_group_with_room_for_three_proposes_its_first_three_waiters_together() {
        let mut f = Fleet::new(&[("web", "3")]);
        for h in ["a", "b", "c", "d", "e", "x"] {
            f.host(h, &["web"]);
        }
        let w = Waiters::new();
        let t: Vec<Ticket> = ["a", "b", "c", "d"]
            .iter()
            .map(|h| w.enqueue(h, "deploy", false))
            .collect();
        let turns = |w: &Waiters, f: &Fleet| t.iter().map(|t| w.turn(t, &f.sm)).collect::<Vec<_>>();
        use Turn::{Propose, Wait};
        assert_eq!(turns(&w, &f), [Propose, Propose, Propose, Wait]);
        // While the three grants are under way their budget stays taken: a host that asks
        // later (here one that would fit on its own) waits behind them.
        let late = w.enqueue("e", "deploy", false);
        assert_eq!(w.turn(&late, &f.sm), Wait);
        // Two of the grants apply; the plan still holds room for the third, not for d.
        f.grant("a");
        f.grant("b");
        assert_eq!(turns(&w, &f), [Propose, Propose, Propose, Wait]);
        // Another host going out takes the room the third grant was planned into: the third
        // waits (its grant, if already proposed, is refused as over budget when it applies).
        f.grant("x");
        assert_eq!(turns(&w, &f), [Propose, Propose, Wait, Wait]);
    }

    #[test]
    fn a_waiter_ahead_that_cannot_be_granted_does_not_block() {
        let mut f = Fleet::new(&[("web", "1"), ("db", "1")]);
        f.host("a", &["web", "db"]);
        f.host("b", &["web"]);
        f.host("c", &["web"]);
        f.host("x", &["db"]);
        f.grant("x"); // db is full: a cannot be granted.
        let w = Waiters::new();
        let a = w.enqueue("a", "deploy", false);
        let b = w.enqueue("b", "deploy", false);
        assert_eq!(w.turn(&a, &f.sm), Turn::Wait);
        assert_eq!(w.turn(&b, &f.sm), Turn::Propose);
    }

    #[test]
    fn waiters_of_other_groups_do_not_block() {
        let mut f = Fleet::new(&[("web", "1"), ("db", "1")]);
        f.host("a", &["web"]);
        f.host("b", &["db"]);
        f.host("c", &["db", "web"]);
        f.host("d", &["db", "web"]);
        let w = Waiters::new();
        let a = w.enqueue("a", "deploy", false);
        let b = w.enqueue("b", "deploy", false);
        let c = w.enqueue("c", "deploy", false);
        assert_eq!(w.turn(&a, &f.sm), Turn::Propose);
        assert_eq!(w.turn(&b, &f.sm), Turn::Propose);
        assert_eq!(w.turn(&c, &f.sm), Turn::Wait);
        // An unknown host is refused at once, wherever it stands.
        let ghost = w.enqueue("ghost", "deploy", false);
        assert_eq!(w.turn(&ghost, &f.sm), Turn::Refused);
        assert_eq!(w.waiting(), 4);
    }

    /// 1,000 waiters in one 1,000-host group: every waiter's turn at one applied index costs one
    /// pass over the queue, not one per waiter. The queue is the costly shape for a scan by each
    /// waiter: the first 500 cannot be granted (their second group is full), so each of the 500
    /// behind them that could would check all 500 ahead, each check counting the 1,000-host
    /// group: 2.5·10⁸ steps per entry. A generous liveness bound; the figures are in BENCHMARKS.md.
    #[test]
    fn a_thousand_waiters_in_a_thousand_host_group_are_judged_in_one_pass() {
        let mut f = Fleet::new(&[("web", "10"), ("db", "1")]);
        let hosts: Vec<String> = (0..1000).map(|i| format!("h{i}")).collect();
        for (i, h) in hosts.iter().enumerate() {
            if i < 500 {
                f.host(h, &["db", "web"]);
            } else {
                f.host(h, &["web"]);
            }
        }
        f.host("db-x", &["db"]);
        f.grant("db-x");
        let w = Waiters::new();
        let tickets: Vec<Ticket> = hosts
            .iter()
            .map(|h| w.enqueue(h, "deploy", false))
            .collect();
        let started = std::time::Instant::now();
        for (round, host) in hosts.iter().enumerate().take(20) {
            // Every waiter asks after each applied entry.
            let turns: Vec<Turn> = tickets.iter().map(|t| w.turn(t, &f.sm)).collect();
            let proposing: Vec<usize> = turns
                .iter()
                .enumerate()
                .filter(|(_, t)| **t == Turn::Propose)
                .map(|(i, _)| i)
                .collect();
            // web's budget of 10 goes to the first ten waiters that can use it, together.
            let first_ten: Vec<usize> = (500..510).collect();
            assert_eq!(
                proposing, first_ten,
                "round {round}: h500..h509 may propose"
            );
            f.apply(Command::MarkReachable {
                host: host.clone(),
                report: Report {
                    health: Health::Healthy,
                    rotation: Rotation::InRotation,
                    release: "v1".into(),
                    phase: String::new(),
                },
            })
            .unwrap();
        }
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_secs(20),
            "20 rounds of 1,000 waiters took {took:?}"
        );
    }
}
