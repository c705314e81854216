//! `hd-demo`: the README's first command, end to end on this machine.
//!
//! It starts, on 127.0.0.0/8: a 3-node coordinator cluster (group `web`, budget 1), four agents
//! in exec mode, HAProxy in front of them (agent-check on every server, runtime socket for
//! confirmed drains), and installs `sample-app` v1 on every host with a first rollout (no
//! drain, no slot). Then, with a load generator sending a steady rate through HAProxy and an
//! observer polling HAProxy's stats socket every 50 ms, it rolls out v2 with **one**
//! `hotdeployctl rollout start ... --watch`, whose progress bars the user sees. At the end it
//! prints a summary: requests and failures, p50/p99 latency before and during the rollout,
//! each host's time out of rotation as HAProxy saw it, the most hosts out at once against the
//! budget, and the total rollout time. It exits 1 if a request failed, the budget was
//! exceeded, or the rollout did not complete.
//!
//! Everything it starts lives under one temp directory; on exit, panic, Ctrl-C or SIGTERM every
//! process whose command line names that directory is killed, so nothing is left running.

use anyhow::{bail, Context};
use hotdeploy_integration_tests::agents::{AgentOpts, AgentProc};
use hotdeploy_integration_tests::cluster::{Cluster, ClusterOpts};
use hotdeploy_integration_tests::haproxy::{HaProxy, HaServer, Observer, ObserverReport};
use hotdeploy_integration_tests::load::{LoadConfig, LoadGen, LoadReport};
use hotdeploy_integration_tests::net::{self, AGENT_CHECK_PORT, APP_PORT};
use hotdeploy_integration_tests::pack::{make_sample_release, ArtifactFormat};
use hotdeploy_integration_tests::{background, bins, proc};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Hosts behind HAProxy.
const HOSTS: usize = 4;
/// The group's budget (`max_unavailable`).
const BUDGET: usize = 1;
/// Requests per second through HAProxy.
const RATE: u32 = 200;
/// How long the load runs before the rollout, for the "before" latencies.
const BEFORE: Duration = Duration::from_secs(3);
/// How long a rollout may take before the demo gives up on it.
const ROLLOUT_LIMIT: Duration = Duration::from_secs(300);

fn main() {
    hotdeploy_common::telemetry::init();
    let root = match tempfile::Builder::new().prefix("hd-demo-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot create the demo directory: {e}");
            std::process::exit(1);
        }
    };
    // Every temp dir the harness makes from here on lives under `root`, so one marker finds
    // every process the demo started (the rollout CLI too: its artifact URL names `root`).
    std::env::set_var("TMPDIR", root.path());
    let marker = root.path().to_path_buf();
    let on_signal = marker.clone();
    background::handle().spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("\ninterrupted: stopping everything the demo started");
        proc::kill_strays(&on_signal);
        let _ = std::fs::remove_dir_all(&on_signal);
        std::process::exit(130);
    });
    let result = std::panic::catch_unwind(|| run(&marker));
    proc::kill_strays(&marker);
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("demo failed: {e:#}");
            std::process::exit(1);
        }
        Err(_) => std::process::exit(1),
    }
}

