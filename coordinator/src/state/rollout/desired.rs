//! Desired releases, and the catch-up of a host that is not on its own.
//!
//! A host's desired release is the release of the latest rollout (by start order) whose step
//! on that host **succeeded**, whichever of the host's groups it targeted; a host that no
//! rollout has reached takes its groups' (the latest rollout of any of them that succeeded on
//! any host). So a host in two groups never flaps between two releases, and a canary that
//! rolled back never makes its release desired.
//!
//! When a host joins or comes back reporting a release other than its desired one, while
//! reachable, holding no slot and with no step in an active rollout, the machine makes a
//! one-host `catch_up` rollout for it. "Joins or comes back" is: a `Register` of a new host, of
//! one that was unreachable, or of one reporting another release than last known (a rebuilt
//! host); or a `MarkReachable`. A re-register after a leader change is none of these, and no
//! report while connected is either: a host an operator deployed by hand is not fought over. The latest catch-up of a host to a release that failed is not repeated until a
//! rollout succeeds on the host, so a broken host is not redeployed in a loop.

use super::model::{Policy, ReleaseSpec, RolloutKind, DEFAULT_PROGRESS_DEADLINE_MS};
use super::start::new_rollout;
use super::{At, Fleet, Rollouts};
use crate::state::host::{Host, Reachability};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A desired release and the rollout that made it so.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub release: ReleaseSpec,
    pub rollout: String,
    pub group: String,
    /// The rollout's `created_index`: later rollouts win.
    pub index: u64,
}

/// `host`'s desired release: its own, else the latest of its groups'.
pub(super) fn desired_for<'a>(
    by_host: &'a BTreeMap<String, Desired>,
    by_group: &'a BTreeMap<String, Desired>,
    host: &Host,
) -> Option<&'a Desired> {
    by_host.get(&host.id).or_else(|| {
        host.groups
            .iter()
            .filter_map(|g| by_group.get(g))
            .max_by_key(|d| d.index)
    })
}

impl Rollouts {
    /// Records that rollout `id` succeeded on `host`.
    pub(super) fn record_success(&mut self, id: &str, host: &str) {
        let Some(r) = self.by_id.get(id) else { return };
        let d = Desired {
            release: r.release.clone(),
            rollout: r.id.clone(),
            group: r.group.clone(),
            index: r.created_index,
        };
        if self
            .host_desired
            .get(host)
            .is_none_or(|old| old.index <= d.index)
        {
            self.host_desired.insert(host.to_string(), d.clone());
        }
        if self
            .group_desired
            .get(&r.group)
            .is_none_or(|old| old.index <= d.index)
        {
            self.group_desired.insert(r.group.clone(), d);
        }
    }

    /// Forgets a removed host's desired release.
    pub(super) fn forget_host(&mut self, host: &str) {
        self.host_desired.remove(host);
    }

    /// The release the group's hosts were last brought to, if any.
    pub(super) fn group_release(&self, group: &str) -> Option<&ReleaseSpec> {
        self.group_desired.get(group).map(|d| &d.release)
    }

    /// After `host` joined or came back: makes a catch-up rollout if it is not on its desired
    /// release. Returns the new rollout's id.
    pub(super) fn maybe_catch_up(
        &mut self,
        at: &At,
        host: &str,
        fleet: Fleet<'_>,
    ) -> Option<String> {
        let h = fleet.host(host)?;
        if h.reachability != Reachability::Reachable || h.slot.is_some() {
            return None;
        }
        if self.scan_active_step_of(host).is_some() {
            return None;
        }
        let desired = self.desired_of(h)?.clone();
        if h.release == desired.release.id {
            return None;
        }
        if self.last_catch_up_failed(host, &desired.release.id) {
            return None;
        }
        let group = if h.groups.contains(&desired.group) {
            desired.group.clone()
        } else {
            h.groups.first()?.clone()
        };
        let id = format!("catchup-{}", at.index);
        let by = At {
            actor: "catch-up",
            ..*at
        };
        let policy = Policy {
            batch: 1,
            canary: 0,
            pause_after_canary: false,
            max_failures: 1,
            auto_rollback: true,
            progress_deadline_ms: DEFAULT_PROGRESS_DEADLINE_MS,
        };
        let mut r = new_rollout(
            &by,
            RolloutKind::CatchUp,
            &id,
            &group,
            desired.release.clone(),
            None,
            policy,
            None,
            &[h],
        );
        let was = if h.release.is_empty() {
            "no release".to_string()
        } else {
            format!("release {}", h.release)
        };
        r.log(
            at.index,
            at.at_ms,
            host,
            format!(
                "{host} came back with {was}; its desired release is {} (from rollout {}): catching up",
                desired.release.id, desired.rollout
            ),
        );
        self.insert(r);
        Some(id)
    }

    /// Whether the newest catch-up of `host` to `release` ended without success.
    fn last_catch_up_failed(&self, host: &str, release: &str) -> bool {
        self.list()
            .into_iter()
            .rev()
            .filter(|r| r.kind == RolloutKind::CatchUp && r.release.id == release)
            .find_map(|r| r.step(host))
            .is_some_and(|s| s.phase.is_failure())
    }
}
