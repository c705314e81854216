//! Scenario tests on the simulated cluster, each a short story: start three nodes, elect, do
//! something to the network or a node, and look at every replica.

use super::commands::{acquire, agent, group, operator, register, release};
use super::{address, Sim, SimConfig};
use crate::raft::bootstrap::Decision;
use crate::raft::conf_context::{membership_change, ConfContext};
use crate::raft::NodeError;
use crate::state::{Answer, Health, StateError};
use raft::prelude::{ConfChangeType, MessageType};

/// Seeds the `web` group (budget 1) and registers hosts `h1..=n` at the leader.
pub(super) fn fleet(sim: &mut Sim, hosts: usize) -> u64 {
    let leader = sim.elect();
    let at = sim.now_ms();
    let mut r = sim.propose(leader, &operator(at, group("web", "1")));
    sim.wait(&mut r, 50)
        .expect("committed")
        .expect("group created");
    for i in 1..=hosts {
        let h = format!("h{i}");
        let mut r = sim.propose(
            leader,
            &operator(at, register(&h, &["web"], Health::Healthy)),
        );
        sim.wait(&mut r, 50)
            .expect("committed")
            .expect("registered");
    }
    leader
}

fn slot_token(answer: Result<crate::state::Response, NodeError>) -> u64 {
    match answer {
        Ok(Ok(Answer::Slot(s))) => s.token,
        other => panic!("expected a slot, got {other:?}"),
    }
}

/// Every running node has applied the same entries and holds the same state.
pub(super) fn assert_replicas_agree(sim: &mut Sim) {
    let ok = sim.run_until(300, |s| {
        let ups: Vec<u64> = s.ids().into_iter().filter(|id| s.is_up(*id)).collect();
        ups.windows(2)
            .all(|w| s.applied(w[0]) == s.applied(w[1]) && *s.state(w[0]) == *s.state(w[1]))
    });
    assert!(ok, "the replicas do not converge\n{}", sim.trace());
}

#[test]
fn three_nodes_elect_one_leader_and_replicate_a_grant() {
    let mut sim = Sim::three(1);
    let leader = fleet(&mut sim, 3);
    let at = sim.now_ms();
    let mut r = sim.propose(leader, &agent("h1", 1, at, acquire("h1")));
    let token = slot_token(sim.wait(&mut r, 50));
    assert_replicas_agree(&mut sim);
    for id in sim.ids() {
        assert_eq!(sim.state(id).host("h1").and_then(|h| h.slot), Some(token));
        // Every member that acknowledged the log is recorded (the wiped-node check needs it).
        let members: Vec<u64> = sim.state(id).members().keys().copied().collect();
        assert_eq!(members, vec![1, 2, 3], "node {id}");
        assert_eq!(sim.state(id).members()[&2], address(2));
    }
    let leaders: Vec<u64> = sim
        .ids()
        .into_iter()
        .filter(|id| sim.thinks_it_leads(*id))
        .collect();
    assert_eq!(leaders, vec![leader]);
}

#[test]
fn a_partitioned_leader_grants_nothing_and_the_majority_carries_on() {
    let mut sim = Sim::three(2);
    let old = fleet(&mut sim, 3);
    sim.partition(&[old]);
    // The old leader takes the proposal but cannot commit it.
    let at = sim.now_ms();
    let mut stranded = sim.propose(old, &agent("h1", 1, at, acquire("h1")));
    sim.run(5);
    assert!(stranded.try_take().is_none(), "committed without a quorum");
    // The majority elects a new leader, which grants h2.
    assert!(sim.run_until(100, |s| s.leader().is_some_and(|l| l != old)));
    let new = sim.leader().expect("a new leader");
    let mut r = sim.propose(new, &agent("h2", 1, sim.now_ms(), acquire("h2")));
    let token = slot_token(sim.wait(&mut r, 100));
    // The old leader stepped down (check_quorum) and its waiter was told to retry.
    assert!(sim.run_until(50, |s| !s.thinks_it_leads(old)));
    assert_eq!(stranded.try_take(), Some(Err(NodeError::LeadershipLost)));
    sim.heal();
    assert_replicas_agree(&mut sim);
    for id in sim.ids() {
        let st = sim.state(id);
        assert_eq!(st.host("h2").and_then(|h| h.slot), Some(token), "node {id}");
        assert_eq!(st.host("h1").and_then(|h| h.slot), None, "node {id}");
    }
}

