//! Property test: random command sequences never break the lock.
//!
//! A small fleet (three groups, six hosts, random budgets) goes through random registrations,
//! health/rotation/reachability changes, acquires, releases with right and wrong tokens, phase
//! reports, forced releases, budget changes, removals, and FleetLock's lock-only registrations
//! (and `fleetlock` slots). After every step it checks:
//!
//! - **the lock invariant at grant time:** right after a new grant to a provisioned host,
//!   |Unavailable(g)| ≤ budget(g) for every group g of the host, and a group that does not allow
//!   it still has an available host unless the grantee was already unavailable. (Groups *can* be
//!   over budget later: a budget was lowered, or hosts went down on their own. That is allowed;
//!   it is only at a grant that the machine is to blame.) An unprovisioned host is charged like
//!   any other: its grant adds it to the group's size and unavailable set;
//! - **the grant decision** against an independent oracle written from DESIGN §3, both ways: what
//!   it would grant is granted, what it would refuse is refused;
//! - tokens of new grants strictly increase and equal the granting index;
//! - a refused command changes nothing but the applied index;
//! - the machine's own consistency check passes, and snapshot/restore gives back an equal state.
//!
//! Counts are recomputed here from the public reads, not with `lock.rs`, so that a mistake there
//! cannot hide itself.

use super::{
    Answer, Command, GroupSeed, Health, Host, Proposal, Reachability, Report, Rotation, StateError,
    StateMachine, WriteId,
};
use ::proptest::prelude::*;
use hotdeploy_common::config::MaxUnavailable;
use std::collections::BTreeMap;

const GROUPS: [&str; 3] = ["a", "b", "c"];
const HOSTS: usize = 6;
const PURPOSES: [&str; 3] = ["deploy", "maintenance", super::FLEETLOCK];

#[derive(Debug, Clone)]
enum Op {
    Register {
        host: usize,
        groups: u8,
        health: Health,
        rotation: Rotation,
    },
    Report {
        host: usize,
        health: Health,
        rotation: Rotation,
    },
    Unreachable {
        host: usize,
    },
    Reachable {
        host: usize,
        health: Health,
        rotation: Rotation,
    },
    Acquire {
        host: usize,
        purpose: usize,
    },
    Release {
        host: usize,
        right: bool,
        other: u64,
    },
    Phase {
        host: usize,
        right: bool,
        other: u64,
    },
    ForceRelease {
        host: usize,
    },
    SetPolicy {
        group: usize,
        budget: MaxUnavailable,
        allow_zero: Option<bool>,
    },
    Remove {
        host: usize,
        force: bool,
    },
    LockOnly {
        host: usize,
        group: usize,
    },
}

fn host_name(i: usize) -> String {
    format!("h{i}")
}

fn budget() -> impl Strategy<Value = MaxUnavailable> {
    prop_oneof![
        (1u64..=3).prop_map(MaxUnavailable::Count),
        prop::sample::select(vec![20u8, 34, 50, 100]).prop_map(MaxUnavailable::Percent),
    ]
}

fn health() -> impl Strategy<Value = Health> {
    // Healthy most of the time, so that grants are possible often enough to be tested.
    prop_oneof![
        3 => Just(Health::Healthy),
        1 => Just(Health::Unhealthy),
        1 => Just(Health::Unprovisioned),
    ]
}

