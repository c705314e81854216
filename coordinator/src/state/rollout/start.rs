//! `StartRollout`: the checks, idempotence by id, supersede, and the steps.
//!
//! Everything is checked before anything changes, so a refused start leaves the state as it
//! was. The order of the checks is the order an operator wants to hear about problems in: the
//! request itself (names, release, policy), then whether the id is a retry, then the group
//! (exists, has hosts, budget, a lone host), then conflicts with other active rollouts.
//!
//! A start whose id exists answers that rollout when the request is the same (a retry, through
//! any coordinator), and is refused when it differs: ids are how release tooling makes a start
//! safe to retry, so reusing one for something else must not pass silently.

use super::error::RolloutError;
use super::model::{
    Policy, ReleaseSpec, Rollout, RolloutKind, RolloutSpec, RolloutState, Step, StepPhase,
    DEFAULT_PROGRESS_DEADLINE_MS, MAX_PROGRESS_DEADLINE_MS, MAX_TERMINAL, MIN_PROGRESS_DEADLINE_MS,
};
use super::{At, Fleet, Rollouts};
use crate::state::error::StateError;
use crate::state::host::{Health, Host};
use hotdeploy_common::names::{check_group, check_release, check_rollout};
use std::collections::VecDeque;

/// The longest artifact URL accepted.
pub const MAX_URL_LEN: usize = 4096;
/// The longest signature accepted (base64 of 64 bytes is 88 characters).
pub const MAX_SIGNATURE_LEN: usize = 256;

/// What a successful start did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::state) struct Started {
    pub id: String,
    /// False when the id existed with the same request (a retry).
    pub created: bool,
    /// The rollouts aborted to make room (supersede, or catch-ups).
    pub superseded: Vec<String>,
}

/// Checks a release: its id, a 64-hex-digit sha256, a `file:///`, `http://` or `https://`
/// URL of at most [`MAX_URL_LEN`] characters, and a base64 signature (or none).
pub fn check_release_spec(r: &ReleaseSpec) -> Result<(), StateError> {
    check_release(&r.id)?;
    if r.sha256.len() != 64 || !r.sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(RolloutError::Invalid(format!(
            "sha256 must be 64 hex digits, got {:?}",
            r.sha256.chars().take(80).collect::<String>()
        ))
        .into());
    }
    if r.artifact_url.len() > MAX_URL_LEN {
        return Err(RolloutError::Invalid(format!(
            "artifact URL is longer than {MAX_URL_LEN} characters"
        ))
        .into());
    }
    let scheme_ok = ["file:///", "http://", "https://"]
        .iter()
        .any(|p| r.artifact_url.len() > p.len() && r.artifact_url.starts_with(p));
    if !scheme_ok || r.artifact_url.chars().any(char::is_whitespace) {
        return Err(RolloutError::Invalid(format!(
            "artifact URL {:?} must be file:///ABSOLUTE/PATH, http://... or https://...",
            r.artifact_url.chars().take(200).collect::<String>()
        ))
        .into());
    }
    let sig_ok = r.signature.len() <= MAX_SIGNATURE_LEN
        && r.signature
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='));
    if !sig_ok {
        return Err(RolloutError::Invalid(format!(
            "signature must be base64 text of at most {MAX_SIGNATURE_LEN} characters \
             (an ed25519 signature over the artifact's sha256 digest)"
        ))
        .into());
    }
    Ok(())
}

/// The policy in force for `spec` on a group whose budget is `budget` and that has `hosts`
/// hosts, or why it is refused.
fn resolve_policy(spec: &RolloutSpec, budget: u64, hosts: u64) -> Result<Policy, StateError> {
    if spec.batch > budget {
        return Err(RolloutError::BatchOverBudget {
            group: spec.group.clone(),
            batch: spec.batch,
            budget,
        }
        .into());
    }
    if spec.canary > hosts {
        return Err(RolloutError::CanaryOverHosts {
            group: spec.group.clone(),
            canary: spec.canary,
            hosts,
        }
        .into());
    }
    Ok(Policy {
        batch: if spec.batch == 0 { budget } else { spec.batch },
        canary: spec.canary,
        pause_after_canary: spec.pause_after_canary,
        max_failures: spec.max_failures.max(1),
        auto_rollback: spec.auto_rollback,
        progress_deadline_ms: if spec.progress_deadline_ms == 0 {
            DEFAULT_PROGRESS_DEADLINE_MS
        } else {
            spec.progress_deadline_ms
        },
    })
}

