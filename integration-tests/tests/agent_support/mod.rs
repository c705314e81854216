//! Shared pieces of the agent end-to-end tests (`agent_e2e`, `agent_crash`, `agent_fleet`,
//! `agent_rollout`, `rollout_e2e`, ...).
//!
//! Every scenario runs real processes: `hotdeploy-agent` supervising `sample-app` in `exec`
//! mode, a real HAProxy in front with `agent-check` (agent-inter 500 ms), and, where a test
//! needs one, a 3-node coordinator cluster. Checks are made from the outside only: HAProxy's
//! `show stat`, the agent's `GET /ready`, `hotdeployctl ... -o json`, the app's own answer, the
//! `current` symlink and the process table.
//!
//! Each test carries a [`Deadline`]: every wait is bounded by it, and a test that overruns fails
//! with what it was waiting for. Every process is owned by a harness guard, so a failing test
//! still kills everything it started.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

// Not every test that includes this module uses it.
#[allow(unused_imports)]
pub use hotdeploy_integration_tests::agents::fleet_logs;
use hotdeploy_integration_tests::agents::{AgentOpts, AgentProc};
use hotdeploy_integration_tests::cluster::{Cluster, ClusterOpts};
use hotdeploy_integration_tests::haproxy::{HaProxy, HaServer, ObserverReport};
use hotdeploy_integration_tests::net::{self, AGENT_CHECK_PORT, APP_PORT, HAPROXY_PORT};
use hotdeploy_integration_tests::pack::{self, ArtifactFormat};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// HAProxy's `agent-inter` in the harness config.
pub const AGENT_INTER: Duration = Duration::from_millis(500);

/// A scenario's overall deadline.
pub struct Deadline {
    what: String,
    started: Instant,
    limit: Duration,
}

impl Deadline {
    /// Starts the clock for scenario `what`.
    pub fn new(what: &str, limit: Duration) -> Deadline {
        Deadline {
            what: what.to_string(),
            started: Instant::now(),
            limit,
        }
    }

    /// Time left; panics if none is.
    pub fn remaining(&self) -> Duration {
        let left = self.limit.saturating_sub(self.started.elapsed());
        if left.is_zero() {
            panic!(
                "scenario `{}` overran its deadline of {:?}",
                self.what, self.limit
            );
        }
        left
    }

    /// How long the scenario has run.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// `timeout`, cut to what is left of the scenario.
    pub fn bound(&self, timeout: Duration) -> Duration {
        timeout.min(self.remaining())
    }

    /// Fails if the scenario has overrun; logs its run time.
    pub fn finish(&self) {
        let _ = self.remaining();
        eprintln!("scenario `{}` took {:?}", self.what, self.elapsed());
    }
}

