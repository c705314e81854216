//! Rollouts on a real cluster: three `hotdeploy-coordinator` processes on their own loopback
//! IPs, operators using the real `hotdeployctl`, and scripted agents
//! ([`hotdeploy_integration_tests::scripted_agent`]) that register, heartbeat and follow the
//! rollout protocol over gRPC. The real agent and HAProxy come in phase 2; these tests prove
//! the coordinator side:
//!
//! - a start is idempotent by id, also through another coordinator;
//! - canary hosts go first, then `batch` hosts at once, never more;
//! - `max_failures` halts a rollout and no other host takes a slot; a staging failure is
//!   counted and shown with its error;
//! - pause, resume, abort, and abort `--rollback`;
//! - a deploy whose slot is force-released is driven again, and the rollout does not wedge;
//! - supersede;
//! - a one-host group is refused at once, and bad input gets a clear error and exit code;
//! - a rollout survives `kill -9` of the leader, and a watch follows it across;
//! - a first install takes no slot; a host that joins or comes back is caught up;
//! - `WatchRollout` streams every change; the CLI's exit codes and JSON;
//! - only operators may use the rollout RPCs.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

mod common;
mod pki_support;

use common::{output_text, pretty, runtime, serial, Deadline};
use hotdeploy_common::proto::coordinator_client::CoordinatorClient;
use hotdeploy_common::proto::{RolloutState, WatchRolloutRequest};
use hotdeploy_integration_tests::cluster::{Cluster, ClusterOpts, CtlAuth};
use hotdeploy_integration_tests::net;
use hotdeploy_integration_tests::scripted_agent::{Did, Journal, Script, ScriptedAgent};
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ELECTION: Duration = Duration::from_secs(30);
const SHA: &str = "5f3c9d1e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d";
/// The deadline of a `rollout watch` run.
const WATCH: Duration = Duration::from_secs(180);

/// A cluster with scripted agents.
struct Fleet {
    cluster: Cluster,
    rt: tokio::runtime::Runtime,
    journal: Arc<Mutex<Journal>>,
    agents: Vec<ScriptedAgent>,
}

impl Fleet {
    /// A 3-node cluster with `groups`, and one scripted agent per `(host, groups, release)`.
    fn start(
        groups: &[(&str, &str)],
        hosts: &[(&str, &[&str], &str)],
        script: impl Fn(&str) -> Script,
    ) -> Fleet {
        let cluster = Cluster::start(3, groups, ClusterOpts::default());
        cluster.wait_leader(ELECTION, None);
        let mut fleet = Fleet {
            cluster,
            rt: runtime(),
            journal: Arc::new(Mutex::new(Journal::default())),
            agents: Vec::new(),
        };
        for (host, groups, release) in hosts {
            fleet.add(host, groups, release, script(host));
        }
        fleet.wait_hosts(hosts.len());
        fleet
    }

    fn add(&mut self, host: &str, groups: &[&str], release: &str, script: Script) {
        let _rt = self.rt.enter();
        self.agents.push(ScriptedAgent::start(
            &self.cluster.coordinator_addrs(),
            host,
            groups,
            release,
            script,
            self.journal.clone(),
        ));
    }

    /// Stops agent `host` and forgets it.
    fn remove(&mut self, host: &str) {
        let pos = self
            .agents
            .iter()
            .position(|a| a.host() == host)
            .unwrap_or_else(|| panic!("no agent {host}"));
        let agent = self.agents.remove(pos);
        self.rt.block_on(agent.stop());
    }

    fn wait_hosts(&self, n: usize) {
        wait_until(
            Duration::from_secs(30),
            &format!("{n} hosts registered"),
            || {
                let hosts = self.cluster.try_ctl_json(&["hosts", "list"])?;
                let count = hosts.as_array().map(Vec::len).unwrap_or(0);
                if count >= n {
                    Ok(())
                } else {
                    Err(format!("{count} hosts: {hosts}"))
                }
            },
        );
    }

    fn ctl(&self, args: &[&str]) -> Output {
        self.cluster.ctl(args)
    }

    fn json(&self, args: &[&str]) -> Value {
        self.cluster.ctl_json(args)
    }

    fn status(&self, id: &str) -> Value {
        self.json(&["rollout", "status", id])
    }

    /// `rollout watch ID`, with a long deadline.
    fn watch(&self, id: &str) -> Output {
        self.cluster
            .ctl_at(&self.cluster.endpoints(), &["rollout", "watch", id], WATCH)
    }

    /// Waits until rollout `id` is in `state`; returns its status.
    fn wait_state(&self, id: &str, state: &str, within: Duration) -> Value {
        let mut last = Value::Null;
        wait_until(within, &format!("rollout {id} {state}"), || {
            last = self.cluster.try_ctl_json(&["rollout", "status", id])?;
            if last["state"] == state {
                Ok(())
            } else {
                Err(pretty(&last))
            }
        });
        last
    }

