//! Hosts and the three separate facts the lock reads about each of them.
//!
//! DESIGN §3 keeps *reachability* (set by the leader from heartbeats), *health* (reported by the
//! agent) and *rotation* (reported by the agent) apart, because each can be wrong on its own: a
//! host may be reachable but unhealthy, healthy but draining, or in rotation but silent. Folding
//! them into one status would let a reconnect hide a bad state, so `MarkReachable` carries the
//! agent's latest [`Report`] and overwrites all three together.
//!
//! The one question the lock asks of a host is [`Host::is_unavailable`]: is this host out of
//! service right now, for any reason? An `unprovisioned` host (no release installed yet) serves
//! nobody, so it is neither available nor unavailable: it is simply not counted, in the group's
//! size or in its unavailable set, unless it holds a slot. A slot holder is always counted (as
//! unavailable): an unprovisioned holder may report `healthy` at any moment (its first deploy
//! passed verify), and that report must not push its groups over budget. It was charged at its
//! grant, so the report changes no count ([`Host::is_counted`]).
//!
//! A host is one of two [`HostKind`]s. An *agent* host registered itself (`Register`), sends
//! heartbeats and reports its facts. A *lock-only* host is a FleetLock client (a Zincati node)
//! that asked for a reboot slot under an id no agent has registered (DESIGN §8): it has no
//! heartbeats and no reports, so it is kept `reachable`, `healthy` and `in_rotation` (it counts
//! as available) and is unavailable only while it holds a slot. Liveness never judges it, and
//! rollouts never target it. An agent that later registers the same id turns it into an agent
//! host.
//!
//! Invariants kept by the machine, not by this file: `groups` is sorted, free of duplicates and
//! non-empty, every group in it exists, and `slot` is `Some(token)` exactly when the slot table
//! holds a slot with that token for this host.

use serde::{Deserialize, Serialize};

/// Whether the leader hears the host's heartbeats.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    Reachable,
    Unreachable,
}

/// The service's health as its agent reports it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No release has been installed yet; the host serves nothing and is not counted.
    Unprovisioned,
    Healthy,
    Unhealthy,
}

/// The host's load-balancer rotation state as its agent reports it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Rotation {
    InRotation,
    Draining,
    OutOfRotation,
}

/// Who speaks for a host.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
#[serde(rename_all = "snake_case")]
pub enum HostKind {
    /// A `hotdeploy-agent` registered it and heartbeats for it.
    #[default]
    Agent,
    /// A FleetLock client that no agent has registered: no heartbeats, no reports.
    LockOnly,
}

impl HostKind {
    /// The lower-case name used in JSON and tables.
    pub fn label(self) -> &'static str {
        match self {
            HostKind::Agent => "agent",
            HostKind::LockOnly => "lock_only",
        }
    }

    fn is_agent(&self) -> bool {
        *self == HostKind::Agent
    }
}

/// What an agent says about its host: carried by `Register`, `UpdateReport` and `MarkReachable`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub health: Health,
    pub rotation: Rotation,
    /// The live release id, or `""` when none is installed.
    pub release: String,
    /// The agent's current deploy phase (free text, e.g. `"idle"`, `"draining"`).
    pub phase: String,
}

/// One registered host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub id: String,
    /// Sorted, without duplicates, never empty.
    pub groups: Vec<String>,
    /// The agent's `host:port`, as it registered.
    pub address: String,
    pub reachability: Reachability,
    pub health: Health,
    pub rotation: Rotation,
    pub release: String,
    pub phase: String,
    /// The token of the slot this host holds, if any.
    pub slot: Option<u64>,
    /// When the host first registered (a re-register keeps it), Unix ms of the proposer.
    pub registered_at_ms: u64,
    /// Agent or lock-only. Left out of the JSON for agent hosts, so that a state without
    /// lock-only hosts serializes exactly as before they existed.
    #[serde(default, skip_serializing_if = "HostKind::is_agent")]
    pub kind: HostKind,
}

impl Host {
    /// A FleetLock client of `group` that no agent has registered: healthy, in rotation, known
    /// since `at_ms`.
    pub fn lock_only(id: String, group: String, at_ms: u64) -> Self {
        Host {
            id,
            groups: vec![group],
            address: String::new(),
            reachability: Reachability::Reachable,
            health: Health::Healthy,
            rotation: Rotation::InRotation,
            release: String::new(),
            phase: String::new(),
            slot: None,
            registered_at_ms: at_ms,
            kind: HostKind::LockOnly,
        }
    }

    /// Whether this host is a FleetLock client that no agent has registered.
    pub fn is_lock_only(&self) -> bool {
        self.kind == HostKind::LockOnly
    }

    /// Whether the host has a release installed.
    pub fn is_provisioned(&self) -> bool {
        self.health != Health::Unprovisioned
    }

    /// Whether the host counts in its groups' sizes at all: provisioned, or holding a slot.
    pub fn is_counted(&self) -> bool {
        self.is_provisioned() || self.slot.is_some()
    }

    /// Whether the host is in Unavailable(g) for each of its groups g (DESIGN §3): counted,
    /// and holding a slot, unreachable, unhealthy, or not in rotation.
    pub fn is_unavailable(&self) -> bool {
        self.is_counted()
            && (self.slot.is_some()
                || self.reachability == Reachability::Unreachable
                || self.health == Health::Unhealthy
                || self.rotation != Rotation::InRotation)
    }

    /// Whether the host is counted and serving: in size, not in Unavailable.
    pub fn is_available(&self) -> bool {
        self.is_counted() && !self.is_unavailable()
    }

    /// Overwrites the agent-reported facts.
    pub(super) fn apply_report(&mut self, report: Report) {
        self.health = report.health;
        self.rotation = report.rotation;
        self.release = report.release;
        self.phase = report.phase;
    }
}
