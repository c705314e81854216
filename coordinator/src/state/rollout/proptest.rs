//! Property test: random rollout and lock commands never break the lock or the rollouts.
//!
//! A small fleet (two groups, five hosts, random budgets) goes through random registrations,
//! reports, reachability changes, slots taken and released (for rollouts and not), fenced
//! phases, forced releases, removals, budget changes, and rollouts started, paused, resumed,
//! aborted (with and without rollback), superseded, reported on by their agents and checked
//! for progress. Agents mostly follow their assignment, so rollouts get somewhere. After every
//! step, checked from the public reads (not with the rollout code's own helpers):
//!
//! - **the lock at grant time:** a new grant to a provisioned host leaves none of its groups
//!   over budget, nor with no available host unless allowed or the host was already down;
//! - **the gate:** a new grant for a known rollout was made only while that rollout was
//!   running and had admitted the host;
//! - **batch:** a running rollout never has more than `batch` hosts deploying (admitted and not
//!   done, first installs without a slot aside, plus hosts holding a slot for it);
//! - **canaries first:** a non-canary step is admitted only once every canary step is done;
//! - **one at a time:** at most one active operator/rollback rollout per group, and one
//!   non-terminal step per host across active rollouts; a start aborts another rollout only
//!   when it asks to supersede (catch-ups aside);
//! - **states:** a running rollout has fewer failures than `max_failures`, a completed one
//!   has nothing pending, and a terminal rollout never becomes active again (a halted one may
//!   still be aborted);
//! - **desired release:** a host's desired release is that of the latest rollout (by start)
//!   whose step on it succeeded, tracked here from the steps' transitions;
//! - a refused command changes nothing; the machine's own consistency check passes; snapshot
//!   and restore give back an equal state;
//! - **derived state:** the host → active step index, kept up to date incrementally, equals a
//!   full rebuild; and every host whose heartbeat answer (slot, assignment) changed is in the
//!   change log of that entry, which is all that wakes its heartbeat stream.

use crate::state::{
    Answer, Assignment, Changed, Command, GroupSeed, Health, Host, Proposal, Reachability,
    ReleaseSpec, Report, Response, RolloutKind, RolloutSpec, RolloutState, Rotation, StateMachine,
    StepPhase, StepReport,
};
use ::proptest::prelude::*;
use hotdeploy_common::config::MaxUnavailable;
use std::collections::{BTreeMap, BTreeSet};

const GROUPS: [&str; 2] = ["a", "b"];
const HOSTS: usize = 5;
const IDS: [&str; 4] = ["r0", "r1", "r2", "r3"];
const RELEASES: [&str; 3] = ["v1", "v2", "v3"];

fn host_name(i: usize) -> String {
    format!("h{i}")
}

fn release(i: usize) -> ReleaseSpec {
    ReleaseSpec {
        id: RELEASES[i % RELEASES.len()].to_string(),
        artifact_url: format!("https://releases.example/{}.tar.zst", RELEASES[i % 3]),
        sha256: "0f".repeat(32),
        signature: String::new(),
    }
}

/// What an agent does with its assignment (or, without one, with a random rollout).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    Stage,
    Staged,
    Acquire,
    /// A grant that commits `draining` with it.
    AcquireDraining,
    Phase(usize),
    Swap,
    Succeed,
    /// The outcome and the release of the host's slot in one entry.
    SucceedReleasing,
    Fail,
    RollBack,
    Fenced,
    Release,
    StaleAttempt,
}

