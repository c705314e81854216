//! `window --coordinators 3`: the out-of-rotation window as a rollout host sees it, with the
//! slot and its fences inside.
//!
//! Set-up, all on loopback and all real: `hotdeployctl certs init` makes the fleet's
//! certificates; a 3-process coordinator cluster (sled on disk, mTLS) holds group `web` with
//! budget 1; `hosts` agents (mTLS to the coordinators) supervise the sample app in `exec` mode
//! behind a real HAProxy (`agent-check`, HTTP health checks, `haproxy_socket` confirmation);
//! a steady load goes through HAProxy the whole run and an [`Observer`] counts the servers out
//! of rotation. The hosts are installed with a first rollout of v1, then each *cycle* is one
//! `hotdeployctl rollout start` (StartRollout through the coordinators) of v2, v1, v2, …, and
//! the bench waits for it to be `completed`. Every host of every cycle thus deploys the way a
//! rollout drives it: pre-stage, AcquireSlot, `ReportPhase{token}` before draining, swapping,
//! restarting and verifying, ReportStep, ReleaseSlot.
//!
//! A rollout's deploy has no Deploy stream, so the times come from the agent's own log
//! ([`super::agent_log`]), stamped with microseconds. Per host and cycle:
//!
//! | column     | from … | to … | what it holds |
//! |------------|--------|------|---------------|
//! | fence      | entering `slot_held` | entering `draining` | ReportPhase(draining) committed + one journal write (before the window) |
//! | drain      | entering `draining` | rotation `OUT_OF_ROTATION` | `set server state drain`, `show stat` polls until `scur == 0` |
//! | fence·swap | `OUT_OF_ROTATION` | entering `swapped` | ReportPhase(swapped) committed + one journal write |
//! | swap       | entering `swapped` | entering `restarted` | `current` symlink swap + ReportPhase(restarted) + journal |
//! | restart    | entering `restarted` | entering `verifying` | SIGTERM, exit, spawn + ReportPhase(verifying) + journal |
//! | verify     | entering `verifying` | entering `undraining` | probes to `success_threshold`, then `settle` |
//! | undrain    | entering `undraining` | rotation `IN_ROTATION` | `set server state ready`, polls until `UP` |
//! | after      | `IN_ROTATION` | entering `released` | ReportStep(succeeded) + ReleaseSlot (after the window) |
//!
//! `window` = entering `draining` → `IN_ROTATION` confirmed. The agent's overhead in it is
//!
//! `overhead = window − drain − (app_stop + app_start) − ((success_threshold − 1) × interval + settle)`
//!
//! with the app's stop and start measured alone in the same run (as in [`super::window`]).
//! The verify term is the *least* a verify can take (the first probe succeeds the moment the
//! app listens), so time lost to probe-interval quantisation counts as overhead here, as do the
//! three fences inside the window and the undrain confirmation. The drain wait is the agent's
//! whole drain phase (sessions HAProxy still holds are not the agent's to cut).
//!
//! Per cycle also: the rollout's time (the coordinators' `created_at_ms` → `finished_at_ms`),
//! and the leader's raft writes in the cycle with their mean commit latency
//! (`hotdeploy_raft_commit_latency_seconds` sum and count, scraped before and after).
//!
//! Left out: a second group, canaries and `batch` > 1 (the window of one host does not depend
//! on them), and restarts of coordinators (see the rollout end-to-end tests).

