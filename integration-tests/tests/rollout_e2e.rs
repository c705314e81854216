//! Rollouts end to end under load (issue 10, "End-to-end tests"; DESIGN §5, §9): the whole
//! product at once, judged from the outside.
//!
//! Each scenario runs a real 3-process coordinator cluster (group `web`), four (or five) real
//! `hotdeploy-agent` processes supervising `sample-app` in `exec` mode, a real HAProxy in front
//! of them (HTTP health check and `agent-check` on every server; the agents confirm their
//! drains on HAProxy's runtime socket), a steady load of [`RATE`] requests per second through
//! HAProxy, and an independent [`Observer`] polling HAProxy's stats socket every 50 ms for the
//! number of servers out of rotation. Rollouts are driven only by the real
//! `hotdeployctl rollout start|status|pause|resume|abort -o json`.
//!
//! Every scenario that runs a rollout under load asserts the same three things at the end
//! ([`Fleet::assert_clean`]): the observer took enough samples over the whole rollout (and saw
//! at least one server out, so it watched something happen); the load generator kept its rate
//! and saw **zero** failed requests; the observer never saw more servers out at once than the
//! budget.
//!
//! - (a) budget 1, v1 → v2 on four hosts: completed, all four serve v2.
//! - (b) budget 2, six hosts: never more than two out, and faster than budget 1 on the same
//!   fleet.
//! - (c) a release whose health fails, `--canary 1 --max-failures 1`: the canary rolls back,
//!   the rollout halts, no other host is touched.
//! - (d) `kill -9` of the coordinator leader mid-rollout: the rollout completes under the new
//!   leader.
//! - (e) `kill -9` of an agent mid-deploy, kept dead past `unreachable_after`: its slot stays
//!   counted, nobody else goes out; restarted, it reconciles and the rollout completes.
//! - (f) a host already down (its app fails `/health`, from outside hotdeploy) counts against
//!   budget 1: nobody else goes out while it is down; it may itself be deployed, which heals it.
//! - (g) pause and resume complete the rollout; `abort --rollback` returns every host to v1.
//! - (h) a fresh host joining after the rollout is brought to v2 by itself, then enters
//!   rotation.
//! - (i) the first rollout onto unprovisioned hosts installs v1 everywhere, with no slot.
//! - (j) the same `StartRollout` twice (same id) and once more through another coordinator
//!   makes one rollout.
//!
//! Timings are kept short (1 s drain and undrain grace, two verify successes 200 ms apart,
//! small sample artifacts) so the file runs in a few minutes on two loaded cores. Every bound is
//! a liveness bound, not a performance claim. Build the binaries first:
//! `cargo build --workspace --bins`.

mod agent_support;

use agent_support::*;
use hotdeploy_integration_tests::agents::AgentProc;
use hotdeploy_integration_tests::bins;
use hotdeploy_integration_tests::cluster::Cluster;
use hotdeploy_integration_tests::haproxy::{HaProxy, HaServer, Observer, ObserverReport};
use hotdeploy_integration_tests::load::{LoadConfig, LoadGen, LoadReport};
use hotdeploy_integration_tests::net::{self, APP_PORT};
use hotdeploy_integration_tests::proc::ChildGuard;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::process::Output;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Requests per second through HAProxy in every scenario.
const RATE: u32 = 250;
/// How long a rollout may take to end (a liveness bound on two loaded cores).
const ROLLOUT: Duration = Duration::from_secs(150);

/// The whole system, v1 installed on every host, everything in rotation.
struct Fleet {
    agents: Vec<AgentProc>,
    haproxy: HaProxy,
    cluster: Cluster,
    v1: Rel,
    v2: Rel,
    /// Hosts (and their IPs) in HAProxy's backend with no agent yet.
    spare_ips: Vec<(String, Ipv4Addr)>,
    /// A sample app outside hotdeploy in HAProxy's backend, for (i) only.
    _static_app: Option<ChildGuard>,
    artifacts: tempfile::TempDir,
}

/// One fleet at a time in this test binary: each test holds this first, before its deadline
/// starts, and drops it last (under plain `cargo test`, whose tests share a process; nextest
/// runs each test in its own process, within the `multi-process` group).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How a [`Fleet`] is made.
struct FleetSpec {
    /// Hosts in group `web`, started at once.
    hosts: usize,
    /// Further servers in HAProxy's backend whose agents a scenario starts later (h).
    later: usize,
    /// Install v1 with a first rollout before the scenario (all but (i)).
    install: bool,
    /// Put one more sample app, not managed by hotdeploy, behind HAProxy (i).
    static_app: bool,
}

