//! Groups: the unit a budget applies to.
//!
//! A group is created before any host joins it, by `SeedGroups` when a cluster is first
//! bootstrapped from the config's `[groups.NAME]`, or by `hotdeployctl groups set`. After the
//! seed, only `SetGroupPolicy` changes a group; the config's values no longer apply.
//!
//! A [`Group`] stores the policy as the operator gave it (`max_unavailable` as `"2"` or `"25%"`)
//! and an index of its member host ids. The integer budget in force is never stored: it follows
//! the group's provisioned size, so it is computed when asked ([`GroupView`], and the grant rule
//! in `lock.rs`). Storing it would let it go stale the moment a host is provisioned.
//!
//! The member index is derived from the hosts' own `groups` lists and rebuilt on restore, so it
//! is not part of the snapshot and can never disagree with the hosts it indexes. Groups are never
//! deleted: nothing asks for it yet, and an empty group costs nothing.

use hotdeploy_common::config::MaxUnavailable;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A group as `SeedGroups` creates it (the config's `[groups.NAME]`, with its name).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GroupSeed {
    pub name: String,
    pub max_unavailable: MaxUnavailable,
    #[serde(default)]
    pub allow_zero_available: bool,
}

/// One group's stored policy and member index.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(super) struct Group {
    pub name: String,
    pub max_unavailable: MaxUnavailable,
    pub allow_zero_available: bool,
    /// Ids of the registered hosts in this group, provisioned or not. Derived; see above.
    #[serde(skip)]
    pub members: BTreeSet<String>,
}

impl Group {
    pub fn new(name: String, max_unavailable: MaxUnavailable, allow_zero_available: bool) -> Self {
        Self {
            name,
            max_unavailable,
            allow_zero_available,
            members: BTreeSet::new(),
        }
    }
}

/// A group as the lock sees it now: what `status` and `groups list` show.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    pub name: String,
    /// As the operator gave it: `"2"` or `"25%"` in JSON.
    pub max_unavailable: MaxUnavailable,
    /// The integer budget in force for the current size.
    pub budget: u64,
    pub allow_zero_available: bool,
    /// Provisioned hosts.
    pub size: u64,
    /// |Unavailable(g)|.
    pub unavailable: u64,
    /// Ids of the hosts holding a slot, sorted.
    pub holders: Vec<String>,
}
