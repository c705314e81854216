//! Rolling upgrades on the simulated cluster (DESIGN §8): nodes of different command format
//! versions side by side, the leader's version gate between them and the log.

use super::commands::{operator, pause_rollout, start_rollout};
use super::scenarios::{assert_replicas_agree, fleet};
use super::{address, Sim};
use crate::raft::conf_context::{membership_change, ConfContext};
use crate::raft::{Known, NodeError};
use crate::state::{
    Answer, Command, StepReport, BASE_VERSION, FLEETLOCK_VERSION, FORMAT_VERSION,
    GRANT_PHASE_VERSION, ROLLOUTS_VERSION, STEP_RELEASE_VERSION,
};
use raft::prelude::ConfChangeType;
use std::collections::BTreeMap;

/// Three nodes, of which node 3 runs a binary that knows command format version 1 only.
fn with_an_old_node(seed: u64) -> Sim {
    with_node_3_at(seed, BASE_VERSION)
}

/// Three nodes, of which node 3 runs a binary that knows command format versions up to `old`.
fn with_node_3_at(seed: u64, old: u32) -> Sim {
    let mut sim = Sim::three(seed);
    sim.crash(3);
    sim.set_version(3, old);
    sim.restart(3);
    sim
}

/// A fleet of `hosts` under a new leader (an old leader would refuse for itself; the stories
/// are about a new leader and an old follower, so leadership goes to node 1 if node 3 won),
/// once it has heard every member's version (node 3's is `old`). Answers the leader and the
/// others' versions.
fn new_leader_hearing(sim: &mut Sim, hosts: usize, old: u32) -> (u64, Vec<(u64, u32)>) {
    let mut leader = fleet(sim, hosts);
    if leader == 3 {
        sim.transfer_leader(3, 1);
        assert!(sim.run_until(100, |s| s.leader() == Some(1)));
        leader = sim.elect();
    }
    let others: Vec<(u64, u32)> = [1, 2, 3]
        .into_iter()
        .filter(|id| *id != leader)
        .map(|id| (id, if id == 3 { old } else { FORMAT_VERSION }))
        .collect();
    wait_reports(sim, leader, &expected(leader, &others));
    (leader, others)
}

/// Ticks until `leader` has heard every member report `want` (or panics).
fn wait_reports(sim: &mut Sim, leader: u64, want: &BTreeMap<u64, Known>) {
    let ok = sim.run_until(100, |s| s.versions(leader) == *want);
    assert!(
        ok,
        "leader {leader} sees {:?}, not {want:?}\n{}",
        sim.versions(leader),
        sim.trace()
    );
}

/// The gate's view on the leader, as `status` shows it.
fn expected(leader: u64, others: &[(u64, u32)]) -> BTreeMap<u64, Known> {
    let mut m: BTreeMap<u64, Known> = others
        .iter()
        .map(|(id, v)| (*id, Known::Reported(*v)))
        .collect();
    m.insert(leader, Known::Own(FORMAT_VERSION));
    m
}