/// The checks that need no state.
fn check_request(spec: &RolloutSpec) -> Result<(), StateError> {
    check_rollout(&spec.id)?;
    check_group(&spec.group)?;
    check_release_spec(&spec.release)?;
    let d = spec.progress_deadline_ms;
    if d != 0 && !(MIN_PROGRESS_DEADLINE_MS..=MAX_PROGRESS_DEADLINE_MS).contains(&d) {
        return Err(
            RolloutError::Invalid(format!("progress deadline {d} ms is outside 1s..7d")).into(),
        );
    }
    if spec.pause_after_canary && spec.canary == 0 {
        return Err(RolloutError::Invalid(
            "pause_after_canary needs canary hosts: give --canary N".to_string(),
        )
        .into());
    }
    Ok(())
}

/// Whether `host` already runs `release`, healthy and idle (a host holding a slot may be in
/// the middle of a deploy to something else): its step succeeds at once.
pub(super) fn already_on(host: &Host, release: &ReleaseSpec) -> bool {
    host.health == Health::Healthy && host.release == release.id && host.slot.is_none()
}

/// Another active rollout in the way of a start.
struct Conflict {
    id: String,
    catch_up: bool,
    what: String,
    state: String,
}

impl Rollouts {
    /// Applies `StartRollout`.
    pub fn start(
        &mut self,
        at: &At,
        spec: RolloutSpec,
        fleet: Fleet<'_>,
    ) -> Result<Started, StateError> {
        check_request(&spec)?;
        if let Some(existing) = self.by_id.get(&spec.id) {
            return match &existing.requested {
                Some(req) if req.same_request(&spec) => Ok(Started {
                    id: spec.id,
                    created: false,
                    superseded: Vec::new(),
                }),
                _ => Err(RolloutError::IdTaken {
                    id: spec.id.clone(),
                    existing: format!(
                        "group {}, release {}, {}",
                        existing.group,
                        existing.release.id,
                        existing.state.as_str()
                    ),
                }
                .into()),
            };
        }
        let group = fleet
            .groups
            .get(&spec.group)
            .ok_or_else(|| StateError::UnknownGroup {
                group: spec.group.clone(),
            })?;
        let hosts = fleet.targets(&spec.group);
        if hosts.is_empty() {
            return Err(RolloutError::NoHosts {
                group: spec.group.clone(),
            }
            .into());
        }
        // The budget counts every provisioned host, FleetLock's lock-only ones included.
        let provisioned: Vec<&Host> = fleet
            .members(&spec.group)
            .into_iter()
            .filter(|h| h.is_provisioned())
            .collect();
        let budget = group.max_unavailable.budget(provisioned.len() as u64);
        let policy = resolve_policy(&spec, budget, hosts.len() as u64)?;
        // A group of one host: one member in all, provisioned. Members that are still
        // unprovisioned (their first install just finished and their report is on its way, or
        // they have none yet) make it a larger group, not a lone host; the lock judges each
        // slot as they come.
        let members = fleet.members(&spec.group);
        if let [lone] = members.as_slice() {
            if lone.is_provisioned()
                && !group.allow_zero_available
                && !already_on(lone, &spec.release)
            {
                return Err(StateError::LoneHost {
                    host: lone.id.clone(),
                    group: spec.group.clone(),
                });
            }
        }
        let ids: Vec<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
        let conflicts = self.conflicts(&spec.group, &ids);
        if let Some(c) = conflicts.iter().find(|c| !c.catch_up) {
            if !spec.supersede {
                return Err(RolloutError::Conflict {
                    what: c.what.clone(),
                    other: c.id.clone(),
                    state: c.state.clone(),
                }
                .into());
            }
        }
        // Every check passed: change things.
        let mut superseded = Vec::new();
        for c in conflicts {
            self.supersede(at, &c.id, &spec.id);
            superseded.push(c.id);
        }
        let previous = self.group_release(&spec.group).cloned();
        let id = spec.id.clone();
        let group = spec.group.clone();
        let mut release = spec.release.clone();
        release.sha256.make_ascii_lowercase();
        let r = new_rollout(
            at,
            RolloutKind::Operator,
            &id,
            &group,
            release,
            Some(spec),
            policy,
            previous,
            &hosts,
        );
        self.insert(r);
        Ok(Started {
            id,
            created: true,
            superseded,
        })
    }

    /// Inserts a new rollout, records the steps that succeeded at once, and trims history.
    pub(super) fn insert(&mut self, r: Rollout) {
        let id = r.id.clone();
        let done: Vec<String> = r
            .steps
            .iter()
            .filter(|s| s.phase == StepPhase::Succeeded)
            .map(|s| s.host.clone())
            .collect();
        self.by_id.insert(id.clone(), r);
        self.active_steps.touch_rollout(&id);
        for host in done {
            self.record_success(&id, &host);
        }
        self.trim();
    }

