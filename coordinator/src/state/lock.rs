//! The lock arithmetic: slots, Unavailable(g), and the grant rule (DESIGN §3).
//!
//! A *slot* is a host's permission to be disruptive: drain, swap, restart, roll back, or be under
//! maintenance. Each host holds at most one. The rule that decides a grant is the heart of the
//! system, so it lives here alone, as pure functions over the hosts and groups:
//!
//! - Unavailable(g) is the set of counted hosts of g that hold a slot, are unreachable, are
//!   unhealthy, or are not in rotation ([`Host::is_unavailable`]); each host counts once.
//!   size(g) counts the counted hosts: the provisioned ones, and any slot holder
//!   ([`Host::is_counted`]); budget(g) = `max_unavailable.budget(size(g))`.
//! - Grant(h) succeeds iff, for *every* group g of h, |Unavailable(g) ∪ {h}| ≤ budget(g) as it
//!   will be once h holds the slot, and, unless g allows it, g keeps at least one available
//!   host. The check runs over all groups before anything changes, so a refusal in one group
//!   grants nothing anywhere.
//! - A host already unavailable is already in the union: repairing it costs no extra budget, and
//!   it is never refused for leaving zero available (it was not available to begin with). It is
//!   still refused if its group is over budget anyway (after a budget was lowered, or hosts went
//!   down on their own): the rule is |Unavailable(g) ∪ {h}| ≤ budget(g), and it keeps the
//!   invariant that right after any grant no group is over its budget.
//! - An *unprovisioned* host is not counted, so its grant adds it to both size(g) and
//!   Unavailable(g): it is charged like any other, as if provisioned. Its first deploy needs no
//!   slot; but a holder may report `healthy` while it holds the slot, and that report must not
//!   push the group over budget. It removes no available host, so the zero-available rule does
//!   not apply to it.
//!
//! The zero-available refusal comes in two kinds: [`StateError::ZeroAvailable`] when other hosts
//! of the group are down (retryable: they come back), and [`StateError::LoneHost`] when the host
//! is the group's only counted host (not retryable: DESIGN says such a rollout fails at once
//! with an error that says so).
//!
//! The rule is computed once per group and host ([`verdict`], no allocation); errors with their
//! lists of hosts are built only when one is reported. [`Checker`] counts every group once, so
//! the leader's queue of waiters can ask about many hosts at one applied index in time linear in
//! the fleet plus the waiters, not their product.
//!
//! Left out: one-slot-per-host and re-entrancy, which the machine checks before asking here,
//! and the order waiters are served in, which is the leader's business.

use super::error::StateError;
use super::group::{Group, GroupView};
use super::host::Host;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// A granted slot: the lock entry, as `locks list` shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub host: String,
    /// The host's groups at grant time (they cannot change while it holds the slot).
    pub groups: Vec<String>,
    /// The raft index of the granting entry: strictly increasing, the fencing token.
    pub token: u64,
    /// Why the slot is held: `"deploy"`, `"drain"`, `"rollback"`, `"maintenance"`, ...
    pub purpose: String,
    pub reason: String,
    /// The rollout id, or `""` for none.
    pub rollout: String,
    pub granted_at_ms: u64,
    /// The last phase the holder reported with this token, `""` until it reports one.
    pub phase: String,
}

/// One group's counts at this instant.
pub(super) struct Tally<'a> {
    /// Counted hosts.
    pub size: u64,
    /// Unavailable(g), sorted.
    pub unavailable: BTreeSet<&'a str>,
    /// Hosts holding a slot, sorted.
    pub holders: Vec<&'a str>,
}

/// Counts `group` over `hosts`.
pub(super) fn tally<'a>(group: &Group, hosts: &'a BTreeMap<String, Host>) -> Tally<'a> {
    let mut t = Tally {
        size: 0,
        unavailable: BTreeSet::new(),
        holders: Vec::new(),
    };
    for_each_member(group, hosts, |host| {
        if host.is_counted() {
            t.size += 1;
        }
        if host.is_unavailable() {
            t.unavailable.insert(host.id.as_str());
        }
        if host.slot.is_some() {
            t.holders.push(host.id.as_str());
        }
    });
    t
}