/// Polls `check` every 100 ms until it returns `Ok`, for at most `timeout` (cut to the
/// deadline). Panics with the last error and `context()` (logs) when time runs out.
pub fn wait_for<T>(
    deadline: &Deadline,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
    context: impl Fn() -> String,
) -> T {
    let timeout = deadline.bound(timeout);
    let until = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() >= until {
            panic!(
                "timed out after {timeout:?} waiting for {what}; last: {last}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One built release: id, `file://` URL and sha256.
#[derive(Debug, Clone)]
pub struct Rel {
    pub id: String,
    pub url: String,
    pub sha256: String,
}

impl Rel {
    /// `--release R --artifact URL --sha256 SHA`, as `hotdeployctl` takes a release.
    pub fn flags(&self) -> [&str; 6] {
        [
            "--release",
            &self.id,
            "--artifact",
            &self.url,
            "--sha256",
            &self.sha256,
        ]
    }
}

/// Builds sample release `id` (failing its health check if `fail_health`) in `dir`.
pub fn release(dir: &Path, id: &str, fail_health: bool) -> Rel {
    let (path, sha256) = pack::make_sample_release(dir, id, fail_health, ArtifactFormat::TarGz)
        .unwrap_or_else(|e| panic!("building release {id}: {e:#}"));
    Rel {
        id: id.to_string(),
        url: format!("file://{}", path.display()),
        sha256,
    }
}

/// Agent options tuned for short tests: 1 s drain/undrain grace (2 × agent-inter), verify every
/// 200 ms, 2 successes, 300 ms settle, 8 s verify timeout.
pub fn fast_opts(host: &str, ip: Ipv4Addr, coordinators: Vec<SocketAddr>) -> AgentOpts {
    let mut o = AgentOpts::new(host, ip, coordinators);
    o.drain_grace = "1s".into();
    o.undrain_grace = "1s".into();
    o.verify_success_threshold = 2;
    o.verify_interval = "200ms".into();
    o.verify_timeout = "8s".into();
    o.verify_settle = "300ms".into();
    o.stop_timeout = "5s".into();
    o
}

/// The HAProxy server entry for a host on `ip` (known before its agent starts).
pub fn ha_server(host: &str, ip: Ipv4Addr) -> HaServer {
    HaServer {
        name: host.to_string(),
        addr: net::addr(ip, APP_PORT),
        agent_addr: net::addr(ip, AGENT_CHECK_PORT),
    }
}

/// Starts HAProxy for `servers` on `ip:HAPROXY_PORT`. A missing HAProxy FAILS the test.
pub fn start_haproxy(servers: &[HaServer], ip: Ipv4Addr) -> HaProxy {
    HaProxy::start(servers, net::addr(ip, HAPROXY_PORT)).unwrap_or_else(|e| {
        panic!("HAProxy is required by this end-to-end test and could not start: {e}")
    })
}

/// A 3-node coordinator cluster with group `web` at budget 1 and a leader; `extra` is merged
/// into every node's config.
pub fn start_cluster(deadline: &Deadline, unreachable_after: &str, extra: &str) -> Cluster {
    let opts = ClusterOpts {
        unreachable_after: unreachable_after.to_string(),
        extra: hotdeploy_integration_tests::toml_config::table(extra),
        ..ClusterOpts::default()
    };
    let cluster = Cluster::start(3, &[("web", "1")], opts);
    cluster.wait_leader(deadline.bound(Duration::from_secs(30)), None);
    cluster
}

/// The coordinators' config for group `web` when it has one host: with a budget of 1,
/// deploying, draining or holding that host for maintenance leaves none available, which the
/// coordinators refuse unless `allow_zero_available`.
pub const ONE_HOST_GROUP: &str = "[groups.web]\nallow_zero_available = true\n";

/// A temp dir of the scenario's own for its release artifacts, named `prefix...`.
pub fn artifacts_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("temp dir: {e}"))
}

/// [`start_cluster`] for a group `web` of one host ([`ONE_HOST_GROUP`]).
pub fn start_one_host_cluster(deadline: &Deadline) -> Cluster {
    start_cluster(deadline, "5s", ONE_HOST_GROUP)
}

/// The start of every scenario on one host alone in group `web`: its artifact dir, release
/// `v1` built there (healthy), and the coordinator cluster ([`start_one_host_cluster`]).
pub struct OneHostGroup {
    /// Where the scenario's releases are built (removed on drop).
    pub artifacts: tempfile::TempDir,
    /// Release `v1`.
    pub v1: Rel,
    /// The 3-node cluster, with a leader.
    pub cluster: Cluster,
}

impl OneHostGroup {
    /// Builds `v1` in a fresh artifact dir named `prefix...`, then starts the cluster.
    pub fn start(deadline: &Deadline, prefix: &str) -> OneHostGroup {
        let artifacts = artifacts_dir(prefix);
        let v1 = release(artifacts.path(), "v1", false);
        let cluster = start_one_host_cluster(deadline);
        OneHostGroup {
            artifacts,
            v1,
            cluster,
        }
    }
}

/// Text of a command's output, for messages.
pub fn show(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

/// `rollout start GROUP --release R --artifact URL --sha256 SHA --id ID EXTRA...`: the
/// arguments of `hotdeployctl` for a rollout of `rel`.
pub fn rollout_start_args(group: &str, id: &str, rel: &Rel, extra: &[&str]) -> Vec<String> {
    ["rollout", "start", group]
        .iter()
        .chain(&rel.flags())
        .chain(&["--id", id])
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

/// `hotdeployctl agent deploy` of `rel`.
pub fn deploy(agent: &AgentProc, rel: &Rel) -> Output {
    let args: Vec<&str> = ["deploy"].into_iter().chain(rel.flags()).collect();
    agent.ctl(&args)
}

/// Deploys `rel` and insists it succeeds.
pub fn deploy_ok(agent: &AgentProc, rel: &Rel) {
    let out = deploy(agent, rel);
    assert!(
        out.status.success(),
        "deploy of {} on {} failed: {}\n---- agent log ----\n{}",
        rel.id,
        agent.host_id(),
        show(&out),
        agent.log_tail()
    );
}

/// `agent status -o json`, or why not.
pub fn status(agent: &AgentProc) -> Result<Value, String> {
    agent.ctl_json(&["status"])
}

/// Waits until the agent reports itself idle, healthy, in rotation, on `release` (any release
/// if `None`), and its `/ready` answers 200. Returns the status.
pub fn wait_settled(
    deadline: &Deadline,
    agent: &AgentProc,
    release: Option<&str>,
    timeout: Duration,
) -> Value {
    wait_for(
        deadline,
        timeout,
        &format!("{} idle, healthy and in rotation", agent.host_id()),
        || {
            let s = status(agent)?;
            let ok = s["phase"] == "idle"
                && s["health"] == "healthy"
                && s["state"] == "in_rotation"
                && release.is_none_or(|r| s["current"] == r);
            if !ok {
                return Err(format!("status {s}"));
            }
            match agent.ready_status() {
                Some(200) => Ok(s),
                other => Err(format!("/ready answered {other:?}; status {s}")),
            }
        },
        || agent.log_tail(),
    )
}

/// Asserts that `current` resolves to a complete release directory `releases/<id>/` (not a
/// staging dir; `VERSION` present and naming `<id>`; the app binary present). Returns the id.
pub fn assert_current_link_complete(agent: &AgentProc) -> String {
    let target: PathBuf = agent.current_target().unwrap_or_else(|| {
        panic!(
            "{}: `current` is missing or dangling\n{}",
            agent.host_id(),
            agent.log_tail()
        )
    });
    let releases = std::fs::canonicalize(agent.root().join("releases"))
        .unwrap_or_else(|e| panic!("releases/ of {}: {e}", agent.host_id()));
    assert_eq!(
        target.parent(),
        Some(releases.as_path()),
        "`current` points outside releases/: {}",
        target.display()
    );
    let id = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        !id.starts_with('.'),
        "`current` points at a staging dir: {}",
        target.display()
    );
    let version = std::fs::read_to_string(target.join("VERSION"))
        .unwrap_or_else(|e| panic!("{}/VERSION: {e}", target.display()));
    assert_eq!(version.trim(), id, "VERSION of {}", target.display());
    assert!(
        target.join("bin/sample-app").is_file(),
        "{} has no bin/sample-app: a partial release",
        target.display()
    );
    id
}

/// [`assert_current_link_complete`], and the app serves that release. Returns the id.
pub fn assert_current_is_complete(agent: &AgentProc) -> String {
    let id = assert_current_link_complete(agent);
    assert_eq!(
        agent.app_version().as_deref(),
        Some(id.as_str()),
        "the app does not serve the release `current` names"
    );
    id
}

/// The one sample-app process of `agent`; panics unless there is exactly one.
pub fn one_app_pid(agent: &AgentProc) -> u32 {
    let pids = agent.app_pids();
    assert_eq!(
        pids.len(),
        1,
        "{}: expected exactly one app process, found {pids:?}\n{}",
        agent.host_id(),
        agent.log_tail()
    );
    pids[0]
}

/// `locks list -o json` as an array.
pub fn locks(cluster: &Cluster) -> Result<Vec<Value>, String> {
    let v = cluster.try_ctl_json(&["locks", "list"])?;
    v.as_array()
        .cloned()
        .ok_or_else(|| format!("locks list is not an array: {v}"))
}

/// `hosts list -o json` as an array.
pub fn hosts_list(cluster: &Cluster) -> Result<Vec<Value>, String> {
    let v = cluster.try_ctl_json(&["hosts", "list"])?;
    v.as_array()
        .cloned()
        .ok_or_else(|| format!("hosts list is not an array: {v}"))
}

/// Waits (at most 30 s) until the coordinators list `n` hosts.
pub fn wait_registered(
    deadline: &Deadline,
    cluster: &Cluster,
    n: usize,
    logs: impl Fn() -> String,
) {
    wait_for(
        deadline,
        Duration::from_secs(30),
        &format!("{n} hosts registered"),
        || {
            let got = hosts_list(cluster)?.len();
            if got == n {
                Ok(())
            } else {
                Err(format!("{got} hosts"))
            }
        },
        logs,
    );
}

/// Whether every agent's app serves `release` and the coordinators list exactly those hosts,
/// each healthy, in rotation and on `release`; the reason when not.
pub fn all_agents_on(agents: &[AgentProc], cluster: &Cluster, release: &str) -> Result<(), String> {
    for a in agents {
        let v = a.app_version();
        if v.as_deref() != Some(release) {
            return Err(format!("{} serves {v:?}", a.host_id()));
        }
    }
    let hosts = hosts_list(cluster)?;
    let ok = hosts.len() == agents.len()
        && hosts.iter().all(|h| {
            h["release"] == release && h["health"] == "healthy" && h["state"] == "in_rotation"
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{hosts:?}"))
    }
}

/// `hosts list -o json`, the entry of `host`.
pub fn host_entry(cluster: &Cluster, host: &str) -> Result<Value, String> {
    let v = cluster.try_ctl_json(&["hosts", "list"])?;
    v.as_array()
        .and_then(|a| a.iter().find(|h| h["host"] == host).cloned())
        .ok_or_else(|| format!("{host} not in hosts list: {v}"))
}

/// One HAProxy-style agent-check exchange: the reply line, if the responder answers.
pub fn agent_check_line(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let _ = stream.write_all(b"\n");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let line = reply.trim().to_string();
    (!line.is_empty()).then_some(line)
}

/// Raises a stop flag when dropped, so pollers in a `std::thread::scope` that loop on it end
/// even when the scope's body panics (the scope joins them before the panic propagates).
pub struct RaiseOnDrop<'a>(pub &'a AtomicBool);

impl Drop for RaiseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Whether a scoped poller should go on: its flag is down and its time bound not reached.
pub fn keep_polling(stop: &AtomicBool, until: Instant) -> bool {
    !stop.load(Ordering::SeqCst) && Instant::now() < until
}

/// An observer that took no samples proves nothing: insists that `report` polled HAProxy at
/// least 10 times, and at least once per 500 ms of `watched` (it polls every 50 ms).
pub fn assert_sampled(report: &ObserverReport, watched: Duration, what: &str) {
    let want = (watched.as_millis() / 500).max(10) as u64;
    assert!(
        report.samples >= want,
        "the HAProxy observer took {} samples ({} errors) in {watched:?} of {what}; at least \
         {want} are needed before its verdict means anything",
        report.samples,
        report.errors
    );
}
