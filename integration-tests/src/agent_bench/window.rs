//! `window`: the out-of-rotation window of one deploy, phase by phase, and the agent's own
//! overhead in it.
//!
//! Set-up, all on loopback: a real HAProxy (backend `web`, `agent-check` on every server, the
//! admin stats socket) in front of two standalone agents running the sample app in `exec`
//! mode. Both agents have `haproxy_socket` set, so a drain waits for HAProxy to report zero
//! current sessions and an undrain for it to report the server `UP`. A light steady load goes
//! through HAProxy the whole time. Agent `web-2` is only the other server, so the load always
//! has somewhere to go; `web-1` is deployed v1 → v2 → v1 → … `deploys` times.
//!
//! Each deploy runs through the gRPC API ([`super::client`]), and the phase durations are the
//! differences of the agent's own `at_ms` stamps on the phase entries:
//!
//! | column  | from entering … | to entering … | what happens |
//! |---------|-----------------|---------------|--------------|
//! | drain   | `draining`      | `swapped`     | `set server state drain`, poll `show stat` (every 25 ms) until `scur == 0` |
//! | swap    | `swapped`       | `restarted`   | journal write, new `current` symlink + rename |
//! | restart | `restarted`     | `verifying`   | SIGTERM to the old app, wait for it to exit, spawn the new one |
//! | verify  | `verifying`     | `undraining`  | probes until `success_threshold` successes, then `settle` |
//! | undrain | `undraining`    | `released`    | `set server state ready`, poll until `UP` |
//! | release | `released`      | done          | journal, release gc |
//!
//! `window` is the agent's `out_of_rotation_ms` (from just before `draining` to the end).
//! The agent's overhead is what remains once the waits it does not control are taken out:
//!
//! `overhead = window − drain_wait − (app_stop + app_start) − verify_schedule`
//!
//! where `drain_wait` is the agent's own `drain took N ms` note, and `app_stop` (SIGTERM to
//! exit, with an idle keep-alive connection open) and `app_start` (spawn to first accepted
//! TCP connection) are the p50s of a separate measurement of the same sample app binary on
//! this machine, taken in the same run. `verify_schedule` is the time the probe schedule
//! itself imposes: the first probe runs at once, so with `f` failed probes before the streak
//! it is `(f + success_threshold − 1) × interval + settle` (`f` is counted from the agent's
//! `probe failed` notes). `overhead_formula` uses the simpler `success_threshold × interval +
//! settle` instead, which is exact only when exactly one probe fails; it goes negative when
//! the new app is already listening at the first probe. The undrain confirmation is *not*
//! subtracted, so it counts as overhead (it is shown as `undrain (wait)`). Since the app's
//! start overlaps the first verify interval, subtracting `app_start` as well undercounts the
//! overhead by at most that (a few ms).

use super::client::{self, DeployTrace};
use super::guard::Spawned;
use super::stats::{met, parse_ms, summary, Summary};
use crate::agents::{AgentOpts, AgentProc};
use crate::haproxy::{HaProxy, HaServer};
use crate::load::{LoadConfig, LoadGen};
use crate::net::{self, AGENT_CHECK_PORT, APP_PORT, HAPROXY_PORT};
use crate::pack::{make_sample_release, ArtifactFormat};
use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The target: the agent's own overhead, ms.
pub const TARGET_OVERHEAD_MS: f64 = 100.0;

/// Knobs.
#[derive(Debug, Clone)]
pub struct WindowOpts {
    /// Deploys of web-1 (alternating v2, v1, …).
    pub deploys: usize,
    /// Requests per second through HAProxy.
    pub rate: u32,
    /// Start/stop cycles of the separate app restart measurement.
    pub restart_samples: usize,
    /// `[verify] success_threshold`.
    pub verify_threshold: u64,
    /// `[verify] interval`.
    pub verify_interval: String,
    /// `[verify] settle`.
    pub verify_settle: String,
}