#[test]
fn a_new_kind_waits_for_the_old_member_and_commits_once_it_is_upgraded() {
    let mut sim = with_an_old_node(41);
    let (leader, others) = new_leader_hearing(&mut sim, 2, BASE_VERSION);

    // The new kind is refused, naming the old member; nothing reaches the log.
    let kept_out = (BASE_VERSION, ROLLOUTS_VERSION, "StartRollout");
    let command = start_rollout("r1", "web", "v2");
    let refused = assert_the_gate_keeps_out(&mut sim, leader, command, kept_out);
    assert_eq!(
        refused.to_string(),
        "member 3 knows command format version 1; StartRollout needs 2: upgrade it first"
    );
    assert!(!refused.is_retryable());
    // The old node keeps running, applying the lock's commands as before.
    assert!(sim.is_up(3) && sim.fatal(3).is_none(), "{:?}", sim.fatal(3));
    assert_replicas_agree(&mut sim);
    for id in sim.ids() {
        assert!(sim.state(id).rollouts().is_empty(), "node {id}");
        // The record of versions is a version 3 kind: not proposed while node 3 is old.
        assert!(sim.state(id).member_versions().is_empty(), "node {id}");
    }

    // Upgraded in place (stopped, started again as a new binary on the same storage).
    sim.crash(3);
    sim.set_version(3, FORMAT_VERSION);
    sim.restart(3);
    let others: Vec<(u64, u32)> = others.iter().map(|(id, _)| (*id, FORMAT_VERSION)).collect();
    wait_reports(&mut sim, leader, &expected(leader, &others));
    let at = sim.now_ms();
    let mut r = sim.propose(leader, &operator(at, start_rollout("r1", "web", "v2")));
    let answer = sim.wait(&mut r, 50).expect("committed");
    assert!(
        matches!(answer, Ok(Answer::Rollout { ref id, .. }) if id == "r1"),
        "{answer:?}"
    );
    assert_replicas_agree(&mut sim);
    for id in sim.ids() {
        assert!(sim.state(id).rollout("r1").is_some(), "node {id}");
        assert!(sim.fatal(id).is_none(), "node {id}: {:?}", sim.fatal(id));
    }
    // Every member is now recorded at its version, on every replica.
    let all_new: BTreeMap<u64, u32> = [
        (1, FORMAT_VERSION),
        (2, FORMAT_VERSION),
        (3, FORMAT_VERSION),
    ]
    .into_iter()
    .collect();
    let recorded = sim.run_until(100, |s| {
        s.ids()
            .iter()
            .all(|id| *s.state(*id).member_versions() == all_new)
    });
    assert!(recorded, "versions not recorded\n{}", sim.trace());

    // A member that is down is judged by its record, and a new leader keeps it: the rollout
    // goes on with one node down and the leader gone in between.
    let down = others[0].0;
    sim.crash(down);
    sim.crash(leader);
    sim.restart(leader);
    let new_leader = sim.elect();
    assert_ne!(new_leader, down);
    assert_eq!(
        sim.versions(new_leader).get(&down),
        Some(&Known::Recorded(FORMAT_VERSION))
    );
    let at = sim.now_ms();
    let mut r = sim.propose(new_leader, &operator(at, pause_rollout("r1")));
    assert!(
        matches!(sim.wait(&mut r, 50), Ok(Ok(Answer::Rollout { .. }))),
        "a down member with a record must not stop rollouts\n{}",
        sim.trace()
    );
}