fn run(dir: &Path) -> anyhow::Result<()> {
    HaProxy::require().map_err(anyhow::Error::msg)?;
    step(&format!(
        "starting 3 coordinators (group web, max_unavailable {BUDGET})"
    ));
    let cluster = Cluster::start(3, &[("web", &BUDGET.to_string())], ClusterOpts::default());
    let leader = cluster.wait_leader(Duration::from_secs(30), None);
    println!("  leader: node {leader}");

    let ips = net::alloc_ips(HOSTS);
    let servers: Vec<HaServer> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| HaServer {
            name: format!("web-{}", i + 1),
            addr: SocketAddr::new((*ip).into(), APP_PORT),
            agent_addr: SocketAddr::new((*ip).into(), AGENT_CHECK_PORT),
        })
        .collect();
    step("starting HAProxy with agent-check on every server");
    let frontend = SocketAddr::new(net::alloc_ips(1)[0].into(), net::HAPROXY_PORT);
    let haproxy = HaProxy::start(&servers, frontend).map_err(anyhow::Error::msg)?;

    step(&format!(
        "starting {HOSTS} agents (exec mode, sample-app), linked to the coordinators"
    ));
    let mut agents = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let mut opts = AgentOpts::new(&format!("web-{}", i + 1), *ip, cluster.coordinator_addrs());
        opts.haproxy_socket = Some(haproxy.socket_path().to_path_buf());
        opts.drain_grace = "1s".into();
        opts.undrain_grace = "1s".into();
        agents.push(AgentProc::start(opts));
    }
    wait_hosts(&cluster, HOSTS)?;

    let releases = dir.join("releases");
    std::fs::create_dir_all(&releases)?;
    let v1 = make_sample_release(&releases, "v1", false, ArtifactFormat::TarGz)?;
    let v2 = make_sample_release(&releases, "v2", false, ArtifactFormat::TarGz)?;

    step("installing v1 everywhere with a first rollout (no release yet: no drain, no slot)");
    let install = start_args("demo-install", "v1", &v1.0, &v1.1);
    cluster
        .try_ctl_json(&install)
        .map_err(anyhow::Error::msg)
        .context("rollout start demo-install")?;
    wait_completed(&cluster, "demo-install")?;
    if !haproxy.wait_all_up(HOSTS, Duration::from_secs(30)) {
        bail!("HAProxy did not see all {HOSTS} servers UP");
    }

    step(&format!(
        "load: {RATE} requests/s through HAProxy at {frontend}; {} s before the rollout",
        BEFORE.as_secs()
    ));
    let before_load = LoadGen::start(LoadConfig::new(frontend, RATE));
    std::thread::sleep(BEFORE);
    let before = before_load.stop();

    step("rolling out v2 with one command:");
    let mut args = vec![
        "--endpoints".to_string(),
        cluster.endpoints(),
        "--insecure".to_string(),
    ];
    args.extend(start_args("demo-v2", "v2", &v2.0, &v2.1));
    args.push("--watch".to_string());
    println!("  hotdeployctl {}", shown(&args));
    let load = LoadGen::start(LoadConfig::new(frontend, RATE));
    let observer = Observer::start(&haproxy);
    let watched = Instant::now();
    let cli = Command::new(bins::ctl())
        .args(&args)
        .status()
        .context("running hotdeployctl rollout start --watch")?;
    let wall = watched.elapsed();
    // The last undrain settling in HAProxy's view.
    std::thread::sleep(Duration::from_secs(1));
    let seen = observer.stop();
    let observed = watched.elapsed();
    let during = load.stop();
    let status = cluster
        .try_ctl_json(&["rollout", "status", "demo-v2"])
        .map_err(anyhow::Error::msg)?;

    summary(&before, &during, &seen, observed, &status, wall);
    let on_v2 = agents
        .iter()
        .filter(|a| a.app_version().as_deref() == Some("v2"))
        .count();
    println!("hosts serving v2:       {on_v2}/{HOSTS}");
    if !cli.success() || status["state"] != "completed" {
        bail!("the rollout did not complete: {} ({cli})", status["state"]);
    }
    if during.failed > 0 || before.failed > 0 {
        println!("failures: {:?}", during.error_samples);
        bail!("{} requests failed", during.failed + before.failed);
    }
    if seen.max_not_up > BUDGET {
        bail!(
            "{} hosts were out at once, over the budget of {BUDGET}",
            seen.max_not_up
        );
    }
    if on_v2 != HOSTS {
        bail!("only {on_v2} of {HOSTS} hosts serve v2");
    }
    println!("zero failed requests; never more than {BUDGET} host out; every host on v2");
    Ok(())
}

fn step(msg: &str) {
    println!("== {msg}");
}

