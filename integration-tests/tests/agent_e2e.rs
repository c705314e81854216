//! End-to-end tests of standalone agents behind a real HAProxy (DESIGN §4, §9).
//!
//! Two hosts, `web-1` and `web-2`, each a real `hotdeploy-agent` supervising `sample-app` in
//! `exec` mode, sit behind HAProxy with an `agent-check` every 500 ms. The tests drive the agents
//! only through `hotdeployctl agent ...` and judge them from outside:
//!
//! - `drain` shows up in HAProxy as `DRAIN` within 2 × agent-inter, and `undrain` brings the
//!   server back `UP`;
//! - a deploy under steady load, with and without `haproxy_socket`, fails no request, leaves the
//!   host on the new release, and never has more than one server out of rotation;
//! - a release that fails its health is rolled back by the agent itself, under load, with no
//!   failed request, and the agent reports `rolled_back`;
//! - `kill -9` of the agent under load fails no request and does not restart the app: the
//!   restarted agent re-adopts it and reports the host healthy and in rotation;
//! - an agent upgrade under load (SIGTERM, as systemd stops it, then another agent binary
//!   started) fails no request, keeps the host in rotation and does not restart the app.
//!
//! A missing HAProxy fails these tests; it never skips them.

mod agent_support;

use agent_support::*;
use hotdeploy_integration_tests::agents::AgentProc;
use hotdeploy_integration_tests::haproxy::{HaProxy, Observer};
use hotdeploy_integration_tests::load::{LoadConfig, LoadGen, LoadReport};
use hotdeploy_integration_tests::{bins, http_probe, net};
use nix::sys::signal::Signal;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Two agents (web-1, web-2) behind HAProxy, both on v1, all `UP`.
struct Fleet {
    haproxy: HaProxy,
    agents: Vec<AgentProc>,
    v2: Rel,
    bad: Rel,
    _artifacts: tempfile::TempDir,
}

