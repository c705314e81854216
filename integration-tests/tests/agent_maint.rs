//! Maintenance without a release (issue 11, item 5), end to end: a 3-node coordinator cluster,
//! a real HAProxy (the agent confirms both ways through its runtime API), and one agent, `web-1`,
//! supervising `sample-app`.
//!
//! The maintenance command is a shell script that writes its pid to `started`, then waits for a
//! `go` file (at most 60 s) before it exits with the code it was given; so the test sees the host
//! *during* the command, from the outside only: `locks list`, HAProxy's `show stat`, `/ready`,
//! `agent status`.
//!
//! - Through `hotdeploy-agent maint`: the slot (purpose `agent-maintenance`, the reason) is held
//!   and the host is out of HAProxy's rotation while the command runs; a second maintenance is
//!   refused meanwhile; afterwards the host is back `UP` and the slot released.
//! - A command that fails (exit 3) is reported with its status (exit 1), and the host stays out
//!   holding its slot until `agent undrain`, which returns it and releases the slot.
//! - A command that does not exist is refused before anything is disrupted; so is maintenance
//!   while an operator holds the host's slot by hand (`locks acquire`), a slot the agent neither
//!   adopts nor releases.
//! - The agent is killed (`kill -9`) mid-command and restarted: the command goes on, the host
//!   stays out while it runs, and once it ends the host returns to rotation with the slot
//!   released.
//! - The agent dies (failpoint `maint_before_pid_journaled`, a `kill -9` of its own) after it
//!   started the command's process but before it journaled the pid: the command never runs (it
//!   waits at a gate for the journaled pid), and the restarted agent says so (`failed`, "was
//!   not run", counted in `hotdeploy_agent_maintenance_runs_total`), returning the host with the
//!   slot released.

mod agent_support;

use agent_support::*;
use hotdeploy_integration_tests::agents::AgentProc;
use hotdeploy_integration_tests::bins;
use hotdeploy_integration_tests::cluster::Cluster;
use hotdeploy_integration_tests::haproxy::HaProxy;
use hotdeploy_integration_tests::{net, proc};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The pieces of one scenario.
struct Scene {
    deadline: Deadline,
    cluster: Cluster,
    haproxy: HaProxy,
    agent: AgentProc,
    gate: tempfile::TempDir,
    _artifacts: tempfile::TempDir,
}

impl Scene {
    fn start(name: &str) -> Scene {
        let deadline = Deadline::new(name, Duration::from_secs(150));
        HaProxy::require().unwrap_or_else(|e| panic!("{e}"));
        let OneHostGroup {
            artifacts,
            v1,
            cluster,
        } = OneHostGroup::start(&deadline, "hd-maint-rel-");
        let ips = net::alloc_ips(2);
        let haproxy = start_haproxy(&[ha_server("web-1", ips[0])], ips[1]);
        let mut opts = fast_opts("web-1", ips[0], cluster.coordinator_addrs()).with_metrics();
        opts.haproxy_socket = Some(haproxy.socket_path().to_path_buf());
        opts.drain_timeout = Some("5s".into());
        let agent = AgentProc::start(opts);
        let gate = tempfile::Builder::new()
            .prefix("hd-maint-gate-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let scene = Scene {
            deadline,
            cluster,
            haproxy,
            agent,
            gate,
            _artifacts: artifacts,
        };
        deploy_ok(&scene.agent, &v1);
        scene.wait_back("after v1");
        scene
    }

    fn logs(&self) -> String {
        format!(
            "---- agent ----\n{}\n---- haproxy ----\n{}\n{}",
            self.agent.log_tail(),
            self.haproxy.log_tail(),
            self.cluster.all_logs()
        )
    }

    fn gate_file(&self, name: &str) -> PathBuf {
        self.gate.path().join(name)
    }

    /// The gated command: `sh -c SCRIPT` exiting `code` once `go` exists.
    fn command(&self, code: i32) -> Vec<String> {
        let started = self.gate_file("started");
        let go = self.gate_file("go");
        let script = format!(
            "echo $$ > {started}; i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; \
             i=$((i+1)); done; echo \"maintenance output\"; exit {code}",
            started = started.display(),
            go = go.display()
        );
        vec!["sh".into(), "-c".into(), script]
    }

