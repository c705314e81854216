//! Health between deploys, told truthfully to the coordinators (DESIGN §3, §4; issue 8 §1).
//!
//! A 3-node coordinator cluster holds group `web` at budget 1; two real agents, `web-1` and
//! `web-2`, run `sample-app` and probe it every 300 ms (`[health]`: 3 failures make it
//! unhealthy, 2 successes healthy again, 300 ms per probe). In each control mode the test
//! breaks web-1's service the way that mode breaks in life, and judges from the outside only
//! (`hotdeployctl hosts list`, `locks acquire`, the agent's `/ready` and agent-check line):
//!
//! - `exec`: the app is SIGSTOPped: alive but hung, so only a probe with a timeout can tell;
//! - `command`: the app is killed outright; the agent supervises nothing in this mode, so only
//!   the probes can tell.
//!
//! (`systemd` mode runs against a real systemd in `agent_systemd.rs`.)
//!
//! Then, while web-1 is unhealthy: `hosts list` says `health: unhealthy` within the bound, the
//! front ends say `ready down` / 503, web-2 cannot take a slot of the budget-1 group, and
//! web-1 itself can (repairing a host that is already down costs no budget). Once the app
//! answers again, web-1 is `healthy` and web-2 can take a slot.
//!
//! A first deploy is judged too: a release that never passes verify must never make the host
//! look `healthy` or ready, not even for the moment between setting `current` and the verdict.

mod agent_support;

use agent_support::*;
use hotdeploy_integration_tests::agents::AgentProc;
use hotdeploy_integration_tests::cluster::Cluster;
use hotdeploy_integration_tests::net;
use hotdeploy_integration_tests::toml_config::table;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// `[health]` of every agent here.
const INTERVAL: Duration = Duration::from_millis(300);
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
const UNHEALTHY_AFTER: u32 = 3;
const HEALTHY_AFTER: u32 = 2;

fn health_toml() -> String {
    format!(
        "[health]\ninterval = \"{}ms\"\nprobe_timeout = \"{}ms\"\nunhealthy_after = \
         {UNHEALTHY_AFTER}\nhealthy_after = {HEALTHY_AFTER}\n",
        INTERVAL.as_millis(),
        PROBE_TIMEOUT.as_millis()
    )
}

/// How long a change of health may take to show in `hosts list`: the configured detection
/// bound, (unhealthy_after + 1) rounds of at most interval + probe timeout, plus a generous
/// allowance for the report to reach the leader and commit through raft on a loaded machine.
fn report_bound(rounds: u32) -> Duration {
    (INTERVAL + PROBE_TIMEOUT) * (rounds + 1) + Duration::from_secs(10)
}

/// How the agents control the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Exec,
    Command,
}

/// `command` mode: a start script that launches the app in a session of its own (so it
/// outlives the script) and records its pid, and a stop script that ends it.
fn command_mode_toml(dir: &std::path::Path, host: &str, app: std::net::SocketAddr) -> String {
    let pidfile = dir.join(format!("{host}.pid"));
    let log = dir.join(format!("{host}-app.log"));
    let start = format!(
        "setsid {{current}}/bin/sample-app --dir {{current}} --listen {app} >> {log} 2>&1 \
         < /dev/null & echo $! > {pid}",
        log = log.display(),
        pid = pidfile.display()
    );
    // A zombie counts as gone: orphans may be reaped late on this machine.
    let stop = format!(
        "[ -f {pid} ] || exit 0; p=$(cat {pid}); kill $p 2>/dev/null; i=0; \
         while s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null) && [ \"$s\" != Z ]; do \
         i=$((i+1)); [ $i -eq 100 ] && kill -9 $p; sleep 0.05; done; rm -f {pid}",
        pid = pidfile.display()
    );
    format!(
        "[service]\ncontrol = \"command\"\nstart = [\"/bin/sh\", \"-c\", {start:?}]\n\
         stop = [\"/bin/sh\", \"-c\", {stop:?}]\n"
    )
}

struct Fleet {
    cluster: Cluster,
    agents: Vec<AgentProc>,
    mode: Mode,
    v1: Rel,
    bad: Rel,
    /// Releases, and the command-mode scripts' pid files and app logs.
    _artifacts: tempfile::TempDir,
}