impl FleetSpec {
    fn hosts(hosts: usize) -> FleetSpec {
        FleetSpec {
            hosts,
            later: 0,
            install: true,
            static_app: false,
        }
    }
}

fn host_name(i: usize) -> String {
    format!("web-{}", i + 1)
}

impl Fleet {
    fn start(deadline: &Deadline, spec: FleetSpec) -> Fleet {
        HaProxy::require().unwrap_or_else(|e| panic!("{e}"));
        let artifacts = tempfile::Builder::new()
            .prefix("hd-rollout-e2e-rel-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let v1 = release(artifacts.path(), "v1", false);
        let v2 = release(artifacts.path(), "v2", false);
        let cluster = start_cluster(deadline, "5s", "");
        let total = spec.hosts + spec.later;
        let ips = net::alloc_ips(total + 2);
        let mut servers: Vec<HaServer> = (0..total)
            .map(|i| ha_server(&host_name(i), ips[i]))
            .collect();
        let static_app = spec.static_app.then(|| {
            let ip = ips[total + 1];
            let dir = artifacts.path().join("static");
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(dir.join("VERSION"), "static\n").unwrap_or_else(|e| panic!("{e}"));
            let listen = net::addr(ip, APP_PORT).to_string();
            let child = ChildGuard::spawn(
                "static sample-app",
                &bins::sample_app(),
                &[
                    "--dir".to_string(),
                    dir.to_string_lossy().into_owned(),
                    "--listen".to_string(),
                    listen,
                ],
                &artifacts.path().join("static.log"),
                Some(artifacts.path()),
            );
            servers.push(ha_server("static", ip));
            child
        });
        let haproxy = start_haproxy(&servers, ips[total]);
        let mut fleet = Fleet {
            agents: Vec::new(),
            haproxy,
            cluster,
            v1,
            v2,
            spare_ips: (spec.hosts..total)
                .map(|i| (host_name(i), ips[i]))
                .collect(),
            _static_app: static_app,
            artifacts,
        };
        for (i, ip) in ips.iter().enumerate().take(spec.hosts) {
            fleet.add_agent(&host_name(i), *ip);
        }
        wait_registered(deadline, &fleet.cluster, spec.hosts, || fleet.logs());
        if spec.install {
            let v1 = fleet.v1.clone();
            let s = fleet.start_rollout("install", &v1, &[]);
            assert_eq!(s["state"], "running", "{s}");
            fleet.wait_state(deadline, "install", "completed");
            fleet.wait_all_on(deadline, "v1");
        }
        fleet
    }

    fn add_agent(&mut self, host: &str, ip: Ipv4Addr) {
        let mut o = fast_opts(host, ip, self.cluster.coordinator_addrs());
        o.haproxy_socket = Some(self.haproxy.socket_path().to_path_buf());
        self.agents.push(AgentProc::start(o));
    }

    fn agent(&self, host: &str) -> &AgentProc {
        self.agents
            .iter()
            .find(|a| a.host_id() == host)
            .unwrap_or_else(|| panic!("no agent {host}"))
    }

    fn agent_mut(&mut self, host: &str) -> &mut AgentProc {
        self.agents
            .iter_mut()
            .find(|a| a.host_id() == host)
            .unwrap_or_else(|| panic!("no agent {host}"))
    }

    fn release(&self, id: &str, fail_health: bool) -> Rel {
        release(self.artifacts.path(), id, fail_health)
    }

    fn logs(&self) -> String {
        format!(
            "---- haproxy ----\n{}{}",
            self.haproxy.log_tail(),
            fleet_logs(&self.agents, &self.cluster)
        )
    }

    /// Starts rollout `id` of `rel`; the `rollout status` object it printed.
    fn start_rollout(&self, id: &str, rel: &Rel, extra: &[&str]) -> Value {
        self.cluster
            .try_ctl_json(&rollout_start_args("web", id, rel, extra))
            .unwrap_or_else(|e| panic!("rollout start {id}: {e}\n{}", self.logs()))
    }

    fn status(&self, id: &str) -> Result<Value, String> {
        self.cluster.try_ctl_json(&["rollout", "status", id])
    }

    /// Waits until rollout `id` is in `state`; returns its status.
    fn wait_state(&self, deadline: &Deadline, id: &str, state: &str) -> Value {
        wait_for(
            deadline,
            ROLLOUT,
            &format!("rollout {id} {state}"),
            || {
                let s = self.status(id)?;
                if s["state"] == state {
                    Ok(s)
                } else {
                    Err(s.to_string())
                }
            },
            || self.logs(),
        )
    }

    /// Waits until some host of rollout `id` is in one of `phases`; returns (host, status).
    fn wait_phase(&self, deadline: &Deadline, id: &str, phases: &[&str]) -> (String, Value) {
        wait_for(
            deadline,
            ROLLOUT,
            &format!("a host of {id} in {phases:?}"),
            || {
                let s = self.status(id)?;
                let hit = s["hosts"].as_array().and_then(|hs| {
                    hs.iter()
                        .find(|h| phases.iter().any(|p| h["phase"] == *p))
                        .and_then(|h| h["host"].as_str().map(str::to_string))
                });
                match hit {
                    Some(host) => Ok((host, s)),
                    None => Err(s.to_string()),
                }
            },
            || self.logs(),
        )
    }

    /// Every agent's app serves `release`; the coordinators list every host healthy, in
    /// rotation and on it; HAProxy has every server UP.
    fn wait_all_on(&self, deadline: &Deadline, release: &str) {
        wait_for(
            deadline,
            Duration::from_secs(60),
            &format!("every host on {release}, in rotation"),
            || {
                all_agents_on(&self.agents, &self.cluster, release)?;
                let rows = self.haproxy.stat().map_err(|e| e.to_string())?;
                let managed: Vec<_> = rows.iter().filter(|r| r.name != "static").collect();
                if managed.len() >= self.agents.len()
                    && managed
                        .iter()
                        .filter(|r| self.agents.iter().any(|a| a.host_id() == r.name))
                        .all(|r| r.status == "UP")
                {
                    Ok(())
                } else {
                    Err(format!(
                        "HAProxy: {:?}",
                        rows.iter()
                            .map(|r| (&r.name, &r.status))
                            .collect::<Vec<_>>()
                    ))
                }
            },
            || self.logs(),
        );
    }

    /// Runs `scenario` with the load and the observer going; returns what they saw and how
    /// long it ran.
    fn under_load<T>(&self, scenario: impl FnOnce() -> T) -> (T, Watched) {
        let load = LoadGen::start(LoadConfig::new(self.haproxy.frontend_addr(), RATE));
        let observer = Observer::start(&self.haproxy);
        let started = Instant::now();
        // A moment of steady state first, so the load is at its rate before anything moves.
        std::thread::sleep(Duration::from_millis(500));
        let out = scenario();
        // And after: the last undrain is seen settling.
        std::thread::sleep(Duration::from_millis(500));
        let watched = started.elapsed();
        let seen = observer.stop();
        let load = load.stop();
        (
            out,
            Watched {
                load,
                seen,
                watched,
            },
        )
    }

    /// The verdict of every scenario: enough samples, the load kept its rate with zero
    /// failures, and never more servers out than `budget`.
    fn assert_clean(&self, w: &Watched, budget: usize, what: &str) {
        self.assert_clean_but(w, budget, &[], what);
    }

    /// [`Fleet::assert_clean`], with the servers in `excluded` (hosts not yet in the group)
    /// left out of the count held against the budget.
    fn assert_clean_but(&self, w: &Watched, budget: usize, excluded: &[&str], what: &str) {
        eprintln!(
            "{what}: {:?} under load: {} requests, {} failed, p50 {:.1} ms, p99 {:.1} ms; \
             observer: {} samples, at most {} out; changes {:?}",
            w.watched,
            w.load.requests,
            w.load.failed,
            w.load.latency_p50_ms,
            w.load.latency_p99_ms,
            w.seen.samples,
            w.seen.max_not_up,
            w.seen.changes
        );
        assert_sampled(&w.seen, w.watched, what);
        assert!(
            w.seen.max_not_up >= 1,
            "{what}: the observer never saw a server out of rotation in {} samples: it \
             watched nothing happen",
            w.seen.samples
        );
        // The load kept (most of) its rate: the witness was there all along.
        let want = (f64::from(RATE) * w.watched.as_secs_f64() * 0.7) as u64;
        assert!(
            w.load.requests >= want,
            "{what}: only {} requests in {:?} at {RATE}/s",
            w.load.requests,
            w.watched
        );
        assert_eq!(
            w.load.failed,
            0,
            "{what}: {} requests failed: {:?} {:?}\n{}",
            w.load.failed,
            w.load.errors,
            w.load.error_samples,
            self.logs()
        );
        // `changes` holds every distinct set of servers out, so its largest set (less the
        // excluded ones) is the most out at once in any sample.
        let most_out = w
            .seen
            .changes
            .iter()
            .map(|(_, out)| {
                out.iter()
                    .filter(|s| !excluded.iter().any(|x| s.starts_with(&format!("{x}="))))
                    .count()
            })
            .max()
            .unwrap_or(0);
        assert!(
            most_out <= budget,
            "{what}: the observer saw {most_out} servers out at once (budget {budget}): {:?}",
            w.seen.changes
        );
    }
}

/// What the load generator and the observer saw during a scenario.
struct Watched {
    load: LoadReport,
    seen: ObserverReport,
    watched: Duration,
}

fn host_of<'a>(status: &'a Value, host: &str) -> &'a Value {
    status["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["host"] == host))
        .unwrap_or_else(|| panic!("no host {host} in {status}"))
}