    /// `hotdeploy-agent maint --config FILE --reason REASON -- CMD...`, within two minutes.
    fn local_maint(&self, reason: &str, cmd: &[String]) -> Output {
        let mut c = Command::new(bins::agent());
        c.arg("maint")
            .arg("--config")
            .arg(self.agent.dir().join("agent.toml"))
            .arg("--reason")
            .arg(reason)
            .arg("--")
            .args(cmd);
        proc::run_with_timeout(c, Duration::from_secs(120))
    }

    /// `hotdeployctl agent --address A maint --reason REASON -- CMD...`.
    fn ctl_maint(&self, reason: &str, cmd: &[String]) -> Output {
        let mut args = vec![
            "maint".to_owned(),
            "--reason".into(),
            reason.into(),
            "--".into(),
        ];
        args.extend(cmd.iter().cloned());
        self.agent.ctl(&args)
    }

    /// Waits for the command to have started; answers its pid.
    fn wait_started(&self) -> i32 {
        let started = self.gate_file("started");
        wait_for(
            &self.deadline,
            Duration::from_secs(30),
            "the maintenance command to start",
            || {
                std::fs::read_to_string(&started)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                    .ok_or_else(|| format!("no pid in {}", started.display()))
            },
            || self.logs(),
        )
    }

    fn open_gate(&self) {
        std::fs::write(self.gate_file("go"), "go").unwrap_or_else(|e| panic!("gate: {e}"));
    }

    /// Asserts the host is out of rotation holding its maintenance slot for `reason`.
    fn assert_held_out(&self, reason: &str, when: &str) {
        let held = locks(&self.cluster).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            held.iter().any(|l| l["host"] == "web-1"
                && l["purpose"] == "agent-maintenance"
                && l["reason"] == reason),
            "{when}: web-1 should hold an agent-maintenance slot for {reason:?}: {held:?}\n{}",
            self.logs()
        );
        let ha = self.haproxy.server_status("web-1");
        assert!(
            !ha.starts_with("UP"),
            "{when}: web-1 is in HAProxy's rotation ({ha})\n{}",
            self.logs()
        );
        assert_eq!(self.agent.ready_status(), Some(503), "{when}: /ready");
        let s = status(&self.agent).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s["maintenance"], true, "{when}: {s}");
        assert_ne!(s["state"], "in_rotation", "{when}: {s}");
    }

    /// Waits until the host is back: HAProxy `UP`, no slot, the agent idle and in rotation.
    fn wait_back(&self, when: &str) -> serde_json::Value {
        assert!(
            self.haproxy
                .wait_all_up(1, self.deadline.bound(Duration::from_secs(20))),
            "{when}: web-1 not UP: {:?}\n{}",
            self.haproxy.stat(),
            self.logs()
        );
        wait_for(
            &self.deadline,
            Duration::from_secs(20),
            &format!("{when}: no slot held"),
            || match locks(&self.cluster)? {
                l if l.is_empty() => Ok(()),
                l => Err(format!("locks list: {l:?}")),
            },
            || self.logs(),
        );
        wait_settled(
            &self.deadline,
            &self.agent,
            Some("v1"),
            Duration::from_secs(20),
        )
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim().to_owned()))
            .is_some_and(|r| !r.starts_with('Z') && !r.starts_with('X'))
}

