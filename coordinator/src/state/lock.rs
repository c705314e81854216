//! The lock arithmetic: slots, Unavailable(g), and the grant rule (DESIGN §3).
//!
//! A *slot* is a host's permission to be disruptive: drain, swap, restart, roll back, or be under
//! maintenance. Each host holds at most one. The rule that decides a grant is the heart of the
//! system, so it lives here alone, as pure functions over the hosts and groups:
//!
//! - Unavailable(g) is the set of provisioned hosts of g that hold a slot, are unreachable, are
//!   unhealthy, or are not in rotation ([`Host::is_unavailable`]); each host counts once.
//!   size(g) counts the provisioned hosts; budget(g) = `max_unavailable.budget(size(g))`.
//! - Grant(h) succeeds iff, for *every* group g of h, |Unavailable(g) ∪ {h}| ≤ budget(g), and,
//!   unless g allows it, g keeps at least one available host. The check runs over all groups
//!   before anything changes, so a refusal in one group grants nothing anywhere.
//! - A host already unavailable is already in the union: repairing it costs no extra budget, and
//!   it is never refused for leaving zero available (it was not available to begin with). It is
//!   still refused if its group is over budget anyway (after a budget was lowered, or hosts went
//!   down on their own): the rule is |Unavailable(g) ∪ {h}| ≤ budget(g), and it keeps the
//!   invariant that right after any grant no group is over its budget.
//! - An *unprovisioned* host is in neither Unavailable(g) nor size(g). Its first deploy needs no
//!   slot, but if it asks for one it gets it at once: it costs no budget and removes no available
//!   host, so no group can be hurt. (The slot still fences it like any other.)
//!
//! The zero-available refusal comes in two kinds: [`StateError::ZeroAvailable`] when other hosts
//! of the group are down (retryable: they come back), and [`StateError::LoneHost`] when the host
//! is the group's only provisioned host (not retryable: DESIGN says such a rollout fails at once
//! with an error that says so).
//!
//! Left out: one-slot-per-host and re-entrancy, which the machine checks before asking here,
//! and the order waiters are served in, which is the leader's business.

use super::error::StateError;
use super::group::{Group, GroupView};
use super::host::Host;
use serde::{Deserialize, Serialize};
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
    /// Provisioned hosts.
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
    for host in group.members.iter().filter_map(|id| hosts.get(id)) {
        if host.is_provisioned() {
            t.size += 1;
        }
        if host.is_unavailable() {
            t.unavailable.insert(host.id.as_str());
        }
        if host.slot.is_some() {
            t.holders.push(host.id.as_str());
        }
    }
    t
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

/// Whether a new slot for `host` fits every one of its groups now. The first group (in name
/// order) that refuses gives the error.
pub(super) fn check_grant(
    host: &Host,
    hosts: &BTreeMap<String, Host>,
    groups: &BTreeMap<String, Group>,
) -> Result<(), StateError> {
    if !host.is_provisioned() {
        return Ok(());
    }
    for name in &host.groups {
        let group = groups.get(name).ok_or_else(|| StateError::UnknownGroup {
            group: name.clone(),
        })?;
        let t = tally(group, hosts);
        let budget = group.max_unavailable.budget(t.size);
        let already_down = t.unavailable.contains(host.id.as_str());
        let others = || -> Vec<String> {
            t.unavailable
                .iter()
                .filter(|id| **id != host.id)
                .map(|id| id.to_string())
                .collect()
        };
        let after = t.unavailable.len() as u64 + u64::from(!already_down);
        if after > budget {
            return Err(StateError::OverBudget {
                host: host.id.clone(),
                group: name.clone(),
                budget,
                unavailable: others(),
            });
        }
        if !already_down && !group.allow_zero_available && after >= t.size {
            return Err(if t.size <= 1 {
                StateError::LoneHost {
                    host: host.id.clone(),
                    group: name.clone(),
                }
            } else {
                StateError::ZeroAvailable {
                    host: host.id.clone(),
                    group: name.clone(),
                    unavailable: others(),
                }
            });
        }
    }
    Ok(())
}