#[derive(Debug, Clone)]
enum Op {
    Register {
        host: usize,
        groups: u8,
        health: Health,
        rotation: Rotation,
        release: usize,
    },
    Report {
        host: usize,
        health: Health,
        rotation: Rotation,
        release: usize,
    },
    Unreachable {
        host: usize,
    },
    Reachable {
        host: usize,
        health: Health,
        release: usize,
    },
    Maintenance {
        host: usize,
    },
    ForceRelease {
        host: usize,
    },
    Remove {
        host: usize,
    },
    SetPolicy {
        group: usize,
        budget: MaxUnavailable,
        allow_zero: bool,
    },
    Start {
        id: usize,
        group: usize,
        release: usize,
        batch: u64,
        canary: u64,
        pause: bool,
        max_failures: u64,
        supersede: bool,
    },
    Pause {
        pick: usize,
    },
    Resume {
        pick: usize,
    },
    Abort {
        pick: usize,
        rollback: bool,
    },
    CheckProgress {
        pick: usize,
        jump: bool,
    },
    Agent {
        host: usize,
        act: Act,
        pick: usize,
    },
}

fn budget() -> impl Strategy<Value = MaxUnavailable> {
    prop_oneof![
        (1u64..=2).prop_map(MaxUnavailable::Count),
        prop::sample::select(vec![34u8, 50, 100]).prop_map(MaxUnavailable::Percent),
    ]
}

fn health() -> impl Strategy<Value = Health> {
    prop_oneof![
        4 => Just(Health::Healthy),
        1 => Just(Health::Unhealthy),
        1 => Just(Health::Unprovisioned),
    ]
}

fn rotation() -> impl Strategy<Value = Rotation> {
    prop_oneof![
        4 => Just(Rotation::InRotation),
        1 => Just(Rotation::Draining),
        1 => Just(Rotation::OutOfRotation),
    ]
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        4 => Just(Act::Stage),
        4 => Just(Act::Staged),
        3 => Just(Act::Acquire),
        2 => Just(Act::AcquireDraining),
        3 => (0usize..4).prop_map(Act::Phase),
        1 => Just(Act::Swap),
        4 => Just(Act::Succeed),
        3 => Just(Act::SucceedReleasing),
        1 => Just(Act::Fail),
        1 => Just(Act::RollBack),
        1 => Just(Act::Fenced),
        4 => Just(Act::Release),
        1 => Just(Act::StaleAttempt),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let host = 0..HOSTS;
    let pick = 0usize..8;
    prop_oneof![
        3 => (host.clone(), 1u8..4, health(), rotation(), 0usize..3).prop_map(
            |(host, groups, health, rotation, release)| Op::Register { host, groups, health, rotation, release }),
        2 => (host.clone(), health(), rotation(), 0usize..3).prop_map(
            |(host, health, rotation, release)| Op::Report { host, health, rotation, release }),
        1 => host.clone().prop_map(|host| Op::Unreachable { host }),
        1 => (host.clone(), health(), 0usize..3).prop_map(|(host, health, release)| Op::Reachable { host, health, release }),
        1 => host.clone().prop_map(|host| Op::Maintenance { host }),
        1 => host.clone().prop_map(|host| Op::ForceRelease { host }),
        1 => host.clone().prop_map(|host| Op::Remove { host }),
        1 => (0..GROUPS.len(), budget(), any::<bool>())
            .prop_map(|(group, budget, allow_zero)| Op::SetPolicy { group, budget, allow_zero }),
        3 => (0..IDS.len(), 0..GROUPS.len(), 0usize..3, 0u64..3, 0u64..3, any::<bool>(), 0u64..3, any::<bool>())
            .prop_map(|(id, group, release, batch, canary, pause, max_failures, supersede)| Op::Start {
                id, group, release, batch, canary, pause, max_failures, supersede,
            }),
        1 => pick.clone().prop_map(|pick| Op::Pause { pick }),
        1 => pick.clone().prop_map(|pick| Op::Resume { pick }),
        1 => (pick.clone(), any::<bool>()).prop_map(|(pick, rollback)| Op::Abort { pick, rollback }),
        1 => (pick.clone(), any::<bool>()).prop_map(|(pick, jump)| Op::CheckProgress { pick, jump }),
        20 => (host, act(), pick).prop_map(|(host, act, pick)| Op::Agent { host, act, pick }),
    ]
}

