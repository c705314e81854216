//! Changing the coordinator cluster's members, and rejoining a wiped node (DESIGN §2, §6).
//!
//! - `members add` of a fourth node and `members remove` of an original follower, while a
//!   pseudo-host keeps acquiring and releasing: the lock never stops working (a liveness bound
//!   of [`MAX_GAP`]: how short the gaps are is a performance figure, not this test's), and
//!   `status` ends with the expected members.
//! - A node whose data_dir was wiped must not bootstrap again with `initial_cluster_state =
//!   "new"` (it would vote with an empty log): it exits non-zero and says why. After `members
//!   remove`, `members add` and a start with `"existing"`, it catches up with the cluster.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

mod common;

use common::{
    fleet_state_at, leader_of, member_ids, output_text, pretty, pseudo_host_opts, runtime, serial,
    Deadline,
};
use hotdeploy_integration_tests::bins;
use hotdeploy_integration_tests::cluster::Cluster;
use hotdeploy_integration_tests::coord_client::{is_retryable, CoordClient};
use hotdeploy_integration_tests::proc::{self, ChildGuard};
use serde_json::Value;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

const ELECTION: Duration = Duration::from_secs(30);
const WRITE_BUDGET: Duration = Duration::from_secs(20);
/// `members add` waits for the learner to catch up before promoting it.
const MEMBERS_ADD_TIMEOUT: Duration = Duration::from_secs(90);
/// The longest the lock may go without a successful acquire/release during the membership
/// changes. Generous: one election after a removal, on a loaded two-core machine, plus margin.
const MAX_GAP: Duration = Duration::from_secs(15);

/// `hotdeployctl --endpoints E ARGS`, panicking with the output and logs unless it succeeds.
fn ctl_at_ok(cluster: &Cluster, endpoints: &str, args: &[&str], timeout: Duration) -> Vec<u8> {
    let output = cluster.ctl_at(endpoints, args, timeout);
    assert!(
        output.status.success(),
        "hotdeployctl {} failed: {}\n{}",
        args.join(" "),
        output_text(&output),
        cluster.all_logs()
    );
    output.stdout
}

/// `status -o json` through `endpoints`.
fn status_via(cluster: &Cluster, endpoints: &str) -> Result<Value, String> {
    let output = cluster.ctl_at(
        endpoints,
        &["-o", "json", "status"],
        Duration::from_secs(10),
    );
    if !output.status.success() {
        return Err(output_text(&output));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("{e}: {}", output_text(&output)))
}