fn phase_of(status: &Value, host: &str) -> String {
    host_of(status, host)["phase"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The phases of a host being deployed (out of rotation or about to be).
const DEPLOYING: [&str; 4] = ["draining", "swapping", "verifying", "rolling_back"];

fn assert_ok(out: &Output, what: &str, logs: impl Fn() -> String) {
    assert!(out.status.success(), "{what}: {}\n{}", show(out), logs());
}

#[test]
fn a_budget_1_rollout_upgrades_four_hosts_with_zero_failed_requests() {
    let _serial = serial();
    let deadline = Deadline::new("(a) budget 1, 4 hosts", Duration::from_secs(300));
    let fleet = Fleet::start(&deadline, FleetSpec::hosts(4));
    let v2 = fleet.v2.clone();
    let (status, w) = fleet.under_load(|| {
        let s = fleet.start_rollout("a", &v2, &[]);
        assert_eq!(s["id"], "a", "{s}");
        fleet.wait_state(&deadline, "a", "completed")
    });
    fleet.assert_clean(&w, 1, "(a) budget 1");
    assert_eq!(status["succeeded"], 4, "{status}");
    assert_eq!(status["failed"], 0, "{status}");
    for i in 0..4 {
        assert_eq!(phase_of(&status, &host_name(i)), "succeeded", "{status}");
    }
    fleet.wait_all_on(&deadline, "v2");
    assert!(
        w.load.versions.contains_key("v2"),
        "the load never saw v2: {:?}",
        w.load.versions
    );
    deadline.finish();
}

/// How long rollout `status` took, start to end, by the coordinators' own clock.
fn rollout_time(status: &Value) -> Duration {
    let (Some(start), Some(end)) = (
        status["created_at_ms"].as_u64(),
        status["finished_at_ms"].as_u64(),
    ) else {
        panic!("a finished rollout has no times: {status}");
    };
    Duration::from_millis(end.saturating_sub(start))
}

#[test]
fn a_budget_2_rollout_keeps_two_out_at_most_and_beats_budget_1() {
    let _serial = serial();
    let deadline = Deadline::new("(b) budget 2, 6 hosts", Duration::from_secs(400));
    let fleet = Fleet::start(&deadline, FleetSpec::hosts(6));
    // The same fleet at budget 1 first, for the comparison.
    let v2 = fleet.v2.clone();
    let (one, w) = fleet.under_load(|| {
        fleet.start_rollout("b1", &v2, &[]);
        fleet.wait_state(&deadline, "b1", "completed")
    });
    fleet.assert_clean(&w, 1, "(b) budget 1");
    fleet.wait_all_on(&deadline, "v2");

    let set = fleet
        .cluster
        .ctl(&["groups", "set", "web", "--max-unavailable", "2"]);
    assert_ok(&set, "groups set web --max-unavailable 2", || fleet.logs());
    let v3 = fleet.release("v3", false);
    let (two, w) = fleet.under_load(|| {
        fleet.start_rollout("b2", &v3, &["--batch", "2"]);
        fleet.wait_state(&deadline, "b2", "completed")
    });
    fleet.assert_clean(&w, 2, "(b) budget 2");
    assert_eq!(
        w.seen.max_not_up, 2,
        "budget 2 never had two hosts out at once: {:?}",
        w.seen.changes
    );
    assert_eq!(two["succeeded"], 6, "{two}");
    fleet.wait_all_on(&deadline, "v3");
    let (t1, t2) = (rollout_time(&one), rollout_time(&two));
    eprintln!("6 hosts: budget 1 took {t1:?}, budget 2 took {t2:?}");
    assert!(
        t2 < t1,
        "budget 2 ({t2:?}) was not faster than budget 1 ({t1:?})"
    );
    deadline.finish();
}

#[test]
fn a_bad_canary_rolls_back_and_halts_the_rollout_touching_no_other_host() {
    let _serial = serial();
    let deadline = Deadline::new("(c) bad canary", Duration::from_secs(300));
    let fleet = Fleet::start(&deadline, FleetSpec::hosts(4));
    let bad = fleet.release("v2-bad", true);
    let (status, w) = fleet.under_load(|| {
        fleet.start_rollout("c", &bad, &["--canary", "1", "--max-failures", "1"]);
        fleet.wait_state(&deadline, "c", "halted")
    });
    fleet.assert_clean(&w, 1, "(c) bad canary");
    // web-1 is the canary (hosts are taken in name order).
    let canary = host_of(&status, "web-1");
    assert_eq!(canary["phase"], "rolled_back", "{status}");
    assert!(
        canary["error"]
            .as_str()
            .unwrap_or_default()
            .contains("verify of v2-bad failed"),
        "{canary}"
    );
    for i in 1..4 {
        let phase = phase_of(&status, &host_name(i));
        assert!(
            ["pending", "staging", "staged"].contains(&phase.as_str()),
            "{} was not to be touched: {status}",
            host_name(i)
        );
    }
    // Only the canary ever left rotation.
    for (_, out) in &w.seen.changes {
        assert!(
            out.iter().all(|s| s.starts_with("web-1=")),
            "a host other than the canary left rotation: {:?}",
            w.seen.changes
        );
    }
    fleet.wait_all_on(&deadline, "v1");
    assert!(locks(&fleet.cluster).unwrap_or_default().is_empty());
    deadline.finish();
}

#[test]
fn a_rollout_survives_kill_9_of_the_coordinator_leader() {
    let _serial = serial();
    let deadline = Deadline::new("(d) leader kill -9", Duration::from_secs(300));
    let mut fleet = Fleet::start(&deadline, FleetSpec::hosts(4));
    let v2 = fleet.v2.clone();
    let leader = fleet
        .cluster
        .wait_leader(deadline.bound(Duration::from_secs(30)), None);
    let load = LoadGen::start(LoadConfig::new(fleet.haproxy.frontend_addr(), RATE));
    let observer = Observer::start(&fleet.haproxy);
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    fleet.start_rollout("d", &v2, &[]);
    // Mid-rollout: the first host has succeeded and the second is being deployed.
    let killed_during = wait_for(
        &deadline,
        ROLLOUT,
        "the second host of d deploying",
        || {
            let s = fleet.status("d")?;
            let done = s["succeeded"].as_u64().unwrap_or(0);
            let deploying = s["hosts"].as_array().and_then(|hs| {
                hs.iter()
                    .find(|h| DEPLOYING.iter().any(|p| h["phase"] == *p))
                    .and_then(|h| h["host"].as_str().map(str::to_string))
            });
            match deploying {
                Some(h) if done >= 1 => Ok(h),
                _ => Err(s.to_string()),
            }
        },
        || fleet.logs(),
    );
    eprintln!("kill -9 of leader {leader} while {killed_during} deploys");
    fleet.cluster.kill(leader);
    let new_leader = fleet
        .cluster
        .wait_leader(deadline.bound(Duration::from_secs(60)), Some(leader));
    let status = fleet.wait_state(&deadline, "d", "completed");
    std::thread::sleep(Duration::from_millis(500));
    let w = Watched {
        watched: started.elapsed(),
        seen: observer.stop(),
        load: load.stop(),
    };
    fleet.assert_clean(&w, 1, "(d) leader kill -9");
    assert_ne!(new_leader, leader);
    assert_eq!(status["succeeded"], 4, "{status}");
    assert_eq!(phase_of(&status, &killed_during), "succeeded", "{status}");
    fleet.wait_all_on(&deadline, "v2");
    deadline.finish();
}

#[test]
fn an_agent_killed_mid_deploy_keeps_its_slot_and_the_rollout_completes_after_its_restart() {
    let _serial = serial();
    let deadline = Deadline::new("(e) agent kill -9", Duration::from_secs(300));
    let mut fleet = Fleet::start(&deadline, FleetSpec::hosts(4));
    let v2 = fleet.v2.clone();
    let load = LoadGen::start(LoadConfig::new(fleet.haproxy.frontend_addr(), RATE));
    let observer = Observer::start(&fleet.haproxy);
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    fleet.start_rollout("e", &v2, &[]);
    let (victim, _) = fleet.wait_phase(&deadline, "e", &["swapping", "verifying"]);
    eprintln!("kill -9 of agent {victim} mid-deploy");
    fleet.agent_mut(&victim).kill();
    // Dead past `unreachable_after` (5 s): the slot must stay counted all along.
    let dead_until = Instant::now() + Duration::from_secs(7);
    let mut lock_samples = 0;
    while Instant::now() < dead_until {
        let held = locks(&fleet.cluster).unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
        assert!(
            held.len() == 1 && held[0]["host"] == victim.as_str(),
            "while {victim} is dead its slot must be the only one: {held:?}"
        );
        lock_samples += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(lock_samples >= 5, "only {lock_samples} looks at the locks");
    let s = fleet.status("e").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s["state"], "running", "{s}");
    fleet.agent_mut(&victim).restart();
    let status = fleet.wait_state(&deadline, "e", "completed");
    std::thread::sleep(Duration::from_millis(500));
    let w = Watched {
        watched: started.elapsed(),
        seen: observer.stop(),
        load: load.stop(),
    };
    fleet.assert_clean(&w, 1, "(e) agent kill -9");
    assert_eq!(status["succeeded"], 4, "{status}");
    fleet.wait_all_on(&deadline, "v2");
    assert_current_is_complete(fleet.agent(&victim));
    deadline.finish();
}

#[test]
fn a_host_already_down_counts_against_the_budget() {
    let _serial = serial();
    let deadline = Deadline::new("(f) a host already down", Duration::from_secs(300));
    let fleet = Fleet::start(&deadline, FleetSpec::hosts(4));
    // web-3's app fails its health, from outside hotdeploy: HAProxy takes it out, its agent
    // reports it unhealthy.
    let down = "web-3";
    let flag = fleet.agent(down).root().join("current/FAIL_HEALTH");
    let v2 = fleet.v2.clone();
    let (status, w) = fleet.under_load(|| {
        std::fs::write(&flag, "").unwrap_or_else(|e| panic!("{}: {e}", flag.display()));
        wait_for(
            &deadline,
            Duration::from_secs(30),
            &format!("{down} unhealthy to the coordinators and DOWN in HAProxy"),
            || {
                let h = host_entry(&fleet.cluster, down)?;
                let row = fleet.haproxy.stat().map_err(|e| e.to_string())?;
                let ha = row
                    .iter()
                    .find(|r| r.name == down)
                    .map(|r| r.status.clone());
                if h["health"] == "unhealthy" && ha.as_deref() != Some("UP") {
                    Ok(())
                } else {
                    Err(format!("{h} / {ha:?}"))
                }
            },
            || fleet.logs(),
        );
        fleet.start_rollout("f", &v2, &[]);
        fleet.wait_state(&deadline, "f", "completed")
    });
    fleet.assert_clean(&w, 1, "(f) a host already down");
    // While web-3 was down, nobody else was out: every set of servers out the observer saw
    // that holds web-3 holds nothing else (the max <= 1 above says the same, sample by sample).
    for (_, out) in &w.seen.changes {
        if out.iter().any(|s| s.starts_with(&format!("{down}="))) {
            assert_eq!(out.len(), 1, "{:?}", w.seen.changes);
        }
    }
    assert_eq!(status["succeeded"], 4, "{status}");
    // The new release has no FAIL_HEALTH: deploying the down host healed it.
    fleet.wait_all_on(&deadline, "v2");
    deadline.finish();
}

#[test]
fn abort_with_rollback_returns_every_host_to_v1_and_pause_resume_completes() {
    let _serial = serial();
    let deadline = Deadline::new("(g) pause, resume, abort", Duration::from_secs(400));
    let fleet = Fleet::start(&deadline, FleetSpec::hosts(4));
    let v2 = fleet.v2.clone();
    let ((aborted, rollback), w) = fleet.under_load(|| {
        fleet.start_rollout("g1", &v2, &[]);
        wait_for(
            &deadline,
            ROLLOUT,
            "one host of g1 on v2",
            || {
                let s = fleet.status("g1")?;
                if s["succeeded"].as_u64().unwrap_or(0) >= 1 {
                    Ok(())
                } else {
                    Err(s.to_string())
                }
            },
            || fleet.logs(),
        );
        let aborted = fleet
            .cluster
            .try_ctl_json(&["rollout", "abort", "g1", "--rollback"])
            .unwrap_or_else(|e| panic!("abort: {e}"));
        let rollback = fleet.wait_state(&deadline, "g1-rollback", "completed");
        (aborted, rollback)
    });
    fleet.assert_clean(&w, 1, "(g) abort --rollback");
    assert_eq!(aborted["aborted"]["state"], "aborted", "{aborted}");
    assert_eq!(aborted["rollback"]["release"], "v1", "{aborted}");
    assert_eq!(rollback["release"], "v1", "{rollback}");
    fleet.wait_all_on(&deadline, "v1");

    // Pause as soon as a host deploys: the one under way finishes, nobody else starts.
    let v3 = fleet.release("v3", false);
    let (status, w) = fleet.under_load(|| {
        fleet.start_rollout("g2", &v3, &[]);
        fleet.wait_phase(&deadline, "g2", &DEPLOYING);
        let paused = fleet
            .cluster
            .try_ctl_json(&["rollout", "pause", "g2"])
            .unwrap_or_else(|e| panic!("pause: {e}"));
        assert_eq!(paused["state"], "paused", "{paused}");
        // The deploy under way ends; then nothing moves for a while.
        let settled = wait_for(
            &deadline,
            Duration::from_secs(60),
            "g2 paused with no host deploying",
            || {
                let s = fleet.status("g2")?;
                let busy = s["hosts"].as_array().is_some_and(|hs| {
                    hs.iter()
                        .any(|h| DEPLOYING.iter().any(|p| h["phase"] == *p))
                });
                if s["state"] == "paused" && !busy {
                    Ok(s)
                } else {
                    Err(s.to_string())
                }
            },
            || fleet.logs(),
        );
        std::thread::sleep(Duration::from_secs(4));
        let later = fleet.status("g2").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(later["state"], "paused", "{later}");
        assert_eq!(
            later["succeeded"], settled["succeeded"],
            "a paused rollout went on: {settled} then {later}"
        );
        assert!(locks(&fleet.cluster).unwrap_or_default().is_empty());
        let resumed = fleet
            .cluster
            .try_ctl_json(&["rollout", "resume", "g2"])
            .unwrap_or_else(|e| panic!("resume: {e}"));
        assert_eq!(resumed["state"], "running", "{resumed}");
        fleet.wait_state(&deadline, "g2", "completed")
    });
    fleet.assert_clean(&w, 1, "(g) pause and resume");
    assert_eq!(status["succeeded"], 4, "{status}");
    fleet.wait_all_on(&deadline, "v3");
    deadline.finish();
}

#[test]
fn the_same_start_twice_and_through_another_coordinator_makes_one_rollout() {
    let _serial = serial();
    let deadline = Deadline::new("(j) idempotent start", Duration::from_secs(300));
    let fleet = Fleet::start(&deadline, FleetSpec::hosts(4));
    let v2 = fleet.v2.clone();
    let leader = fleet
        .cluster
        .wait_leader(deadline.bound(Duration::from_secs(30)), None);
    let other = fleet
        .cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap_or_else(|| panic!("no follower"));
    let (status, w) = fleet.under_load(|| {
        let args = rollout_start_args("web", "j", &v2, &[]);
        let first = fleet.start_rollout("j", &v2, &[]);
        let second = fleet.start_rollout("j", &v2, &[]);
        let mut json_args = vec!["-o".to_string(), "json".to_string()];
        json_args.extend(args);
        let out = fleet.cluster.ctl_at(
            &fleet.cluster.addr(other).to_string(),
            &json_args,
            Duration::from_secs(30),
        );
        assert_ok(&out, "rollout start through a follower", || fleet.logs());
        let third: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)));
        for s in [&first, &second, &third] {
            assert_eq!(s["id"], "j", "{s}");
            assert_eq!(s["release"], "v2", "{s}");
        }
        fleet.wait_state(&deadline, "j", "completed")
    });
    fleet.assert_clean(&w, 1, "(j) idempotent start");
    assert_eq!(status["succeeded"], 4, "{status}");
    let list = fleet.cluster.ctl_json(&["rollout", "list"]);
    let ids: Vec<&str> = list
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["install", "j"], "{list}");
    fleet.wait_all_on(&deadline, "v2");
    deadline.finish();
}