    fn releases(&self) -> Vec<(String, String)> {
        self.agents
            .iter()
            .map(|a| (a.host().to_string(), a.release()))
            .collect()
    }

    fn all_on(&self, release: &str) -> bool {
        self.agents.iter().all(|a| a.release() == release)
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop(mut self) {
        for a in std::mem::take(&mut self.agents) {
            self.rt.block_on(a.stop());
        }
    }
}

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

/// `rollout start GROUP --release R --artifact file:///releases/R.tar.gz --sha256 SHA EXTRA`.
fn start_args<'a>(
    group: &'a str,
    release: &'a str,
    url: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "rollout",
        "start",
        group,
        "--release",
        release,
        "--artifact",
        url,
        "--sha256",
        SHA,
    ];
    args.extend_from_slice(extra);
    args
}

fn url(release: &str) -> String {
    format!("file:///releases/{release}.tar.gz")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

fn host_of<'a>(status: &'a Value, host: &str) -> &'a Value {
    status["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["host"] == host))
        .unwrap_or_else(|| panic!("no host {host} in {}", pretty(status)))
}

fn names(hosts: &[&str]) -> Vec<(String, Vec<String>, String)> {
    hosts
        .iter()
        .map(|h| (h.to_string(), vec!["web".to_string()], "v1".to_string()))
        .collect()
}

/// `(host, ["web"], "v1")` for `web-1`..`web-n`.
fn web_hosts(n: usize) -> Vec<(String, Vec<String>, String)> {
    let hosts: Vec<String> = (1..=n).map(|i| format!("web-{i}")).collect();
    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    names(&refs)
}

fn as_refs(v: &[(String, Vec<String>, String)]) -> Vec<(&str, Vec<&str>, &str)> {
    v.iter()
        .map(|(h, g, r)| {
            (
                h.as_str(),
                g.iter().map(String::as_str).collect(),
                r.as_str(),
            )
        })
        .collect()
}

/// Starts a fleet of group `web` with `budget` and hosts web-1..web-n on v1.
fn web_fleet(budget: &str, n: usize, script: impl Fn(&str) -> Script) -> Fleet {
    let hosts = web_hosts(n);
    let refs = as_refs(&hosts);
    let hosts: Vec<(&str, &[&str], &str)> = refs
        .iter()
        .map(|(h, g, r)| (*h, g.as_slice(), *r))
        .collect();
    Fleet::start(&[("web", budget)], &hosts, script)
}

#[test]
fn a_start_is_idempotent_by_id_even_through_another_coordinator() {
    let _serial = serial();
    let deadline = Deadline::new("idempotent start", Duration::from_secs(120));
    let fleet = web_fleet("1", 3, |_| Script::slow(Duration::from_millis(300)));
    let u = url("v2");
    let args = start_args("web", "v2", &u, &["--id", "up-1"]);
    let first = fleet.ctl(&args);
    assert!(first.status.success(), "{}", output_text(&first));
    assert_eq!(stdout(&first), "up-1", "start prints the id");
    let again = fleet.ctl(&args);
    assert!(again.status.success(), "{}", output_text(&again));
    assert_eq!(stdout(&again), "up-1");
    // Through one follower alone: it answers UNAVAILABLE with the leader's address, and the
    // CLI retries there; the machine sees a second start with the same id.
    let leader = fleet.cluster.wait_leader(ELECTION, None);
    let follower = fleet
        .cluster
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .unwrap_or(1);
    let through = fleet.cluster.ctl_at(
        &fleet.cluster.addr(follower).to_string(),
        &args,
        Duration::from_secs(30),
    );
    assert!(through.status.success(), "{}", output_text(&through));
    assert_eq!(stdout(&through), "up-1");
    deadline.check("list shows one rollout");
    let list = fleet.json(&["rollout", "list"]);
    let ids: Vec<&str> = list
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, vec!["up-1"], "{}", pretty(&list));
    let audit = fleet.json(&["audit", "list"]);
    let starts = audit
        .as_array()
        .map(|a| a.iter().filter(|e| e["action"] == "start_rollout").count())
        .unwrap_or(0);
    assert_eq!(starts, 1, "one start, audited once: {}", pretty(&audit));
    // The same id for another request is refused.
    let u3 = url("v3");
    let other = fleet.ctl(&start_args("web", "v3", &u3, &["--id", "up-1"]));
    assert_eq!(other.status.code(), Some(1), "{}", output_text(&other));
    assert!(
        stderr(&other).contains("already used"),
        "{}",
        output_text(&other)
    );
    let done = fleet.watch("up-1");
    assert_eq!(done.status.code(), Some(0), "{}", output_text(&done));
    assert!(fleet.all_on("v2"), "{:?}", fleet.releases());
    fleet.stop();
}