/// Issue 9 §2.2: a wiped node must not bootstrap an empty log while its peers are down.
#[test]
fn a_wiped_node_waits_while_its_peers_are_down_then_refuses_to_bootstrap() {
    let mut sim = Sim::three(3);
    let leader = fleet(&mut sim, 3);
    let followers: Vec<u64> = sim.ids().into_iter().filter(|id| *id != leader).collect();
    let (lagging, wiped) = (followers[0], followers[1]);
    // `lagging` misses the grant; the leader and `wiped` commit it.
    sim.partition(&[lagging]);
    let mut r = sim.propose(leader, &agent("h1", 1, sim.now_ms(), acquire("h1")));
    let token = slot_token(sim.wait(&mut r, 50));
    // Power loss: everyone goes down, and `wiped` loses its disk.
    sim.crash(leader);
    sim.crash(lagging);
    sim.wipe(wiped);
    sim.heal();
    // Alone, the wiped node waits: nobody can tell it that it was a member.
    let Decision::Wait(why) = sim.start_blank(wiped) else {
        panic!(
            "a wiped node must wait while its peers are down\n{}",
            sim.trace()
        );
    };
    assert!(why.contains("quorum"), "{why}");
    assert!(!sim.is_up(wiped));
    // The lagging node comes back first: it remembers the wiped node, which refuses.
    sim.restart(lagging);
    let Decision::Refuse(why) = sim.start_blank(wiped) else {
        panic!(
            "a peer remembers the wiped node: it must refuse\n{}",
            sim.trace()
        );
    };
    assert!(why.contains("wiped"), "{why}");
    assert!(!sim.is_up(wiped));
    // The lagging node alone elects nobody; once the old leader is back, the grant is there.
    sim.run(50);
    assert_eq!(sim.leader(), None, "one node of three elected itself");
    sim.restart(leader);
    let leader = sim.elect();
    let mut r = sim.propose(leader, &agent("h2", 1, sim.now_ms(), acquire("h2")));
    let refused = sim.wait(&mut r, 100).expect("committed");
    assert!(
        matches!(refused, Err(StateError::OverBudget { .. })),
        "{refused:?}"
    );
    for id in [leader, lagging] {
        sim.run_until(100, |s| {
            s.state(id).host("h1").and_then(|h| h.slot) == Some(token)
        });
        assert_eq!(sim.state(id).host("h1").and_then(|h| h.slot), Some(token));
    }
}

/// A brand-new cluster whose nodes start one by one forms once a quorum of them is up.
#[test]
fn blank_nodes_bootstrap_once_a_quorum_of_them_answers() {
    let mut sim = Sim::three(4);
    for id in sim.ids() {
        sim.wipe(id);
    }
    // Alone, node 1 waits (and, waiting, answers its peers that it has no cluster).
    assert!(matches!(sim.start_blank(1), Decision::Wait(_)));
    // Node 2 hears node 1: two of three answered, so node 2 bootstraps, then node 1 does.
    assert_eq!(sim.start_blank(2), Decision::Bootstrap);
    assert_eq!(sim.start_blank(1), Decision::Bootstrap);
    sim.elect();
    // Node 3 starts late: the cluster runs but has never seen it, so it may join as founded.
    assert_eq!(sim.start_blank(3), Decision::Bootstrap);
    assert_replicas_agree(&mut sim);
}

