//! Rollouts end to end with real agents: a 3-node `hotdeploy-coordinator` cluster (group `web`,
//! budget 1) and three `hotdeploy-agent` processes supervising `sample-app` in `exec` mode,
//! each on its own loopback IP, driven only by `hotdeployctl rollout start ... --watch`.
//!
//! One scenario, in order, on one fleet:
//!
//! 1. **First install.** A rollout of v1 onto the three unprovisioned hosts installs v1 on all
//!    of them, with no slot taken.
//! 2. **Upgrade under budget 1.** A rollout of v2 completes; every host serves v2. An observer
//!    polls `hosts list` throughout and never sees more than one host out of rotation (and
//!    must have taken enough samples).
//! 3. **A bad checksum.** A rollout of v3 with a wrong sha256 halts (exit 3): every host fails
//!    staging with the digest error, which `rollout watch` and `rollout status` show; nothing
//!    was touched (every host still serves v2, in rotation, no slot held).
//! 4. **A canary that fails.** A rollout of v4, whose health check fails, with `--canary 1
//!    --max-failures 1`: the canary is deployed, fails verify, is rolled back to v2 and reported
//!    `rolled_back`; the rollout halts (exit 3) and no other host is deployed.
//!
//! And, on another fleet, **agents killed mid-rollout** (`kill -9` at crash points, so the
//! agents are built with `--features hotdeploy-agent/failpoints`): web-1 dies right after its
//! drain, web-2 right after it reported its outcome and before it released its slot. While each
//! is down its slot stays counted and no other host is deployed; restarted, each recovers (web-1
//! undrains and reports `fenced`, so it is driven again; web-2 releases), and the rollout
//! completes with every host on v2.
//!
//! Build the binaries first: `cargo build --workspace --bins --features
//! hotdeploy-agent/failpoints`.

mod agent_support;

use agent_support::*;
use hotdeploy_integration_tests::agents::AgentProc;
use hotdeploy_integration_tests::cluster::Cluster;
use hotdeploy_integration_tests::net;
use serde_json::Value;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const HOSTS: [&str; 3] = ["web-1", "web-2", "web-3"];
/// How long one `rollout start --watch` may take.
const WATCH: Duration = Duration::from_secs(150);

struct Fleet {
    agents: Vec<AgentProc>,
    cluster: Cluster,
    _artifacts: tempfile::TempDir,
}

