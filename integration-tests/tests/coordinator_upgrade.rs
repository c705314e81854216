//! Rolling upgrade of the coordinators (DESIGN §8): an old coordinator binary next to new ones.
//!
//! The old binary is the real coordinator built with the cargo feature `command-format-v1`
//! (`scripts/build-old-coordinator`, run by `scripts/test`): it knows, applies and advertises
//! command format version 1 only, and refuses newer entries as any old binary would. Three
//! real processes on their own loopback IPs, scripted agents for the hosts, and the real
//! `hotdeployctl`:
//!
//! - while the old node is a member, the new kind (`StartRollout`, format 2) is refused with an
//!   error naming it, and so is a FleetLock `pre-reboot` (its commands are format 4: HTTP 503
//!   `member_too_old`); nothing the old node cannot apply is committed, and it keeps running and
//!   applying the lock's commands;
//! - once it is upgraded in place (stopped, the new binary started on the same data_dir), the
//!   same start goes through and the rollout completes, the old node's replica included, and
//!   the FleetLock request is granted;
//! - an old node is not added to a cluster that already applied newer entries.
//! - a rolling upgrade of a cluster of old binaries, followers first and the leader last, each
//!   node stopped with SIGTERM and started with the new binary on its data_dir: the new kind is
//!   refused, naming a node still old, until the last node is upgraded, and then accepted; the
//!   lock's commands commit on every node throughout, and no node stops.
//!
//! Build first: `cargo build --workspace --bins` and `scripts/build-old-coordinator`.

mod common;

use common::{output_text, runtime, serial, Deadline};
use hotdeploy_integration_tests::bins;
use hotdeploy_integration_tests::cluster::{Cluster, ClusterOpts};
use hotdeploy_integration_tests::http_request::{Reply, Request};
use hotdeploy_integration_tests::net;
use hotdeploy_integration_tests::scripted_agent::{Journal, ScriptedAgent};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ELECTION: Duration = Duration::from_secs(30);
const SHA: &str = "5f3c9d1e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d";
const OLD: u64 = 3;

/// Polls `f` every 200 ms until it is Ok, or panics with its last error after `within`.
fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let end = Instant::now() + within;
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() >= end => panic!("{what}: not within {within:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn version_of(binary: &std::path::Path) -> String {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{} --version: {e}", binary.display()));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The command format version a coordinator binary knows, from its `--version` line
/// (`hotdeploy-coordinator 0.1.0 (command format 4)`), so that renumbering the formats changes
/// nothing here.
fn format_of(binary: &std::path::Path) -> u64 {
    let line = version_of(binary);
    line.strip_suffix(')')
        .and_then(|l| l.rsplit_once("(command format "))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{} --version names no command format: {line}",
                binary.display()
            )
        })
}