/// Issue 9 §2.4: an entry this binary cannot decode stops the node, naming it.
#[test]
fn an_entry_of_a_newer_command_format_stops_every_node_and_names_it() {
    let mut sim = Sim::three(5);
    let leader = fleet(&mut sim, 2);
    let before = sim.applied(leader);
    let mut newer: serde_json::Value =
        serde_json::from_slice(&operator(sim.now_ms(), acquire("h1")).encode()).unwrap();
    newer["version"] = 99.into();
    newer["command"] = serde_json::json!({"StartRollout": {"group": "web"}});
    let mut r = sim.propose_bytes(leader, serde_json::to_vec(&newer).unwrap());
    sim.run(20);
    assert_eq!(r.try_take(), Some(Err(NodeError::Stopped)));
    let index = before + 1;
    for id in sim.ids() {
        let fatal = sim
            .fatal(id)
            .unwrap_or_else(|| panic!("node {id} carried on past the entry\n{}", sim.trace()))
            .to_string();
        assert!(fatal.contains(&format!("index {index}")), "{fatal}");
        assert!(fatal.contains("needs command format version 99"), "{fatal}");
        assert!(fatal.contains("upgrade"), "{fatal}");
        assert_eq!(sim.applied(id), before, "node {id} applied past it");
    }
    // Restarted (as systemd would), the nodes meet the same entry again and stop again: they
    // never skip it.
    for id in sim.ids() {
        sim.restart(id);
    }
    let stopped_again = sim.run_until(300, |s| {
        s.ids().iter().filter(|id| !s.is_up(**id)).count() >= 2
    });
    assert!(
        stopped_again,
        "restarted nodes got past the entry\n{}",
        sim.trace()
    );
    sim.run(100);
    for id in sim.ids() {
        // Stopped at the entry again, or (the last one up, with no quorum) never told it is
        // committed: none applied past it.
        assert!(
            !sim.is_up(id) || sim.fatal(id).is_none(),
            "node {id}: {:?}",
            sim.fatal(id)
        );
        if !sim.is_up(id) {
            assert!(sim.fatal(id).is_some_and(|f| f.contains("version 99")));
        }
        assert_eq!(sim.applied(id), before, "node {id} applied past the entry");
    }
}

#[test]
fn an_entry_that_does_not_decode_stops_the_node() {
    let mut sim = Sim::three(6);
    let leader = fleet(&mut sim, 1);
    let mut r = sim.propose_bytes(
        leader,
        br#"{"version":1,"command":{"Teleport":{}}}"#.to_vec(),
    );
    sim.run(20);
    assert_eq!(r.try_take(), Some(Err(NodeError::Stopped)));
    for id in sim.ids() {
        let fatal = sim
            .fatal(id)
            .unwrap_or_else(|| panic!("node {id} skipped it"));
        assert!(
            fatal.contains("does not decode") && fatal.contains("Teleport"),
            "{fatal}"
        );
    }
}

/// Issue 9 §2.7: raft takes one membership change at a time; the second is refused as such
/// (retryable), not reported as a stopped node. §2.9: the change records who asked, and when.
#[test]
fn a_second_membership_change_is_answered_in_progress() {
    let mut sim = Sim::three(7);
    let leader = sim.elect();
    let at = sim.now_ms();
    let ctx = |id: u64| ConfContext {
        address: address(id),
        actor: "operator/alice".into(),
        at_ms: at,
    };
    sim.pause();
    let mut first = sim.conf_change(
        leader,
        membership_change(ConfChangeType::AddLearnerNode, 4, &ctx(4)),
    );
    let mut second = sim.conf_change(
        leader,
        membership_change(ConfChangeType::AddLearnerNode, 5, &ctx(5)),
    );
    let refused = second.try_take().expect("answered at once");
    assert_eq!(refused, Err(NodeError::MembershipChangeInProgress));
    assert!(refused.unwrap_err().is_retryable());
    sim.resume();
    assert_eq!(sim.wait(&mut first, 50), Ok(()));
    // Once it has applied, the next one goes through.
    let mut again = sim.conf_change(
        leader,
        membership_change(ConfChangeType::AddLearnerNode, 5, &ctx(5)),
    );
    assert_eq!(sim.wait(&mut again, 50), Ok(()));
    assert_replicas_agree(&mut sim);
    for id in sim.ids() {
        let st = sim.state(id);
        let event = st
            .audit()
            .find(|e| e.action == "set_member" && e.detail.contains("member 4"))
            .unwrap_or_else(|| panic!("node {id} has no audit event for member 4"));
        assert_eq!(event.actor, "operator/alice");
        assert_eq!(event.at_ms, at);
        assert_eq!(st.members().get(&4).map(String::as_str), Some("n4:7400"));
    }
}