fn seeds() -> impl Strategy<Value = Vec<GroupSeed>> {
    proptest::collection::vec((budget(), any::<bool>()), GROUPS.len()).prop_map(|v| {
        v.into_iter()
            .zip(GROUPS)
            .map(
                |((max_unavailable, allow_zero_available), name)| GroupSeed {
                    name: name.to_string(),
                    max_unavailable,
                    allow_zero_available,
                },
            )
            .collect()
    })
}

fn report(health: Health, rotation: Rotation, rel: usize) -> Report {
    Report {
        health,
        rotation,
        release: if health == Health::Unprovisioned {
            String::new()
        } else {
            RELEASES[rel].to_string()
        },
        phase: "idle".into(),
    }
}

/// A rollout id: one of the kept rollouts, picked by index.
fn picked(sm: &StateMachine, pick: usize) -> String {
    let all = sm.rollouts();
    if all.is_empty() {
        IDS[pick % IDS.len()].to_string()
    } else {
        all[pick % all.len()].id.clone()
    }
}

/// The command `op` stands for in state `sm` (actor, command).
fn command(sm: &StateMachine, op: &Op) -> (String, Command) {
    let operator = "operator/prop".to_string();
    let leader = "leader".to_string();
    match op.clone() {
        Op::Register {
            host,
            groups,
            health,
            rotation,
            release,
        } => (
            format!("agent/{}", host_name(host)),
            Command::Register {
                host: host_name(host),
                groups: GROUPS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| groups & (1 << i) != 0)
                    .map(|(_, g)| g.to_string())
                    .collect(),
                address: String::new(),
                report: report(health, rotation, release),
            },
        ),
        Op::Report {
            host,
            health,
            rotation,
            release,
        } => (
            leader,
            Command::UpdateReport {
                host: host_name(host),
                report: report(health, rotation, release),
            },
        ),
        Op::Unreachable { host } => (
            leader,
            Command::MarkUnreachable {
                host: host_name(host),
            },
        ),
        Op::Reachable {
            host,
            health,
            release,
        } => (
            leader,
            Command::MarkReachable {
                host: host_name(host),
                report: report(health, Rotation::InRotation, release),
            },
        ),
        Op::Maintenance { host } => (
            operator,
            Command::Acquire {
                host: host_name(host),
                purpose: "maintenance".into(),
                reason: "prop".into(),
                rollout: String::new(),
                phase: None,
            },
        ),
        Op::ForceRelease { host } => (
            operator,
            Command::ForceRelease {
                host: host_name(host),
            },
        ),
        Op::Remove { host } => (
            operator,
            Command::RemoveHost {
                host: host_name(host),
                force: true,
            },
        ),
        Op::SetPolicy {
            group,
            budget,
            allow_zero,
        } => (
            operator,
            Command::SetGroupPolicy {
                group: GROUPS[group].into(),
                max_unavailable: Some(budget),
                allow_zero_available: Some(allow_zero),
            },
        ),
        Op::Start {
            id,
            group,
            release: rel,
            batch,
            canary,
            pause,
            max_failures,
            supersede,
        } => (
            operator,
            Command::StartRollout {
                spec: RolloutSpec {
                    id: IDS[id].into(),
                    group: GROUPS[group].into(),
                    release: release(rel),
                    batch,
                    canary,
                    pause_after_canary: pause && canary > 0,
                    max_failures,
                    auto_rollback: true,
                    supersede,
                    progress_deadline_ms: 60_000,
                },
            },
        ),
        Op::Pause { pick } => (
            operator,
            Command::PauseRollout {
                id: picked(sm, pick),
            },
        ),
        Op::Resume { pick } => (
            operator,
            Command::ResumeRollout {
                id: picked(sm, pick),
            },
        ),
        Op::Abort { pick, rollback } => (
            operator,
            Command::AbortRollout {
                id: picked(sm, pick),
                rollback,
            },
        ),
        Op::CheckProgress { pick, .. } => (
            leader,
            Command::CheckProgress {
                rollout: picked(sm, pick),
            },
        ),
        Op::Agent { host, act, pick } => {
            let name = host_name(host);
            let actor = format!("agent/{name}");
            let assignment = sm.assignment(&name);
            let (rollout, attempt) = match &assignment {
                Some(a) => (a.rollout.clone(), a.attempt),
                None => (picked(sm, pick), 1),
            };
            let token = sm.host(&name).and_then(|h| h.slot).unwrap_or(0);
            let step_releasing =
                |r: StepReport, attempt: u32, error: &str, hr: Option<Report>, release| {
                    Command::ReportStep {
                        host: name.clone(),
                        rollout: rollout.clone(),
                        attempt,
                        report: r,
                        error: error.into(),
                        host_report: hr,
                        release,
                    }
                };
            let step = |r: StepReport, attempt: u32, error: &str, hr: Option<Report>| {
                step_releasing(r, attempt, error, hr, None)
            };
            let target = assignment
                .as_ref()
                .map(|a| a.release.id.clone())
                .unwrap_or_else(|| "v1".into());
            let done = Report {
                health: Health::Healthy,
                rotation: Rotation::InRotation,
                release: target,
                phase: "idle".into(),
            };
            let cmd = match act {
                Act::Stage => step(StepReport::Staging, attempt, "", None),
                Act::Staged => step(StepReport::Staged, attempt, "", None),
                Act::Acquire | Act::AcquireDraining => Command::Acquire {
                    host: name.clone(),
                    purpose: "deploy".into(),
                    reason: "rollout".into(),
                    rollout: rollout.clone(),
                    phase: (act == Act::AcquireDraining).then(|| "draining".into()),
                },
                Act::Phase(i) => Command::ReportPhase {
                    host: name.clone(),
                    token,
                    phase: ["draining", "swapped", "verifying", "rolling_back"][i].into(),
                },
                Act::Swap => step(StepReport::Swapping, attempt, "", None),
                Act::Succeed => step(StepReport::Succeeded, attempt, "", Some(done)),
                Act::SucceedReleasing => {
                    step_releasing(StepReport::Succeeded, attempt, "", Some(done), Some(token))
                }
                Act::Fail => step(StepReport::Failed, attempt, "prop failure", None),
                Act::RollBack => step(StepReport::RolledBack, attempt, "verify failed", None),
                Act::Fenced => step(StepReport::Fenced, attempt, "stale token", None),
                Act::Release => Command::Release {
                    host: name.clone(),
                    token,
                },
                Act::StaleAttempt => step(StepReport::Staged, attempt + 1, "", None),
            };
            (actor, cmd)
        }
    }
}