impl Fleet {
    fn start(deadline: &Deadline) -> Fleet {
        let artifacts = tempfile::Builder::new()
            .prefix("hd-rollout-rel-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let cluster = start_cluster(deadline, "5s", "");
        let ips = net::alloc_ips(HOSTS.len());
        let agents = HOSTS
            .iter()
            .zip(&ips)
            .map(|(h, ip)| AgentProc::start(fast_opts(h, *ip, cluster.coordinator_addrs())))
            .collect();
        Fleet {
            agents,
            cluster,
            _artifacts: artifacts,
        }
    }

    /// Waits until the coordinators list every host.
    fn wait_registered(&self, deadline: &Deadline) {
        wait_registered(deadline, &self.cluster, HOSTS.len(), || self.logs());
    }

    /// Installs v1 everywhere with a rollout.
    fn install_v1(&self, deadline: &Deadline) -> Rel {
        let v1 = self.release("v1", false);
        let out = self.rollout("install", &v1, &v1.sha256, &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            show(&out),
            self.logs()
        );
        self.wait_all_on(deadline, "v1");
        v1
    }

    /// The hosts holding a slot.
    fn holders(&self) -> Vec<String> {
        locks(&self.cluster)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .filter_map(|l| l["host"].as_str().map(str::to_string))
            .collect()
    }

    /// For `hold`, checks every 200 ms that only agent `i` holds a slot and that every other
    /// host keeps serving what it served when the hold began: nobody else is deployed.
    fn only_holder(&self, i: usize, hold: Duration) {
        let holder = self.agents[i].host_id();
        let before: Vec<Option<String>> = self.agents.iter().map(|a| a.app_version()).collect();
        let until = Instant::now() + hold;
        let mut samples = 0;
        while Instant::now() < until {
            assert_eq!(self.holders(), [holder], "{}", self.logs());
            for (j, a) in self.agents.iter().enumerate() {
                if j != i {
                    assert_eq!(a.app_version(), before[j], "{} was deployed", a.host_id());
                }
            }
            samples += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(samples >= 3, "only {samples} samples");
    }

    /// Waits (up to `within`) for one of the agents `which` to die; answers which.
    fn wait_crash(&mut self, which: &[usize], within: Duration) -> usize {
        let until = Instant::now() + within;
        loop {
            for &i in which {
                if !self.agents[i].is_running() {
                    return i;
                }
            }
            assert!(
                Instant::now() < until,
                "none of {which:?} died within {within:?} (built without --features \
                 hotdeploy-agent/failpoints?)\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn release(&self, id: &str, fail_health: bool) -> Rel {
        release(self._artifacts.path(), id, fail_health)
    }

    fn logs(&self) -> String {
        fleet_logs(&self.agents, &self.cluster)
    }

    /// `rollout start web --release R --artifact URL --sha256 SHA --id ID EXTRA --watch`.
    fn rollout(&self, id: &str, rel: &Rel, sha256: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "rollout",
            "start",
            "web",
            "--release",
            &rel.id,
            "--artifact",
            &rel.url,
            "--sha256",
            sha256,
            "--id",
            id,
        ];
        args.extend_from_slice(extra);
        args.push("--watch");
        self.cluster.ctl_at(&self.cluster.endpoints(), &args, WATCH)
    }

    fn status(&self, id: &str) -> Value {
        self.cluster.ctl_json(&["rollout", "status", id])
    }

    /// Every app serves `release`, and the coordinators list every host healthy, in rotation
    /// and on it.
    fn wait_all_on(&self, deadline: &Deadline, release: &str) {
        wait_for(
            deadline,
            Duration::from_secs(30),
            &format!("every host on {release}"),
            || all_agents_on(&self.agents, &self.cluster, release),
            || self.logs(),
        );
    }
}

fn host_of<'a>(status: &'a Value, host: &str) -> &'a Value {
    status["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["host"] == host))
        .unwrap_or_else(|| panic!("no host {host} in {status}"))
}

/// Polls `hosts list` until `stop`; answers (samples, the most hosts out of rotation at once).
fn observe_rotation(cluster: &Cluster, stop: &AtomicBool) -> (usize, usize) {
    let (mut samples, mut most_out) = (0, 0);
    while !stop.load(Ordering::SeqCst) {
        if let Ok(v) = cluster.try_ctl_json(&["hosts", "list"]) {
            if let Some(hosts) = v.as_array() {
                let out = hosts.iter().filter(|h| h["state"] != "in_rotation").count();
                most_out = most_out.max(out);
                samples += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (samples, most_out)
}

#[test]
fn rollouts_install_upgrade_under_the_budget_and_halt_on_a_bad_checksum_or_a_failed_canary() {
    let deadline = Deadline::new("rollouts with real agents", Duration::from_secs(480));
    let fleet = Fleet::start(&deadline);
    fleet.wait_registered(&deadline);

    // 1. First install: no drain, no slot.
    fleet.install_v1(&deadline);
    let status = fleet.status("install");
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["succeeded"], 3, "{status}");

    // 2. v2, budget 1: never more than one host out of rotation.
    let v2 = fleet.release("v2", false);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (out, (samples, most_out)) = std::thread::scope(|s| {
        let observer = s.spawn(|| observe_rotation(&fleet.cluster, &stop));
        let out = fleet.rollout("upgrade", &v2, &v2.sha256, &[]);
        stop.store(true, Ordering::SeqCst);
        (out, observer.join().expect("observer"))
    });
    let took = started.elapsed();
    eprintln!(
        "upgrade of 3 hosts at budget 1: {took:?}; {samples} samples, at most {most_out} out"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        show(&out),
        fleet.logs()
    );
    fleet.wait_all_on(&deadline, "v2");
    let status = fleet.status("upgrade");
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["succeeded"], 3, "{status}");
    for h in HOSTS {
        assert_eq!(host_of(&status, h)["phase"], "succeeded", "{status}");
    }
    // Each host is out for at least its drain and undrain grace (2 s): a poll every ~50-200 ms
    // sees every one of those windows many times over.
    assert!(
        samples >= 15,
        "the observer took only {samples} samples in {took:?}"
    );
    assert!(
        most_out >= 1,
        "the observer never saw a host out of rotation ({samples} samples): it proves nothing"
    );
    assert!(most_out <= 1, "{most_out} hosts out at once under budget 1");

    // 3. A bad checksum: staging fails everywhere, nothing is touched, the error is shown.
    let v3 = fleet.release("v3", false);
    let wrong = "0".repeat(64);
    let out = fleet.rollout("badsum", &v3, &wrong, &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a halt exits 3: {}\n{}",
        show(&out),
        fleet.logs()
    );
    let watched = String::from_utf8_lossy(&out.stdout);
    assert!(
        watched.contains("sha256 mismatch"),
        "the watch shows the staging error: {watched}"
    );
    let status = fleet.status("badsum");
    assert_eq!(status["state"], "halted", "{status}");
    let failed: Vec<&Value> = status["hosts"]
        .as_array()
        .map(|hs| hs.iter().filter(|h| h["phase"] == "failed").collect())
        .unwrap_or_default();
    assert!(!failed.is_empty(), "{status}");
    for h in &failed {
        let e = h["error"].as_str().unwrap_or_default();
        assert!(
            e.contains("staging v3 failed") && e.contains("sha256 mismatch"),
            "{h}"
        );
    }
    fleet.wait_all_on(&deadline, "v2");
    let held = locks(&fleet.cluster).unwrap_or_else(|e| panic!("{e}"));
    assert!(held.is_empty(), "a staging failure took a slot: {held:?}");

    // 4. A canary whose health fails: rolled back, the rollout halts, nobody else deployed.
    let v4 = fleet.release("v4", true);
    let out = fleet.rollout(
        "canary",
        &v4,
        &v4.sha256,
        &["--canary", "1", "--max-failures", "1"],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "a halt exits 3: {}\n{}",
        show(&out),
        fleet.logs()
    );
    let status = fleet.status("canary");
    assert_eq!(status["state"], "halted", "{status}");
    let canary = host_of(&status, "web-1");
    assert_eq!(canary["phase"], "rolled_back", "{status}");
    let e = canary["error"].as_str().unwrap_or_default();
    assert!(e.contains("verify of v4 failed"), "{canary}");
    for h in ["web-2", "web-3"] {
        let phase = host_of(&status, h)["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            ["pending", "staging", "staged"].contains(&phase.as_str()),
            "{h} was not to be touched: {status}"
        );
    }
    fleet.wait_all_on(&deadline, "v2");
    for a in &fleet.agents {
        assert_eq!(a.app_version().as_deref(), Some("v2"), "{}", a.host_id());
    }
    deadline.finish();
}

#[test]
fn agents_killed_mid_rollout_keep_their_slot_counted_and_the_rollout_completes() {
    let deadline = Deadline::new("agents killed mid-rollout", Duration::from_secs(420));
    let mut fleet = Fleet::start(&deadline);
    fleet.wait_registered(&deadline);
    fleet.install_v1(&deadline);
    for (i, point) in [(0, "after_drain"), (1, "before_outcome_reported")] {
        let a = &mut fleet.agents[i];
        a.opts_mut().env = vec![("HOTDEPLOY_FAILPOINTS".into(), point.into())];
        a.restart();
    }
    fleet.wait_all_on(&deadline, "v1");

    let v2 = fleet.release("v2", false);
    let args = [
        "rollout",
        "start",
        "web",
        "--release",
        &v2.id,
        "--artifact",
        &v2.url,
        "--sha256",
        &v2.sha256,
        "--id",
        "crashes",
    ];
    let out = fleet.cluster.ctl(&args);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    // Whichever is admitted first: web-1 dies drained, web-2 back in rotation but before its
    // outcome and release (one entry). While either is down its slot stays counted and nobody
    // else is deployed; then it is restarted without the crash point, and web-2's recovery
    // reports the outcome with the release.
    let mut crashing = vec![(0, "after_drain"), (1, "before_outcome_reported")];
    while !crashing.is_empty() {
        let which: Vec<usize> = crashing.iter().map(|(i, _)| *i).collect();
        let i = fleet.wait_crash(&which, Duration::from_secs(90));
        let pos = crashing
            .iter()
            .position(|(j, _)| *j == i)
            .unwrap_or_default();
        let (_, point) = crashing.remove(pos);
        let log = fleet.agents[i].log_tail();
        assert!(
            log.contains(&format!("failpoint {point}")),
            "{} died, but not at {point}: {log}",
            fleet.agents[i].host_id()
        );
        fleet.only_holder(i, Duration::from_secs(3));
        fleet.agents[i].opts_mut().env.clear();
        fleet.agents[i].restart();
    }

    wait_for(
        &deadline,
        Duration::from_secs(120),
        "rollout crashes completed",
        || {
            let s = fleet
                .cluster
                .try_ctl_json(&["rollout", "status", "crashes"])?;
            if s["state"] == "completed" {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        },
        || fleet.logs(),
    );
    fleet.wait_all_on(&deadline, "v2");
    assert!(fleet.holders().is_empty(), "a slot left held");
    // The whole log, without colour codes.
    let web1 = std::fs::read_to_string(fleet.agents[0].dir().join("agent.log"))
        .unwrap_or_default()
        .replace("\u{1b}[0m", "")
        .replace("\u{1b}[2m", "")
        .replace("\u{1b}[3m", "");
    assert!(
        web1.contains("attempt=1 report=fenced"),
        "web-1's recovery reports its abandoned deploy fenced: {web1}"
    );
    deadline.finish();
}