/// `rollout start web --release ID --artifact file://PATH --sha256 SHA --id ID`.
fn start_args(id: &str, release: &str, artifact: &Path, sha: &str) -> Vec<String> {
    [
        "rollout",
        "start",
        "web",
        "--release",
        release,
        "--artifact",
        &format!("file://{}", artifact.display()),
        "--sha256",
        sha,
        "--id",
        id,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The command line as a user would type it (the long digest shortened).
fn shown(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.len() == 64 && a.chars().all(|c| c.is_ascii_hexdigit()) {
                format!("{}...", &a[..12])
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn wait_hosts(cluster: &Cluster, n: usize) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let count = cluster
            .try_ctl_json(&["hosts", "list"])
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        if count >= n {
            return Ok(());
        }
        if Instant::now() >= until {
            bail!("only {count} of {n} agents registered with the coordinators");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_completed(cluster: &Cluster, id: &str) -> anyhow::Result<Value> {
    let until = Instant::now() + ROLLOUT_LIMIT;
    loop {
        let status = cluster.try_ctl_json(&["rollout", "status", id]);
        if let Ok(s) = &status {
            match s["state"].as_str() {
                Some("completed") => return Ok(s.clone()),
                Some("halted" | "aborted") => {
                    bail!("rollout {id} ended {}: {}", s["state"], s["reason"])
                }
                _ => {}
            }
        }
        if Instant::now() >= until {
            bail!("rollout {id} did not complete within {ROLLOUT_LIMIT:?}: {status:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Each server's total time not `UP` in HAProxy's view, from the observer's changes.
fn time_out(seen: &ObserverReport, observed: Duration) -> BTreeMap<String, Duration> {
    let mut out: BTreeMap<String, Duration> = BTreeMap::new();
    for (i, (at, servers)) in seen.changes.iter().enumerate() {
        let until = seen.changes.get(i + 1).map_or(observed, |(next, _)| *next);
        for server in servers {
            let name = server.split('=').next().unwrap_or(server).to_string();
            *out.entry(name).or_default() += until.saturating_sub(*at);
        }
    }
    out
}

fn summary(
    before: &LoadReport,
    during: &LoadReport,
    seen: &ObserverReport,
    observed: Duration,
    status: &Value,
    wall: Duration,
) {
    println!();
    println!("== summary");
    println!(
        "requests:               {} ({} before, {} during), failed: {}",
        before.requests + during.requests,
        before.requests,
        during.requests,
        before.failed + during.failed
    );
    println!(
        "latency before:         p50 {:.1} ms, p99 {:.1} ms",
        before.latency_p50_ms, before.latency_p99_ms
    );
    println!(
        "latency during:         p50 {:.1} ms, p99 {:.1} ms (max {:.1} ms)",
        during.latency_p50_ms, during.latency_p99_ms, during.latency_max_ms
    );
    println!("versions served during: {:?}", during.versions);
    println!(
        "time out of rotation (HAProxy's view, {} samples):",
        seen.samples
    );
    let out = time_out(seen, observed);
    for i in 1..=HOSTS {
        let host = format!("web-{i}");
        let t = out.get(&host).copied().unwrap_or_default();
        println!("  {host}: {} ms", t.as_millis());
    }
    println!(
        "most hosts out at once: {} (budget {BUDGET})",
        seen.max_not_up
    );
    let by_coordinators = match (
        status["created_at_ms"].as_u64(),
        status["finished_at_ms"].as_u64(),
    ) {
        (Some(a), Some(b)) => format!("{:.1} s", b.saturating_sub(a) as f64 / 1000.0),
        _ => "unfinished".to_string(),
    };
    println!(
        "total rollout time:     {by_coordinators} (start to completed); {:.1} s for the command",
        wall.as_secs_f64()
    );
    println!(
        "rollout {}: {}, {} succeeded, {} failed",
        status["id"].as_str().unwrap_or_default(),
        status["state"].as_str().unwrap_or_default(),
        status["succeeded"],
        status["failed"]
    );
}