/// Proposes `command` (an operator's) at `leader` while member 3 knows only `knows`: the gate
/// refuses it, naming member 3, the version `needs` and the `kind`, as a version-gate error, and
/// nothing reaches the log. Answers the refusal.
fn assert_the_gate_keeps_out(
    sim: &mut Sim,
    leader: u64,
    command: Command,
    (knows, needs, kind): (u32, u32, &'static str),
) -> NodeError {
    let before = sim.applied(leader);
    let at = sim.now_ms();
    let mut r = sim.propose(leader, &operator(at, command));
    let refused = sim.wait(&mut r, 10).unwrap_err();
    assert_eq!(
        refused,
        NodeError::MemberTooOld {
            member: 3,
            this_node: false,
            knows,
            needs,
            kind,
        }
    );
    assert!(refused.is_version_gate());
    sim.run(50);
    assert_eq!(
        sim.applied(leader),
        before,
        "the {kind} entry reached the log"
    );
    refused
}

/// An outcome that releases its slot in the same entry is version 5: while a member knows only
/// 4, the gate keeps it out of the log, and the same outcome without the release (version 2)
/// still goes in: what the service falls back to, so a mixed cluster loses no outcome.
#[test]
fn an_outcome_with_its_release_waits_for_version_5_and_goes_alone_meanwhile() {
    let mut sim = with_node_3_at(44, FLEETLOCK_VERSION);
    let (leader, _) = new_leader_hearing(&mut sim, 1, FLEETLOCK_VERSION);
    let outcome = |release: Option<u64>| Command::ReportStep {
        host: "h1".into(),
        rollout: "r1".into(),
        attempt: 1,
        report: StepReport::Succeeded,
        error: String::new(),
        host_report: None,
        release,
    };
    let before = sim.applied(leader);
    let at = sim.now_ms();
    let kept_out = (
        FLEETLOCK_VERSION,
        STEP_RELEASE_VERSION,
        "ReportStep (release)",
    );
    assert_the_gate_keeps_out(&mut sim, leader, outcome(Some(7)), kept_out);

    let mut r = sim.propose(leader, &operator(at, outcome(None)));
    let answer = sim
        .wait(&mut r, 50)
        .expect("the outcome alone is proposed and applied");
    // There is no rollout r1 here: applied, and refused by the machine, on every replica.
    assert!(answer.is_err(), "{answer:?}");
    assert!(sim.applied(leader) > before);
    assert_replicas_agree(&mut sim);
    assert!(sim.fatal(3).is_none(), "{:?}", sim.fatal(3));
}

/// A grant that commits `draining` with it is version 6: while a member knows only 5, the gate
/// keeps it out of the log, and the same grant without the phase (version 1) still goes in, with
/// the same write id: what the service falls back to, so a mixed cluster still grants (and the
/// agent fences `draining` on its own).
#[test]
fn a_grant_with_its_phase_waits_for_version_6_and_goes_alone_meanwhile() {
    let mut sim = with_node_3_at(46, STEP_RELEASE_VERSION);
    // Two hosts: a slot for one of them leaves the other available.
    let (leader, _) = new_leader_hearing(&mut sim, 2, STEP_RELEASE_VERSION);
    let grant = |phase: Option<&str>| Command::Acquire {
        host: "h1".into(),
        purpose: "deploy".into(),
        reason: "upgrade test".into(),
        rollout: String::new(),
        phase: phase.map(str::to_owned),
    };
    let at = sim.now_ms();
    let kept_out = (STEP_RELEASE_VERSION, GRANT_PHASE_VERSION, "Acquire (phase)");
    assert_the_gate_keeps_out(&mut sim, leader, grant(Some("draining")), kept_out);

    let mut r = sim.propose(leader, &operator(at, grant(None)));
    let answer = sim
        .wait(&mut r, 50)
        .expect("the grant alone is proposed and applied");
    let Ok(Answer::Slot(slot)) = answer else {
        panic!("h1 is granted its slot: {answer:?}\n{}", sim.trace());
    };
    assert_eq!(slot.phase, "", "no phase went with the grant alone");
    assert_replicas_agree(&mut sim);
    assert!(sim.fatal(3).is_none(), "{:?}", sim.fatal(3));
}

#[test]
fn an_old_leader_refuses_a_new_kind_for_itself() {
    let mut sim = with_an_old_node(42);
    fleet(&mut sim, 1);
    let leader = sim.leader().expect("a leader");
    if leader != 3 {
        sim.transfer_leader(leader, 3);
        assert!(
            sim.run_until(200, |s| s.leader() == Some(3)),
            "{}",
            sim.trace()
        );
    }
    sim.elect();
    let at = sim.now_ms();
    let mut r = sim.propose(3, &operator(at, start_rollout("r1", "web", "v2")));
    let refused = sim.wait(&mut r, 10).unwrap_err();
    assert!(
        refused
            .to_string()
            .starts_with("member 3 (this node) knows command format version 1"),
        "{refused}"
    );
}

/// Adding an old node to a cluster whose state already holds newer entries: it stops on the
/// snapshot it is sent, naming the version, and while it is a learner the gate keeps new
/// kinds out of the log. Removing it lets them through again.
#[test]
fn an_old_learner_stops_on_newer_state_and_holds_new_kinds_back() {
    let mut sim = Sim::three(43);
    let leader = fleet(&mut sim, 2);
    wait_reports(
        &mut sim,
        leader,
        &expected(
            leader,
            &[1, 2, 3]
                .into_iter()
                .filter(|id| *id != leader)
                .map(|id| (id, FORMAT_VERSION))
                .collect::<Vec<_>>(),
        ),
    );
    let at = sim.now_ms();
    let mut r = sim.propose(leader, &operator(at, start_rollout("r1", "web", "v2")));
    sim.wait(&mut r, 50).expect("committed").expect("started");

    sim.add_blank(4, BASE_VERSION);
    let ctx = ConfContext {
        address: address(4),
        actor: "operator/sim".into(),
        at_ms: sim.now_ms(),
    };
    let mut add = sim.conf_change(
        leader,
        membership_change(ConfChangeType::AddLearnerNode, 4, &ctx),
    );
    sim.wait(&mut add, 50).expect("learner added");
    let stopped = sim.run_until(200, |s| s.fatal(4).is_some());
    assert!(stopped, "the old learner did not stop\n{}", sim.trace());
    let fatal = sim.fatal(4).unwrap_or_default().to_string();
    assert!(
        fatal.contains("made by entries of command format version")
            && fatal.contains("knows versions up to 1; upgrade this coordinator"),
        "{fatal}"
    );
    // The learner reported version 1 before it stopped: the gate names it.
    let at = sim.now_ms();
    let mut r = sim.propose(leader, &operator(at, pause_rollout("r1")));
    let refused = sim.wait(&mut r, 10).unwrap_err();
    assert!(
        matches!(refused, NodeError::MemberTooOld { member: 4, .. }),
        "{refused}"
    );
    // The lock's own commands carry on.
    assert!(sim.is_up(leader));
    let mut remove = sim.conf_change(
        leader,
        membership_change(ConfChangeType::RemoveNode, 4, &ctx),
    );
    sim.wait(&mut remove, 50).expect("learner removed");
    sim.run(20);
    let at = sim.now_ms();
    let mut r = sim.propose(leader, &operator(at, pause_rollout("r1")));
    assert!(
        matches!(sim.wait(&mut r, 50), Ok(Ok(Answer::Rollout { .. }))),
        "{}",
        sim.trace()
    );
}