/// Issue 9 §2.8: when the state cannot be read for a snapshot, the node stops; it never stores
/// an empty snapshot (which would compact the log behind it and lose the state at restart).
#[test]
fn a_state_that_cannot_be_snapshotted_stops_the_node_and_loses_nothing() {
    let mut sim = Sim::three(8);
    let leader = fleet(&mut sim, 3);
    let mut r = sim.propose(leader, &agent("h1", 1, sim.now_ms(), acquire("h1")));
    let token = slot_token(sim.wait(&mut r, 50));
    assert_replicas_agree(&mut sim);
    let victim = sim.ids().into_iter().find(|id| *id != leader).unwrap();
    // A thread panics while holding the victim's state lock: its state can no longer be read.
    sim.poison_state(victim);
    // A membership change makes every node snapshot its state.
    let ctx = ConfContext {
        address: address(4),
        actor: "operator/alice".into(),
        at_ms: sim.now_ms(),
    };
    let mut r = sim.conf_change(
        leader,
        membership_change(ConfChangeType::AddLearnerNode, 4, &ctx),
    );
    assert_eq!(sim.wait(&mut r, 50), Ok(()));
    sim.run(10);
    let fatal = sim
        .fatal(victim)
        .unwrap_or_else(|| panic!("node {victim} carried on\n{}", sim.trace()));
    assert!(fatal.contains("poisoned"), "{fatal}");
    // Restarted from its storage, it has everything, and catches up with the change.
    sim.restart(victim);
    assert_replicas_agree(&mut sim);
    let st = sim.state(victim);
    assert_eq!(st.hosts().count(), 3);
    assert_eq!(st.host("h1").and_then(|h| h.slot), Some(token));
    assert!(st.members().contains_key(&4));
}

/// Issue 9 §2.11: a ReadIndex request raft drops (a new leader that has not committed in its
/// term yet) is handed over again, and answered once the leader can.
#[test]
fn a_read_that_raft_drops_is_answered_once_the_new_leader_commits() {
    let mut sim = Sim::three(9);
    let old = fleet(&mut sim, 1);
    let next = sim.ids().into_iter().find(|id| *id != old).unwrap();
    // Hand leadership to `next` with only the election's messages delivered: its first entry
    // is not committed yet when the read arrives.
    sim.pause();
    sim.transfer_leader(old, next);
    let votes = |m: &raft::prelude::Message| {
        matches!(
            m.get_msg_type(),
            MessageType::MsgTimeoutNow
                | MessageType::MsgRequestVote
                | MessageType::MsgRequestVoteResponse
        )
    };
    sim.deliver_matching(votes);
    assert!(sim.thinks_it_leads(next), "{}", sim.trace());
    let mut read = sim.read_index(next);
    assert!(read.try_take().is_none());
    sim.resume();
    let index = sim.wait(&mut read, 10).expect("the read is answered");
    assert!(index >= sim.commit(next).min(index));
    assert_eq!(sim.pending(next).1, 0);
}

/// A read whose forwarded request is lost does not stay pending forever: it fails, retryably.
#[test]
fn a_lost_read_fails_retryably_instead_of_staying_pending() {
    let mut sim = Sim::three(10);
    let leader = fleet(&mut sim, 1);
    let follower = sim.ids().into_iter().find(|id| *id != leader).unwrap();
    sim.cut(follower, leader);
    let mut read = sim.read_index(follower);
    let answer = sim.wait(&mut read, 60);
    assert!(
        matches!(answer, Err(NodeError::ReadUnconfirmed { .. })),
        "{answer:?}"
    );
    assert!(answer.unwrap_err().is_retryable());
    assert_eq!(sim.pending(follower).1, 0);
}

/// Snapshots: a node that was down while the log was compacted catches up from a snapshot.
#[test]
fn a_node_behind_the_compacted_log_catches_up_from_a_snapshot() {
    let mut sim = Sim::new(
        SimConfig {
            nodes: 3,
            snapshot_every: 5,
        },
        11,
    );
    let leader = fleet(&mut sim, 2);
    let down = sim.ids().into_iter().find(|id| *id != leader).unwrap();
    sim.crash(down);
    let mut token = 0;
    for seq in 1..=10 {
        let cmd = if token == 0 {
            acquire("h1")
        } else {
            release("h1", token)
        };
        let mut r = sim.propose(leader, &agent("h1", seq, sim.now_ms(), cmd));
        token = match sim.wait(&mut r, 50).expect("committed") {
            Ok(Answer::Slot(s)) => s.token,
            Ok(_) => 0,
            Err(e) => panic!("{e}"),
        };
    }
    sim.restart(down);
    assert_replicas_agree(&mut sim);
    assert_eq!(
        sim.state(down).host("h1").and_then(|h| h.slot),
        sim.state(leader).host("h1").and_then(|h| h.slot)
    );
}