    /// Active rollouts that `group` (hosts `hosts`) would collide with.
    fn conflicts(&self, group: &str, hosts: &[&str]) -> Vec<Conflict> {
        let mut out = Vec::new();
        for r in self.list().into_iter().filter(|r| r.state.is_active()) {
            let catch_up = r.kind == RolloutKind::CatchUp;
            let what = if !catch_up && r.group == group {
                Some(format!("group {group:?}"))
            } else {
                r.steps
                    .iter()
                    .find(|s| !s.phase.is_terminal() && hosts.contains(&s.host.as_str()))
                    .map(|s| format!("host {:?} (through group {:?})", s.host, r.group))
            };
            if let Some(what) = what {
                out.push(Conflict {
                    id: r.id.clone(),
                    catch_up,
                    what,
                    state: r.state.as_str().to_string(),
                });
            }
        }
        out
    }

    /// Aborts rollout `id` because `by` supersedes it. In-flight hosts finish their deploy.
    pub(super) fn supersede(&mut self, at: &At, id: &str, by: &str) {
        if let Some(r) = self.by_id.get_mut(id) {
            r.superseded_by = by.to_string();
            r.set_state(
                RolloutState::Aborted,
                format!("superseded by {by}"),
                at.at_ms,
            );
            r.log(
                at.index,
                at.at_ms,
                "",
                format!("superseded by rollout {by}"),
            );
            self.active_steps.touch_rollout(id);
        }
    }

    /// Forgets the oldest terminal rollouts beyond [`MAX_TERMINAL`].
    fn trim(&mut self) {
        let terminal: Vec<(u64, String)> = self
            .by_id
            .values()
            .filter(|r| !r.state.is_active())
            .map(|r| (r.created_index, r.id.clone()))
            .collect();
        if terminal.len() <= MAX_TERMINAL {
            return;
        }
        let mut terminal = terminal;
        terminal.sort();
        let excess = terminal.len() - MAX_TERMINAL;
        for (_, id) in terminal.into_iter().take(excess) {
            if let Some(r) = self.by_id.remove(&id) {
                // Terminal, so nothing should point at it; should something, its step marks
                // clear it.
                for s in &r.steps {
                    self.active_steps.touch_step(&id, &s.host);
                }
            }
        }
    }
}

/// A new running rollout of `release` to `hosts` (in id order). Hosts already on the release
/// succeed at once; the first `policy.canary` of the others are the canaries.
#[allow(clippy::too_many_arguments)]
pub(super) fn new_rollout(
    at: &At,
    kind: RolloutKind,
    id: &str,
    group: &str,
    release: ReleaseSpec,
    requested: Option<RolloutSpec>,
    policy: Policy,
    previous: Option<ReleaseSpec>,
    hosts: &[&Host],
) -> Rollout {
    let mut r = Rollout {
        id: id.to_string(),
        kind,
        group: group.to_string(),
        release,
        requested,
        policy,
        state: RolloutState::Running,
        reason: String::new(),
        previous,
        actor: at.actor.to_string(),
        created_index: at.index,
        created_at_ms: at.at_ms,
        updated_at_ms: at.at_ms,
        last_progress_at_ms: at.at_ms,
        finished_at_ms: None,
        canary_pause_done: false,
        superseded_by: String::new(),
        rollback: String::new(),
        steps: Vec::new(),
        events: VecDeque::new(),
        events_dropped: 0,
        positions: Default::default(),
    };
    r.log(
        at.index,
        at.at_ms,
        "",
        format!(
            "{} rollout of release {} to group {} ({} hosts) started by {}: batch {}, canary {}, \
             max_failures {}",
            kind.as_str(),
            r.release.id,
            group,
            hosts.len(),
            at.actor,
            r.policy.batch,
            r.policy.canary,
            r.policy.max_failures
        ),
    );
    let mut canaries_left = r.policy.canary;
    for h in hosts {
        let mut step = Step::new(h.id.clone(), h.release.clone(), at.at_ms);
        if already_on(h, &r.release) {
            step.enter(StepPhase::Succeeded, at.at_ms);
            r.log(
                at.index,
                at.at_ms,
                &h.id,
                format!("already on {}: nothing to do", r.release.id),
            );
        } else if canaries_left > 0 {
            step.canary = true;
            canaries_left -= 1;
        }
        r.push_step(step);
    }
    r
}