/// Unavailable by DESIGN §3, written out again.
fn down(h: &Host) -> bool {
    h.health != Health::Unprovisioned
        && (h.slot.is_some()
            || h.reachability == Reachability::Unreachable
            || h.health == Health::Unhealthy
            || h.rotation != Rotation::InRotation)
}

/// (size, unavailable, budget, allow_zero) of `group`.
fn count(sm: &StateMachine, group: &str) -> (u64, u64, u64, bool) {
    let members: Vec<&Host> = sm
        .hosts()
        .filter(|h| h.groups.iter().any(|g| g == group))
        .collect();
    let size = members
        .iter()
        .filter(|h| h.health != Health::Unprovisioned)
        .count() as u64;
    let unavailable = members.iter().filter(|h| down(h)).count() as u64;
    let view = sm.group_view(group).expect("group exists");
    (
        size,
        unavailable,
        view.max_unavailable.budget(size),
        view.allow_zero_available,
    )
}

/// Steps deploying for rollout `id`, recounted from the public reads.
fn deploying(sm: &StateMachine, id: &str) -> u64 {
    let Some(r) = sm.rollout(id) else { return 0 };
    r.steps
        .iter()
        .filter(|s| {
            let holds = sm
                .host(&s.host)
                .and_then(|h| h.slot)
                .and_then(|t| sm.slots().into_iter().find(|slot| slot.token == t))
                .is_some_and(|slot| slot.rollout == id && slot.token > r.created_index);
            let in_flight = matches!(
                s.phase,
                StepPhase::Waiting
                    | StepPhase::Draining
                    | StepPhase::Swapping
                    | StepPhase::Verifying
                    | StepPhase::RollingBack
            );
            holds || (in_flight && !s.first_install)
        })
        .count() as u64
}