use super::agent_log::{self, Event, Kind};
use super::stats::{met, parse_ms, summary, Summary};
use super::window::{measure_app_restart, AppRestart, TARGET_OVERHEAD_MS};
use crate::agents::{AgentOpts, AgentProc};
use crate::bins;
use crate::cluster::{Cluster, ClusterOpts};
use crate::haproxy::{HaProxy, HaServer, Observer};
use crate::http_request::Request;
use crate::load::{LoadConfig, LoadGen};
use crate::net::{self, AGENT_CHECK_PORT, APP_PORT, HAPROXY_PORT};
use crate::pack::{make_sample_release, ArtifactFormat};
use crate::prom_text;
use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Coordinator nodes (the brief's real 3-node cluster).
pub const NODES: usize = 3;
/// How long one rollout may take (a liveness bound, not a claim).
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(120);

/// Knobs.
#[derive(Debug, Clone)]
pub struct FleetOpts {
    /// Rollouts after the install (alternating v2, v1, …).
    pub cycles: usize,
    /// Agents in group `web` (budget 1).
    pub hosts: usize,
    /// Requests per second through HAProxy.
    pub rate: u32,
    /// The path the load requests (`/`, or `/slow?ms=N` so that a drain finds sessions open).
    pub path: String,
    /// Start/stop cycles of the separate app restart measurement.
    pub restart_samples: usize,
    /// `[verify] success_threshold`.
    pub verify_threshold: u64,
    /// `[verify] interval`.
    pub verify_interval: String,
    /// `[verify] settle`.
    pub verify_settle: String,
}

/// One host's deploy in one cycle, ms.
#[derive(Debug, Clone, Serialize)]
pub struct HostRow {
    /// 1-based cycle.
    pub cycle: usize,
    /// Host id.
    pub host: String,
    /// The release deployed.
    pub release: String,
    /// Entering `draining` → `IN_ROTATION` confirmed.
    pub window: f64,
    /// Entering `slot_held` → entering `draining`: ReportPhase(draining) + journal.
    pub fence_drain: f64,
    /// Entering `draining` → drain confirmed.
    pub drain: f64,
    /// Drain confirmed → entering `swapped`: ReportPhase(swapped) + journal.
    pub fence_swap: f64,
    /// Entering `swapped` → entering `restarted`.
    pub swap: f64,
    /// Entering `restarted` → entering `verifying`.
    pub restart: f64,
    /// Entering `verifying` → entering `undraining`.
    pub verify: f64,
    /// Failed probe rounds the agent tolerated.
    pub verify_failures: u32,
    /// Entering `undraining` → undrain confirmed.
    pub undrain: f64,
    /// Undrain confirmed → entering `released`: ReportStep + ReleaseSlot.
    pub after: f64,
    /// See the module docs.
    pub overhead: f64,
}

/// One rollout.
#[derive(Debug, Clone, Serialize)]
pub struct CycleRow {
    /// 1-based cycle.
    pub cycle: usize,
    /// The rollout id.
    pub rollout: String,
    /// The release.
    pub release: String,
    /// `created_at_ms` → `finished_at_ms`, by the coordinators.
    pub rollout_ms: f64,
    /// Raft writes the leader committed in the cycle.
    pub commits: f64,
    /// Their mean proposal → applied latency, ms.
    pub commit_mean_ms: f64,
}

/// What the fleet mode measured.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// Coordinator nodes.
    pub coordinators: usize,
    /// Hosts in the group.
    pub hosts: usize,
    /// Requests per second through HAProxy.
    pub rate: u32,
    /// The path the load requested.
    pub path: String,
    /// `success_threshold`, `interval` (ms), `settle` (ms).
    pub verify: (u64, f64, f64),
    /// `(success_threshold − 1) × interval + settle`, ms.
    pub verify_floor_ms: f64,
    /// The separate app restart measurement.
    pub app: AppRestart,
    /// Per host and cycle.
    pub rows: Vec<HostRow>,
    /// Per cycle.
    pub cycles: Vec<CycleRow>,
    /// Window.
    pub window: Summary,
    /// Fence before the drain.
    pub fence_drain: Summary,
    /// Drain.
    pub drain: Summary,
    /// Fence after the drain.
    pub fence_swap: Summary,
    /// Swap.
    pub swap: Summary,
    /// Restart.
    pub restart: Summary,
    /// Verify.
    pub verify_phase: Summary,
    /// Undrain.
    pub undrain: Summary,
    /// After the window.
    pub after: Summary,
    /// Overhead.
    pub overhead: Summary,
    /// Rollout time.
    pub rollout: Summary,
    /// Mean commit latency per cycle.
    pub commit_mean: Summary,
    /// Requests through HAProxy over the whole run.
    pub load_requests: u64,
    /// Failed requests over the whole run.
    pub load_failed: u64,
    /// The most servers not UP at once (budget 1).
    pub max_out: usize,
    /// Observer polls.
    pub observer_samples: u64,
    /// Overhead target, ms.
    pub target_overhead_ms: f64,
    /// p50 overhead within target.
    pub target_met_p50: bool,
    /// Max overhead within target.
    pub target_met_max: bool,
}