#[test]
fn canaries_go_first_then_a_batch_at_once_and_watch_streams_every_change() {
    let _serial = serial();
    let deadline = Deadline::new("canary and batch", Duration::from_secs(180));
    // Deploy phases of 500 ms: two hosts of a batch overlap for about two seconds, far more
    // than the admission of the second takes (one commit), even on a loaded machine.
    // Budget 3, batch 2: the batch, not the lock, is what holds it to two at once here.
    let fleet = web_fleet("3", 5, |_| Script::slow(Duration::from_millis(500)));
    let u = url("v2");
    let started = fleet.json(&start_args(
        "web",
        "v2",
        &u,
        &["--id", "r1", "--canary", "1", "--batch", "2"],
    ));
    // `start -o json` prints the status object.
    for key in [
        "id",
        "group",
        "release",
        "state",
        "succeeded",
        "failed",
        "pending",
        "hosts",
    ] {
        assert!(
            started.get(key).is_some(),
            "{key} missing: {}",
            pretty(&started)
        );
    }
    assert_eq!(started["id"], "r1");
    assert_eq!(started["release"], "v2");
    assert_eq!(started["batch"], 2);
    // A gRPC watcher counts what the stream sends, while the CLI's watch follows it too.
    let addrs = fleet.cluster.coordinator_addrs();
    let watcher = fleet
        .rt
        .spawn(async move { watch_messages(&addrs, "r1").await });
    let watched = fleet.watch("r1");
    assert_eq!(watched.status.code(), Some(0), "{}", output_text(&watched));
    let lines = stdout(&watched);
    for needle in ["web-1: waiting", "web-3: draining", "rollout r1: completed"] {
        assert!(
            lines.contains(needle),
            "{needle:?} not in the watch output:\n{lines}"
        );
    }
    deadline.check("the gRPC watch ended");
    let (messages, last_state) = fleet
        .rt
        .block_on(watcher)
        .unwrap_or_else(|e| panic!("watcher: {e}"));
    assert!(
        messages >= 20,
        "the stream sent only {messages} updates for 5 hosts"
    );
    assert_eq!(last_state, RolloutState::Completed as i32);

    let journal = fleet.journal();
    let grants = journal.grants("r1");
    assert_eq!(grants.len(), 5, "{:?}", journal.events());
    assert_eq!(grants[0], "web-1", "the canary goes first: {grants:?}");
    let events = journal.events();
    // The canary is done when its outcome is in; its slot may still be held for a moment
    // (the outcome comes before the release), and counts toward the batch meanwhile.
    let canary_done = events
        .iter()
        .position(|(h, d)| h == "web-1" && matches!(d, Did::Outcome { .. }))
        .unwrap_or_else(|| panic!("{events:?}"));
    let second_grant = events
        .iter()
        .position(|(h, d)| h != "web-1" && matches!(d, Did::Granted { .. }))
        .unwrap_or_else(|| panic!("{events:?}"));
    assert!(
        canary_done < second_grant,
        "another host got a slot before the canary was done: {events:?}"
    );
    assert_eq!(
        journal.max_holding(),
        2,
        "at most (and, here, exactly) batch 2 hosts at once, under a budget of 3"
    );
    drop(journal);
    let status = fleet.status("r1");
    assert_eq!(status["state"], "completed", "{}", pretty(&status));
    assert_eq!(status["succeeded"], 5);
    assert_eq!(status["failed"], 0);
    assert_eq!(status["pending"], 0);
    for h in status["hosts"].as_array().cloned().unwrap_or_default() {
        for key in ["host", "phase", "release", "error"] {
            assert!(h.get(key).is_some(), "{key} missing: {h}");
        }
        assert_eq!(h["phase"], "succeeded", "{h}");
        assert_eq!(h["release"], "v2", "{h}");
        assert_eq!(h["error"], Value::Null, "{h}");
    }
    assert!(fleet.all_on("v2"), "{:?}", fleet.releases());
    let list = fleet.json(&["rollout", "list"]);
    let item = &list[0];
    for key in ["id", "group", "release", "state", "created_at_ms"] {
        assert!(item.get(key).is_some(), "{key} missing: {}", pretty(&list));
    }
    assert_eq!(
        (item["release"].as_str(), item["state"].as_str()),
        (Some("v2"), Some("completed"))
    );
    // On a terminal the watch draws progress bars: one overall, one per host.
    let bars = watch_on_a_terminal(&fleet.cluster, "r1");
    assert_eq!(bars.status.code(), Some(0), "{}", output_text(&bars));
    let screen = strip_ansi(&stdout(&bars));
    assert!(
        screen.contains("5/5") && screen.contains("completed"),
        "no overall bar:\n{screen}"
    );
    for i in 1..=5 {
        assert!(
            screen.contains(&format!("web-{i}")),
            "no bar for web-{i}:\n{screen}"
        );
    }
    assert!(screen.contains("[===="), "no bar drawn:\n{screen}");
    assert!(
        !screen.contains("] web-1: "),
        "plain lines on a terminal:\n{screen}"
    );
    fleet.stop();
}

