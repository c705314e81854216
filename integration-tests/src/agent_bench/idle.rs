//! `idle`: the resident memory and CPU use of a standalone agent that supervises the sample app
//! and has nothing to do.
//!
//! The agent starts with no coordinators (standalone), deploys sample-app v1 in `exec` mode
//! through its own Deploy API, rests for a short settle time, and is then sampled every second
//! for the idle window: `VmRSS` (peak of the samples and the final one), `VmHWM` (the kernel's
//! peak since start, deploy included), threads, and `utime + stime` at both ends of the window,
//! as a percentage of one core. The sample app's RSS is reported for scale. Nothing polls the
//! agent's front ends meanwhile (no HAProxy), so this is the floor.

use super::client;
use super::procfs;
use super::stats::{met, mib};
use crate::agents::{AgentOpts, AgentProc};
use crate::net;
use crate::pack::{make_sample_release, ArtifactFormat};
use anyhow::Context;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// The target: the agent's RSS, idle, in MiB.
pub const TARGET_RSS_MIB: f64 = 15.0;

/// Knobs.
#[derive(Debug, Clone)]
pub struct IdleOpts {
    /// The idle window.
    pub window: Duration,
    /// Rest after the deploy, before the window.
    pub settle: Duration,
}

/// What `idle` measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// The idle window, s.
    pub window_s: f64,
    /// Samples taken.
    pub samples: usize,
    /// Agent RSS: the largest sample in the window, MiB.
    pub rss_peak_mib: f64,
    /// Agent RSS at the end of the window, MiB.
    pub rss_final_mib: f64,
    /// Agent RSS at the start of the window, MiB.
    pub rss_start_mib: f64,
    /// Agent `VmHWM` (peak since the process started, the deploy included), MiB.
    pub hwm_mib: f64,
    /// Agent threads.
    pub threads: u64,
    /// Agent CPU time (utime + stime) over the window, ms.
    pub cpu_ms: f64,
    /// That as a percentage of one core.
    pub cpu_pct_one_core: f64,
    /// The sample app's RSS at the end, MiB, for scale.
    pub app_rss_mib: f64,
    /// Target RSS, MiB.
    pub target_rss_mib: f64,
    /// Whether the peak idle RSS meets the target.
    pub target_met: bool,
}

/// Runs the bench with everything under `dir`.
pub fn run(dir: &Path, opts: &IdleOpts) -> anyhow::Result<IdleReport> {
    let ip = net::alloc_ips(1)[0];
    let releases = dir.join("releases");
    std::fs::create_dir_all(&releases)?;
    let (v1, v1_sha) = make_sample_release(&releases, "v1", false, ArtifactFormat::TarGz)?;
    eprintln!("idle: starting a standalone agent on {ip}");
    let agent = AgentProc::start(AgentOpts::new("idle-1", ip, Vec::new()));
    let pid = agent.pid().context("the agent is not running")?;
    client::deploy_ok(
        agent.grpc_addr(),
        "v1",
        &format!("file://{}", v1.display()),
        &v1_sha,
        Duration::from_secs(60),
    )?;
    eprintln!(
        "idle: v1 deployed; resting {:?}, then sampling for {:?}",
        opts.settle, opts.window
    );
    std::thread::sleep(opts.settle);

    let first = procfs::read(pid).context("cannot read the agent's /proc entry")?;
    let started = Instant::now();
    let mut peak = first.rss;
    let mut samples = 1;
    let mut last = first;
    let ticks = opts.window.as_secs().max(1);
    for i in 1..=ticks {
        let due = started + Duration::from_secs(i);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        last = procfs::read(pid).context("the agent exited during the idle window")?;
        peak = peak.max(last.rss);
        samples += 1;
    }
    let wall = started.elapsed();
    let cpu = last.cpu.saturating_sub(first.cpu);
    let app_rss = agent
        .app_pids()
        .first()
        .and_then(|p| procfs::read(*p))
        .map_or(0, |r| r.rss);
    let rss_peak_mib = mib(peak);
    Ok(IdleReport {
        window_s: wall.as_secs_f64(),
        samples,
        rss_peak_mib,
        rss_final_mib: mib(last.rss),
        rss_start_mib: mib(first.rss),
        hwm_mib: mib(last.hwm),
        threads: last.threads,
        cpu_ms: cpu.as_secs_f64() * 1000.0,
        cpu_pct_one_core: cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        app_rss_mib: mib(app_rss),
        target_rss_mib: TARGET_RSS_MIB,
        target_met: rss_peak_mib <= TARGET_RSS_MIB,
    })
}

/// The human table.
pub fn table(r: &IdleReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "agent idle, standalone, exec mode with sample-app v1 ({:.0} s window, {} samples)\n",
        r.window_s, r.samples
    ));
    out.push_str("| metric | value |\n|---|---|\n");
    for (k, v) in [
        (
            "RSS at start of window",
            format!("{:.2} MiB", r.rss_start_mib),
        ),
        ("RSS peak in window", format!("{:.2} MiB", r.rss_peak_mib)),
        ("RSS final", format!("{:.2} MiB", r.rss_final_mib)),
        (
            "VmHWM (peak since start, deploy included)",
            format!("{:.2} MiB", r.hwm_mib),
        ),
        ("threads", r.threads.to_string()),
        (
            "CPU (utime+stime) over window",
            format!("{:.0} ms", r.cpu_ms),
        ),
        ("CPU, % of one core", format!("{:.3} %", r.cpu_pct_one_core)),
        (
            "sample-app RSS (for scale)",
            format!("{:.2} MiB", r.app_rss_mib),
        ),
        (
            "target RSS ≤ 15 MiB (peak in window)",
            met(r.target_met).to_string(),
        ),
    ] {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    out
}