fn rotation() -> impl Strategy<Value = Rotation> {
    prop_oneof![
        3 => Just(Rotation::InRotation),
        1 => Just(Rotation::Draining),
        1 => Just(Rotation::OutOfRotation),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let host = 0..HOSTS;
    prop_oneof![
        3 => (host.clone(), 0u8..8, health(), rotation()).prop_map(|(host, groups, health, rotation)| {
            Op::Register { host, groups, health, rotation }
        }),
        3 => (host.clone(), health(), rotation())
            .prop_map(|(host, health, rotation)| Op::Report { host, health, rotation }),
        1 => host.clone().prop_map(|host| Op::Unreachable { host }),
        1 => (host.clone(), health(), rotation())
            .prop_map(|(host, health, rotation)| Op::Reachable { host, health, rotation }),
        6 => (host.clone(), 0..PURPOSES.len()).prop_map(|(host, purpose)| Op::Acquire { host, purpose }),
        4 => (host.clone(), any::<bool>(), 0u64..200)
            .prop_map(|(host, right, other)| Op::Release { host, right, other }),
        1 => (host.clone(), any::<bool>(), 0u64..200)
            .prop_map(|(host, right, other)| Op::Phase { host, right, other }),
        1 => host.clone().prop_map(|host| Op::ForceRelease { host }),
        1 => (0..GROUPS.len(), budget(), proptest::option::of(any::<bool>()))
            .prop_map(|(group, budget, allow_zero)| Op::SetPolicy { group, budget, allow_zero }),
        1 => (host.clone(), any::<bool>()).prop_map(|(host, force)| Op::Remove { host, force }),
        2 => (host, 0..GROUPS.len()).prop_map(|(host, group)| Op::LockOnly { host, group }),
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

fn command(sm: &StateMachine, op: &Op) -> Command {
    let report = |health: Health, rotation: Rotation| Report {
        health,
        rotation,
        release: if health == Health::Unprovisioned {
            String::new()
        } else {
            "v1".into()
        },
        phase: "idle".into(),
    };
    let token = |host: usize, right: bool, other: u64| match (right, sm.host(&host_name(host))) {
        (true, Some(Host { slot: Some(t), .. })) => *t,
        _ => other,
    };
    match op.clone() {
        Op::Register {
            host,
            groups,
            health,
            rotation,
        } => Command::Register {
            host: host_name(host),
            groups: GROUPS
                .iter()
                .enumerate()
                .filter(|(i, _)| groups & (1 << i) != 0)
                .map(|(_, g)| g.to_string())
                .collect(),
            address: format!("{}:7001", host_name(host)),
            report: report(health, rotation),
        },
        Op::Report {
            host,
            health,
            rotation,
        } => Command::UpdateReport {
            host: host_name(host),
            report: report(health, rotation),
        },
        Op::Unreachable { host } => Command::MarkUnreachable {
            host: host_name(host),
        },
        Op::Reachable {
            host,
            health,
            rotation,
        } => Command::MarkReachable {
            host: host_name(host),
            report: report(health, rotation),
        },
        Op::Acquire { host, purpose } => Command::Acquire {
            host: host_name(host),
            purpose: PURPOSES[purpose].into(),
            reason: "prop".into(),
            rollout: String::new(),
            phase: None,
        },
        Op::Release { host, right, other } => Command::Release {
            host: host_name(host),
            token: token(host, right, other),
        },
        Op::Phase { host, right, other } => Command::ReportPhase {
            host: host_name(host),
            token: token(host, right, other),
            phase: "draining".into(),
        },
        Op::ForceRelease { host } => Command::ForceRelease {
            host: host_name(host),
        },
        Op::SetPolicy {
            group,
            budget,
            allow_zero,
        } => Command::SetGroupPolicy {
            group: GROUPS[group].into(),
            max_unavailable: Some(budget),
            allow_zero_available: allow_zero,
        },
        Op::Remove { host, force } => Command::RemoveHost {
            host: host_name(host),
            force,
        },
        Op::LockOnly { host, group } => Command::RegisterLockOnly {
            host: host_name(host),
            group: GROUPS[group].into(),
        },
    }
}

/// Counted in its groups: provisioned, or holding a slot (a holder may turn healthy at any
/// report, and was charged at its grant).
fn counted(h: &Host) -> bool {
    h.health != Health::Unprovisioned || h.slot.is_some()
}

/// Unavailable by DESIGN §3, written out again.
fn down(h: &Host) -> bool {
    counted(h)
        && (h.slot.is_some()
            || h.reachability == Reachability::Unreachable
            || h.health == Health::Unhealthy
            || h.rotation != Rotation::InRotation)
}

/// (size, unavailable host ids, budget, allow_zero_available) of `group`.
fn count(sm: &StateMachine, group: &str) -> (u64, Vec<String>, u64, bool) {
    let members: Vec<&Host> = sm
        .hosts()
        .filter(|h| h.groups.iter().any(|g| g == group))
        .collect();
    let size = members.iter().filter(|h| counted(h)).count() as u64;
    let unavailable: Vec<String> = members
        .iter()
        .filter(|h| down(h))
        .map(|h| h.id.clone())
        .collect();
    let view = sm.group_view(group).expect("group exists");
    (
        size,
        unavailable,
        view.max_unavailable.budget(size),
        view.allow_zero_available,
    )
}

/// Would DESIGN §3 grant a *new* slot to `host` (which exists and holds none)? Judged on the
/// group as it will be once the host holds it: an uncounted host joins the size too.
fn oracle_grants(sm: &StateMachine, host: &Host) -> bool {
    let available = counted(host) && !down(host);
    host.groups.iter().all(|g| {
        let (size, mut unavailable, _, allow_zero) = count(sm, g);
        let size = size + u64::from(!counted(host));
        let budget = sm
            .group_view(g)
            .expect("group exists")
            .max_unavailable
            .budget(size);
        if !unavailable.contains(&host.id) {
            unavailable.push(host.id.clone());
        }
        let n = unavailable.len() as u64;
        n <= budget && (!available || allow_zero || size > n)
    })
}

fn run(seeds: Vec<GroupSeed>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut sm = StateMachine::new();
    let mut index = 0;
    let mut at_ms = 1_700_000_000_000;
    let mut last_token = 0;
    let mut apply = |sm: &mut StateMachine, command: Command| {
        index += 1;
        at_ms += 250;
        (
            index,
            sm.apply(index, Proposal::new(None, at_ms, "operator/prop", command)),
        )
    };
    let (_, seeded) = apply(&mut sm, Command::SeedGroups { groups: seeds });
    prop_assert!(seeded.is_ok());

    for op in &ops {
        let before = sm.clone();
        let command = command(&sm, op);
        let (index, response) = apply(&mut sm, command.clone());

        match (&command, &response) {
            (_, Err(_)) => {
                let mut expected = before.clone();
                expected.skip(index);
                prop_assert_eq!(&sm, &expected, "refused {:?} changed the state", command);
            }
            (Command::Acquire { host, .. }, Ok(Answer::Slot(slot))) => {
                let old = before.host(host).expect("granted host existed");
                if let Some(held) = old.slot {
                    prop_assert_eq!(slot.token, held, "re-entrant acquire keeps the token");
                    continue;
                }
                prop_assert_eq!(slot.token, index);
                prop_assert!(
                    slot.token > last_token,
                    "token {} after {}",
                    slot.token,
                    last_token
                );
                last_token = slot.token;
                for g in &old.groups {
                    let (size, unavailable, budget, allow_zero) = count(&sm, g);
                    prop_assert!(
                        unavailable.len() as u64 <= budget,
                        "grant to {} left {} over budget {}: {:?}",
                        host,
                        g,
                        budget,
                        unavailable
                    );
                    let available = size - unavailable.len() as u64;
                    prop_assert!(
                        available >= 1 || allow_zero || !counted(old) || down(old),
                        "grant to {} left {} with none available",
                        host,
                        g
                    );
                }
            }
            _ => {}
        }

        // The grant decision agrees with the oracle, both ways.
        if let Command::Acquire { host, .. } = &command {
            if let Some(old) = before.host(host).filter(|h| h.slot.is_none()) {
                let granted = response.is_ok();
                prop_assert_eq!(
                    granted,
                    oracle_grants(&before, old),
                    "acquire {} answered {:?}",
                    host,
                    response
                );
                if let Err(e) = &response {
                    prop_assert!(
                        matches!(
                            e,
                            StateError::OverBudget { .. }
                                | StateError::ZeroAvailable { .. }
                                | StateError::LoneHost { .. }
                        ),
                        "{:?}",
                        e
                    );
                }
            }
        }

        prop_assert_eq!(sm.check_consistency(), Ok(()));
        let restored = StateMachine::restore(&sm.snapshot().expect("snapshot"));
        prop_assert_eq!(restored.as_ref(), Ok(&sm));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_commands_never_break_the_lock(
        seeds in seeds(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(seeds, ops)?;
    }
}

/// Random client writes, some of them retried: a retry (within the client's window) gets the
/// first answer back and changes no host, slot or group, whatever happened in between.
fn run_retries(
    seeds: Vec<GroupSeed>,
    steps: Vec<(Op, usize, Option<usize>)>,
) -> Result<(), TestCaseError> {
    let mut sm = StateMachine::new();
    let mut index = 1;
    let seeded = sm.apply(
        index,
        Proposal::new(None, 0, "leader", Command::SeedGroups { groups: seeds }),
    );
    prop_assert!(seeded.is_ok());
    let mut history: Vec<(WriteId, Command, super::Response)> = Vec::new();
    let mut next_seq = [0u64; 2];
    for (op, client, retry) in steps {
        index += 1;
        let at_ms = index * 100;
        let retried = retry.filter(|_| !history.is_empty()).map(|back| {
            let n = history.len();
            history[n - 1 - back % n.min(super::session::WINDOW)].clone()
        });
        match retried {
            Some((write, command, first)) if matches!(&first, Err(e) if e.is_retryable()) => {
                // A retryable refusal is not remembered: the retry is judged afresh, exactly as
                // the same command without a write id would be.
                let mut fresh = sm.clone();
                let expected =
                    fresh.apply(index, Proposal::new(None, at_ms, "agent", command.clone()));
                let again = sm.apply(
                    index,
                    Proposal::new(Some(write.clone()), at_ms, "agent", command.clone()),
                );
                prop_assert_eq!(&again, &expected, "retry of {:?}", write);
                prop_assert!(fresh.hosts().eq(sm.hosts()));
                prop_assert_eq!(fresh.slots(), sm.slots());
                if let Some(entry) = history.iter_mut().find(|(w, _, _)| *w == write) {
                    entry.2 = again;
                }
            }
            Some((write, command, first)) => {
                let before = sm.clone();
                // A grant is answered again only while its slot is held; once freed, the retry
                // is told its token is stale (and takes nothing).
                let expected = match &first {
                    Ok(Answer::Slot(slot)) => {
                        let current = sm.host(&slot.host).and_then(|h| h.slot);
                        if current == Some(slot.token) {
                            first.clone()
                        } else {
                            Err(StateError::StaleToken {
                                host: slot.host.clone(),
                                given: slot.token,
                                current,
                            })
                        }
                    }
                    _ => first.clone(),
                };
                let again = sm.apply(
                    index,
                    Proposal::new(Some(write.clone()), at_ms, "agent", command),
                );
                prop_assert_eq!(&again, &expected, "retry of {:?}", write);
                prop_assert!(before.hosts().eq(sm.hosts()));
                prop_assert_eq!(before.slots(), sm.slots());
                prop_assert_eq!(before.group_views(), sm.group_views());
            }
            None => {
                next_seq[client] += 1;
                let write = WriteId {
                    client_id: format!("client-{client}"),
                    seq: next_seq[client],
                };
                let command = command(&sm, &op);
                let response = sm.apply(
                    index,
                    Proposal::new(Some(write.clone()), at_ms, "agent", command.clone()),
                );
                history.push((write, command, response));
            }
        }
        let restored = StateMachine::restore(&sm.snapshot().expect("snapshot"));
        prop_assert_eq!(restored.as_ref(), Ok(&sm));
    }
    Ok(())
}

proptest! {
    #[test]
    fn retried_writes_get_their_first_answer(
        seeds in seeds(),
        steps in proptest::collection::vec(
            (op(), 0usize..2, proptest::option::weighted(0.3, 0usize..16)),
            1..80,
        ),
    ) {
        run_retries(seeds, steps)?;
    }
}

proptest! {
    /// A group's hosts are the same, in the same order, whether read by a lookup per member or
    /// by walking the members and the fleet side by side (`lock::for_each_member` picks by the
    /// sizes): small groups in big fleets and the other way round, members the fleet does not
    /// know, ids that prefix each other.
    #[test]
    fn a_groups_hosts_are_the_same_walked_or_looked_up(
        fleet in proptest::collection::btree_set("[a-c]{1,3}", 0..60),
        members in proptest::collection::btree_set("[a-c]{1,3}", 0..60),
    ) {
        let hosts: BTreeMap<String, Host> =
            fleet.into_iter().map(|id| (id.clone(), Host::lock_only(id, "g".into(), 0))).collect();
        let mut group = super::group::Group::new("g".into(), MaxUnavailable::parse("1").unwrap(), false);
        group.members = members;
        let looked_up: Vec<&str> = group
            .members
            .iter()
            .filter_map(|id| hosts.get(id))
            .map(|h| h.id.as_str())
            .collect();
        let mut walked = Vec::new();
        super::lock::for_each_member(&group, &hosts, |h| walked.push(h.id.as_str()));
        prop_assert_eq!(walked, looked_up);
    }
}
