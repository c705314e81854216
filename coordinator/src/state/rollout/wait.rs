//! What each step of a rollout waits on: "no silent hang" (DESIGN §5).
//!
//! Computed from the state when asked, never stored, so it is never stale: `rollout status`,
//! `GetRollout` and `WatchRollout` show it per host, and the progress deadline's halt reason
//! quotes it. A step that is deploying (it holds its slot, or is a first install under way)
//! waits on nothing here; a terminal one neither.

use super::admit;
use super::model::{Rollout, RolloutState, StepPhase};
use super::{serves, Fleet, Rollouts};
use crate::state::error::StateError;
use crate::state::host::{Health, Host, Reachability, Rotation};
use crate::state::lock;
use std::collections::BTreeMap;
use std::fmt;

/// Why one host of a group counts as unavailable, for a budget wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    pub host: String,
    pub why: String,
}

/// What a step waits on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// No heartbeat from the host.
    Unreachable,
    /// Its agent has not staged the release yet.
    Staging,
    /// The rollout is paused, halted or aborted.
    NotRunning { state: RolloutState, reason: String },
    /// Canary hosts go first.
    Canaries { hosts: Vec<String> },
    /// As many hosts as `batch` are in flight.
    Batch { batch: u64, hosts: Vec<String> },
    /// The host holds a slot for something else.
    SlotHeld {
        token: u64,
        purpose: String,
        rollout: String,
    },
    /// The lock refuses for budget.
    Budget {
        group: String,
        budget: u64,
        used_by: Vec<Unavailable>,
    },
    /// The lock refuses for another reason, in its words.
    Lock(String),
    /// Admitted, and the lock would grant: the agent is about to take its slot.
    TakingSlot,
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wait::Unreachable => write!(f, "host unreachable (no heartbeat)"),
            Wait::Staging => write!(f, "staging on the agent"),
            Wait::NotRunning { state, reason } if reason.is_empty() => {
                write!(f, "rollout {}", state.as_str())
            }
            Wait::NotRunning { state, reason } => write!(f, "rollout {}: {reason}", state.as_str()),
            Wait::Canaries { hosts } => write!(f, "canary hosts first: {}", hosts.join(", ")),
            Wait::Batch { batch, hosts } => {
                write!(f, "batch of {batch} is full: {}", hosts.join(", "))
            }
            Wait::SlotHeld {
                token,
                purpose,
                rollout,
            } if rollout.is_empty() => write!(f, "holds slot {token} for {purpose}"),
            Wait::SlotHeld { token, rollout, .. } => {
                write!(f, "holds slot {token} for rollout {rollout}")
            }
            Wait::Budget {
                group,
                budget,
                used_by,
            } => {
                let used: Vec<String> = used_by
                    .iter()
                    .map(|u| format!("{} ({})", u.host, u.why))
                    .collect();
                write!(
                    f,
                    "budget: group {group} (budget {budget}) is used by {}",
                    if used.is_empty() {
                        "(none)".to_string()
                    } else {
                        used.join(", ")
                    }
                )
            }
            Wait::Lock(why) => write!(f, "{why}"),
            Wait::TakingSlot => write!(f, "taking a slot"),
        }
    }
}

/// Why `h` is in Unavailable(g), in a few words.
fn why_unavailable(h: &Host, fleet: Fleet<'_>) -> String {
    if let Some(s) = fleet.slot_of(&h.id) {
        return if s.rollout.is_empty() {
            format!("slot {} for {}", s.token, s.purpose)
        } else {
            format!("slot {} for rollout {}", s.token, s.rollout)
        };
    }
    if h.reachability == Reachability::Unreachable {
        return "unreachable".to_string();
    }
    if h.health == Health::Unhealthy {
        return "unhealthy".to_string();
    }
    match h.rotation {
        Rotation::Draining => "draining".to_string(),
        Rotation::OutOfRotation => "out of rotation".to_string(),
        Rotation::InRotation => "unavailable".to_string(),
    }
}