impl Fleet {
    /// Starts HAProxy, then the agents (with `haproxy_socket` if `use_socket`, and the given
    /// grace periods and verify timeout), first-deploys v1 on both and waits until HAProxy has
    /// both `UP`.
    fn start(deadline: &Deadline, use_socket: bool, grace: &str, verify_timeout: &str) -> Fleet {
        HaProxy::require().unwrap_or_else(|e| panic!("{e}"));
        let artifacts = tempfile::Builder::new()
            .prefix("hd-e2e-rel-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let v1 = release(artifacts.path(), "v1", false);
        let v2 = release(artifacts.path(), "v2", false);
        let bad = release(artifacts.path(), "v2-bad", true);
        let ips = net::alloc_ips(3);
        let hosts = ["web-1", "web-2"];
        let servers: Vec<_> = hosts
            .iter()
            .zip(&ips)
            .map(|(h, ip)| ha_server(h, *ip))
            .collect();
        let haproxy = start_haproxy(&servers, ips[2]);
        let agents: Vec<AgentProc> = hosts
            .iter()
            .zip(&ips)
            .map(|(h, ip)| {
                let mut o = fast_opts(h, *ip, Vec::new());
                o.drain_grace = grace.into();
                o.undrain_grace = grace.into();
                o.verify_timeout = verify_timeout.into();
                if use_socket {
                    o.haproxy_socket = Some(haproxy.socket_path().to_path_buf());
                    o.drain_timeout = Some("10s".into());
                }
                AgentProc::start(o)
            })
            .collect();
        for agent in &agents {
            deploy_ok(agent, &v1);
        }
        let fleet = Fleet {
            haproxy,
            agents,
            v2,
            bad,
            _artifacts: artifacts,
        };
        fleet.wait_all_up(deadline);
        for agent in &fleet.agents {
            wait_settled(deadline, agent, Some("v1"), Duration::from_secs(10));
        }
        fleet
    }

    fn wait_all_up(&self, deadline: &Deadline) {
        assert!(
            self.haproxy
                .wait_all_up(2, deadline.bound(Duration::from_secs(15))),
            "HAProxy does not show both servers UP: {:?}\n{}",
            self.haproxy.stat(),
            self.logs()
        );
    }

    fn logs(&self) -> String {
        let mut text = format!("---- haproxy ----\n{}", self.haproxy.log_tail());
        for a in &self.agents {
            text.push_str(&format!(
                "\n---- agent {} ----\n{}",
                a.host_id(),
                a.log_tail()
            ));
        }
        text
    }

    fn load(&self) -> LoadGen {
        let load = LoadGen::start(LoadConfig::new(self.haproxy.frontend_addr(), 150));
        // Let the load settle into its keep-alive connections first.
        std::thread::sleep(Duration::from_millis(500));
        load
    }
}

fn assert_no_failures(report: &LoadReport, logs: &str) {
    assert_eq!(
        report.failed, 0,
        "requests failed: {:?} samples {:?}\n{report:?}\n{logs}",
        report.errors, report.error_samples
    );
    assert!(report.ok > 100, "too few requests went through: {report:?}");
}

/// Polls HAProxy until `server`'s status is `want` or starts with `want ` (HAProxy says
/// `DRAIN (agent)` for a drain set by the agent-check); returns how long that took.
fn time_until_status(fleet: &Fleet, deadline: &Deadline, server: &str, want: &str) -> Duration {
    let t0 = Instant::now();
    let until = t0 + deadline.bound(Duration::from_secs(10));
    loop {
        let status = fleet.haproxy.server_status(server);
        if status == want || status.starts_with(&format!("{want} ")) {
            return t0.elapsed();
        }
        assert!(
            Instant::now() < until,
            "{server} never became {want} in HAProxy: {:?}\n{}",
            fleet.haproxy.stat(),
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn drain_and_undrain_show_in_haproxy_within_two_agent_intervals() {
    let deadline = Deadline::new("drain/undrain via agent-check", Duration::from_secs(60));
    let fleet = Fleet::start(&deadline, false, "1s", "8s");
    let observer = Observer::start(&fleet.haproxy);
    let watched = Instant::now();
    let web1 = &fleet.agents[0];

    // The CLI returns only after drain_grace; HAProxy must see DRAIN well before that.
    let drained_after = std::thread::scope(|s| {
        let cli = s.spawn(|| web1.ctl(&["drain"]));
        let took = time_until_status(&fleet, &deadline, "web-1", "DRAIN");
        let out = cli
            .join()
            .unwrap_or_else(|_| panic!("drain thread panicked"));
        assert!(out.status.success(), "drain failed: {}", show(&out));
        took
    });
    assert!(
        drained_after <= 2 * AGENT_INTER,
        "HAProxy showed web-1 DRAIN only after {drained_after:?} (> 2 × agent-inter)"
    );
    let s = status(web1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s["state"], "out_of_rotation", "{s}");
    assert_eq!(web1.ready_status(), Some(503), "/ready of a drained host");
    assert_eq!(fleet.haproxy.server_status("web-2"), "UP");
    // It stays drained: the agent keeps answering `drain`.
    std::thread::sleep(3 * AGENT_INTER);
    let still = fleet.haproxy.server_status("web-1");
    assert!(
        still.starts_with("DRAIN"),
        "web-1 left DRAIN by itself: {still}"
    );

    let undrained_after = std::thread::scope(|s| {
        let cli = s.spawn(|| web1.ctl(&["undrain"]));
        let took = time_until_status(&fleet, &deadline, "web-1", "UP");
        let out = cli
            .join()
            .unwrap_or_else(|_| panic!("undrain thread panicked"));
        assert!(out.status.success(), "undrain failed: {}", show(&out));
        took
    });
    assert!(
        undrained_after <= 2 * AGENT_INTER,
        "HAProxy showed web-1 UP only after {undrained_after:?} (> 2 × agent-inter)"
    );
    wait_settled(&deadline, web1, Some("v1"), Duration::from_secs(5));
    let report = observer.stop();
    assert_sampled(&report, watched.elapsed(), "drain and undrain");
    assert_eq!(
        report.max_not_up, 1,
        "only web-1 was to leave: {:?}",
        report.changes
    );
    eprintln!("DRAIN after {drained_after:?}, UP after {undrained_after:?}");
    deadline.finish();
}

/// Deploys v2 on web-1 under load; the shared body of the two variants below.
fn deploy_under_load(use_socket: bool) {
    let name = if use_socket {
        "deploy under load, haproxy_socket"
    } else {
        "deploy under load, grace"
    };
    let deadline = Deadline::new(name, Duration::from_secs(60));
    // With the socket the agent must not wait for its grace periods: make them long enough
    // that waiting on them would show.
    let grace = if use_socket { "20s" } else { "1s" };
    let fleet = Fleet::start(&deadline, use_socket, grace, "8s");
    let web1 = &fleet.agents[0];
    let pid_before = one_app_pid(web1);
    let observer = Observer::start(&fleet.haproxy);
    let watched = Instant::now();
    let load = fleet.load();

    let t0 = Instant::now();
    let out = deploy(web1, &fleet.v2);
    let took = t0.elapsed();
    // Keep the load on for a moment after the deploy: traffic must reach v2 again.
    std::thread::sleep(Duration::from_millis(1500));
    let report = load.stop();
    let seen = observer.stop();
    let watched = watched.elapsed();
    eprintln!(
        "deploy took {took:?}; load {} ok / {} failed, versions {:?}, p99 {} ms; observer {:?}",
        report.ok, report.failed, report.versions, report.latency_p99_ms, seen.changes
    );

    assert!(
        out.status.success(),
        "deploy failed: {}\n{}",
        show(&out),
        fleet.logs()
    );
    assert_no_failures(&report, &fleet.logs());
    assert_eq!(web1.app_version().as_deref(), Some("v2"));
    assert_eq!(fleet.agents[1].app_version().as_deref(), Some("v1"));
    assert_ne!(one_app_pid(web1), pid_before, "the app was not restarted");
    assert!(
        report.versions.get("v2").copied().unwrap_or(0) > 0,
        "no request reached v2 after the deploy: {:?}",
        report.versions
    );
    assert_sampled(&seen, watched, "a deploy under load");
    assert_eq!(
        seen.max_not_up, 1,
        "web-1 (only) must have left rotation: {:?}",
        seen.changes
    );
    assert!(
        seen.changes
            .iter()
            .all(|(_, down)| down.iter().all(|s| s.starts_with("web-1="))),
        "web-2 left rotation: {:?}",
        seen.changes
    );
    let s = wait_settled(&deadline, web1, Some("v2"), Duration::from_secs(5));
    assert_eq!(s["last_outcome"], "succeeded", "{s}");
    assert_eq!(s["previous"], "v1", "{s}");
    assert_eq!(fleet.haproxy.server_status("web-1"), "UP");
    if use_socket {
        // Confirmation through the runtime API, not the 20 s grace periods.
        assert!(
            took < Duration::from_secs(15),
            "the deploy took {took:?}: the agent waited on its grace instead of the socket"
        );
    } else {
        // drain_grace + undrain_grace at least.
        assert!(took >= Duration::from_secs(2), "deploy took only {took:?}");
    }
    assert_current_is_complete(web1);
    deadline.finish();
}

#[test]
fn deploy_under_load_without_haproxy_socket_fails_no_request() {
    deploy_under_load(false);
}

#[test]
fn deploy_under_load_with_haproxy_socket_fails_no_request() {
    deploy_under_load(true);
}

#[test]
fn failed_verify_rolls_back_by_itself_under_load() {
    let deadline = Deadline::new("failed verify rolls back", Duration::from_secs(60));
    let fleet = Fleet::start(&deadline, false, "1s", "3s");
    let web1 = &fleet.agents[0];
    let observer = Observer::start(&fleet.haproxy);
    let watched = Instant::now();
    let load = fleet.load();

    let out = deploy(web1, &fleet.bad);
    std::thread::sleep(Duration::from_millis(1000));
    let report = load.stop();
    let seen = observer.stop();
    let watched = watched.elapsed();
    eprintln!(
        "load {} ok / {} failed, versions {:?}; observer {:?}",
        report.ok, report.failed, report.versions, seen.changes
    );

    assert_eq!(
        out.status.code(),
        Some(1),
        "a rolled-back deploy must exit 1: {}\n{}",
        show(&out),
        fleet.logs()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rolled_back"), "{}", show(&out));
    assert_no_failures(&report, &fleet.logs());
    assert!(
        !report.versions.contains_key("v2-bad"),
        "the broken release served traffic: {:?}",
        report.versions
    );
    assert_sampled(&seen, watched, "a deploy that rolled back");
    assert!(seen.max_not_up <= 1, "{:?}", seen.changes);

    let s = wait_settled(&deadline, web1, Some("v1"), Duration::from_secs(10));
    assert_eq!(s["last_outcome"], "rolled_back", "{s}");
    assert_eq!(web1.app_version().as_deref(), Some("v1"));
    assert_eq!(web1.ready_status(), Some(200));
    fleet.wait_all_up(&deadline);
    assert_current_is_complete(web1);
    one_app_pid(web1);
    deadline.finish();
}

#[test]
fn agent_kill_9_under_load_keeps_the_app_and_fails_no_request() {
    let deadline = Deadline::new("agent kill -9 under load", Duration::from_secs(60));
    let mut fleet = Fleet::start(&deadline, false, "1s", "8s");
    let pid = one_app_pid(&fleet.agents[0]);
    let observer = Observer::start(&fleet.haproxy);
    let watched = Instant::now();
    let load = fleet.load();

    let web1 = &mut fleet.agents[0];
    web1.kill();
    std::thread::sleep(Duration::from_millis(1500)); // several agent-checks with no agent
    assert_eq!(
        web1.app_pids(),
        vec![pid],
        "killing the agent touched the app"
    );
    // From its very first answers on, the restarted agent must report the host ready, on both
    // front ends: poll them as fast as possible while it starts.
    let (ready_addr, check_addr) = (web1.ready_addr(), web1.agent_check_addr());
    let stop_polling = AtomicBool::new(false);
    // Every poll is bounded: by the flag (raised even if the restart panics) and by time.
    let until = Instant::now() + deadline.bound(Duration::from_secs(40));
    let (ready_answers, check_answers) = std::thread::scope(|s| {
        let stop_guard = RaiseOnDrop(&stop_polling);
        let ready = s.spawn(|| {
            let mut answers = Vec::new();
            while keep_polling(&stop_polling, until) {
                if let Ok(r) = http_probe::get(ready_addr, "/ready", Duration::from_millis(500)) {
                    answers.push(r.status);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            answers
        });
        let check = s.spawn(|| {
            let mut answers = Vec::new();
            while keep_polling(&stop_polling, until) {
                if let Some(line) = agent_check_line(check_addr) {
                    answers.push(line);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            answers
        });
        web1.restart();
        std::thread::sleep(Duration::from_millis(500));
        drop(stop_guard);
        (
            ready
                .join()
                .unwrap_or_else(|_| panic!("/ready poller panicked")),
            check
                .join()
                .unwrap_or_else(|_| panic!("agent-check poller panicked")),
        )
    });
    let bad_ready: Vec<_> = ready_answers.iter().filter(|s| **s != 200).collect();
    assert!(
        !ready_answers.is_empty() && bad_ready.is_empty(),
        "the restarting agent's /ready answered {} non-200 of {} ({:?}...): the host would \
         leave rotation because its agent restarted",
        bad_ready.len(),
        ready_answers.len(),
        &ready_answers[..ready_answers.len().min(5)]
    );
    let bad_check: Vec<_> = check_answers.iter().filter(|s| *s != "ready up").collect();
    assert!(
        !check_answers.is_empty() && bad_check.is_empty(),
        "the restarting agent's agent-check answered {} non-`ready up` of {} ({:?}...)",
        bad_check.len(),
        check_answers.len(),
        &bad_check[..bad_check.len().min(5)]
    );
    wait_settled(
        &deadline,
        &fleet.agents[0],
        Some("v1"),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(1500)); // more agent-checks, now answered again
    let report = load.stop();
    let seen = observer.stop();
    let watched = watched.elapsed();
    eprintln!(
        "load {} ok / {} failed; observer {:?}",
        report.ok, report.failed, seen.changes
    );

    assert_no_failures(&report, &fleet.logs());
    assert_sampled(&seen, watched, "an agent's kill -9 and restart");
    let web1 = &fleet.agents[0];
    assert_eq!(
        web1.app_pids(),
        vec![pid],
        "the app was restarted or doubled"
    );
    let s = status(web1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s["service_pid"], pid,
        "the agent did not re-adopt the app: {s}"
    );
    assert_eq!(s["health"], "healthy", "{s}");
    assert_eq!(s["state"], "in_rotation", "{s}");
    assert_eq!(
        seen.max_not_up, 0,
        "a server left rotation while only the agent restarted: {:?}",
        seen.changes
    );
    assert_eq!(web1.app_version().as_deref(), Some("v1"));
    deadline.finish();
}

#[test]
fn agent_upgrade_under_load_keeps_the_app_and_fails_no_request() {
    let deadline = Deadline::new("agent upgrade under load", Duration::from_secs(60));
    let mut fleet = Fleet::start(&deadline, false, "1s", "8s");
    let pid = one_app_pid(&fleet.agents[0]);
    // The "new" agent binary: another file than the running one, as a package upgrade installs.
    let new_agent = fleet._artifacts.path().join("hotdeploy-agent-new");
    std::fs::hard_link(bins::agent(), &new_agent)
        .or_else(|_| std::fs::copy(bins::agent(), &new_agent).map(|_| ()))
        .unwrap_or_else(|e| panic!("installing {}: {e}", new_agent.display()));
    let observer = Observer::start(&fleet.haproxy);
    let watched = Instant::now();
    let load = fleet.load();

    // The old agent is stopped the way systemd stops it for an upgrade: SIGTERM, and it exits
    // by itself, leaving the app running.
    let web1 = &mut fleet.agents[0];
    web1.signal(Signal::SIGTERM);
    let exit = web1.wait_exit(Duration::from_secs(20));
    assert!(
        exit.is_some_and(|e| e.success()),
        "the agent did not exit cleanly on SIGTERM ({exit:?})\n{}",
        web1.log_tail()
    );
    assert_eq!(
        web1.app_pids(),
        vec![pid],
        "stopping the agent touched the app"
    );
    std::thread::sleep(Duration::from_millis(1000)); // agent-checks with no agent

    // The new binary starts and adopts the app.
    web1.opts_mut().binary = Some(new_agent.clone());
    web1.restart();
    let agent_pid = web1
        .pid()
        .unwrap_or_else(|| panic!("the new agent is not running"));
    let exe = std::fs::read_link(format!("/proc/{agent_pid}/exe"))
        .unwrap_or_else(|e| panic!("/proc/{agent_pid}/exe: {e}"));
    assert_eq!(exe, new_agent, "the restarted agent is not the new binary");
    wait_settled(&deadline, web1, Some("v1"), Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500)); // agent-checks answered by the new agent
    let report = load.stop();
    let seen = observer.stop();
    let watched = watched.elapsed();
    eprintln!(
        "load {} ok / {} failed; observer {:?}",
        report.ok, report.failed, seen.changes
    );

    assert_no_failures(&report, &fleet.logs());
    assert_sampled(&seen, watched, "an agent upgrade");
    let web1 = &fleet.agents[0];
    assert_eq!(
        web1.app_pids(),
        vec![pid],
        "the agent upgrade restarted or doubled the app"
    );
    let s = status(web1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s["service_pid"], pid,
        "the new agent did not adopt the app: {s}"
    );
    assert_eq!(s["health"], "healthy", "{s}");
    assert_eq!(s["state"], "in_rotation", "{s}");
    assert_eq!(
        seen.max_not_up, 0,
        "a server left rotation while only its agent was upgraded: {:?}",
        seen.changes
    );
    deadline.finish();
}