/// Runs the fleet mode with everything under `dir`.
pub fn run(dir: &Path, opts: &FleetOpts) -> anyhow::Result<FleetReport> {
    HaProxy::require().map_err(anyhow::Error::msg)?;
    if opts.hosts < 2 {
        bail!("--hosts must be at least 2: the load needs a server while one is out");
    }
    let spare = 2;
    let ips = net::alloc_ips(NODES + spare + opts.hosts + 1);
    let (coord_ips, rest) = ips.split_at(NODES + spare);
    let (host_ips, front_ip) = rest.split_at(opts.hosts);
    let front_ip = front_ip[0];
    let hosts: Vec<String> = (1..=opts.hosts).map(|i| format!("web-{i}")).collect();

    let pki = dir.join("pki");
    certs_init(&pki, &coord_ips[..NODES], &hosts, host_ips)?;
    eprintln!(
        "window: starting 3 coordinators (mTLS, sled), HAProxy and {} agents",
        opts.hosts
    );
    let cluster = Cluster::start(
        NODES,
        &[("web", "1")],
        ClusterOpts {
            tls: Some(pki.clone()),
            ips: Some(coord_ips.to_vec()),
            ..ClusterOpts::default()
        },
    );
    cluster.wait_leader(Duration::from_secs(30), None);
    let servers: Vec<HaServer> = hosts
        .iter()
        .zip(host_ips)
        .map(|(h, ip)| HaServer {
            name: h.clone(),
            addr: net::addr(*ip, APP_PORT),
            agent_addr: net::addr(*ip, AGENT_CHECK_PORT),
        })
        .collect();
    let frontend = net::addr(front_ip, HAPROXY_PORT);
    let haproxy = HaProxy::start(&servers, frontend).map_err(anyhow::Error::msg)?;
    let agents: Vec<AgentProc> = hosts
        .iter()
        .zip(host_ips)
        .map(|(h, ip)| {
            let mut o = AgentOpts::new(h, *ip, cluster.coordinator_addrs());
            o.haproxy_socket = Some(haproxy.socket_path().to_path_buf());
            o.drain_timeout = Some("10s".into());
            o.verify_success_threshold = opts.verify_threshold;
            o.verify_interval = opts.verify_interval.clone();
            o.verify_settle = opts.verify_settle.clone();
            o.tls = Some(pki.clone());
            o.env.push(("NO_COLOR".into(), "1".into()));
            AgentProc::start(o)
        })
        .collect();
    let logs = || fleet_logs(&cluster, &haproxy, &agents);
    wait_until(Duration::from_secs(30), "every host registered", || {
        let v = cluster.try_ctl_json(&["hosts", "list"])?;
        let n = v.as_array().map_or(0, Vec::len);
        if n == opts.hosts {
            Ok(())
        } else {
            Err(format!("{n} hosts"))
        }
    })
    .with_context(logs)?;

    let releases = dir.join("releases");
    std::fs::create_dir_all(&releases)?;
    let v1 = make_sample_release(&releases, "v1", false, ArtifactFormat::TarGz)?;
    let v2 = make_sample_release(&releases, "v2", false, ArtifactFormat::TarGz)?;
    eprintln!("window: installing v1 with a first rollout");
    rollout(&cluster, "install", "v1", &v1).with_context(logs)?;
    if !haproxy.wait_all_up(opts.hosts, Duration::from_secs(30)) {
        bail!(
            "HAProxy did not see every server UP after the install\n{}",
            logs()
        );
    }

    let mut load_cfg = LoadConfig::new(frontend, opts.rate);
    // Enough workers that slow requests (`/slow?ms=N`) still keep the rate.
    load_cfg.workers = 16;
    load_cfg.path = opts.path.clone();
    let load = LoadGen::start(load_cfg);
    let observer = Observer::start(&haproxy);
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "window: measuring the sample app's own stop and start ({} cycles)",
        opts.restart_samples
    );
    let app = measure_app_restart(
        &releases.join("src-v1"),
        net::addr(front_ip, APP_PORT),
        opts.restart_samples,
    )?;

    let ca = pki.join("ca.pem");
    let mut cycles = Vec::new();
    for c in 1..=opts.cycles {
        let (release, rel) = if c % 2 == 1 { ("v2", &v2) } else { ("v1", &v1) };
        if !haproxy.wait_all_up(opts.hosts, Duration::from_secs(30)) {
            bail!(
                "HAProxy did not see every server UP before cycle {c}\n{}",
                logs()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
        let leader = cluster.wait_leader(Duration::from_secs(30), None);
        let before = commit_stats(&cluster, leader, &ca)?;
        let id = format!("c{c}");
        let status = rollout(&cluster, &id, release, rel).with_context(logs)?;
        let after = commit_stats(&cluster, leader, &ca)?;
        let ms = |k: &str| status[k].as_f64().unwrap_or(0.0);
        let commits = after.1 - before.1;
        let row = CycleRow {
            cycle: c,
            rollout: id,
            release: release.to_string(),
            rollout_ms: ms("finished_at_ms") - ms("created_at_ms"),
            commits,
            commit_mean_ms: if commits > 0.0 {
                (after.0 - before.0) * 1000.0 / commits
            } else {
                0.0
            },
        };
        eprintln!(
            "window: cycle {c}/{} ({release}): rollout {:.0} ms, {:.0} raft writes, mean commit {:.1} ms",
            opts.cycles, row.rollout_ms, row.commits, row.commit_mean_ms
        );
        cycles.push(row);
    }
    std::thread::sleep(Duration::from_secs(1));
    let load = load.stop();
    let seen = observer.stop();

    let threshold = opts.verify_threshold as f64;
    let interval = parse_ms(&opts.verify_interval);
    let settle = parse_ms(&opts.verify_settle);
    let verify_floor_ms = (threshold - 1.0).max(0.0) * interval + settle;
    let app_ms = app.stop.p50 + app.start.p50;
    let mut rows = Vec::new();
    for a in &agents {
        let text = std::fs::read_to_string(a.dir().join("agent.log"))
            .with_context(|| format!("reading {}'s log", a.host_id()))?;
        let events = agent_log::parse(&text);
        for c in &cycles {
            let row =
                host_row(a.host_id(), c, &events, app_ms, verify_floor_ms).with_context(|| {
                    format!(
                        "{} in rollout {}: a transition is missing from its log",
                        a.host_id(),
                        c.rollout
                    )
                })?;
            rows.push(row);
        }
    }
    rows.sort_by(|a, b| (a.cycle, &a.host).cmp(&(b.cycle, &b.host)));
    let col = |f: fn(&HostRow) -> f64| summary(&rows.iter().map(f).collect::<Vec<_>>());
    let overhead = col(|r| r.overhead);
    let report = FleetReport {
        coordinators: NODES,
        hosts: opts.hosts,
        rate: opts.rate,
        path: opts.path.clone(),
        verify: (opts.verify_threshold, interval, settle),
        verify_floor_ms,
        app,
        window: col(|r| r.window),
        fence_drain: col(|r| r.fence_drain),
        drain: col(|r| r.drain),
        fence_swap: col(|r| r.fence_swap),
        swap: col(|r| r.swap),
        restart: col(|r| r.restart),
        verify_phase: col(|r| r.verify),
        undrain: col(|r| r.undrain),
        after: col(|r| r.after),
        overhead,
        rollout: summary(&cycles.iter().map(|c| c.rollout_ms).collect::<Vec<_>>()),
        commit_mean: summary(&cycles.iter().map(|c| c.commit_mean_ms).collect::<Vec<_>>()),
        rows,
        cycles,
        load_requests: load.requests,
        load_failed: load.failed,
        max_out: seen.max_not_up,
        observer_samples: seen.samples,
        target_overhead_ms: TARGET_OVERHEAD_MS,
        target_met_p50: overhead.p50 <= TARGET_OVERHEAD_MS,
        target_met_max: overhead.max <= TARGET_OVERHEAD_MS,
    };
    if report.load_failed > 0 {
        bail!(
            "{} of {} requests through HAProxy failed: {:?} {:?}\n{}",
            load.failed,
            load.requests,
            load.errors,
            load.error_samples,
            table(&report)
        );
    }
    if report.max_out > 1 {
        bail!(
            "HAProxy had {} servers out at once with budget 1\n{}",
            report.max_out,
            table(&report)
        );
    }
    // At 50 ms a poll, a run of several rollouts takes hundreds of samples; a handful means the
    // observer was not watching.
    if report.observer_samples < 20 * opts.cycles as u64 {
        bail!(
            "the HAProxy observer took only {} samples",
            report.observer_samples
        );
    }
    Ok(report)
}

/// `hotdeployctl certs init` for the coordinators on `coord_ips` and the agents `hosts`.
fn certs_init(
    pki: &Path,
    coord_ips: &[std::net::Ipv4Addr],
    hosts: &[String],
    host_ips: &[std::net::Ipv4Addr],
) -> anyhow::Result<()> {
    let mut command = Command::new(bins::ctl());
    command.arg("certs").arg("init").arg(pki);
    for (i, ip) in coord_ips.iter().enumerate() {
        command.arg("--coordinator").arg(format!("{}@{ip}", i + 1));
    }
    for (h, ip) in hosts.iter().zip(host_ips) {
        command.arg("--agent").arg(format!("{h}@{ip}"));
    }
    let out = crate::proc::run_with_timeout(command, Duration::from_secs(30));
    if !out.status.success() {
        bail!(
            "hotdeployctl certs init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Starts rollout `id` of `release` on group `web` and waits until it is `completed`; returns
/// its final `rollout status`.
fn rollout(
    cluster: &Cluster,
    id: &str,
    release: &str,
    (path, sha): &(PathBuf, String),
) -> anyhow::Result<Value> {
    let url = format!("file://{}", path.display());
    let started = cluster
        .try_ctl_json(&[
            "rollout",
            "start",
            "web",
            "--release",
            release,
            "--artifact",
            &url,
            "--sha256",
            sha,
            "--id",
            id,
        ])
        .map_err(|e| anyhow::anyhow!("rollout start {id}: {e}"))?;
    if started["state"] != "running" {
        bail!("rollout {id} did not start running: {started}");
    }
    wait_until(ROLLOUT_DEADLINE, &format!("rollout {id} completed"), || {
        let s = cluster.try_ctl_json(&["rollout", "status", id])?;
        match s["state"].as_str() {
            Some("completed") => Ok(s),
            Some("running") => Err(s.to_string()),
            _ => Err(format!("STOPPED {s}")),
        }
    })
}

/// Polls `check` every 200 ms until it answers `Ok`, or `timeout` passes. An error starting
/// with `STOPPED` ends the wait at once.
fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if e.starts_with("STOPPED") || Instant::now() >= deadline => {
                bail!("{what}: not within {timeout:?}; last: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The leader's `raft_commit_latency` (sum in seconds, count).
fn commit_stats(cluster: &Cluster, leader: u64, ca: &Path) -> anyhow::Result<(f64, f64)> {
    let reply = Request::new("GET", "/metrics")
        .tls(ca)
        .send(cluster.http_addr(leader))
        .map_err(|e| anyhow::anyhow!("GET /metrics of node {leader}: {e}"))?;
    let scrape = prom_text::parse(&reply.body).map_err(anyhow::Error::msg)?;
    let get = |s: &str| scrape.get(s).unwrap_or(0.0);
    Ok((
        get("hotdeploy_raft_commit_latency_seconds_sum"),
        get("hotdeploy_raft_commit_latency_seconds_count"),
    ))
}

/// Logs of everything, for a failure.
fn fleet_logs(cluster: &Cluster, haproxy: &HaProxy, agents: &[AgentProc]) -> String {
    format!(
        "---- haproxy ----\n{}{}",
        haproxy.log_tail(),
        crate::agents::fleet_logs(agents, cluster)
    )
}

/// The breakdown of `host`'s deploy in cycle `c`, from its log's `events`.
fn host_row(
    host: &str,
    c: &CycleRow,
    events: &[Event],
    app_ms: f64,
    verify_floor_ms: f64,
) -> Option<HostRow> {
    let entered = |phase: &str| {
        events.iter().position(|e| {
            matches!(&e.kind, Kind::Entered { phase: p, rollout } if p == phase && *rollout == c.rollout)
        })
    };
    let after = |from: usize, pred: &dyn Fn(&Kind) -> bool| {
        events[from..]
            .iter()
            .position(|e| pred(&e.kind))
            .map(|i| from + i)
    };
    let at = |i: usize| events[i].at_ms;
    let held = entered("slot_held")?;
    let draining = entered("draining")?;
    let out = after(
        draining,
        &|k| matches!(k, Kind::Rotation { to } if to == "ROTATION_OUT_OF_ROTATION"),
    )?;
    let swapped = entered("swapped")?;
    let restarted = entered("restarted")?;
    let verifying = entered("verifying")?;
    let passed = after(verifying, &|k| matches!(k, Kind::VerifyPassed { .. }))?;
    let undraining = entered("undraining")?;
    let back = after(
        undraining,
        &|k| matches!(k, Kind::Rotation { to } if to == "ROTATION_IN_ROTATION"),
    )?;
    let released = entered("released")?;
    let verify_failures = match &events[passed].kind {
        Kind::VerifyPassed { failures } => *failures,
        _ => 0,
    };
    let window = at(back) - at(draining);
    let drain = at(out) - at(draining);
    Some(HostRow {
        cycle: c.cycle,
        host: host.to_string(),
        release: c.release.clone(),
        window,
        fence_drain: at(draining) - at(held),
        drain,
        fence_swap: at(swapped) - at(out),
        swap: at(restarted) - at(swapped),
        restart: at(verifying) - at(restarted),
        verify: at(undraining) - at(verifying),
        verify_failures,
        undrain: at(back) - at(undraining),
        after: at(released) - at(back),
        overhead: window - drain - app_ms - verify_floor_ms,
    })
}

/// Picks one statistic of a [`Summary`].
type Pick = fn(&Summary) -> f64;

/// The human tables.
pub fn table(r: &FleetReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "out-of-rotation window under a rollout: {} coordinators (mTLS, sled), {} hosts in group web \
         (budget 1), HAProxy (agent-check + haproxy_socket), {} req/s of GET {} through HAProxy; verify: \
         threshold {} x interval {:.0} ms, settle {:.0} ms; floor (threshold-1) x interval + settle = {:.0} ms\n",
        r.coordinators, r.hosts, r.rate, r.path, r.verify.0, r.verify.1, r.verify.2, r.verify_floor_ms
    ));
    out.push_str(&format!(
        "sample app alone ({} cycles): stop (SIGTERM→exit) p50 {:.1} ms max {:.1} ms; \
         start (spawn→accept) p50 {:.1} ms max {:.1} ms\n\n",
        r.app.stop.n, r.app.stop.p50, r.app.stop.max, r.app.start.p50, r.app.start.max
    ));
    out.push_str(
        "| cycle | host | release | window | fence (before) | drain | fence·swap | swap | restart | verify (fails) | undrain | after | overhead |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in &r.rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} ({}) | {:.1} | {:.1} | {:.0} |\n",
            row.cycle,
            row.host,
            row.release,
            row.window,
            row.fence_drain,
            row.drain,
            row.fence_swap,
            row.swap,
            row.restart,
            row.verify,
            row.verify_failures,
            row.undrain,
            row.after,
            row.overhead
        ));
    }
    let pick: [(&str, Pick); 2] = [("p50", |s| s.p50), ("max", |s| s.max)];
    for (name, s) in pick {
        out.push_str(&format!(
            "| **{name}** | | | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | **{:.0}** |\n",
            s(&r.window),
            s(&r.fence_drain),
            s(&r.drain),
            s(&r.fence_swap),
            s(&r.swap),
            s(&r.restart),
            s(&r.verify_phase),
            s(&r.undrain),
            s(&r.after),
            s(&r.overhead)
        ));
    }
    out.push_str("\n| cycle | rollout | release | rollout time | raft writes | mean commit |\n|---|---|---|---|---|---|\n");
    for c in &r.cycles {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.1} |\n",
            c.cycle, c.rollout, c.release, c.rollout_ms, c.commits, c.commit_mean_ms
        ));
    }
    out.push_str(&format!(
        "\n(all ms) load through HAProxy: {} requests, {} failed; most servers out at once {} \
         ({} observer samples). Target overhead ≤ {:.0} ms: p50 {}, max {}\n",
        r.load_requests,
        r.load_failed,
        r.max_out,
        r.observer_samples,
        r.target_overhead_ms,
        met(r.target_met_p50),
        met(r.target_met_max)
    ));
    out
}