#[derive(Default)]
struct Oracle {
    /// host → (created index of the rollout, release) of the latest success seen.
    desired: BTreeMap<String, (u64, String)>,
}

fn check(
    oracle: &mut Oracle,
    before: &StateMachine,
    after: &StateMachine,
    index: u64,
    command: &Command,
    response: &Response,
) -> Result<(), TestCaseError> {
    if response.is_err() {
        let mut expected = before.clone();
        expected.skip(index);
        prop_assert_eq!(after, &expected, "refused {:?} changed the state", command);
        return Ok(());
    }
    // The lock, and the gate, at a new grant.
    if let (Command::Acquire { host, rollout, .. }, Ok(Answer::Slot(slot))) = (command, response) {
        if slot.token == index {
            let old = before.host(host).expect("granted host existed");
            if old.health != Health::Unprovisioned {
                for g in &old.groups {
                    let (size, unavailable, budget, allow_zero) = count(after, g);
                    prop_assert!(
                        unavailable <= budget,
                        "grant to {} put {} over budget",
                        host,
                        g
                    );
                    prop_assert!(
                        size > unavailable || allow_zero || down(old),
                        "grant to {} left {} with none available",
                        host,
                        g
                    );
                }
            }
            if let Some(r) = before.rollout(rollout) {
                let step = r.step(host);
                prop_assert!(
                    r.state == RolloutState::Running
                        && step.is_some_and(|s| s.phase.is_in_flight()),
                    "slot for {} granted by rollout {} ({:?}) with its step {:?}",
                    host,
                    rollout,
                    r.state,
                    step.map(|s| s.phase)
                );
            }
        }
    }
    // Only a start that asks to supersede aborts an operator's or a rollback rollout.
    if let Command::StartRollout { spec } = command {
        if !spec.supersede {
            for r in after.rollouts() {
                let was_active = before.rollout(&r.id).is_some_and(|o| o.state.is_active());
                prop_assert!(
                    !(was_active
                        && r.kind != RolloutKind::CatchUp
                        && r.state == RolloutState::Aborted),
                    "start of {} without supersede aborted {}",
                    spec.id,
                    r.id
                );
            }
        }
    }
    let mut group_owner: BTreeMap<String, String> = BTreeMap::new();
    let mut host_owner: BTreeMap<String, String> = BTreeMap::new();
    for r in after.rollouts() {
        let old = before.rollout(&r.id);
        if let Some(old) = old {
            // Terminal is for good; only a halted rollout may still be aborted.
            prop_assert!(
                old.state.is_active()
                    || old.state == r.state
                    || (old.state == RolloutState::Halted && r.state == RolloutState::Aborted),
                "rollout {} went from {:?} to {:?}",
                r.id,
                old.state,
                r.state
            );
        }
        if r.state.is_active() && r.kind != RolloutKind::CatchUp {
            if let Some(other) = group_owner.insert(r.group.clone(), r.id.clone()) {
                prop_assert!(
                    false,
                    "group {} has active rollouts {} and {}",
                    r.group,
                    other,
                    r.id
                );
            }
        }
        if r.state == RolloutState::Running {
            prop_assert!(
                r.failures() < r.policy.max_failures,
                "{} runs with {} failures",
                r.id,
                r.failures()
            );
            let n = deploying(after, &r.id);
            prop_assert!(
                n <= r.policy.batch,
                "{} has {} deploying, batch {}",
                r.id,
                n,
                r.policy.batch
            );
        }
        if r.state == RolloutState::Completed {
            prop_assert_eq!(r.pending(), 0, "{} completed with steps pending", &r.id);
        }
        let canaries_done = r
            .steps
            .iter()
            .filter(|s| s.canary)
            .all(|s| s.phase.is_terminal());
        for s in &r.steps {
            if r.state.is_active() && !s.phase.is_terminal() {
                if let Some(other) = host_owner.insert(s.host.clone(), r.id.clone()) {
                    prop_assert!(false, "host {} has steps in {} and {}", s.host, other, r.id);
                }
            }
            let was = old.and_then(|o| o.step(&s.host)).map(|o| o.phase);
            let newly_admitted =
                s.phase == StepPhase::Waiting && was.is_none_or(|p| p.is_before_admission());
            if newly_admitted && !s.canary {
                prop_assert!(
                    canaries_done,
                    "{} admitted non-canary {} before its canaries",
                    r.id,
                    s.host
                );
            }
            if s.phase == StepPhase::Succeeded && was != Some(StepPhase::Succeeded) {
                let e = oracle
                    .desired
                    .entry(s.host.clone())
                    .or_insert((0, String::new()));
                if e.0 <= r.created_index {
                    *e = (r.created_index, r.release.id.clone());
                }
            }
        }
    }
    if matches!(command, Command::RemoveHost { .. }) {
        if let Command::RemoveHost { host, .. } = command {
            oracle.desired.remove(host);
        }
    }
    for (host, (_, rel)) in &oracle.desired {
        if after.host(host).is_some() {
            let got = after.desired_release(host).map(|d| d.release.id.clone());
            prop_assert_eq!(
                got.as_deref(),
                Some(rel.as_str()),
                "desired release of {}",
                host
            );
        }
    }
    prop_assert_eq!(after.check_consistency(), Ok(()));
    // Admission counts the batch from the slot table and finds the hosts already out from
    // the hosts' states: the same as a lookup of every step's host.
    prop_assert_eq!(
        after.check_admission_shortcuts(),
        Ok(()),
        "after {:?}",
        command
    );
    // The host → active step index says what a walk of every rollout says.
    for h in after.hosts() {
        prop_assert_eq!(
            after.assignment(&h.id),
            after.assignment_by_scan(&h.id),
            "assignment of {} by the index and by a scan",
            &h.id
        );
    }
    // The index, kept up to date from what each command marked, is what a full rebuild
    // makes.
    let (index_now, rebuilt) = after.index_and_rebuild();
    prop_assert_eq!(
        index_now,
        rebuilt,
        "incremental host -> active step index after {:?}",
        command
    );
    check_changes_recorded(before, after, index)?;
    let restored = StateMachine::restore(&after.snapshot().expect("snapshot"));
    prop_assert_eq!(restored.as_ref(), Ok(after));
    Ok(())
}