/// One deploy's breakdown, ms.
#[derive(Debug, Clone, Serialize)]
pub struct DeployRow {
    /// The release deployed.
    pub release: String,
    /// `out_of_rotation_ms`.
    pub window: f64,
    /// Entering `draining` → entering `swapped`.
    pub drain: f64,
    /// The agent's `drain took N ms` note: set drain + wait for `scur == 0`.
    pub drain_wait: f64,
    /// Entering `swapped` → entering `restarted`.
    pub swap: f64,
    /// Entering `restarted` → entering `verifying`.
    pub restart: f64,
    /// Entering `verifying` → entering `undraining`.
    pub verify: f64,
    /// Probe failures tolerated during verify (the app was not listening yet).
    pub verify_failures: usize,
    /// Entering `undraining` → entering `released`.
    pub undrain: f64,
    /// The agent's `back in rotation (took N ms)` note.
    pub undrain_wait: f64,
    /// Entering `released` → the done message.
    pub release_tail: f64,
    /// `(failures + success_threshold − 1) × interval + settle`.
    pub verify_schedule: f64,
    /// The formula in the module docs.
    pub overhead: f64,
    /// The same with `success_threshold × interval + settle` for the verify part.
    pub overhead_formula: f64,
}

/// The separate app restart measurement, ms.
#[derive(Debug, Clone, Serialize)]
pub struct AppRestart {
    /// SIGTERM → exit.
    pub stop: Summary,
    /// Spawn → first accepted connection.
    pub start: Summary,
}

/// What `window` measured.
#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    /// Requests per second through HAProxy.
    pub rate: u32,
    /// `success_threshold`, `interval` (ms), `settle` (ms).
    pub verify: (u64, f64, f64),
    /// `success_threshold × interval + settle`, ms.
    pub verify_probe_ms: f64,
    /// The separate app restart measurement.
    pub app: AppRestart,
    /// Per deploy.
    pub rows: Vec<DeployRow>,
    /// Summaries per column.
    pub window: Summary,
    /// Drain phase.
    pub drain: Summary,
    /// Swap phase.
    pub swap: Summary,
    /// Restart phase.
    pub restart: Summary,
    /// Verify phase.
    pub verify_phase: Summary,
    /// Undrain phase.
    pub undrain: Summary,
    /// Release tail.
    pub release_tail: Summary,
    /// Overhead.
    pub overhead: Summary,
    /// Overhead with the simpler verify formula.
    pub overhead_formula: Summary,
    /// Load: requests, failed.
    pub load_requests: u64,
    /// Failed requests through HAProxy during the whole run.
    pub load_failed: u64,
    /// Overhead target, ms.
    pub target_overhead_ms: f64,
    /// Whether the p50 overhead meets the target.
    pub target_met_p50: bool,
    /// Whether the max overhead meets the target.
    pub target_met_max: bool,
}