impl Rollouts {
    /// What each waiting step of `r` waits on, by host.
    pub fn waits(&self, r: &Rollout, fleet: Fleet<'_>) -> BTreeMap<String, Wait> {
        let mut out = BTreeMap::new();
        let open_canaries: Vec<String> = r
            .steps
            .iter()
            .filter(|s| s.canary && !s.phase.is_terminal())
            .map(|s| s.host.clone())
            .collect();
        let in_flight: Vec<String> = r
            .steps
            .iter()
            .filter(|s| admit::counts_in_flight(r, s, fleet))
            .map(|s| s.host.clone())
            .collect();
        for s in r.steps.iter().filter(|s| !s.phase.is_terminal()) {
            let Some(host) = fleet.host(&s.host) else {
                continue;
            };
            let held = fleet.slot_of(&s.host);
            let wait = if host.reachability == Reachability::Unreachable {
                Some(Wait::Unreachable)
            } else {
                match s.phase {
                    StepPhase::Pending | StepPhase::Staging => Some(Wait::Staging),
                    StepPhase::Staged | StepPhase::Waiting if r.state != RolloutState::Running => {
                        Some(Wait::NotRunning {
                            state: r.state,
                            reason: r.reason.clone(),
                        })
                    }
                    StepPhase::Staged | StepPhase::Waiting
                        if held.is_some_and(|slot| !serves(slot, r)) =>
                    {
                        held.map(|slot| Wait::SlotHeld {
                            token: slot.token,
                            purpose: slot.purpose.clone(),
                            rollout: slot.rollout.clone(),
                        })
                    }
                    StepPhase::Staged if !open_canaries.is_empty() && !s.canary => {
                        Some(Wait::Canaries {
                            hosts: open_canaries.clone(),
                        })
                    }
                    StepPhase::Staged => Some(Wait::Batch {
                        batch: r.policy.batch,
                        hosts: in_flight.clone(),
                    }),
                    StepPhase::Waiting if held.is_none() && !s.first_install => {
                        Some(lock_wait(host, fleet))
                    }
                    _ => None,
                }
            };
            if let Some(w) = wait {
                out.insert(s.host.clone(), w);
            }
        }
        out
    }
}

/// What the lock says to a new slot for `host`, as a wait.
fn lock_wait(host: &Host, fleet: Fleet<'_>) -> Wait {
    match lock::check_grant(host, fleet.hosts, fleet.groups) {
        Ok(()) => Wait::TakingSlot,
        Err(StateError::OverBudget {
            group,
            budget,
            unavailable,
            ..
        }) => Wait::Budget {
            group,
            budget,
            used_by: unavailable
                .into_iter()
                .map(|id| Unavailable {
                    why: fleet
                        .host(&id)
                        .map(|h| why_unavailable(h, fleet))
                        .unwrap_or_default(),
                    host: id,
                })
                .collect(),
        },
        Err(e) => Wait::Lock(e.to_string()),
    }
}

/// The waits of `r` in one line, for a halt reason: at most five hosts, then a count; when no
/// step waits, the steps in flight and for how long.
pub(super) fn describe_waits(r: &Rollout, waits: &BTreeMap<String, Wait>, now_ms: u64) -> String {
    const SHOWN: usize = 5;
    let mut parts: Vec<String> = waits
        .iter()
        .take(SHOWN)
        .map(|(h, w)| format!("{h} waits on {w}"))
        .collect();
    if waits.len() > SHOWN {
        parts.push(format!("and {} more", waits.len() - SHOWN));
    }
    if parts.is_empty() {
        parts = r
            .steps
            .iter()
            .filter(|s| !s.phase.is_terminal())
            .take(SHOWN)
            .map(|s| {
                format!(
                    "{} has been {} for {} with no report",
                    s.host,
                    s.phase.as_str(),
                    super::control::words(now_ms.saturating_sub(s.since_ms()))
                )
            })
            .collect();
    }
    if parts.is_empty() {
        "no step is pending".to_string()
    } else {
        parts.join("; ")
    }
}