fn endpoints_of(cluster: &Cluster, ids: &[u64]) -> String {
    ids.iter()
        .map(|&id| cluster.addr(id).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn role_of(status: &Value, id: u64) -> Option<String> {
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"] == id)
        .and_then(|m| m["role"].as_str())
        .map(str::to_owned)
}

#[test]
fn adding_and_removing_members_keeps_the_lock_working() {
    let _serial = serial();
    let deadline = Deadline::new("members add/remove", Duration::from_secs(120));
    let started_ms = hotdeploy_common::time::now_ms();
    let rt = runtime();

    let mut cluster = Cluster::start(3, &[("web", "2")], pseudo_host_opts());
    cluster.wait_leader(ELECTION, None);
    // Node 4's address is reserved up front; an agent may list it before it exists.
    let mut endpoints = cluster.coordinator_addrs();
    endpoints.push(cluster.addr(4));
    let client = Arc::new(CoordClient::new(&endpoints, "test-membership"));
    // Two hosts: a group of one cannot be deployed (DESIGN §3); h1 cycles, h2 stays in rotation.
    rt.block_on(async {
        for host in ["h1", "h2"] {
            client
                .register(host, &["web"], WRITE_BUDGET)
                .await
                .unwrap_or_else(|e| panic!("register {host}: {e:?}"));
        }
    });

    // The background pseudo-host: acquire, release, and note the instant of every success.
    let stop = Arc::new(AtomicBool::new(false));
    let successes = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let worker = rt.spawn({
        let (client, stop, successes, failures) = (
            client.clone(),
            stop.clone(),
            successes.clone(),
            failures.clone(),
        );
        async move {
            let note_ok = || {
                successes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Instant::now())
            };
            let note_err = |what: String| {
                failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(what)
            };
            while !stop.load(Ordering::SeqCst) {
                let write = client.next_write();
                let slot = loop {
                    match client
                        .acquire(&write, "h1", "deploy", Duration::from_secs(1), WRITE_BUDGET)
                        .await
                    {
                        Ok(slot) => break Some(slot),
                        Err(s) if is_retryable(&s) || s.code() == Code::ResourceExhausted => {
                            if stop.load(Ordering::SeqCst) {
                                break None;
                            }
                        }
                        Err(s) => {
                            note_err(format!("acquire: {:?}: {}", s.code(), s.message()));
                            break None;
                        }
                    }
                };
                let Some(slot) = slot else { break };
                note_ok();
                tokio::time::sleep(Duration::from_millis(50)).await;
                let write = client.next_write();
                loop {
                    match client.release(&write, "h1", slot.token, WRITE_BUDGET).await {
                        Ok(()) => break,
                        Err(s) if is_retryable(&s) => {}
                        Err(s) => {
                            note_err(format!("release: {:?}: {}", s.code(), s.message()));
                            return;
                        }
                    }
                }
                note_ok();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let window_start = Instant::now();
    std::thread::sleep(Duration::from_secs(1));

    // Add node 4: it starts blank ("existing"), joins as a learner, and is promoted.
    deadline.check("members add 4");
    let four = cluster.add_node("existing");
    assert_eq!(four, 4);
    let four_addr = cluster.addr(four).to_string();
    let all = endpoints_of(&cluster, &[1, 2, 3, 4]);
    ctl_at_ok(
        &cluster,
        &all,
        &["members", "add", "4", &four_addr],
        MEMBERS_ADD_TIMEOUT,
    );
    let status = loop {
        deadline.check("node 4 becomes a voter");
        if let Ok(status) = status_via(&cluster, &all) {
            if member_ids(&status) == [1, 2, 3, 4]
                && matches!(role_of(&status, 4).as_deref(), Some("follower" | "leader"))
            {
                break status;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let leader = leader_of(&status).unwrap_or_else(|| panic!("{}", pretty(&status)));

    // Remove one of the original followers.
    deadline.check("members remove a follower");
    let removed = [1, 2, 3]
        .into_iter()
        .find(|&id| id != leader)
        .unwrap_or_else(|| panic!("no follower among 1..3"));
    let remaining: Vec<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|&id| id != removed)
        .collect();
    let remaining_endpoints = endpoints_of(&cluster, &remaining);
    ctl_at_ok(
        &cluster,
        &remaining_endpoints,
        &["members", "remove", &removed.to_string()],
        Duration::from_secs(40),
    );
    // The removed node keeps running a while (an operator stops it later): it must not disturb
    // the others.
    std::thread::sleep(Duration::from_secs(3));
    cluster.kill(removed);
    std::thread::sleep(Duration::from_secs(2));

    let window_end = Instant::now();
    stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        tokio::time::timeout(WRITE_BUDGET * 2, worker)
            .await
            .unwrap_or_else(|_| panic!("the background pseudo-host did not stop"))
            .unwrap_or_else(|e| panic!("the background pseudo-host panicked: {e}"));
    });

    // The lock kept working throughout.
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        failures.is_empty(),
        "background writes failed: {failures:?}"
    );
    let successes = successes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut marks = vec![window_start];
    marks.extend(successes.iter().copied().filter(|&t| t <= window_end));
    marks.push(window_end);
    let (gap_at, gap) = marks
        .windows(2)
        .map(|w| (w[0] - window_start, w[1].saturating_duration_since(w[0])))
        .max_by_key(|(_, gap)| *gap)
        .unwrap_or_default();
    eprintln!(
        "{} successful acquire/release operations over {:?}; longest gap {gap:?} at +{gap_at:?}",
        successes.len(),
        window_end - window_start
    );
    // Liveness, not speed: a gap of a few seconds is expected around each change on a loaded
    // machine; the bound only catches a lock that stopped working.
    assert!(
        gap <= MAX_GAP,
        "no acquire/release succeeded for {gap:?} (from +{gap_at:?}) during the membership \
         changes\n{}",
        cluster.all_logs()
    );

    // `status` ends with the expected members: one leader, the rest followers, all reachable.
    let status = loop {
        deadline.check("status shows the final members");
        if let Ok(status) = status_via(&cluster, &remaining_endpoints) {
            let reachable = status["members"]
                .as_array()
                .is_some_and(|m| m.iter().all(|m| m["reachable"] == true));
            if member_ids(&status) == remaining && reachable {
                break status;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let leader = leader_of(&status).unwrap_or_else(|| panic!("{}", pretty(&status)));
    assert!(remaining.contains(&leader), "{}", pretty(&status));
    for &id in &remaining {
        let want = if id == leader { "leader" } else { "follower" };
        assert_eq!(
            role_of(&status, id).as_deref(),
            Some(want),
            "{}",
            pretty(&status)
        );
    }
    // Node 4 has the replicated state: asked alone, it knows the leader and the host.
    let own = cluster.status_of(four).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(leader_of(&own), Some(leader), "{}", pretty(&own));
    assert_eq!(own["hosts"]["total"], 2, "{}", pretty(&own));

    // The audit trail names who changed the membership, and when (not "raft" at time 0). On a
    // plaintext cluster the caller's identity is `insecure`.
    let audit = ctl_at_ok(
        &cluster,
        &remaining_endpoints,
        &["-o", "json", "audit", "list"],
        Duration::from_secs(30),
    );
    let events: Value = serde_json::from_slice(&audit).unwrap_or_else(|e| panic!("audit: {e}"));
    let events = events.as_array().cloned().unwrap_or_default();
    let by_operator = |action: &str, id: u64| {
        events.iter().any(|e| {
            e["action"] == action
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(&format!("member {id}")))
                && e["actor"] == "insecure"
                && e["at_ms"].as_u64().is_some_and(|t| t >= started_ms)
        })
    };
    assert!(
        by_operator("set_member", four),
        "no set_member 4 by the operator: {events:?}"
    );
    assert!(
        by_operator("remove_member", removed),
        "no remove_member {removed} by the operator: {events:?}"
    );
}

#[test]
fn a_wiped_node_refuses_to_bootstrap_and_rejoins_as_a_new_member() {
    let _serial = serial();
    let deadline = Deadline::new("wiped node rejoins", Duration::from_secs(120));
    let rt = runtime();

    let mut cluster = Cluster::start(3, &[("web", "2")], pseudo_host_opts());
    let leader = cluster.wait_leader(ELECTION, None);
    let client = CoordClient::new(&cluster.coordinator_addrs(), "test-wiped");
    rt.block_on(async {
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
            .unwrap_or_else(|e| panic!("acquire h1: {e:?}"));
    });
    let before = fleet_state_at(&cluster, &cluster.endpoints());

    // Wipe a follower and start it again as if the cluster were new.
    let wiped = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .unwrap_or_else(|| panic!("no follower"));
    cluster.wipe(wiped);
    cluster.write_config(wiped, "new");
    // Started by hand: the harness's restart waits for a listener, and this start must fail.
    let refused_log = cluster.dir().join(format!("c{wiped}-refused.log"));
    let config = cluster.config_path(wiped).to_string_lossy().into_owned();
    let mut refused = ChildGuard::spawn(
        &format!("coordinator {wiped} (wiped, \"new\")"),
        &bins::coordinator(),
        &["--config", config.as_str()],
        &refused_log,
        None,
    );
    let started = Instant::now();
    let exit = refused.wait_exit(Duration::from_secs(10));
    let log = proc::log_tail(&refused_log, 8000);
    let exit = exit.unwrap_or_else(|| {
        panic!("the wiped node {wiped} started with \"new\" is still running after 10 s:\n{log}")
    });
    eprintln!(
        "wiped node {wiped} exited {exit} after {:?}",
        started.elapsed()
    );
    assert!(
        !exit.success(),
        "the wiped node must exit non-zero, got {exit}:\n{log}"
    );
    for line in log.lines().filter(|l| l.to_lowercase().contains("refus")) {
        eprintln!("  {line}");
    }
    let lower = log.to_lowercase();
    assert!(
        lower.contains("refus") && lower.contains("bootstrap"),
        "the log says it refuses to bootstrap:\n{log}"
    );
    assert!(
        lower.contains("empty") || lower.contains("wiped"),
        "the log says why (its data_dir is empty while the cluster has entries):\n{log}"
    );
    drop(refused);

    // The two others still serve.
    let others: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != wiped)
        .collect();
    let others_endpoints = endpoints_of(&cluster, &others);
    let status = status_via(&cluster, &others_endpoints).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(leader_of(&status), Some(leader), "{}", pretty(&status));

    // Rejoin: members remove, members add (it waits for the node to catch up), then start the
    // node blank with "existing".
    deadline.check("members remove the wiped node");
    ctl_at_ok(
        &cluster,
        &others_endpoints,
        &["members", "remove", &wiped.to_string()],
        Duration::from_secs(40),
    );
    let mut add = Command::new(bins::ctl());
    add.args([
        "--endpoints",
        &others_endpoints,
        "--insecure",
        "members",
        "add",
        &wiped.to_string(),
        &cluster.addr(wiped).to_string(),
    ]);
    let adding = std::thread::spawn(move || proc::run_with_timeout(add, MEMBERS_ADD_TIMEOUT));
    std::thread::sleep(Duration::from_millis(500));
    cluster.write_config(wiped, "existing");
    cluster.restart(wiped);
    let added = adding
        .join()
        .unwrap_or_else(|_| panic!("the members add thread panicked"));
    assert!(
        added.status.success(),
        "members add {wiped} failed: {}\n{}",
        output_text(&added),
        cluster.all_logs()
    );

    // It catches up: asked alone, it names the leader and reaches the leader's commit index.
    deadline.check("the rejoined node catches up");
    let leader_commit = cluster.status_of(leader).unwrap_or_else(|e| panic!("{e}"))["commit_index"]
        .as_u64()
        .unwrap_or(0);
    let own = loop {
        deadline.check("the rejoined node reaches the leader's commit index");
        if let Ok(own) = cluster.status_of(wiped) {
            let commit = own["commit_index"].as_u64().unwrap_or(0);
            if leader_of(&own) == Some(leader) && commit >= leader_commit {
                break own;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(own["hosts"]["total"], 3, "{}", pretty(&own));
    assert_eq!(member_ids(&own), vec![1, 2, 3], "{}", pretty(&own));
    assert_eq!(
        role_of(&own, wiped).as_deref(),
        Some("follower"),
        "{}",
        pretty(&own)
    );
    let web_holders = own["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == "web"))
        .map(|g| g["holders"].clone());
    assert_eq!(
        web_holders,
        Some(serde_json::json!(["h1"])),
        "{}",
        pretty(&own)
    );

    // Asking that node alone shows the hosts, groups and slots registered before the wipe.
    let after = fleet_state_at(&cluster, &cluster.addr(wiped).to_string());
    common::assert_same_state(&before, &after, "asked through the rejoined node");
}