/// Each member's `format_version` in the leader's `status` (`null` reads as 0).
fn member_versions(cluster: &Cluster) -> Result<BTreeMap<u64, u64>, String> {
    let status = cluster.try_ctl_json(&["status"])?;
    let members = status["members"]
        .as_array()
        .ok_or_else(|| format!("no members in {status}"))?;
    Ok(members
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap_or(0),
                m["format_version"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

fn start_rollout(cluster: &Cluster) -> std::process::Output {
    cluster.ctl(&[
        "rollout",
        "start",
        "web",
        "--release",
        "v2",
        "--artifact",
        "file:///releases/v2.tar.gz",
        "--sha256",
        SHA,
        "--id",
        "r1",
    ])
}

/// `[fleetlock]` on, open to `client` only.
fn fleetlock_on(opts: &mut ClusterOpts, client: Ipv4Addr) {
    let mut fleetlock = toml::Table::new();
    fleetlock.insert("enabled".into(), true.into());
    fleetlock.insert(
        "allow".into(),
        toml::Value::Array(vec![format!("{client}/32").into()]),
    );
    opts.extra.insert("fleetlock".into(), fleetlock.into());
}

/// A FleetLock `pre-reboot` as Zincati sends it, from `client`, to the leader.
fn pre_reboot(cluster: &Cluster, client: Ipv4Addr, id: &str, group: &str) -> Reply {
    let leader = cluster.wait_leader(ELECTION, None);
    let body = format!("{{\"client_params\": {{\"id\": \"{id}\", \"group\": \"{group}\"}}}}");
    Request::new("POST", "/v1/pre-reboot")
        .header("fleet-lock-protocol", "true")
        .body(body)
        .from(client)
        .send(cluster.http_addr(leader))
        .unwrap_or_else(|e| panic!("pre-reboot to node {leader}: {e}\n{}", cluster.all_logs()))
}

fn fatal_in_log(cluster: &Cluster, id: u64) -> bool {
    cluster.log_tail(id).contains("fatal")
}

#[test]
fn a_new_kind_is_not_proposed_while_an_old_member_is_in_the_cluster() {
    let _serial = serial();
    let deadline = Deadline::new("mixed versions", Duration::from_secs(240));
    let old = bins::old_coordinator();
    assert_eq!(format_of(&old), 1, "{} is not an old binary", old.display());
    // The new binary knows rollouts (format 2) and the newer kinds after them.
    let new = format_of(&bins::coordinator());
    assert!(
        new > 2,
        "the workspace's coordinator knows command format {new} only"
    );

    let client = net::alloc_ips(1)[0];
    let mut opts = ClusterOpts {
        binaries: BTreeMap::from([(OLD, old.clone())]),
        ..ClusterOpts::default()
    };
    fleetlock_on(&mut opts, client);
    let mut cluster = Cluster::start(3, &[("web", "1")], opts);
    cluster.wait_leader(ELECTION, None);
    let rt = runtime();
    let agents = start_hosts(&cluster, &rt);

    // The leader knows who is old: `status` and `members list` say so.
    deadline.check("versions shown");
    wait_until(Duration::from_secs(20), "versions new, new, 1", || {
        let v = member_versions(&cluster)?;
        let want = BTreeMap::from([(1, new), (2, new), (3, 1)]);
        if v == want {
            Ok(())
        } else {
            Err(format!("{v:?}"))
        }
    });
    let members = cluster.ctl_json(&["members", "list"]);
    let old_member = members
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == OLD))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(old_member["format_version"], 1, "{members}");
    let table = output_text(&cluster.ctl(&["members", "list"]));
    assert!(table.contains("version"), "{table}");

    // The new kind is refused, naming the old member, and is not retryable.
    deadline.check("the refused start");
    // Nothing it cannot apply reached the old node so far (it would have stopped on it).
    let applied_before = cluster
        .status_of(OLD)
        .unwrap_or_else(|e| panic!("node 3 does not answer: {e}\n{}", cluster.log_tail(OLD)))
        ["commit_index"]
        .clone();
    let refused = start_rollout(&cluster);
    let text = output_text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(
        text.contains("member 3")
            && text
                .contains("knows command format version 1; StartRollout needs 2: upgrade it first")
            && text.contains("FailedPrecondition"),
        "{text}"
    );
    let rollouts = cluster.ctl_json(&["rollout", "list"]);
    assert_eq!(rollouts, Value::Array(vec![]), "a rollout was committed");
    // FleetLock's commands are newer still: refused the same way, in the protocol's shape.
    let refused = pre_reboot(&cluster, client, "node-z", "web");
    assert_eq!(refused.status, 503, "{refused:?}");
    let v = refused.json().unwrap_or_else(|e| panic!("{e}"));
    let value = v["value"].as_str().unwrap_or_default();
    assert_eq!(v["kind"], "member_too_old", "{v}");
    assert!(
        value.starts_with("member 3")
            && value.contains("knows command format version 1; RegisterLockOnly needs"),
        "{v}"
    );
    let hosts = cluster.ctl_json(&["hosts", "list"]);
    assert_eq!(
        hosts.as_array().map(Vec::len),
        Some(3),
        "a lock-only host was committed: {hosts}"
    );
    assert_eq!(cluster.ctl_json(&["locks", "list"]), Value::Array(vec![]));
    // The old node keeps running and applying what it knows: a budget change commits on it.
    let set = cluster.ctl(&["groups", "set", "web", "--max-unavailable", "1"]);
    assert!(set.status.success(), "{}", output_text(&set));
    wait_until(Duration::from_secs(10), "node 3 applies the change", || {
        let s = cluster.status_of(OLD)?;
        if s["commit_index"].as_u64() > applied_before.as_u64() {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    assert!(cluster.is_running(OLD), "{}", cluster.log_tail(OLD));
    assert!(!fatal_in_log(&cluster, OLD), "{}", cluster.log_tail(OLD));

    // Upgraded in place: stopped, the new binary started on the same data_dir.
    deadline.check("the upgrade");
    let every_member_new: BTreeMap<u64, u64> =
        cluster.ids().into_iter().map(|m| (m, new)).collect();
    upgrade_in_place(&mut cluster, OLD, &every_member_new);

    // Now the start goes through, and the rollout completes on every replica.
    deadline.check("the accepted start");
    let started = start_rollout(&cluster);
    assert!(started.status.success(), "{}", output_text(&started));
    wait_until(Duration::from_secs(90), "rollout r1 completed", || {
        let s = cluster.try_ctl_json(&["rollout", "status", "r1"])?;
        if s["state"] == "completed" {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    assert!(agents.iter().all(|a| a.release() == "v2"));
    let leader_commit = cluster.ctl_json(&["status"])["commit_index"]
        .as_u64()
        .unwrap_or(0);
    wait_until(Duration::from_secs(10), "node 3 caught up", || {
        let s = cluster.status_of(OLD)?;
        if s["commit_index"].as_u64().unwrap_or(0) >= leader_commit {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    assert!(!fatal_in_log(&cluster, OLD), "{}", cluster.log_tail(OLD));
    // Every member knows FleetLock's format now: the slot is granted.
    let granted = pre_reboot(&cluster, client, "node-z", "web");
    assert_eq!(granted.status, 200, "{granted:?}");
    let locks = cluster.ctl_json(&["locks", "list"]);
    assert!(
        locks.as_array().is_some_and(|l| l
            .iter()
            .any(|s| s["host"] == "node-z" && s["purpose"] == "fleetlock")),
        "{locks}"
    );
    // The leader recorded what every member knows (audited).
    let audit = cluster.ctl_json(&["audit", "list"]);
    let recorded = audit
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["action"] == "member_version")
                .count()
        })
        .unwrap_or(0);
    assert!(recorded >= 3, "member versions not recorded: {audit}");

    // An old node is not added to a cluster that applied newer entries: it would stop at once.
    deadline.check("an old node added");
    cluster.set_binary(4, Some(old));
    let four = cluster.add_node("existing");
    let (id, addr) = (four.to_string(), cluster.addr(four).to_string());
    let add = cluster.ctl(&["members", "add", id.as_str(), addr.as_str()]);
    let text = output_text(&add);
    assert_eq!(add.status.code(), Some(1), "{text}");
    assert!(
        text.contains("node 4")
            && text.contains("knows command format version 1")
            && text.contains("Upgrade it first"),
        "{text}"
    );
    let status = cluster.ctl_json(&["status"]);
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(3),
        "node 4 was added: {status}"
    );

    for a in agents {
        rt.block_on(a.stop());
    }
}

/// Upgrades node `id` in place: stops it the way systemd does (SIGTERM; it must exit by itself),
/// starts the workspace's coordinator on the same data_dir, and waits (at most 30 s) until the
/// leader reports exactly `want` (member id -> command format version), the upgraded node's new
/// version among them.
fn upgrade_in_place(cluster: &mut Cluster, id: u64, want: &BTreeMap<u64, u64>) {
    cluster.stop_signal(id, Signal::SIGTERM);
    assert!(
        cluster.wait_exit(id, Duration::from_secs(20)).is_some(),
        "node {id} did not stop on SIGTERM\n{}",
        cluster.log_tail(id)
    );
    cluster.set_binary(id, None);
    cluster.restart(id);
    wait_until(
        Duration::from_secs(30),
        &format!("node {id} upgraded: versions {want:?}"),
        || {
            let v = member_versions(cluster)?;
            if v == *want {
                Ok(())
            } else {
                Err(format!("{v:?}, want {want:?}"))
            }
        },
    );
}

/// Starts scripted agents for web-1, web-2 and web-3 (group `web`, on v1) and waits until the
/// coordinators list all three.
fn start_hosts(cluster: &Cluster, rt: &tokio::runtime::Runtime) -> Vec<ScriptedAgent> {
    let journal = Arc::new(Mutex::new(Journal::default()));
    let agents: Vec<ScriptedAgent> = {
        let _rt = rt.enter();
        ScriptedAgent::start_each(
            &cluster.coordinator_addrs(),
            &["web-1", "web-2", "web-3"],
            &["web"],
            "v1",
            &journal,
        )
    };
    wait_until(Duration::from_secs(30), "3 hosts registered", || {
        let hosts = cluster.try_ctl_json(&["hosts", "list"])?;
        match hosts.as_array().map(Vec::len) {
            Some(3) => Ok(()),
            _ => Err(hosts.to_string()),
        }
    });
    agents
}

/// Every node runs, has stopped on nothing, and has applied at least `commit`.
fn all_caught_up(cluster: &mut Cluster, commit: u64) {
    for id in cluster.ids() {
        assert!(
            cluster.is_running(id),
            "node {id} died\n{}",
            cluster.log_tail(id)
        );
        assert!(!fatal_in_log(cluster, id), "{}", cluster.log_tail(id));
    }
    wait_until(Duration::from_secs(20), "every node caught up", || {
        for id in cluster.ids() {
            let s = cluster.status_of(id)?;
            if s["commit_index"].as_u64().unwrap_or(0) < commit {
                return Err(format!("node {id}: {s}"));
            }
        }
        Ok(())
    });
}

#[test]
fn a_rolling_upgrade_from_old_binaries_allows_the_new_kind_after_the_last_node() {
    let _serial = serial();
    let deadline = Deadline::new("rolling upgrade", Duration::from_secs(240));
    let old = bins::old_coordinator();
    assert_eq!(format_of(&old), 1, "{} is not an old binary", old.display());
    let new = format_of(&bins::coordinator());

    // A cluster of old binaries only, with hosts.
    let opts = ClusterOpts {
        binaries: (1..=3).map(|id| (id, old.clone())).collect(),
        ..ClusterOpts::default()
    };
    let mut cluster = Cluster::start(3, &[("web", "1")], opts);
    let leader = cluster.wait_leader(ELECTION, None);
    let rt = runtime();
    let agents = start_hosts(&cluster, &rt);

    // Followers first, the leader last, as docs/operations.md says. Before each node and after
    // all but the last, the new kind is refused naming a node still old; the lock's commands
    // keep committing on every node, old and new.
    let mut order: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    order.push(leader);
    let mut still_old: Vec<u64> = order.clone();
    for (step, &id) in order.iter().enumerate() {
        deadline.check("a refused start");
        let refused = start_rollout(&cluster);
        let text = output_text(&refused);
        assert_eq!(refused.status.code(), Some(1), "step {step}: {text}");
        assert!(
            text.contains("knows command format version 1; StartRollout needs 2: upgrade it first")
                && text.contains("FailedPrecondition")
                && still_old
                    .iter()
                    .any(|o| text.contains(&format!("member {o}"))),
            "step {step} (old: {still_old:?}): {text}"
        );
        let rollouts = cluster.ctl_json(&["rollout", "list"]);
        assert_eq!(rollouts, Value::Array(vec![]), "a rollout was committed");
        let budget = if step % 2 == 0 { "2" } else { "1" };
        let set = cluster.ctl(&["groups", "set", "web", "--max-unavailable", budget]);
        assert!(set.status.success(), "step {step}: {}", output_text(&set));
        let commit = cluster.ctl_json(&["status"])["commit_index"]
            .as_u64()
            .unwrap_or(0);
        all_caught_up(&mut cluster, commit);

        deadline.check("a node upgraded");
        still_old.retain(|&o| o != id);
        let want: BTreeMap<u64, u64> = cluster
            .ids()
            .into_iter()
            .map(|m| (m, if still_old.contains(&m) { 1 } else { new }))
            .collect();
        upgrade_in_place(&mut cluster, id, &want);
    }

    // Every node upgraded: the same start goes through, and completes on every replica.
    deadline.check("the accepted start");
    ctl_budget_one(&cluster);
    let started = start_rollout(&cluster);
    assert!(started.status.success(), "{}", output_text(&started));
    wait_until(Duration::from_secs(90), "rollout r1 completed", || {
        let s = cluster.try_ctl_json(&["rollout", "status", "r1"])?;
        if s["state"] == "completed" {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    assert!(agents.iter().all(|a| a.release() == "v2"));
    let commit = cluster.ctl_json(&["status"])["commit_index"]
        .as_u64()
        .unwrap_or(0);
    all_caught_up(&mut cluster, commit);

    for a in agents {
        rt.block_on(a.stop());
    }
}

/// `groups set web --max-unavailable 1`, which must succeed.
fn ctl_budget_one(cluster: &Cluster) {
    let set = cluster.ctl(&["groups", "set", "web", "--max-unavailable", "1"]);
    assert!(set.status.success(), "{}", output_text(&set));
}