/// Runs the bench with everything under `dir`.
pub fn run(dir: &Path, opts: &WindowOpts) -> anyhow::Result<WindowReport> {
    HaProxy::require().map_err(anyhow::Error::msg)?;
    let ips = net::alloc_ips(3);
    let servers: Vec<HaServer> = ips[..2]
        .iter()
        .enumerate()
        .map(|(i, ip)| HaServer {
            name: format!("web-{}", i + 1),
            addr: net::addr(*ip, APP_PORT),
            agent_addr: net::addr(*ip, AGENT_CHECK_PORT),
        })
        .collect();
    let frontend = net::addr(ips[2], HAPROXY_PORT);
    eprintln!("window: starting HAProxy on {frontend} and 2 agents");
    let haproxy = HaProxy::start(&servers, frontend).map_err(anyhow::Error::msg)?;
    let mut agents = Vec::new();
    for (i, ip) in ips[..2].iter().enumerate() {
        let mut o = AgentOpts::new(&format!("web-{}", i + 1), *ip, Vec::new());
        o.haproxy_socket = Some(haproxy.socket_path().to_path_buf());
        o.drain_timeout = Some("10s".into());
        o.verify_success_threshold = opts.verify_threshold;
        o.verify_interval = opts.verify_interval.clone();
        o.verify_settle = opts.verify_settle.clone();
        agents.push(AgentProc::start(o));
    }
    let releases = dir.join("releases");
    std::fs::create_dir_all(&releases)?;
    let v1 = make_sample_release(&releases, "v1", false, ArtifactFormat::TarGz)?;
    let v2 = make_sample_release(&releases, "v2", false, ArtifactFormat::TarGz)?;
    let url = |p: &PathBuf| format!("file://{}", p.display());
    for a in &agents {
        client::deploy_ok(
            a.grpc_addr(),
            "v1",
            &url(&v1.0),
            &v1.1,
            Duration::from_secs(60),
        )?;
    }
    if !haproxy.wait_all_up(2, Duration::from_secs(30)) {
        bail!(
            "HAProxy did not see both servers UP\n{}",
            haproxy.log_tail()
        );
    }

    let mut load_cfg = LoadConfig::new(frontend, opts.rate);
    load_cfg.workers = 4;
    let load = LoadGen::start(load_cfg);
    std::thread::sleep(Duration::from_secs(2));

    eprintln!(
        "window: measuring the sample app's own stop and start ({} cycles)",
        opts.restart_samples
    );
    let app = measure_app_restart(
        &releases.join("src-v1"),
        net::addr(ips[2], APP_PORT),
        opts.restart_samples,
    )?;

    let threshold = opts.verify_threshold as f64;
    let interval = parse_ms(&opts.verify_interval);
    let settle = parse_ms(&opts.verify_settle);
    let verify_probe_ms = threshold * interval + settle;
    let app_ms = app.stop.p50 + app.start.p50;
    let target = &agents[0];
    let mut rows = Vec::new();
    for i in 0..opts.deploys {
        let (id, (path, sha)) = if i % 2 == 0 { ("v2", &v2) } else { ("v1", &v1) };
        if !haproxy.wait_all_up(2, Duration::from_secs(30)) {
            bail!(
                "HAProxy did not see both servers UP before deploy {}",
                i + 1
            );
        }
        std::thread::sleep(Duration::from_secs(1));
        let trace = client::deploy_ok(
            target.grpc_addr(),
            id,
            &url(path),
            sha,
            Duration::from_secs(60),
        )?;
        let row = breakdown(id, &trace, app_ms, opts.verify_threshold, interval, settle)
            .with_context(|| format!("deploy {} lacks a phase:\n{}", i + 1, trace.describe()))?;
        eprintln!(
            "window: deploy {}/{} ({id}): window {:.0} ms, overhead {:.0} ms",
            i + 1,
            opts.deploys,
            row.window,
            row.overhead
        );
        rows.push(row);
    }
    std::thread::sleep(Duration::from_secs(1));
    let load = load.stop();
    let col = |f: fn(&DeployRow) -> f64| summary(&rows.iter().map(f).collect::<Vec<_>>());
    let overhead = col(|r| r.overhead);
    Ok(WindowReport {
        rate: opts.rate,
        verify: (opts.verify_threshold, interval, settle),
        verify_probe_ms,
        app,
        window: col(|r| r.window),
        drain: col(|r| r.drain),
        swap: col(|r| r.swap),
        restart: col(|r| r.restart),
        verify_phase: col(|r| r.verify),
        undrain: col(|r| r.undrain),
        release_tail: col(|r| r.release_tail),
        overhead,
        overhead_formula: col(|r| r.overhead_formula),
        rows,
        load_requests: load.requests,
        load_failed: load.failed,
        target_overhead_ms: TARGET_OVERHEAD_MS,
        target_met_p50: overhead.p50 <= TARGET_OVERHEAD_MS,
        target_met_max: overhead.max <= TARGET_OVERHEAD_MS,
    })
}

/// The per-phase breakdown of one deploy.
fn breakdown(
    release: &str,
    t: &DeployTrace,
    app_ms: f64,
    threshold: u64,
    interval: f64,
    settle: f64,
) -> Option<DeployRow> {
    let window = t.done.out_of_rotation_ms as f64;
    let drain_wait = t.took_ms("draining")?;
    let undrain_wait = t.took_ms("undraining")?;
    let released = t.entered("released")?;
    let failures = t.count("verifying", "probe failed");
    let verify_schedule = (failures as f64 + threshold as f64 - 1.0) * interval + settle;
    let overhead = window - drain_wait - app_ms - verify_schedule;
    let overhead_formula = window - drain_wait - app_ms - (threshold as f64 * interval + settle);
    Some(DeployRow {
        release: release.to_string(),
        window,
        drain: t.between("draining", "swapped")?,
        drain_wait,
        swap: t.between("swapped", "restarted")?,
        restart: t.between("restarted", "verifying")?,
        verify: t.between("verifying", "undraining")?,
        verify_failures: failures,
        undrain: t.between("undraining", "released")?,
        undrain_wait,
        release_tail: t.done.at_ms.saturating_sub(released) as f64,
        verify_schedule,
        overhead,
        overhead_formula,
    })
}

