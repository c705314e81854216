//! Disaster recovery (DESIGN §8): a cluster that lost its quorum for good is rebuilt from a
//! `hotdeployctl snapshot save` file with `hotdeploy-coordinator restore --from FILE`.
//!
//! Three real coordinator processes on their own loopback IPs, scripted agents for the hosts,
//! and the real `hotdeployctl`. The scenario is the one docs/operations.md ("Disaster
//! recovery") tells an operator to follow:
//!
//! - a rollout completes and an operator holds a maintenance slot; `snapshot save` writes the
//!   file (mode 0600); a change made after it is lost, as it must be;
//! - two of the three coordinators die and their data is wiped: no quorum, for good;
//! - `restore` refuses the survivor's non-empty data_dir, naming it; once it is moved away, it
//!   builds a one-node cluster there, which starts and leads;
//! - hosts, groups, slots (with their fencing tokens) and rollouts are all there, a new slot's
//!   token is above every token of the backup, and the restore is audited;
//! - the two wiped nodes are added back as new members, catch up, and serve the same state once
//!   the restored node is gone.
//!
//! Build first: `cargo build --workspace --bins`.

mod common;

use common::{ctl_ok, leader_of, lock_of, member_ids, output_text, runtime, serial, Deadline};
use hotdeploy_integration_tests::bins;
use hotdeploy_integration_tests::cluster::{Cluster, ClusterOpts};
use hotdeploy_integration_tests::scripted_agent::{Journal, ScriptedAgent};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ELECTION: Duration = Duration::from_secs(30);
const SHA: &str = "5f3c9d1e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d";
const HOSTS: [&str; 3] = ["web-1", "web-2", "web-3"];