/// Calls `f` with each known host of `group`, in id order.
///
/// Both the members and the hosts are sorted by id, so a group that is a good part of the fleet
/// is read by walking the two side by side: about one id comparison per host, in memory order.
/// A lookup per member costs about log2(hosts) comparisons each, scattered over the tree; that
/// is the cheaper way only for a group much smaller than the fleet. A grant counts the groups of
/// its host on every replica, and a 1,000-host group by lookups was the largest cost of applying
/// a rollout's entries (`hd-bench rollout`, BENCHMARKS.md §5).
pub(super) fn for_each_member<'a>(
    group: &Group,
    hosts: &'a BTreeMap<String, Host>,
    mut f: impl FnMut(&'a Host),
) {
    let per_lookup = (usize::BITS - hosts.len().leading_zeros()) as usize;
    if group.members.len().saturating_mul(per_lookup) < hosts.len() {
        group
            .members
            .iter()
            .filter_map(|id| hosts.get(id))
            .for_each(f);
        return;
    }
    let mut fleet = hosts.iter().peekable();
    for id in &group.members {
        while fleet
            .next_if(|(known, _)| known.as_str() < id.as_str())
            .is_some()
        {}
        if let Some((_, host)) = fleet.next_if(|(known, _)| *known == id) {
            f(host);
        }
    }
}

/// The group as `status` shows it.
pub(super) fn view(group: &Group, hosts: &BTreeMap<String, Host>) -> GroupView {
    let t = tally(group, hosts);
    GroupView {
        name: group.name.clone(),
        max_unavailable: group.max_unavailable,
        budget: group.max_unavailable.budget(t.size),
        allow_zero_available: group.allow_zero_available,
        size: t.size,
        unavailable: t.unavailable.len() as u64,
        holders: t.holders.iter().map(|h| h.to_string()).collect(),
    }
}

/// What the rule says about a new slot for one host in one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Fits,
    /// Over the budget, which will be `budget` once the host holds the slot.
    OverBudget {
        budget: u64,
    },
    /// The group would keep no available host, and other hosts are down.
    ZeroAvailable,
    /// The host is the group's only counted host.
    LoneHost,
}

impl Verdict {
    /// Whether the refusal may clear by itself (a slot is released, a host comes back).
    pub(super) fn is_retryable(self) -> bool {
        matches!(self, Verdict::OverBudget { .. } | Verdict::ZeroAvailable)
    }
}

/// The rule for `host` in `group`, whose counts are `t`.
pub(super) fn verdict(host: &Host, group: &Group, t: &Tally<'_>) -> Verdict {
    let already_down = t.unavailable.contains(host.id.as_str());
    // The group as it will be once the host holds the slot: a host not counted yet joins the
    // size, and a host not unavailable yet joins the unavailable set.
    let size = t.size + u64::from(!host.is_counted());
    let after = t.unavailable.len() as u64 + u64::from(!already_down);
    let budget = group.max_unavailable.budget(size);
    if after > budget {
        return Verdict::OverBudget { budget };
    }
    if host.is_available() && !group.allow_zero_available && after >= size {
        return if size <= 1 {
            Verdict::LoneHost
        } else {
            Verdict::ZeroAvailable
        };
    }
    Verdict::Fits
}

/// The error for a refusing `v`.
fn refusal(host: &Host, group: &Group, t: &Tally<'_>, v: Verdict) -> Result<(), StateError> {
    let others = || -> Vec<String> {
        t.unavailable
            .iter()
            .filter(|id| **id != host.id)
            .map(|id| id.to_string())
            .collect()
    };
    match v {
        Verdict::Fits => Ok(()),
        Verdict::OverBudget { budget } => Err(StateError::OverBudget {
            host: host.id.clone(),
            group: group.name.clone(),
            budget,
            unavailable: others(),
        }),
        Verdict::ZeroAvailable => Err(StateError::ZeroAvailable {
            host: host.id.clone(),
            group: group.name.clone(),
            unavailable: others(),
        }),
        Verdict::LoneHost => Err(StateError::LoneHost {
            host: host.id.clone(),
            group: group.name.clone(),
        }),
    }
}