/// Starts and stops the sample app `cycles` times from `tree` on `addr`: spawn → first
/// accepted connection, and SIGTERM → exit with one idle keep-alive connection open (as
/// HAProxy keeps).
pub fn measure_app_restart(
    tree: &Path,
    addr: SocketAddr,
    cycles: usize,
) -> anyhow::Result<AppRestart> {
    let bin = tree.join("bin").join("sample-app");
    let (mut stops, mut starts) = (Vec::new(), Vec::new());
    for _ in 0..cycles {
        let mut command = Command::new(&bin);
        command
            .arg("--dir")
            .arg(tree)
            .arg("--listen")
            .arg(addr.to_string())
            .current_dir(tree);
        let t0 = Instant::now();
        let mut app = Spawned::spawn(command).context("spawning sample-app")?;
        let deadline = t0 + Duration::from_secs(10);
        let mut conn = loop {
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                break s;
            }
            if Instant::now() >= deadline {
                bail!("sample-app did not accept on {addr} within 10 s");
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        starts.push(t0.elapsed().as_secs_f64() * 1000.0);
        // One request on the connection, then leave it idle (keep-alive).
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        conn.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut buf = [0u8; 512];
        let _ = conn.read(&mut buf)?;
        std::thread::sleep(Duration::from_millis(100));
        let t1 = Instant::now();
        app.signal(Signal::SIGTERM);
        let exited = app
            .wait_exit(Duration::from_secs(10))
            .context("sample-app did not exit within 10 s of SIGTERM")?;
        stops.push((exited - t1).as_secs_f64() * 1000.0);
        drop(conn);
        drop(app);
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(AppRestart {
        stop: summary(&stops),
        start: summary(&starts),
    })
}

/// Picks one statistic of a [`Summary`].
type Pick = fn(&Summary) -> f64;

/// The human tables.
pub fn table(r: &WindowReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "out-of-rotation window, v1<->v2 on web-1 behind HAProxy (agent-check + haproxy_socket), \
         {} req/s through HAProxy; verify: threshold {} x interval {:.0} ms + settle {:.0} ms = {:.0} ms\n",
        r.rate, r.verify.0, r.verify.1, r.verify.2, r.verify_probe_ms
    ));
    out.push_str(&format!(
        "sample app alone ({} cycles): stop (SIGTERM→exit) p50 {:.1} ms max {:.1} ms; \
         start (spawn→accept) p50 {:.1} ms max {:.1} ms\n\n",
        r.app.stop.n, r.app.stop.p50, r.app.stop.max, r.app.start.p50, r.app.start.max
    ));
    out.push_str(
        "| # | release | window | drain (wait) | swap | restart | verify (fails; schedule) | undrain (wait) | release | overhead | overhead (thr×int+settle) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (i, row) in r.rows.iter().enumerate() {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} ({:.0}) | {:.0} | {:.0} | {:.0} ({}; {:.0}) | {:.0} ({:.0}) | {:.0} | {:.0} | {:.0} |\n",
            i + 1,
            row.release,
            row.window,
            row.drain,
            row.drain_wait,
            row.swap,
            row.restart,
            row.verify,
            row.verify_failures,
            row.verify_schedule,
            row.undrain,
            row.undrain_wait,
            row.release_tail,
            row.overhead,
            row.overhead_formula
        ));
    }
    let pick: [(&str, Pick); 2] = [("p50", |s| s.p50), ("max", |s| s.max)];
    for (name, s) in pick {
        out.push_str(&format!(
            "| {name} | | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            s(&r.window),
            s(&r.drain),
            s(&r.swap),
            s(&r.restart),
            s(&r.verify_phase),
            s(&r.undrain),
            s(&r.release_tail),
            s(&r.overhead),
            s(&r.overhead_formula)
        ));
    }
    out.push_str(&format!(
        "\n(all ms) load through HAProxy: {} requests, {} failed. Target overhead ≤ {:.0} ms: p50 {}, max {}\n",
        r.load_requests,
        r.load_failed,
        r.target_overhead_ms,
        met(r.target_met_p50),
        met(r.target_met_max)
    ));
    out
}