impl Fleet {
    /// The cluster and two agents in `mode`, registered, nothing deployed.
    fn start(deadline: &Deadline, mode: Mode) -> Fleet {
        let artifacts = tempfile::Builder::new()
            .prefix("hd-health-rel-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let v1 = release(artifacts.path(), "v1", false);
        let bad = release(artifacts.path(), "v1-bad", true);
        let cluster = start_cluster(deadline, "5s", "");
        let ips = net::alloc_ips(2);
        let agents = ["web-1", "web-2"]
            .iter()
            .zip(&ips)
            .map(|(h, ip)| {
                let mut o = fast_opts(h, *ip, cluster.coordinator_addrs());
                o.verify_timeout = "4s".into();
                let mut extra = health_toml();
                if mode == Mode::Command {
                    let app = net::addr(*ip, net::APP_PORT);
                    extra.push_str(&command_mode_toml(artifacts.path(), h, app));
                }
                o.extra = table(&extra);
                AgentProc::start(o)
            })
            .collect();
        let fleet = Fleet {
            cluster,
            agents,
            mode,
            v1,
            bad,
            _artifacts: artifacts,
        };
        for a in &fleet.agents {
            fleet.wait_host(
                deadline,
                a.host_id(),
                "unprovisioned",
                Duration::from_secs(15),
            );
        }
        fleet
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for a in &self.agents {
            text.push_str(&format!(
                "\n---- agent {} ----\n{}",
                a.host_id(),
                a.log_tail()
            ));
        }
        text.push('\n');
        text.push_str(&self.cluster.all_logs());
        text
    }

    /// Waits until `hosts list` shows `host` with `health`; returns how long that took.
    fn wait_host(
        &self,
        deadline: &Deadline,
        host: &str,
        health: &str,
        within: Duration,
    ) -> Duration {
        let t0 = Instant::now();
        wait_for(
            deadline,
            within,
            &format!("hosts list: {host} health {health}"),
            || {
                let h = host_entry(&self.cluster, host)?;
                if h["health"] == health && h["reachability"] == "reachable" {
                    Ok(())
                } else {
                    Err(h.to_string())
                }
            },
            || self.logs(),
        );
        t0.elapsed()
    }

    /// The one app process of `agent`.
    fn app_pid(&self, agent: &AgentProc) -> i32 {
        i32::try_from(one_app_pid(agent)).unwrap_or_else(|e| panic!("pid: {e}"))
    }

    /// `locks acquire HOST` with a short wait; `Ok` with the output when granted.
    fn acquire(&self, host: &str, wait: &str) -> Result<(), String> {
        let out = self.cluster.ctl(&[
            "locks",
            "acquire",
            host,
            "--reason",
            "health test",
            "--wait",
            wait,
        ]);
        if out.status.success() {
            Ok(())
        } else {
            Err(show(&out))
        }
    }

    fn release(&self, host: &str) {
        let out = self.cluster.ctl(&["locks", "release", host]);
        assert!(out.status.success(), "locks release {host}: {}", show(&out));
    }
}

/// The shared scenario: break web-1's app, judge, repair, judge again.
fn an_unresponsive_service_is_unhealthy_and_holds_the_budget(mode: Mode) {
    let deadline = Deadline::new(
        &format!("{mode:?} mode: health between deploys"),
        Duration::from_secs(150),
    );
    let fleet = Fleet::start(&deadline, mode);
    for a in &fleet.agents {
        deploy_ok(a, &fleet.v1);
        wait_settled(&deadline, a, Some("v1"), Duration::from_secs(15));
        fleet.wait_host(&deadline, a.host_id(), "healthy", Duration::from_secs(15));
    }
    let web1 = &fleet.agents[0];
    let pid = fleet.app_pid(web1);

    // Break it.
    let broken_at = Instant::now();
    let how = match fleet.mode {
        Mode::Exec => Signal::SIGSTOP,
        Mode::Command => Signal::SIGKILL,
    };
    kill(Pid::from_raw(pid), how).unwrap_or_else(|e| panic!("{how} {pid}: {e}"));
    let bound = report_bound(UNHEALTHY_AFTER);
    fleet.wait_host(&deadline, "web-1", "unhealthy", bound);
    let took = broken_at.elapsed();
    eprintln!("{mode:?}: `hosts list` said unhealthy {took:?} after {how} (bound {bound:?})");
    if mode == Mode::Exec {
        // Alive but hung: the supervisor did not restart it; only the probes saw it.
        assert_eq!(web1.app_pids(), vec![pid as u32], "{}", fleet.logs());
    }

    // The agent and its front ends agree: still in rotation, but `ready down` and 503.
    let s = status(web1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s["health"], "unhealthy", "{s}");
    assert_eq!(s["state"], "in_rotation", "{s}");
    assert_eq!(
        web1.ready_status(),
        Some(503),
        "/ready of an unhealthy host"
    );
    assert_eq!(
        agent_check_line(web1.agent_check_addr()).as_deref(),
        Some("ready down")
    );
    // web-2 stays healthy: only web-1's service is broken.
    assert_eq!(
        host_entry(&fleet.cluster, "web-2").unwrap_or_else(|e| panic!("{e}"))["health"],
        "healthy"
    );

    // The budget: web-1 already counts as unavailable, so web-2 gets no slot...
    let refused = fleet.acquire("web-2", "2s");
    assert!(
        refused.is_err(),
        "web-2 took a slot while web-1 was unhealthy in a budget-1 group\n{}",
        fleet.logs()
    );
    // ... while web-1's own repair needs no extra budget.
    fleet
        .acquire("web-1", "5s")
        .unwrap_or_else(|e| panic!("web-1 could not take a slot to repair itself: {e}"));
    fleet.release("web-1");
    if mode == Mode::Exec {
        // Drained, the agent-check line is `drain` and deliberately carries no `down`
        // (HAProxy must not cut the sessions a drain protects), whatever the health. The
        // drain's own slot is granted too: web-1 is already unavailable.
        let out = web1.ctl(&["drain"]);
        assert!(
            out.status.success(),
            "drain: {}\n{}",
            show(&out),
            fleet.logs()
        );
        assert_eq!(
            agent_check_line(web1.agent_check_addr()).as_deref(),
            Some("drain")
        );
        let out = web1.ctl(&["undrain"]);
        assert!(
            out.status.success(),
            "undrain: {}\n{}",
            show(&out),
            fleet.logs()
        );
        assert_eq!(
            agent_check_line(web1.agent_check_addr()).as_deref(),
            Some("ready down")
        );
    }

    // Repair: the app answers again.
    let repaired_at = Instant::now();
    match fleet.mode {
        Mode::Exec => {
            kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap_or_else(|e| panic!("SIGCONT: {e}"))
        }
        Mode::Command => restart_command_mode_app(web1),
    }
    let bound = report_bound(HEALTHY_AFTER);
    fleet.wait_host(&deadline, "web-1", "healthy", bound);
    eprintln!(
        "{mode:?}: healthy again {:?} after the repair (bound {bound:?})",
        repaired_at.elapsed()
    );
    wait_settled(&deadline, web1, Some("v1"), Duration::from_secs(10));
    assert_eq!(
        agent_check_line(web1.agent_check_addr()).as_deref(),
        Some("ready up")
    );
    fleet
        .acquire("web-2", "5s")
        .unwrap_or_else(|e| panic!("web-2 could not take a slot once web-1 was healthy: {e}"));
    fleet.release("web-2");
    deadline.finish();
}

/// Runs web-1's configured `start` script by hand, as an operator (or another supervisor)
/// would, with `{current}` resolved.
fn restart_command_mode_app(agent: &AgentProc) {
    let current = agent
        .current_target()
        .unwrap_or_else(|| panic!("no current"));
    let cfg: toml::Table = std::fs::read_to_string(agent.dir().join("agent.toml"))
        .unwrap_or_else(|e| panic!("agent.toml: {e}"))
        .parse()
        .unwrap_or_else(|e| panic!("agent.toml: {e}"));
    let script = cfg["service"]["start"][2]
        .as_str()
        .unwrap_or_else(|| panic!("no start script in {cfg}"))
        .replace("{current}", &current.display().to_string());
    let out = hotdeploy_integration_tests::proc::run_with_timeout(
        {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(script);
            c
        },
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "start script: {}", show(&out));
}

#[test]
fn exec_mode_a_hung_service_is_unhealthy_and_holds_the_budget() {
    an_unresponsive_service_is_unhealthy_and_holds_the_budget(Mode::Exec);
}

#[test]
fn command_mode_a_killed_service_is_unhealthy_and_holds_the_budget() {
    an_unresponsive_service_is_unhealthy_and_holds_the_budget(Mode::Command);
}

#[test]
fn a_first_deploy_is_not_healthy_until_it_has_passed_verify() {
    let deadline = Deadline::new("first deploy judged by verify", Duration::from_secs(90));
    let fleet = Fleet::start(&deadline, Mode::Exec);
    let web1 = &fleet.agents[0];

    // A first release that never passes verify, watched from outside the whole time.
    let stop = AtomicBool::new(false);
    let until = Instant::now() + deadline.bound(Duration::from_secs(60));
    let (out, answers) = std::thread::scope(|s| {
        let stop_guard = RaiseOnDrop(&stop);
        let watcher = s.spawn(|| {
            let mut answers: Vec<String> = Vec::new();
            while keep_polling(&stop, until) {
                if let Some(line) = agent_check_line(web1.agent_check_addr()) {
                    answers.push(format!("agent-check {line}"));
                }
                if let Some(code) = web1.ready_status() {
                    answers.push(format!("/ready {code}"));
                }
                if let Ok(h) = host_entry(&fleet.cluster, "web-1") {
                    answers.push(format!("hosts list {}", h["health"]));
                }
                if let Ok(st) = status(web1) {
                    answers.push(format!("status {}", st["health"]));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            answers
        });
        let out = deploy(web1, &fleet.bad);
        drop(stop_guard);
        let answers = watcher
            .join()
            .unwrap_or_else(|_| panic!("watcher panicked"));
        (out, answers)
    });
    assert_eq!(
        out.status.code(),
        Some(1),
        "a first deploy that fails verify must fail: {}\n{}",
        show(&out),
        fleet.logs()
    );
    let count = |prefix: &str| answers.iter().filter(|a| a.starts_with(prefix)).count();
    for what in ["agent-check", "/ready", "hosts list", "status"] {
        assert!(
            count(what) >= 5,
            "too few {what} samples during the deploy ({}): {answers:?}",
            count(what)
        );
    }
    let lies: Vec<_> = answers
        .iter()
        .filter(|a| {
            a.as_str() == "agent-check ready up"
                || a.as_str() == "/ready 200"
                || a.ends_with("\"healthy\"")
        })
        .collect();
    assert!(
        lies.is_empty(),
        "an unverified first release was reported healthy or ready: {:?}\n{}",
        lies.iter().take(5).collect::<Vec<_>>(),
        fleet.logs()
    );
    let s = status(web1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s["health"], "unprovisioned", "{s}");
    fleet.wait_host(&deadline, "web-1", "unprovisioned", Duration::from_secs(10));

    // A good first release: healthy once verified.
    deploy_ok(web1, &fleet.v1);
    fleet.wait_host(&deadline, "web-1", "healthy", Duration::from_secs(10));
    deadline.finish();
}

#[test]
fn a_restarted_agent_does_not_forget_that_its_service_is_unhealthy() {
    let deadline = Deadline::new("journaled health", Duration::from_secs(90));
    let mut fleet = Fleet::start(&deadline, Mode::Exec);
    deploy_ok(&fleet.agents[0], &fleet.v1);
    fleet.wait_host(&deadline, "web-1", "healthy", Duration::from_secs(15));
    let pid = fleet.app_pid(&fleet.agents[0]);
    // The app answers, but `/health` fails (sample-app answers 500 while FAIL_HEALTH exists).
    // (Not a SIGSTOP here: the kernel sends SIGHUP to a stopped process whose parent dies.)
    let fail = fleet.agents[0]
        .current_target()
        .unwrap_or_else(|| panic!("no current"))
        .join("FAIL_HEALTH");
    std::fs::write(&fail, b"").unwrap_or_else(|e| panic!("{}: {e}", fail.display()));
    fleet.wait_host(
        &deadline,
        "web-1",
        "unhealthy",
        report_bound(UNHEALTHY_AFTER),
    );

    // kill -9 the agent; the app stays and is re-adopted. From its first answers on, the
    // restarted agent must say what it knew: unhealthy.
    let web1 = &mut fleet.agents[0];
    web1.restart();
    let first = status(web1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first["health"], "unhealthy", "{first}\n{}", web1.log_tail());
    assert_eq!(web1.ready_status(), Some(503));
    assert_eq!(
        web1.app_pids(),
        vec![pid as u32],
        "the app was not re-adopted\n{}",
        web1.log_tail()
    );

    std::fs::remove_file(&fail).unwrap_or_else(|e| panic!("{}: {e}", fail.display()));
    fleet.wait_host(&deadline, "web-1", "healthy", report_bound(HEALTHY_AFTER));
    deadline.finish();
}