/// `text` without ANSI escape sequences (colours, cursor moves).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// `hotdeployctl rollout watch ID` with its stdout on a pseudo-terminal (util-linux `script`).
fn watch_on_a_terminal(cluster: &Cluster, id: &str) -> Output {
    let ctl = hotdeploy_integration_tests::bins::ctl();
    let line = format!(
        "{} --endpoints {} --insecure rollout watch {id}",
        ctl.display(),
        cluster.endpoints()
    );
    let mut command = std::process::Command::new("script");
    command.args(["-qec", &line, "/dev/null"]);
    hotdeploy_integration_tests::proc::run_with_timeout(command, Duration::from_secs(60))
}

/// Counts the `WatchRollout` messages for `id` until the stream ends; returns the count and
/// the last state.
async fn watch_messages(addrs: &[std::net::SocketAddr], id: &str) -> (usize, i32) {
    for _ in 0..50 {
        for addr in addrs {
            let Ok(mut c) = CoordinatorClient::connect(format!("http://{addr}")).await else {
                continue;
            };
            let Ok(r) = c.watch_rollout(WatchRolloutRequest { id: id.into() }).await else {
                continue;
            };
            let mut stream = r.into_inner();
            let (mut n, mut last) = (0, 0);
            while let Ok(Some(m)) = stream.message().await {
                n += 1;
                last = m.rollout.map(|r| r.state).unwrap_or(0);
            }
            return (n, last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (0, 0)
}

#[test]
fn max_failures_halts_the_rollout_and_no_other_host_is_touched() {
    let _serial = serial();
    let deadline = Deadline::new("max_failures", Duration::from_secs(180));
    let fleet = web_fleet("1", 4, |host| {
        let mut s = Script::default();
        s.verify_fails.insert("v3".into());
        if host == "web-3" {
            s.staging_fails.insert("v4".into());
        }
        s
    });
    let u = url("v3");
    let halted = fleet.cluster.ctl_at(
        &fleet.cluster.endpoints(),
        &start_args(
            "web",
            "v3",
            &u,
            &[
                "--id",
                "bad",
                "--canary",
                "1",
                "--max-failures",
                "1",
                "--watch",
            ],
        ),
        WATCH,
    );
    assert_eq!(
        halted.status.code(),
        Some(3),
        "a halt exits 3: {}",
        output_text(&halted)
    );
    let journal = fleet.journal();
    assert_eq!(
        journal.grants("bad"),
        vec!["web-1"],
        "{:?}",
        journal.events()
    );
    drop(journal);
    let status = fleet.status("bad");
    assert_eq!(status["state"], "halted", "{}", pretty(&status));
    let reason = status["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("(max_failures 1)") && reason.contains("verify failed"),
        "{reason}"
    );
    let canary = host_of(&status, "web-1");
    assert_eq!(canary["phase"], "rolled_back", "{canary}");
    assert!(
        canary["error"]
            .as_str()
            .unwrap_or_default()
            .contains("answered 500"),
        "{canary}"
    );
    for h in ["web-2", "web-3", "web-4"] {
        let s = host_of(&status, h);
        assert_eq!(s["phase"], "staged", "untouched: {s}");
        assert!(
            s["waiting_on"]
                .as_str()
                .unwrap_or_default()
                .contains("rollout halted"),
            "{s}"
        );
    }
    assert!(
        fleet.all_on("v1"),
        "every host still on v1: {:?}",
        fleet.releases()
    );

    // A staging failure is counted, with its error, and here does not halt (max_failures 2).
    deadline.check("a rollout with a staging failure");
    let u4 = url("v4");
    let out = fleet.cluster.ctl_at(
        &fleet.cluster.endpoints(),
        &start_args(
            "web",
            "v4",
            &u4,
            &["--id", "four", "--max-failures", "2", "--watch"],
        ),
        WATCH,
    );
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let status = fleet.status("four");
    assert_eq!(
        (status["succeeded"].as_u64(), status["failed"].as_u64()),
        (Some(3), Some(1))
    );
    let failed = host_of(&status, "web-3");
    assert_eq!(failed["phase"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("sha256 mismatch"),
        "{failed}"
    );
    assert_eq!(
        failed["release"], "v1",
        "a staging failure touches nothing: {failed}"
    );
    fleet.stop();
}

#[test]
fn pause_resume_and_abort_with_rollback() {
    let _serial = serial();
    let deadline = Deadline::new("pause resume abort", Duration::from_secs(240));
    let fleet = web_fleet("1", 3, |_| Script::slow(Duration::from_millis(250)));
    let u = url("v2");
    let out = fleet.ctl(&start_args(
        "web",
        "v2",
        &u,
        &["--id", "p1", "--canary", "1", "--pause-after-canary"],
    ));
    assert!(out.status.success(), "{}", output_text(&out));
    let paused = fleet.wait_state("p1", "paused", Duration::from_secs(60));
    assert!(
        paused["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("paused after the canary hosts web-1"),
        "{}",
        pretty(&paused)
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        fleet.journal().grants("p1"),
        vec!["web-1"],
        "nothing after the canary while paused"
    );
    let w2 = host_of(&fleet.status("p1"), "web-2").clone();
    assert!(
        w2["waiting_on"]
            .as_str()
            .unwrap_or_default()
            .contains("rollout paused"),
        "{w2}"
    );
    let resumed = fleet.json(&["rollout", "resume", "p1"]);
    assert_eq!(resumed["state"], "running", "{}", pretty(&resumed));
    let done = fleet.watch("p1");
    assert_eq!(done.status.code(), Some(0), "{}", output_text(&done));
    assert!(fleet.all_on("v2"), "{:?}", fleet.releases());

    // v3 reaches one host, is paused by hand, then aborted with --rollback: back to v2.
    deadline.check("abort --rollback");
    let u3 = url("v3");
    let out = fleet.ctl(&start_args("web", "v3", &u3, &["--id", "p2"]));
    assert!(out.status.success(), "{}", output_text(&out));
    wait_until(Duration::from_secs(60), "p2 reaches one host", || {
        let s = fleet.cluster.try_ctl_json(&["rollout", "status", "p2"])?;
        if s["succeeded"].as_u64().unwrap_or(0) >= 1 {
            Ok(())
        } else {
            Err(pretty(&s))
        }
    });
    let paused = fleet.json(&["rollout", "pause", "p2"]);
    assert_eq!(paused["state"], "paused", "{}", pretty(&paused));
    let aborted = fleet.json(&["rollout", "abort", "p2", "--rollback"]);
    assert_eq!(
        aborted["aborted"]["state"],
        "aborted",
        "{}",
        pretty(&aborted)
    );
    assert_eq!(
        aborted["rollback"]["id"],
        "p2-rollback",
        "{}",
        pretty(&aborted)
    );
    assert_eq!(aborted["rollback"]["kind"], "rollback");
    assert_eq!(aborted["rollback"]["release"], "v2");
    let rb = fleet.watch("p2-rollback");
    assert_eq!(rb.status.code(), Some(0), "{}", output_text(&rb));
    wait_until(Duration::from_secs(30), "every host back on v2", || {
        if fleet.all_on("v2") {
            Ok(())
        } else {
            Err(format!("{:?}", fleet.releases()))
        }
    });
    let watched = fleet.watch("p2");
    assert_eq!(
        watched.status.code(),
        Some(3),
        "watching an aborted rollout exits 3"
    );
    let audit = fleet.json(&["audit", "list"]);
    let actions: Vec<(String, String)> = audit
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["action"].as_str().unwrap_or("").to_string(),
                        e["actor"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    for action in [
        "start_rollout",
        "pause_rollout",
        "resume_rollout",
        "abort_rollout",
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, actor)| a == action && actor == "insecure"),
            "{action} not audited: {actions:?}"
        );
    }
    fleet.stop();
}

#[test]
fn supersede_replaces_an_active_rollout_and_nothing_else_does() {
    let _serial = serial();
    let _deadline = Deadline::new("supersede", Duration::from_secs(180));
    let fleet = web_fleet("1", 3, |_| Script::slow(Duration::from_millis(400)));
    let u2 = url("v2");
    let u3 = url("v3");
    let out = fleet.ctl(&start_args("web", "v2", &u2, &["--id", "s1"]));
    assert!(out.status.success(), "{}", output_text(&out));
    let refused = fleet.ctl(&start_args("web", "v3", &u3, &["--id", "s2"]));
    assert_eq!(refused.status.code(), Some(1), "{}", output_text(&refused));
    let e = stderr(&refused);
    assert!(
        e.contains("s1") && e.contains("--supersede") && e.contains("FailedPrecondition"),
        "{e}"
    );
    let replaced = fleet.cluster.ctl_at(
        &fleet.cluster.endpoints(),
        &start_args("web", "v3", &u3, &["--id", "s2", "--supersede", "--watch"]),
        WATCH,
    );
    assert_eq!(
        replaced.status.code(),
        Some(0),
        "{}",
        output_text(&replaced)
    );
    let s1 = fleet.status("s1");
    assert_eq!(s1["state"], "aborted", "{}", pretty(&s1));
    assert_eq!(s1["reason"], "superseded by s2");
    assert_eq!(s1["superseded_by"], "s2");
    wait_until(Duration::from_secs(30), "every host on v3", || {
        if fleet.all_on("v3") {
            Ok(())
        } else {
            Err(format!("{:?}", fleet.releases()))
        }
    });
    // Never two hosts out at once, across the two rollouts.
    assert!(
        fleet.journal().max_holding() <= 1,
        "{:?}",
        fleet.journal().events()
    );
    fleet.stop();
}

#[test]
fn a_one_host_group_and_bad_input_are_refused_at_once() {
    let _serial = serial();
    let _deadline = Deadline::new("refusals", Duration::from_secs(120));
    let fleet = Fleet::start(
        &[("web", "1"), ("solo", "1")],
        &[
            ("web-1", &["web"], "v1"),
            ("web-2", &["web"], "v1"),
            ("solo-1", &["solo"], "v1"),
        ],
        |_| Script::default(),
    );
    let u = url("v2");
    let sig_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bad_sig = sig_dir.path().join("v2.sig").display().to_string();
    std::fs::write(&bad_sig, "not base64!\n").unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    let lone = fleet.ctl(&start_args("solo", "v2", &u, &[]));
    assert_eq!(lone.status.code(), Some(1), "{}", output_text(&lone));
    let e = stderr(&lone);
    assert!(
        e.contains("single provisioned host") && e.contains("--allow-zero-available true"),
        "{e}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "refused at once, not after {:?}",
        t0.elapsed()
    );
    for (args, code, needle) in [
        (start_args("db", "v2", &u, &[]), 1, "unknown group \"db\""),
        (
            start_args("web", "v2", &u, &["--batch", "2"]),
            1,
            "budget of 1",
        ),
        (
            start_args("web", "v2", &u, &["--canary", "3"]),
            1,
            "canary 3",
        ),
        (start_args("web", "v2", &u, &["--batch", "0"]), 2, "--batch"),
        (start_args("web", "v2", "/tmp/v2.tar", &[]), 2, "file:///"),
        (start_args("web", "v/2", &u, &[]), 2, "release"),
        (
            start_args("web", "v2", &u, &["--id", "no spaces"]),
            2,
            "rollout",
        ),
        (
            vec![
                "rollout",
                "start",
                "web",
                "--release",
                "v2",
                "--artifact",
                &u,
                "--sha256",
                "abc",
            ],
            2,
            "sha256",
        ),
        (
            start_args("web", "v2", &u, &["--progress-deadline", "soon"]),
            2,
            "progress-deadline",
        ),
        (
            start_args("web", "v2", &u, &["--signature", "/nonexistent/v2.sig"]),
            1,
            "cannot read signature file",
        ),
        (
            start_args("web", "v2", &u, &["--signature", &bad_sig]),
            1,
            "signature must be base64",
        ),
        (vec!["rollout", "status", "nope"], 1, "nope"),
        (vec!["rollout", "resume", "nope"], 1, "unknown rollout"),
    ] {
        let out = fleet.ctl(&args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}: {}",
            args.join(" "),
            output_text(&out)
        );
        assert!(
            stderr(&out).contains(needle),
            "{needle:?} not in: {}",
            output_text(&out)
        );
    }
    let list = fleet.json(&["rollout", "list"]);
    assert_eq!(
        list,
        Value::Array(vec![]),
        "nothing was started: {}",
        pretty(&list)
    );
    fleet.stop();
}

#[test]
fn a_rollout_survives_a_leader_kill_and_its_watch_follows_it() {
    let _serial = serial();
    let deadline = Deadline::new("leader kill", Duration::from_secs(240));
    let mut fleet = web_fleet("1", 4, |_| Script::slow(Duration::from_millis(400)));
    let u = url("v2");
    let out = fleet.ctl(&start_args("web", "v2", &u, &["--id", "k1"]));
    assert!(out.status.success(), "{}", output_text(&out));
    let endpoints = fleet.cluster.endpoints();
    let ctl_auth = fleet.cluster.ctl_auth();
    let watch = std::thread::spawn(move || {
        let mut command = std::process::Command::new(hotdeploy_integration_tests::bins::ctl());
        command
            .arg("--endpoints")
            .arg(endpoints)
            .args(ctl_auth.args())
            .args(["rollout", "watch", "k1"]);
        hotdeploy_integration_tests::proc::run_with_timeout(command, WATCH)
    });
    wait_until(Duration::from_secs(60), "k1 reaches one host", || {
        let s = fleet.cluster.try_ctl_json(&["rollout", "status", "k1"])?;
        if s["succeeded"].as_u64().unwrap_or(0) >= 1 {
            Ok(())
        } else {
            Err(pretty(&s))
        }
    });
    let old = fleet.cluster.wait_leader(ELECTION, None);
    fleet.cluster.kill(old);
    let new = fleet.cluster.wait_leader(ELECTION, Some(old));
    assert_ne!(new, old);
    deadline.check("the watch ends");
    let watched = watch
        .join()
        .unwrap_or_else(|_| panic!("watch thread panicked"));
    assert_eq!(
        watched.status.code(),
        Some(0),
        "the watch followed the rollout across the leader change: {}\n{}",
        output_text(&watched),
        fleet.cluster.all_logs()
    );
    let status = fleet.status("k1");
    assert_eq!(status["state"], "completed", "{}", pretty(&status));
    assert_eq!(status["succeeded"], 4);
    assert!(fleet.all_on("v2"), "{:?}", fleet.releases());
    let journal = fleet.journal();
    assert!(
        journal.max_holding() <= 1,
        "over the budget: {:?}",
        journal.events()
    );
    let hosts: BTreeSet<String> = journal.grants("k1").into_iter().collect();
    assert_eq!(hosts.len(), 4, "{:?}", journal.events());
    drop(journal);
    fleet.cluster.restart(old);
    fleet.stop();
}

#[test]
fn a_first_install_takes_no_slot_and_hosts_that_join_or_return_are_caught_up() {
    let _serial = serial();
    let deadline = Deadline::new("first install and catch-up", Duration::from_secs(240));
    let mut fleet = Fleet::start(
        &[("web", "1")],
        &[
            ("web-1", &["web"], ""),
            ("web-2", &["web"], ""),
            ("web-3", &["web"], ""),
        ],
        |_| Script::default(),
    );
    let u = url("v1");
    let out = fleet.cluster.ctl_at(
        &fleet.cluster.endpoints(),
        &start_args("web", "v1", &u, &["--id", "install", "--watch"]),
        WATCH,
    );
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(fleet.all_on("v1"), "{:?}", fleet.releases());
    {
        let journal = fleet.journal();
        let events = journal.events();
        assert!(
            !events.iter().any(|(_, d)| matches!(d, Did::Granted { .. })),
            "a first install takes no slot: {events:?}"
        );
        let installs = events
            .iter()
            .filter(|(_, d)| matches!(d, Did::FirstInstall { .. }))
            .count();
        assert_eq!(installs, 3, "{events:?}");
    }
    // A fresh host joins: it is brought to v1 on its own.
    deadline.check("a fresh host joins");
    fleet.add("web-4", &["web"], "", Script::default());
    let catch_up = |fleet: &Fleet, host: &str| {
        let mut found = String::new();
        wait_until(
            Duration::from_secs(60),
            &format!("{host} caught up"),
            || {
                let list = fleet.cluster.try_ctl_json(&["rollout", "list"])?;
                let c = list.as_array().and_then(|a| {
                    a.iter().rev().find(|r| {
                        r["kind"] == "catch_up" && r["state"] == "completed" && r["release"] == "v1"
                    })
                });
                let on = fleet
                    .agents
                    .iter()
                    .any(|a| a.host() == host && a.release() == "v1");
                match c {
                    Some(c) if on => {
                        found = c["id"].as_str().unwrap_or_default().to_string();
                        Ok(())
                    }
                    _ => Err(pretty(&list)),
                }
            },
        );
        found
    };
    let first = catch_up(&fleet, "web-4");
    let status = fleet.status(&first);
    assert_eq!(
        status["hosts"].as_array().map(Vec::len),
        Some(1),
        "{}",
        pretty(&status)
    );
    assert_eq!(status["hosts"][0]["host"], "web-4");
    // web-2 comes back with another release: it is brought back to v1, under the lock.
    deadline.check("a host comes back on another release");
    fleet.remove("web-2");
    fleet.add("web-2", &["web"], "v0", Script::default());
    wait_until(Duration::from_secs(60), "web-2 back on v1", || {
        let on = fleet
            .agents
            .iter()
            .any(|a| a.host() == "web-2" && a.release() == "v1");
        if on {
            Ok(())
        } else {
            let list = fleet.cluster.try_ctl_json(&["rollout", "list"]);
            let hosts = fleet.cluster.try_ctl_json(&["hosts", "list"]);
            Err(format!(
                "{:?}\nrollouts: {list:?}\nhosts: {hosts:?}",
                fleet.releases()
            ))
        }
    });
    let grants: Vec<(String, Did)> = fleet
        .journal()
        .events()
        .into_iter()
        .filter(|(h, d)| h == "web-2" && matches!(d, Did::Granted { .. }))
        .collect();
    assert_eq!(
        grants.len(),
        1,
        "a provisioned host catches up under the lock: {grants:?}"
    );
    fleet.stop();
}

#[test]
fn a_deploy_whose_slot_is_force_released_is_driven_again() {
    let _serial = serial();
    let _deadline = Deadline::new("fenced deploy", Duration::from_secs(180));
    let fleet = web_fleet("1", 2, |_| Script::slow(Duration::from_millis(800)));
    let u = url("v2");
    let out = fleet.ctl(&start_args("web", "v2", &u, &["--id", "f1"]));
    assert!(out.status.success(), "{}", output_text(&out));
    wait_until(
        Duration::from_secs(60),
        "web-1 deploying under its slot",
        || {
            let s = fleet.cluster.try_ctl_json(&["rollout", "status", "f1"])?;
            if host_of(&s, "web-1")["phase"] == "draining"
                || host_of(&s, "web-1")["phase"] == "swapping"
            {
                Ok(())
            } else {
                Err(pretty(&s))
            }
        },
    );
    let revoked = fleet.ctl(&["locks", "release", "web-1", "--force"]);
    assert!(revoked.status.success(), "{}", output_text(&revoked));
    let done = fleet.watch("f1");
    assert_eq!(
        done.status.code(),
        Some(0),
        "the rollout did not wedge: {}",
        output_text(&done)
    );
    let status = fleet.status("f1");
    let w1 = host_of(&status, "web-1");
    assert_eq!(
        (w1["phase"].as_str(), w1["attempt"].as_u64()),
        (Some("succeeded"), Some(2)),
        "{w1}"
    );
    let events: Vec<String> = status["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|e| e["message"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        events
            .iter()
            .any(|m| m.contains("force-released") && m.contains("driven again as attempt 2")),
        "{events:?}"
    );
    let grants = fleet.journal().grants("f1");
    assert_eq!(
        grants.iter().filter(|h| *h == "web-1").count(),
        2,
        "{grants:?}"
    );
    assert!(fleet.all_on("v2"), "{:?}", fleet.releases());
    fleet.stop();
}

#[test]
fn only_operators_may_use_the_rollout_rpcs() {
    let _serial = serial();
    let _deadline = Deadline::new("rollout roles", Duration::from_secs(120));
    let tmp = tempfile::Builder::new()
        .prefix("hd-rollout-pki-")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    let pki = tmp.path().join("pki");
    let ips = net::alloc_ips(5);
    pki_support::init_fleet(&pki, &ips[..3], &["web-1".to_string()]);
    let cluster = Cluster::start(
        3,
        &[("web", "1")],
        ClusterOpts {
            tls: Some(pki.clone()),
            ips: Some(ips),
            ..ClusterOpts::default()
        },
    );
    cluster.wait_leader(ELECTION, None);
    let agent = CtlAuth::files(&pki, "agent-web-1.pem", "agent-web-1-key.pem");
    let u = url("v2");
    let start = start_args("web", "v2", &u, &["--id", "r1"]);
    let calls: Vec<Vec<&str>> = vec![
        start.clone(),
        vec!["rollout", "list"],
        vec!["rollout", "status", "r1"],
        vec!["rollout", "watch", "r1"],
        vec!["rollout", "pause", "r1"],
        vec!["rollout", "resume", "r1"],
        vec!["rollout", "abort", "r1"],
    ];
    for args in &calls {
        let out = cluster.ctl_as(&agent, args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: {}",
            args.join(" "),
            output_text(&out)
        );
        assert!(
            stderr(&out).contains("PermissionDenied")
                && stderr(&out).contains("operator certificate"),
            "{}: {}",
            args.join(" "),
            output_text(&out)
        );
    }
    // Refused by whichever node the CLI asked first, before any leader routing.
    let logs = strip_ansi(&cluster.all_logs());
    for call in [
        "StartRollout",
        "ListRollouts",
        "GetRollout",
        "WatchRollout",
        "PauseRollout",
        "ResumeRollout",
        "AbortRollout",
    ] {
        let audited = logs.lines().any(|l| {
            l.contains("permission denied")
                && l.contains("audit=true")
                && l.contains(&format!("call=\"{call}\""))
        });
        assert!(
            audited,
            "the refused {call} is not audited in the log:\n{logs}"
        );
    }
    // The operator gets past the role check: the group has no hosts yet.
    let out = cluster.ctl(&start);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("no registered hosts"),
        "{}",
        output_text(&out)
    );
    let list = cluster.ctl_json(&["rollout", "list"]);
    assert_eq!(list, Value::Array(vec![]));
}
