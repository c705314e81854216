//! The coordinator cluster under faults, from the outside (DESIGN §2, §3, §9).
//!
//! Real `hotdeploy-coordinator` processes on their own loopback IPs; operators are the real
//! `hotdeployctl`; agents are gRPC "pseudo-hosts" ([`CoordClient`]) that register, take and
//! release slots the way an agent does, retrying a write with the same `(client_id, seq)`.
//!
//! - the cluster forms: one leader, three members, every node agreeing;
//! - `kill -9` of the leader: a new leader is elected, acquire works, held slots survive (how
//!   fast is a performance figure: `hd-bench failover`; this test holds only a generous liveness
//!   bound);
//! - `kill -9` of every node: hosts, groups (with a `groups set` change) and slots come back
//!   identical after a restart;
//! - a partitioned leader grants nothing; the majority elects a leader that grants; after the
//!   heal the old leader steps down and catches up.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

mod common;

use common::{
    ctl_ok, fleet_state, leader_of, lock_of, member_ids, pretty, pseudo_host_opts, runtime, serial,
    Deadline,
};
use hotdeploy_common::proto::AcquireSlotRequest;
use hotdeploy_integration_tests::cluster::{Cluster, ClusterOpts};
use hotdeploy_integration_tests::coord_client::CoordClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

const ELECTION: Duration = Duration::from_secs(30);
const WRITE_BUDGET: Duration = Duration::from_secs(20);