#[test]
fn the_first_rollout_installs_v1_everywhere_with_no_slot() {
    let _serial = serial();
    let deadline = Deadline::new("(i) first install", Duration::from_secs(300));
    let fleet = Fleet::start(
        &deadline,
        FleetSpec {
            install: false,
            static_app: true,
            ..FleetSpec::hosts(4)
        },
    );
    // The load is served by the static app while the four hosts come up.
    wait_for(
        &deadline,
        Duration::from_secs(20),
        "the static server UP",
        || {
            let rows = fleet.haproxy.stat().map_err(|e| e.to_string())?;
            if rows.iter().any(|r| r.name == "static" && r.status == "UP") {
                Ok(())
            } else {
                Err(format!(
                    "{:?}",
                    rows.iter()
                        .map(|r| (&r.name, &r.status))
                        .collect::<Vec<_>>()
                ))
            }
        },
        || fleet.logs(),
    );
    let v1 = fleet.v1.clone();
    let ((status, slots_seen, budget_used), w) = fleet.under_load(|| {
        fleet.start_rollout("i", &v1, &[]);
        let mut slots_seen = Vec::new();
        let mut budget_used = 0u64;
        let status = wait_for(
            &deadline,
            ROLLOUT,
            "rollout i completed",
            || {
                if let Ok(held) = locks(&fleet.cluster) {
                    slots_seen.extend(held);
                }
                if let Ok(st) = fleet.cluster.try_ctl_json(&["status"]) {
                    let used = st["groups"][0]["unavailable"].as_u64().unwrap_or(0);
                    budget_used = budget_used.max(used);
                }
                let s = fleet.status("i")?;
                if s["state"] == "completed" {
                    Ok(s)
                } else {
                    Err(s.to_string())
                }
            },
            || fleet.logs(),
        );
        (status, slots_seen, budget_used)
    });
    // The observer sees the four hosts DOWN until each is installed: they had nothing to
    // serve, so they are left out of the count (their agents hold them in MAINT until the
    // first release is live). No drain: none was ever DRAIN.
    let hosts: Vec<String> = (0..4).map(host_name).collect();
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    fleet.assert_clean_but(&w, 0, &hosts, "(i) first install");
    for (_, out) in &w.seen.changes {
        assert!(
            out.iter().all(|s| !s.contains("DRAIN")),
            "a first install drained a host: {:?}",
            w.seen.changes
        );
    }
    assert!(
        slots_seen.is_empty(),
        "a first install took a slot: {slots_seen:?}"
    );
    assert_eq!(
        budget_used, 0,
        "unprovisioned hosts counted against the budget"
    );
    assert_eq!(status["succeeded"], 4, "{status}");
    fleet.wait_all_on(&deadline, "v1");
    assert!(w.load.versions.contains_key("v1"), "{:?}", w.load.versions);
    deadline.finish();
}

