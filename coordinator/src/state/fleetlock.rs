//! FleetLock's lock-only hosts (DESIGN §8): reboot slots for hosts that run no agent.
//!
//! A FleetLock client (Zincati on Fedora CoreOS or Flatcar) asks for a reboot slot with an id
//! and a group. The id is a host id and the group a group of the same lock, so a reboot and a
//! deploy share one budget. An id no agent has registered becomes a *lock-only* host of that
//! group ([`Command::RegisterLockOnly`](super::Command::RegisterLockOnly), command format
//! version [`FLEETLOCK_VERSION`](super::FLEETLOCK_VERSION)): it has no heartbeats and no
//! reports, it is kept `reachable`, `healthy` and `in_rotation`, so it counts as available, and
//! it is unavailable only while it holds a slot.
//!
//! The lock itself is nothing new: an `Acquire` of purpose [`FLEETLOCK`] (re-entrant for the
//! same host, as every grant is) and a `Release` with its token. Registering is a command of its
//! own, not part of the acquire, because it must stick even when the grant is refused: a group
//! of FleetLock hosts starts empty, and if each refused request (the first host of a group is its
//! lone host) left nothing behind, the group would never grow past one host.
//!
//! What `RegisterLockOnly{host, group}` does, by the host it names:
//! - unknown: a new lock-only host, in `group` alone (audited);
//! - a lock-only host of `group`: nothing;
//! - a lock-only host of another group: it moves to `group` (Zincati's group was reconfigured),
//!   unless it holds a slot;
//! - an agent host: nothing if `group` is one of its groups, else refused ([`StateError::
//!   NotInGroup`]): an agent's groups come from its own config, never from FleetLock.
//!
//! Invariant (checked on restore): a lock-only host has exactly one group, and the facts the
//! lock assumes of it (reachable, healthy, in rotation, no release). Commands that carry an
//! agent's facts (`UpdateReport`, `MarkReachable`, `MarkUnreachable`) are refused for it
//! ([`StateError::LockOnlyHost`]); only `Register` by an agent turns it into an agent host.
//!
//! Left out: anything about HTTP (the service's `fleetlock` module speaks the protocol).

use super::command::{Answer, Response};
use super::error::StateError;
use super::host::{Health, Host, Reachability, Rotation};
use super::lock::Slot;
use super::machine::{Ctx, StateMachine};
use hotdeploy_common::names::{check_group, check_host};

/// The purpose of slots taken through FleetLock. `steady-state` frees only these.
pub const FLEETLOCK: &str = "fleetlock";

/// What `RegisterLockOnly{host, group}` would do to the state as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOnlyPlan {
    /// Nothing: the host is already known in that group.
    Known,
    /// A new lock-only host.
    Create,
    /// The lock-only host moves from its group `from` to the named one.
    Move { from: Vec<String> },
}

impl StateMachine {
    /// What `RegisterLockOnly{host, group}` would do now, or why it would be refused. The
    /// machine applies exactly this; the service asks it first to skip a write that would
    /// change nothing.
    pub fn lock_only_plan(&self, host: &str, group: &str) -> Result<LockOnlyPlan, StateError> {
        check_host(host)?;
        check_group(group)?;
        if !self.groups.contains_key(group) {
            return Err(StateError::UnknownGroup {
                group: group.to_string(),
            });
        }
        let Some(h) = self.hosts.get(host) else {
            return Ok(LockOnlyPlan::Create);
        };
        if h.groups.iter().any(|g| g == group) {
            return Ok(LockOnlyPlan::Known);
        }
        if !h.is_lock_only() {
            return Err(StateError::NotInGroup {
                host: host.to_string(),
                group: group.to_string(),
                groups: h.groups.clone(),
            });
        }
        if let Some(token) = h.slot {
            return Err(StateError::GroupsChangeWhileHolding {
                host: host.to_string(),
                token,
                from: h.groups.clone(),
                to: vec![group.to_string()],
            });
        }
        Ok(LockOnlyPlan::Move {
            from: h.groups.clone(),
        })
    }

    /// The slot `host` holds through FleetLock, if any.
    pub fn fleetlock_slot(&self, host: &str) -> Option<&Slot> {
        let token = self.hosts.get(host)?.slot?;
        self.slots.get(&token).filter(|s| s.purpose == FLEETLOCK)
    }

    /// Applies `RegisterLockOnly`.
    pub(super) fn register_lock_only(
        &mut self,
        ctx: &Ctx,
        host: String,
        group: String,
    ) -> Response {
        match self.lock_only_plan(&host, &group)? {
            LockOnlyPlan::Known => {}
            LockOnlyPlan::Create => {
                let groups = vec![group.clone()];
                self.index(&host, &groups);
                let known = Host::lock_only(host.clone(), group.clone(), ctx.at_ms);
                self.hosts.insert(host.clone(), known);
                let detail = format!("host {host}: lock-only host of group {group} (FleetLock)");
                self.record(ctx, "register_lock_only", detail);
            }
            LockOnlyPlan::Move { from } => {
                self.unindex(&host, &from);
                let groups = vec![group.clone()];
                self.index(&host, &groups);
                if let Some(h) = self.hosts.get_mut(&host) {
                    h.groups = groups;
                }
                let detail = format!(
                    "host {host}: lock-only host moved from group {} to {group} (FleetLock)",
                    from.join(", ")
                );
                self.record(ctx, "register_lock_only", detail);
            }
        }
        Ok(Answer::Done)
    }

    /// `id` for a command that carries an agent's facts (reports, reachability): refused for a
    /// lock-only host, whose facts are fixed until an agent registers it.
    pub(super) fn agent_host_mut(&mut self, id: &str) -> Result<&mut Host, StateError> {
        let host = self.host_mut(id)?;
        if host.is_lock_only() {
            return Err(StateError::LockOnlyHost {
                host: id.to_string(),
            });
        }
        Ok(host)
    }

    /// The invariant of lock-only hosts (see the module docs).
    pub(super) fn check_lock_only_hosts(&self) -> Result<(), String> {
        for h in self.hosts.values().filter(|h| h.is_lock_only()) {
            if h.groups.len() != 1 {
                return Err(format!(
                    "lock-only host {:?} has groups {:?}; it must have one",
                    h.id, h.groups
                ));
            }
            let assumed = h.reachability == Reachability::Reachable
                && h.health == Health::Healthy
                && h.rotation == Rotation::InRotation
                && h.release.is_empty();
            if !assumed {
                return Err(format!(
                    "lock-only host {:?} has reported facts ({:?}, {:?}, {:?}, release {:?})",
                    h.id, h.reachability, h.health, h.rotation, h.release
                ));
            }
        }
        Ok(())
    }
}