#[test]
fn maintenance_through_a_command_holds_the_slot_and_keeps_the_host_out_while_it_runs() {
    let scene = Scene::start("maintenance through a command");
    let app = one_app_pid(&scene.agent);

    // A command that does not exist: refused, nothing held, still in rotation.
    let out = scene.local_maint("patch", &["/nonexistent/patch-os".to_owned()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(text(&out).contains("does not exist"), "{}", show(&out));
    assert!(locks(&scene.cluster).unwrap_or_default().is_empty());
    assert!(scene.haproxy.server_status("web-1").starts_with("UP"));

    // Maintenance by hand: an operator's `locks acquire` slot (purpose `maintenance`) is not the
    // agent's. While it is held the agent's maintenance is refused by the lock and disrupts
    // nothing, and the agent neither adopts nor releases that slot; `locks release` frees it.
    let out = scene
        .cluster
        .ctl(&["locks", "acquire", "web-1", "--reason", "by hand"]);
    assert!(out.status.success(), "locks acquire: {}", show(&out));
    let out = scene.local_maint("os patch", &["true".to_owned()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}
{}",
        show(&out),
        scene.logs()
    );
    std::thread::sleep(Duration::from_millis(2500));
    let held = locks(&scene.cluster).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        held.len() == 1 && held[0]["purpose"] == "maintenance" && held[0]["reason"] == "by hand",
        "only the operator's slot, untouched by the agent: {held:?}"
    );
    assert!(scene.haproxy.server_status("web-1").starts_with("UP"));
    let out = scene.cluster.ctl(&["locks", "release", "web-1"]);
    assert!(out.status.success(), "locks release: {}", show(&out));
    assert!(locks(&scene.cluster).unwrap_or_default().is_empty());

    let cmd = scene.command(0);
    let out = std::thread::scope(|s| {
        let run = s.spawn(|| scene.local_maint("os patch", &cmd));
        scene.wait_started();
        scene.assert_held_out("os patch", "while the command runs");
        let s1 = status(&scene.agent).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s1["phase"], "maint_running", "{s1}");
        // A second maintenance meanwhile is refused, and changes nothing.
        let second = scene.ctl_maint("another", &["true".to_owned()]);
        assert_eq!(second.status.code(), Some(1), "{}", show(&second));
        assert!(text(&second).contains("in progress"), "{}", show(&second));
        std::thread::sleep(Duration::from_millis(1000));
        scene.assert_held_out("os patch", "a second later");
        scene.open_gate();
        run.join()
            .unwrap_or_else(|_| panic!("maint thread panicked"))
    });
    assert!(
        out.status.success(),
        "maint failed: {}\n{}",
        show(&out),
        scene.logs()
    );
    assert!(
        text(&out).contains("maintenance succeeded"),
        "{}",
        show(&out)
    );
    let s = scene.wait_back("after the maintenance");
    assert_eq!(s["maintenance"], false, "{s}");
    assert_eq!(one_app_pid(&scene.agent), app, "the app was restarted");
    let log = std::fs::read_to_string(scene.agent.data_dir().join("maint.log"))
        .unwrap_or_else(|e| panic!("maint.log: {e}"));
    assert!(log.contains("maintenance output"), "maint.log: {log}");
    scene.deadline.finish();
}

#[test]
fn a_failed_maintenance_command_is_reported_and_keeps_the_host_out_until_undrained() {
    let scene = Scene::start("failed maintenance command");
    scene.open_gate();
    let out = scene.ctl_maint("bad patch", &scene.command(3));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        show(&out),
        scene.logs()
    );
    let t = text(&out);
    assert!(t.contains("command_failed"), "{}", show(&out));
    assert!(t.contains("exit status 3"), "{}", show(&out));
    // Documented: the host stays out holding its slot, until an operator undrains it.
    scene.assert_held_out("bad patch", "after the failed command");
    std::thread::sleep(Duration::from_millis(1500));
    scene.assert_held_out("bad patch", "a moment later (nothing returns it by itself)");
    let s = status(&scene.agent).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        s["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("status 3"),
        "{s}"
    );
    let out = scene.agent.ctl(&["undrain"]);
    assert!(
        out.status.success(),
        "undrain: {}\n{}",
        show(&out),
        scene.logs()
    );
    scene.wait_back("after the undrain");
    scene.deadline.finish();
}