/// Polls `f` every 200 ms until it is Ok, or panics with its last error after `within`.
fn wait_until<T>(within: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= end => panic!("{what}: not within {within:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// What a backup must keep, as `hotdeployctl -o json` shows it: each host's groups, release,
/// health and slot token; each group's budget; each slot; each rollout's state and hosts.
/// Leaves out what changes by itself (ages, reachability, the leader's view of heartbeats).
fn kept_state(cluster: &Cluster) -> Result<Value, String> {
    let hosts = cluster.try_ctl_json(&["hosts", "list"])?;
    let hosts: Vec<Value> = hosts
        .as_array()
        .ok_or_else(|| format!("hosts list: {hosts}"))?
        .iter()
        .map(|h| {
            json!({
                "host": h["host"], "groups": h["groups"], "release": h["release"],
                "health": h["health"], "slot_token": h["slot_token"],
            })
        })
        .collect();
    let groups = cluster.try_ctl_json(&["groups", "list"])?;
    let groups: Vec<Value> = groups
        .as_array()
        .ok_or_else(|| format!("groups list: {groups}"))?
        .iter()
        .map(|g| {
            json!({
                "name": g["name"], "max_unavailable": g["max_unavailable"],
                "allow_zero_available": g["allow_zero_available"], "holders": g["holders"],
            })
        })
        .collect();
    let locks = cluster.try_ctl_json(&["locks", "list"])?;
    let locks: Vec<Value> = locks
        .as_array()
        .ok_or_else(|| format!("locks list: {locks}"))?
        .iter()
        .map(|l| {
            json!({
                "host": l["host"], "token": l["token"], "purpose": l["purpose"],
                "reason": l["reason"], "granted_at_ms": l["granted_at_ms"],
            })
        })
        .collect();
    let rollout = cluster.try_ctl_json(&["rollout", "status", "r1"])?;
    let rollout = json!({
        "id": rollout["id"], "state": rollout["state"], "release": rollout["release"],
        "hosts": rollout["hosts"].as_array().map(|hs| hs.iter().map(|h| json!({
            "host": h["host"], "phase": h["phase"],
        })).collect::<Vec<_>>()),
    });
    Ok(json!({"hosts": hosts, "groups": groups, "locks": locks, "rollout": rollout}))
}

/// `hotdeploy-coordinator restore --from FILE --config` node `id`'s config.
fn restore(cluster: &Cluster, id: u64, file: &std::path::Path) -> std::process::Output {
    Command::new(bins::coordinator())
        .arg("restore")
        .arg("--from")
        .arg(file)
        .arg("--config")
        .arg(cluster.config_path(id))
        .output()
        .unwrap_or_else(|e| panic!("running hotdeploy-coordinator restore: {e}"))
}

#[test]
fn a_cluster_that_lost_its_quorum_is_restored_from_a_snapshot_file() {
    let _serial = serial();
    let deadline = Deadline::new("disaster recovery", Duration::from_secs(300));
    let mut cluster = Cluster::start(3, &[("web", "1")], ClusterOpts::default());
    cluster.wait_leader(ELECTION, None);
    let rt = runtime();
    let journal = Arc::new(Mutex::new(Journal::default()));
    let agents: Vec<ScriptedAgent> = {
        let _rt = rt.enter();
        ScriptedAgent::start_each(
            &cluster.coordinator_addrs(),
            &HOSTS,
            &["web"],
            "v1",
            &journal,
        )
    };

    // The state worth keeping: a completed rollout, and a slot an operator holds.
    deadline.check("a rollout and a maintenance slot");
    wait_until(Duration::from_secs(30), "3 hosts registered", || {
        let hosts = cluster.try_ctl_json(&["hosts", "list"])?;
        match hosts.as_array().map(Vec::len) {
            Some(3) => Ok(()),
            _ => Err(hosts.to_string()),
        }
    });
    ctl_ok(
        &cluster,
        &[
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
        ],
    );
    wait_until(Duration::from_secs(90), "rollout r1 completed", || {
        let s = cluster.try_ctl_json(&["rollout", "status", "r1"])?;
        if s["state"] == "completed" {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    let held = cluster.ctl_json(&["locks", "acquire", "web-2", "--reason", "kernel patch"]);
    let held_token = held["token"]
        .as_u64()
        .unwrap_or_else(|| panic!("locks acquire printed no token: {held}"));
    let before = kept_state(&cluster).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        before["hosts"].as_array().map(Vec::len),
        Some(3),
        "{before}"
    );
    assert_eq!(
        before["locks"].as_array().map(Vec::len),
        Some(1),
        "{before}"
    );
    assert_eq!(before["rollout"]["state"], "completed", "{before}");

    // The backup.
    deadline.check("snapshot save");
    let file = cluster.dir().join("backup.snapshot");
    let file_arg = file.to_string_lossy().into_owned();
    let saved = cluster.ctl_json(&["snapshot", "save", file_arg.as_str()]);
    let mode = std::fs::metadata(&file)
        .unwrap_or_else(|e| panic!("{}: {e}; snapshot save said {saved}", file.display()))
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the snapshot file is readable by others"
    );
    let backup_index = saved["index"].as_u64().unwrap_or(0);
    assert!(
        backup_index >= held_token,
        "the backup (index {backup_index}) is older than the slot it must hold: {saved}"
    );
    // A change after the backup is lost with the cluster.
    ctl_ok(
        &cluster,
        &["groups", "set", "web", "--max-unavailable", "2"],
    );

    // Two of three die for good: killed, their data wiped. No quorum.
    deadline.check("quorum lost");
    cluster.wipe(2);
    cluster.wipe(3);
    let no_quorum = cluster.ctl_at(
        &cluster.addr(1).to_string(),
        &["locks", "acquire", "web-3", "--reason", "x"],
        Duration::from_secs(8),
    );
    assert!(
        !no_quorum.status.success(),
        "a write succeeded without a quorum: {}",
        output_text(&no_quorum)
    );

    // The survivor's data_dir is refused: a restore builds a new cluster in an empty one.
    deadline.check("restore");
    let refused = restore(&cluster, 1, &file);
    let text = output_text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(
        text.contains("not empty") && text.contains(&cluster.data_dir(1).display().to_string()),
        "{text}"
    );
    // Moved away (here: wiped), the restore writes a one-node cluster there.
    cluster.wipe(1);
    let restored = restore(&cluster, 1, &file);
    let text = output_text(&restored);
    assert!(restored.status.success(), "{text}");
    assert!(
        text.contains("node 1 alone")
            && text.contains("3 hosts, 1 groups, 1 slots held, 1 rollouts"),
        "{text}"
    );
    cluster.restart(1);
    let leader = cluster.wait_leader(ELECTION, None);
    assert_eq!(leader, 1);

    // Everything is there, as it was at the backup.
    deadline.check("the restored state");
    let after = wait_until(Duration::from_secs(20), "the restored state", || {
        kept_state(&cluster)
    });
    assert_eq!(after, before, "the restored state differs from the backup");
    let audit = cluster.ctl_json(&["audit", "list"]);
    assert!(
        audit
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["action"] == "restore")),
        "the restore is not audited: {audit}"
    );
    // The hosts' agents found the new cluster at the same addresses: they are reachable again.
    wait_until(Duration::from_secs(30), "hosts reachable", || {
        let hosts = cluster.try_ctl_json(&["hosts", "list"])?;
        let all = hosts
            .as_array()
            .is_some_and(|hs| hs.iter().all(|h| h["reachability"] == "reachable"));
        if all {
            Ok(())
        } else {
            Err(hosts.to_string())
        }
    });
    // The lock works, and fencing with it: a new token is above every token of the backup.
    ctl_ok(&cluster, &["locks", "release", "web-2"]);
    let new = cluster.ctl_json(&["locks", "acquire", "web-3", "--reason", "after restore"]);
    let new_token = new["token"].as_u64().unwrap_or(0);
    assert!(
        new_token > backup_index,
        "a slot granted after the restore has token {new_token}, not above the backup's index \
         {backup_index}: {new}"
    );

    // The wiped nodes come back as new members, started blank with "existing".
    deadline.check("members added back");
    for id in [2, 3] {
        cluster.write_config(id, "existing");
        cluster.restart(id);
        let (id_arg, addr) = (id.to_string(), cluster.addr(id).to_string());
        ctl_ok(
            &cluster,
            &["members", "add", id_arg.as_str(), addr.as_str()],
        );
    }
    let commit = cluster.ctl_json(&["status"])["commit_index"]
        .as_u64()
        .unwrap_or(0);
    wait_until(Duration::from_secs(30), "three members, caught up", || {
        let status = cluster.try_ctl_json(&["status"])?;
        if member_ids(&status) != [1, 2, 3] {
            return Err(format!("members: {status}"));
        }
        for id in [2, 3] {
            let s = cluster.status_of(id)?;
            if s["commit_index"].as_u64().unwrap_or(0) < commit {
                return Err(format!("node {id}: {s}"));
            }
        }
        Ok(())
    });

    // Without the restored node, the two new members hold the quorum and serve the state.
    deadline.check("the restored node gone");
    cluster.kill(1);
    let status = wait_until(ELECTION, "a leader among 2 and 3", || {
        let s = cluster.try_ctl_json(&["status"])?;
        match leader_of(&s) {
            Some(2 | 3) => Ok(s),
            _ => Err(s.to_string()),
        }
    });
    eprintln!(
        "new leader after the restored node died: {}",
        status["leader"]
    );
    let locks = cluster.ctl_json(&["locks", "list"]);
    let slot = lock_of(&locks, "web-3").unwrap_or_else(|| panic!("web-3's slot lost: {locks}"));
    assert_eq!(slot["token"], new_token, "{locks}");
    let rollout = cluster.ctl_json(&["rollout", "status", "r1"]);
    assert_eq!(rollout["state"], "completed", "{rollout}");
    let groups = cluster.ctl_json(&["groups", "list"]);
    assert_eq!(groups[0]["max_unavailable"], "1", "{groups}");

    for a in agents {
        rt.block_on(a.stop());
    }
}