#[test]
fn three_nodes_form_a_cluster_with_one_leader() {
    let _serial = serial();
    let deadline = Deadline::new("cluster forms", Duration::from_secs(60));

    let cluster = Cluster::start(3, &[("web", "2")], ClusterOpts::default());
    let leader = cluster.wait_leader(ELECTION, None);

    // The leader's view of member reachability fills in as heartbeats flow; poll until it does.
    let status = loop {
        deadline.check("status shows three reachable members");
        let status = cluster.ctl_json(&["status"]);
        let all_reachable = status["members"]
            .as_array()
            .is_some_and(|m| m.len() == 3 && m.iter().all(|m| m["reachable"] == true));
        if all_reachable {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };

    assert_eq!(leader_of(&status), Some(leader), "{}", pretty(&status));
    assert!(
        status["term"].as_u64().unwrap_or(0) >= 1,
        "{}",
        pretty(&status)
    );
    assert_eq!(member_ids(&status), vec![1, 2, 3], "{}", pretty(&status));
    let members = status["members"].as_array().cloned().unwrap_or_default();
    let leaders: Vec<u64> = members
        .iter()
        .filter(|m| m["role"] == "leader")
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert_eq!(
        leaders,
        vec![leader],
        "exactly one member has role leader: {}",
        pretty(&status)
    );
    for m in &members {
        let id = m["id"].as_u64().unwrap_or(0);
        if id != leader {
            assert_eq!(m["role"], "follower", "{}", pretty(&status));
        }
        assert_eq!(
            m["address"],
            cluster.addr(id).to_string(),
            "member {id}'s address: {}",
            pretty(&status)
        );
    }
    let web = status["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == "web"))
        .unwrap_or_else(|| panic!("group web seeded from the config: {}", pretty(&status)));
    assert_eq!(web["max_unavailable"], "2", "{}", pretty(&status));
    assert_eq!(status["hosts"]["total"], 0, "{}", pretty(&status));

    // Every node, asked alone, names the same leader in the same term.
    for id in cluster.ids() {
        deadline.check("every node agrees on the leader");
        let own = cluster.status_of(id).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(leader_of(&own), Some(leader), "node {id}: {}", pretty(&own));
        assert_eq!(own["term"], status["term"], "node {id}: {}", pretty(&own));
    }
}

#[test]
fn killing_the_leader_elects_a_new_one_and_keeps_held_slots() {
    let _serial = serial();
    let deadline = Deadline::new("leader kill -9", Duration::from_secs(90));
    let rt = runtime();

    let mut cluster = Cluster::start(3, &[("web", "2")], pseudo_host_opts());
    let old = cluster.wait_leader(ELECTION, None);
    let client = CoordClient::new(&cluster.coordinator_addrs(), "test-leader-kill");

    // Three pseudo-hosts (so two slots leave one available); h1 takes a slot before the kill.
    let held = rt.block_on(async {
        for host in ["h1", "h2", "h3"] {
            client
                .register(host, &["web"], WRITE_BUDGET)
                .await
                .unwrap_or_else(|e| panic!("register {host}: {e:?}"));
        }
        let w = client.next_write();
        client
            .acquire(&w, "h1", "deploy", Duration::ZERO, WRITE_BUDGET)
            .await
            .unwrap_or_else(|e| panic!("acquire h1: {e:?}"))
    });
    let locks_before = cluster.ctl_json(&["locks", "list"]);
    let h1_before = lock_of(&locks_before, "h1")
        .cloned()
        .unwrap_or_else(|| panic!("h1 holds its slot: {}", pretty(&locks_before)));
    assert_eq!(h1_before["token"], held.token, "{}", pretty(&locks_before));

    // kill -9 the leader, then poll both survivors' own Status every 50 ms until one names
    // another leader. Liveness only: the election's speed is measured by `hd-bench failover`.
    let survivors: Vec<String> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != old)
        .map(|id| cluster.addr(id).to_string())
        .collect();
    let poller = CoordClient::new(&cluster.coordinator_addrs(), "test-poller")
        .with_attempt_timeout(Duration::from_millis(500));
    cluster.kill(old);
    let killed_at = Instant::now();
    let (new, elected_after) = rt.block_on(async {
        loop {
            assert!(
                killed_at.elapsed() < Duration::from_secs(20),
                "no survivor named a new leader within 20 s of the kill"
            );
            let mut named = None;
            for addr in &survivors {
                if let Ok(status) = poller.status_at(addr).await {
                    if status.leader != 0 && status.leader != old {
                        named = Some(status.leader);
                        break;
                    }
                }
            }
            if let Some(new) = named {
                break (new, killed_at.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    eprintln!("leader {old} killed; node {new} named leader after {elected_after:?}");
    deadline.check("the new leader confirms itself");
    assert_eq!(cluster.wait_leader(Duration::from_secs(15), Some(old)), new);

    // Acquire works under the new leader, with a later token.
    let granted = rt.block_on(async {
        let w = client.next_write();
        client
            .acquire(&w, "h2", "deploy", Duration::ZERO, WRITE_BUDGET)
            .await
            .unwrap_or_else(|e| panic!("acquire h2 under the new leader: {e:?}"))
    });
    assert!(
        granted.token > held.token,
        "tokens increase: {} then {}",
        held.token,
        granted.token
    );

    // The slot granted before the kill is still held, unchanged.
    let locks = cluster.ctl_json(&["locks", "list"]);
    let h1 = lock_of(&locks, "h1")
        .unwrap_or_else(|| panic!("h1's slot survived the kill: {}", pretty(&locks)));
    for field in ["token", "purpose", "granted_at_ms", "groups", "reason"] {
        assert_eq!(
            h1[field],
            h1_before[field],
            "h1 {field}: {}",
            pretty(&locks)
        );
    }
    let h2 = lock_of(&locks, "h2").unwrap_or_else(|| panic!("h2 holds: {}", pretty(&locks)));
    assert_eq!(h2["token"], granted.token, "{}", pretty(&locks));
    assert_eq!(
        locks.as_array().map(Vec::len),
        Some(2),
        "{}",
        pretty(&locks)
    );

    // The killed node comes back as a follower of the new leader.
    deadline.check("the old leader rejoins");
    cluster.restart(old);
    let rejoined = loop {
        deadline.check("the old leader names the new leader");
        if let Ok(own) = cluster.status_of(old) {
            if leader_of(&own) == Some(new) {
                break own;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(leader_of(&rejoined), Some(new), "{}", pretty(&rejoined));
}

#[test]
fn killing_every_node_loses_no_hosts_groups_or_slots() {
    let _serial = serial();
    let deadline = Deadline::new("kill -9 all", Duration::from_secs(90));
    let rt = runtime();

    let mut cluster = Cluster::start(3, &[("web", "2")], pseudo_host_opts());
    cluster.wait_leader(ELECTION, None);

    // Policy changes after bootstrap: a new budget for the seeded group, and a new group.
    ctl_ok(
        &cluster,
        &["groups", "set", "web", "--max-unavailable", "3"],
    );
    ctl_ok(
        &cluster,
        &[
            "groups",
            "set",
            "db",
            "--max-unavailable",
            "50%",
            "--allow-zero-available",
            "true",
        ],
    );

    // Six hosts, one in two groups; two slots, one taken by an agent, one by an operator.
    let client = CoordClient::new(&cluster.coordinator_addrs(), "test-kill-all");
    let deploy_slot = rt.block_on(async {
        for host in ["h1", "h2", "h3", "h4"] {
            client
                .register(host, &["web"], WRITE_BUDGET)
                .await
                .unwrap_or_else(|e| panic!("register {host}: {e:?}"));
        }
        client
            .register("h5", &["web", "db"], WRITE_BUDGET)
            .await
            .unwrap_or_else(|e| panic!("register h5: {e:?}"));
        client
            .register("h6", &["db"], WRITE_BUDGET)
            .await
            .unwrap_or_else(|e| panic!("register h6: {e:?}"));
        let w = client.next_write();
        client
            .acquire(&w, "h1", "deploy", Duration::ZERO, WRITE_BUDGET)
            .await
            .unwrap_or_else(|e| panic!("acquire h1: {e:?}"))
    });
    ctl_ok(
        &cluster,
        &["locks", "acquire", "h5", "--reason", "kernel upgrade"],
    );

    let before = fleet_state(&cluster);
    assert_eq!(
        before["hosts"].as_array().map(Vec::len),
        Some(6),
        "{}",
        pretty(&before)
    );
    assert_eq!(
        before["locks"].as_array().map(Vec::len),
        Some(2),
        "{}",
        pretty(&before)
    );
    let web = before["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == "web"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(web["max_unavailable"], "3", "{}", pretty(&before));

    deadline.check("kill -9 every node");
    for id in cluster.ids() {
        cluster.kill(id);
    }
    for id in cluster.ids() {
        cluster.restart(id);
    }
    cluster.wait_leader(ELECTION, None);

    deadline.check("compare the state after the restart");
    let after = fleet_state(&cluster);
    common::assert_same_state(&before, &after, "after kill -9 of every node and a restart");

    // Tokens keep increasing across the restart: a new grant is later than every old one.
    let max_before = before["locks"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|l| l["token"].as_u64())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    assert!(max_before >= deploy_slot.token);
    let next = rt.block_on(async {
        let w = client.next_write();
        client
            .acquire(&w, "h2", "deploy", Duration::ZERO, WRITE_BUDGET)
            .await
            .unwrap_or_else(|e| panic!("acquire h2 after the restart: {e:?}"))
    });
    assert!(
        next.token > max_before,
        "a grant after the restart ({}) is later than every grant before ({max_before})",
        next.token
    );
}

#[test]
fn a_partitioned_leader_grants_nothing_and_steps_down_after_the_heal() {
    let _serial = serial();
    let deadline = Deadline::new("partitioned leader", Duration::from_secs(90));
    let rt = runtime();

    let opts = ClusterOpts {
        with_proxies: true,
        unreachable_after: "1h".into(),
        ..ClusterOpts::default()
    };
    let cluster = Cluster::start(3, &[("web", "2")], opts);
    let old = cluster.wait_leader(ELECTION, None);
    let client = CoordClient::new(&cluster.coordinator_addrs(), "test-partition");
    rt.block_on(async {
        for host in ["h-old", "h-new"] {
            client
                .register(host, &["web"], WRITE_BUDGET)
                .await
                .unwrap_or_else(|e| panic!("register {host}: {e:?}"));
        }
    });

    // Cut the leader off from both followers. From now on, AcquireSlot sent straight to the
    // old leader's real address (no hints, no other endpoints) must never succeed.
    cluster.partition(old);
    let partitioned_at = Instant::now();
    let old_addr = cluster.addr(old).to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let direct = Arc::new(
        CoordClient::new(&[cluster.addr(old)], "test-partition-direct")
            .with_attempt_timeout(Duration::from_secs(2)),
    );
    let attempts = rt.spawn({
        let stop = stop.clone();
        let direct = direct.clone();
        async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let req = AcquireSlotRequest {
                    write: Some(direct.next_write()),
                    host: "h-old".into(),
                    purpose: "deploy".into(),
                    reason: "sent to the partitioned leader".into(),
                    rollout: String::new(),
                    wait_ms: 0,
                    canary: false,
                    fence_draining: false,
                };
                let started = partitioned_at.elapsed();
                let answer = direct
                    .once(&old_addr, Duration::ZERO, |mut c| async move {
                        c.acquire_slot(req).await
                    })
                    .await;
                answers.push((started, answer));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answers
        }
    });

    // The majority elects a leader, and that leader grants.
    let new = cluster.wait_leader(ELECTION, Some(old));
    assert_ne!(new, old);
    let majority: Vec<_> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != old)
        .map(|id| cluster.addr(id))
        .collect();
    let majority_client = CoordClient::new(&majority, "test-partition-majority");
    let granted = rt.block_on(async {
        let w = majority_client.next_write();
        majority_client
            .acquire(&w, "h-new", "deploy", Duration::ZERO, WRITE_BUDGET)
            .await
            .unwrap_or_else(|e| panic!("the majority's leader {new} grants: {e:?}"))
    });

    // Keep the partition a while longer so the old leader is asked many times, both while it
    // may still believe it leads and after it has stepped down.
    while partitioned_at.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let majority_commit = rt.block_on(async {
        majority_client
            .status_at(&cluster.addr(new).to_string())
            .await
            .unwrap_or_else(|e| panic!("status of the new leader {new}: {e:?}"))
            .commit_index
    });
    stop.store(true, Ordering::SeqCst);
    let answers = rt
        .block_on(attempts)
        .unwrap_or_else(|e| panic!("the direct acquire loop failed: {e}"));
    cluster.heal();
    let healed_at = Instant::now();

    assert!(
        answers.len() >= 3,
        "the old leader was asked only {} times",
        answers.len()
    );
    for (at, answer) in &answers {
        match answer {
            Ok(slot) => panic!(
                "the partitioned old leader {old} granted a slot {at:?} after the partition: \
                 {slot:?}\n{}",
                cluster.all_logs()
            ),
            Err(status) => assert!(
                matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
                "the partitioned old leader answered {at:?} after the partition with {:?}: {} \
                 (expected UNAVAILABLE or a timeout)",
                status.code(),
                status.message()
            ),
        }
    }
    if let Some((at, Err(first))) = answers.first() {
        eprintln!(
            "first direct acquire (sent {at:?} after the partition): {:?}: {}",
            first.code(),
            first.message()
        );
    }
    eprintln!(
        "old leader {old}: {} direct acquires refused ({} UNAVAILABLE, {} timed out)",
        answers.len(),
        answers
            .iter()
            .filter(|(_, a)| matches!(a, Err(s) if s.code() == Code::Unavailable))
            .count(),
        answers
            .iter()
            .filter(|(_, a)| matches!(a, Err(s) if s.code() == Code::DeadlineExceeded))
            .count()
    );

    // After the heal the old leader follows the new one and catches up with its log.
    let own = loop {
        deadline.check("the old leader steps down and catches up");
        assert!(
            healed_at.elapsed() < Duration::from_secs(20),
            "old leader {old} did not follow {new} up to commit {majority_commit} within 20 s \
             of the heal; last: {:?}\n{}",
            cluster.status_of(old),
            cluster.all_logs()
        );
        if let Ok(own) = cluster.status_of(old) {
            let caught_up = own["commit_index"].as_u64().unwrap_or(0) >= majority_commit;
            if leader_of(&own) == Some(new) && caught_up {
                break own;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let old_role = own["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == old))
        .map(|m| m["role"].clone());
    assert_eq!(
        old_role,
        Some("follower".into()),
        "node {old} sees itself as a follower: {}",
        pretty(&own)
    );

    // Only the majority's grant exists; nothing the old leader accepted ever committed.
    let locks = cluster.ctl_json(&["locks", "list"]);
    assert!(
        lock_of(&locks, "h-old").is_none(),
        "a slot asked of the partitioned leader committed: {}",
        pretty(&locks)
    );
    let h_new = lock_of(&locks, "h-new").unwrap_or_else(|| panic!("{}", pretty(&locks)));
    assert_eq!(h_new["token"], granted.token, "{}", pretty(&locks));
}