/// What a heartbeat stream tells `host`: the token of its slot, and its assignment.
fn answer(sm: &StateMachine, host: &str) -> (Option<Option<u64>>, Option<Assignment>) {
    (sm.host(host).map(|h| h.slot), sm.assignment(host))
}

/// Every host whose heartbeat answer the entry at `index` changed is in the change log for
/// that entry (which is all a stream is woken by). Returns how many answers changed.
fn check_changes_recorded(
    before: &StateMachine,
    after: &StateMachine,
    index: u64,
) -> Result<usize, TestCaseError> {
    let changed = after.hosts_changed_after(index - 1);
    let mut hosts: BTreeSet<String> = before.hosts().map(|h| h.id.clone()).collect();
    hosts.extend(after.hosts().map(|h| h.id.clone()));
    let mut n = 0;
    for h in &hosts {
        if answer(before, h) != answer(after, h) {
            n += 1;
            let seen = match &changed {
                Changed::All => true,
                Changed::Hosts(list) => list.contains(&h.as_str()),
            };
            prop_assert!(
                seen,
                "the heartbeat answer of {} changed at {} ({:?} -> {:?}) and was not recorded",
                h,
                index,
                answer(before, h),
                answer(after, h)
            );
        }
    }
    Ok(n)
}

fn run(seeds: Vec<GroupSeed>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut sm = StateMachine::new();
    let mut index = 1;
    let mut at_ms = 1_700_000_000_000;
    let seeded = sm.apply(
        index,
        Proposal::new(None, at_ms, "config", Command::SeedGroups { groups: seeds }),
    );
    prop_assert!(seeded.is_ok());
    let mut oracle = Oracle::default();
    for op in &ops {
        index += 1;
        at_ms += 250;
        if let Op::CheckProgress { jump: true, .. } = op {
            at_ms += 61_000;
        }
        let before = sm.clone();
        let (actor, command) = command(&sm, op);
        let response = sm.apply(index, Proposal::new(None, at_ms, actor, command.clone()));
        check(&mut oracle, &before, &sm, index, &command, &response)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_rollout_and_lock_commands_keep_every_invariant(
        seeds in seeds(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run(seeds, ops)?;
    }
}

/// The generator reaches the interesting states: rollouts complete, halt and get deploys
/// admitted. Without this the property above could pass by never getting anywhere.
#[test]
fn random_sequences_reach_completion_halts_and_admissions() {
    use ::proptest::strategy::ValueTree;
    use ::proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut completed, mut halted, mut grants) = (0, 0, 0);
    // Heartbeat answers that changed, hosts the change log named, and (host, entry) pairs.
    let (mut answers_changed, mut recorded, mut pairs) = (0, 0, 0);
    for _ in 0..200 {
        let seeds = seeds().new_tree(&mut runner).expect("seeds").current();
        let ops = proptest::collection::vec(op(), 60..120)
            .new_tree(&mut runner)
            .expect("ops")
            .current();
        let mut sm = StateMachine::new();
        let mut index = 1;
        let _ = sm.apply(
            index,
            Proposal::new(None, 0, "config", Command::SeedGroups { groups: seeds }),
        );
        for op in &ops {
            index += 1;
            let (actor, command) = command(&sm, op);
            let is_rollout_acquire =
                matches!(&command, Command::Acquire { rollout, .. } if !rollout.is_empty());
            let before = sm.clone();
            let r = sm.apply(index, Proposal::new(None, index * 1000, actor, command));
            answers_changed +=
                check_changes_recorded(&before, &sm, index).expect("every change recorded");
            pairs += sm.hosts().count();
            recorded += match sm.hosts_changed_after(index - 1) {
                Changed::All => sm.hosts().count(),
                Changed::Hosts(h) => h.iter().collect::<BTreeSet<_>>().len(),
            };
            if is_rollout_acquire && matches!(r, Ok(Answer::Slot(ref s)) if s.token == index) {
                grants += 1;
            }
        }
        completed += sm
            .rollouts()
            .iter()
            .filter(|r| r.state == RolloutState::Completed)
            .count();
        halted += sm
            .rollouts()
            .iter()
            .filter(|r| r.state == RolloutState::Halted)
            .count();
    }
    eprintln!("completed {completed}, halted {halted}, rollout grants {grants}");
    eprintln!(
        "heartbeat answers changed {answers_changed}, hosts woken {recorded} of {pairs} \
         (host, entry) pairs"
    );
    assert!(
        answers_changed >= 500,
        "only {answers_changed} answers changed"
    );
    // A stream is woken for its own host's entries, not for every entry.
    assert!(
        recorded * 3 < pairs,
        "{recorded} hosts woken of {pairs} (host, entry) pairs: the log is not selective"
    );
    assert!(completed >= 20, "only {completed} rollouts completed");
    assert!(halted >= 20, "only {halted} rollouts halted");
    assert!(grants >= 50, "only {grants} rollout slots granted");
}