#[test]
fn an_agent_killed_mid_command_returns_the_host_with_the_slot_released_once_it_ends() {
    let mut scene = Scene::start("agent killed mid-command");
    let cmd = scene.command(0);
    let agent_pid = scene.agent.pid();
    let (pid, client) = std::thread::scope(|s| {
        let run = s.spawn(|| scene.ctl_maint("reboot-ish", &cmd));
        let pid = scene.wait_started();
        scene.assert_held_out("reboot-ish", "while the command runs");
        // kill -9, the agent alone (its app and the command have process groups of their own).
        if let Some(p) = agent_pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        (
            pid,
            run.join()
                .unwrap_or_else(|_| panic!("maint thread panicked")),
        )
    });
    assert!(
        !client.status.success(),
        "the client's maintenance succeeded although the agent was killed: {}",
        show(&client)
    );
    scene.agent.kill();
    assert!(
        pid_alive(pid),
        "the maintenance command died with the agent (pid {pid})\n{}",
        scene.logs()
    );
    let held = locks(&scene.cluster).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        held.iter()
            .any(|l| l["host"] == "web-1" && l["purpose"] == "agent-maintenance"),
        "the slot must stay held while the agent is down: {held:?}"
    );
    scene.agent.restart();
    // Back, with the command still running: the host stays out, the slot held.
    wait_for(
        &scene.deadline,
        Duration::from_secs(15),
        "the restarted agent to report the maintenance",
        || match status(&scene.agent) {
            Ok(s) if s["phase"] == "maint_running" => Ok(()),
            Ok(s) => Err(format!("status {s}")),
            Err(e) => Err(e),
        },
        || scene.logs(),
    );
    scene.assert_held_out("reboot-ish", "after the restart, the command still running");
    std::thread::sleep(Duration::from_millis(1500));
    scene.assert_held_out("reboot-ish", "a moment later");
    assert!(pid_alive(pid), "the command is gone before the gate opened");
    scene.open_gate();
    let s = scene.wait_back("after the command ended");
    assert!(
        s["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown"),
        "the exit status of a command the agent did not see end is unknown, and said so: {s}"
    );
    assert!(!pid_alive(pid));
    one_app_pid(&scene.agent);
    scene.deadline.finish();
}

#[test]
fn an_agent_killed_before_journaling_the_commands_pid_never_runs_it_and_says_so() {
    let mut scene = Scene::start("agent killed before the command's pid is journaled");
    scene.agent.opts_mut().env = vec![(
        "HOTDEPLOY_FAILPOINTS".into(),
        "maint_before_pid_journaled".into(),
    )];
    scene.agent.restart();
    wait_settled(
        &scene.deadline,
        &scene.agent,
        Some("v1"),
        Duration::from_secs(15),
    );
    // Were the command to run, it would write `started` at once and, the gate being open, end.
    scene.open_gate();
    let out = scene.ctl_maint("os patch", &scene.command(0));
    assert!(
        !out.status.success(),
        "the maintenance succeeded although the agent was to die in it: {}\n(was the agent \
         built with --features hotdeploy-agent/failpoints?)",
        show(&out)
    );
    let exit = scene
        .agent
        .wait_exit(scene.deadline.bound(Duration::from_secs(10)));
    assert!(
        exit.is_some(),
        "the agent still runs: built without `--features hotdeploy-agent/failpoints`?\n{}",
        scene.logs()
    );
    assert!(
        scene
            .agent
            .log_tail()
            .contains("failpoint maint_before_pid_journaled"),
        "the agent died, but not at maint_before_pid_journaled:\n{}",
        scene.logs()
    );
    let held = locks(&scene.cluster).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        held.iter()
            .any(|l| l["host"] == "web-1" && l["purpose"] == "agent-maintenance"),
        "the slot stays held while the agent is down: {held:?}"
    );

    scene.agent.opts_mut().env.clear();
    scene.agent.restart();
    let s = scene.wait_back("after the restarted agent undid the maintenance");
    let last_error = s["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("was not run"),
        "the restarted agent must say the command was not run: {s}\n{}",
        scene.logs()
    );
    assert_eq!(s["maintenance"], false, "{s}");
    let runs = scene.agent.scrape().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        runs.get("hotdeploy_agent_maintenance_runs_total{outcome=\"failed\"}"),
        Some(1.0),
        "the undone run is counted as failed"
    );
    assert_eq!(
        runs.value_or_zero("hotdeploy_agent_maintenance_runs_total{outcome=\"succeeded\"}"),
        0.0
    );
    // The command never ran, not even late: its gate closed with the agent that held it.
    std::thread::sleep(Duration::from_millis(1500));
    let started = scene.gate_file("started");
    assert!(
        !started.exists(),
        "the maintenance command ran (pid {}) although its pid was never journaled",
        std::fs::read_to_string(&started).unwrap_or_default().trim()
    );
    let log = std::fs::read_to_string(scene.agent.data_dir().join("maint.log"))
        .unwrap_or_else(|e| panic!("maint.log: {e}"));
    assert!(log.contains("was not started"), "maint.log: {log}");
    assert!(!log.contains("maintenance output"), "maint.log: {log}");
    scene.deadline.finish();
}