#[test]
fn a_fresh_host_joining_after_the_rollout_is_brought_to_v2_then_enters_rotation() {
    let _serial = serial();
    let deadline = Deadline::new("(h) a fresh host joins", Duration::from_secs(300));
    let mut fleet = Fleet::start(
        &deadline,
        FleetSpec {
            later: 1,
            ..FleetSpec::hosts(4)
        },
    );
    // web-5 is in HAProxy's backend from the start, DOWN (no agent, no app) until it joins.
    let v2 = fleet.v2.clone();
    let (status, w) = fleet.under_load(|| {
        fleet.start_rollout("h", &v2, &[]);
        fleet.wait_state(&deadline, "h", "completed")
    });
    fleet.assert_clean_but(&w, 1, &["web-5"], "(h) the rollout before the join");
    assert_eq!(status["succeeded"], 4, "{status}");
    fleet.wait_all_on(&deadline, "v2");

    let (host, ip) = fleet.spare_ips[0].clone();
    let load = LoadGen::start(LoadConfig::new(fleet.haproxy.frontend_addr(), RATE));
    let observer = Observer::start(&fleet.haproxy);
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    fleet.add_agent(&host, ip);
    fleet.wait_all_on(&deadline, "v2");
    std::thread::sleep(Duration::from_millis(500));
    let w = Watched {
        watched: started.elapsed(),
        seen: observer.stop(),
        load: load.stop(),
    };
    fleet.assert_clean_but(&w, 0, &["web-5"], "(h) the join");
    // It entered rotation on v2: the load never saw anything else once it joined.
    assert_eq!(
        w.load.versions.keys().collect::<Vec<_>>(),
        ["v2"],
        "{:?}",
        w.load.versions
    );
    let entry = host_entry(&fleet.cluster, &host).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entry["release"], "v2", "{entry}");
    assert_current_is_complete(fleet.agent(&host));
    deadline.finish();
}