/// Whether a new slot for `host` fits every one of its groups now. The first group (in name
/// order) that refuses gives the error.
pub(super) fn check_grant(
    host: &Host,
    hosts: &BTreeMap<String, Host>,
    groups: &BTreeMap<String, Group>,
) -> Result<(), StateError> {
    for name in &host.groups {
        let group = groups.get(name).ok_or_else(|| StateError::UnknownGroup {
            group: name.clone(),
        })?;
        let t = tally(group, hosts);
        refusal(host, group, &t, verdict(host, group, &t))?;
    }
    Ok(())
}

/// How an `Acquire` would fare now, without the details of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outlook {
    /// It would be granted (or the host already holds a slot for that purpose).
    Grantable,
    /// Refused for budget that frees up by itself: worth waiting for.
    Wait,
    /// Refused for a reason that waiting does not change.
    Refused,
}

/// Each group counted at most once, to judge many acquires at one instant: a group is counted
/// the first time a question needs it (linear in its members), and each later question costs
/// only the host's groups. Groups no waiter is in are never counted: the leader builds a
/// checker after every applied entry while acquires wait, and counting the whole fleet each
/// time made one waiting acquire cost O(hosts) per entry (`hd-bench scale`).
pub struct GrantChecker<'a> {
    hosts: &'a BTreeMap<String, Host>,
    groups: &'a BTreeMap<String, Group>,
    slots: &'a BTreeMap<u64, Slot>,
    tallies: RefCell<BTreeMap<&'a str, Tally<'a>>>,
}

impl<'a> GrantChecker<'a> {
    pub(super) fn new(
        hosts: &'a BTreeMap<String, Host>,
        groups: &'a BTreeMap<String, Group>,
        slots: &'a BTreeMap<u64, Slot>,
    ) -> Self {
        Self {
            hosts,
            groups,
            slots,
            tallies: RefCell::new(BTreeMap::new()),
        }
    }

    /// How many groups this checker has counted so far.
    pub fn groups_counted(&self) -> usize {
        self.tallies.borrow().len()
    }

    /// How `Acquire{host, purpose}` would fare now; the same judgement as the machine's.
    pub fn outlook(&self, host: &str, purpose: &str) -> Outlook {
        let Some(host) = self.hosts.get(host) else {
            return Outlook::Refused;
        };
        if let Some(held) = host.slot.and_then(|t| self.slots.get(&t)) {
            return if held.purpose == purpose {
                Outlook::Grantable
            } else {
                Outlook::Refused
            };
        }
        let mut tallies = self.tallies.borrow_mut();
        for name in &host.groups {
            let Some((name, group)) = self.groups.get_key_value(name) else {
                return Outlook::Refused;
            };
            let t = tallies
                .entry(name.as_str())
                .or_insert_with(|| tally(group, self.hosts));
            match verdict(host, group, t) {
                Verdict::Fits => {}
                v if v.is_retryable() => return Outlook::Wait,
                _ => return Outlook::Refused,
            }
        }
        Outlook::Grantable
    }

    /// Counts `host` as it will be once a grant to it applies: in each of its groups' size and
    /// Unavailable(g). The leader's queue of waiters calls it for each waiter it lets propose,
    /// so that the next question sees the budget the grants already under way will take, and
    /// a group's room goes to its waiters in queue order, as many at once as it holds. A host
    /// already unavailable (or already holding a slot) changes nothing.
    pub fn reserve(&self, host: &str) {
        let Some(host) = self.hosts.get(host) else {
            return;
        };
        let mut tallies = self.tallies.borrow_mut();
        for name in &host.groups {
            let Some((name, group)) = self.groups.get_key_value(name) else {
                continue;
            };
            let t = tallies
                .entry(name.as_str())
                .or_insert_with(|| tally(group, self.hosts));
            // Newly unavailable; an uncounted host joins the size too (holding a slot counts).
            if t.unavailable.insert(host.id.as_str()) && !host.is_counted() {
                t.size += 1;
            }
        }
    }
}
