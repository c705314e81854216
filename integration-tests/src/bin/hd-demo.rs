//! `hd-demo`: the README's first command, end to end on this machine.
//!
//! It starts, on 127.0.0.0/8: a 3-node coordinator cluster (group `web`, budget 1), four agents
//! running `sample-app` v1 in exec mode, HAProxy in front of them (agent-check on every
//! server, runtime socket for confirmed drains), and a load generator at a steady rate through
//! HAProxy. It then deploys v2 host by host through each agent's `hotdeployctl agent deploy`;
//! each agent takes a slot of the coordinators' lock before it drains. At the end it prints the
//! requests, the failures, the versions served and each host's time out of rotation, and an
//! observer's count of the most servers HAProxy ever saw out of rotation at once.
//!
//! Everything it starts lives under one temp directory; on exit, panic, Ctrl-C or SIGTERM every
//! process whose command line names that directory is killed, so nothing is left running.

use anyhow::{bail, Context};
use hotdeploy_integration_tests::agents::{AgentOpts, AgentProc};
use hotdeploy_integration_tests::cluster::{Cluster, ClusterOpts};
use hotdeploy_integration_tests::haproxy::{HaProxy, HaServer, Observer};
use hotdeploy_integration_tests::load::{LoadConfig, LoadGen};
use hotdeploy_integration_tests::net::{self, AGENT_CHECK_PORT, APP_PORT};
use hotdeploy_integration_tests::pack::{make_sample_release, ArtifactFormat};
use hotdeploy_integration_tests::{background, bins, proc};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Hosts behind HAProxy.
const HOSTS: usize = 4;
/// Requests per second through HAProxy while deploying.
const RATE: u32 = 200;

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
    // every process the demo started.
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
    step("starting 3 coordinators (group web, max_unavailable 1)");
    let cluster = Cluster::start(3, &[("web", "1")], ClusterOpts::default());
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

    step("starting 4 agents (exec mode, sample-app), linked to the coordinators");
    let mut agents = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let mut opts = AgentOpts::new(&format!("web-{}", i + 1), *ip, cluster.coordinator_addrs());
        opts.haproxy_socket = Some(haproxy.socket_path().to_path_buf());
        opts.drain_grace = "1s".into();
        opts.undrain_grace = "1s".into();
        agents.push(AgentProc::start(opts));
    }

    let releases = dir.join("releases");
    std::fs::create_dir_all(&releases)?;
    let v1 = make_sample_release(&releases, "v1", false, ArtifactFormat::TarGz)?;
    let v2 = make_sample_release(&releases, "v2", false, ArtifactFormat::TarGz)?;

    step("first deploy of v1 on every host (no release yet: no slot, no drain)");
    for a in &agents {
        deploy(a, "v1", &v1.0, &v1.1)?;
    }
    if !haproxy.wait_all_up(HOSTS, Duration::from_secs(30)) {
        bail!("HAProxy did not see all {HOSTS} servers UP");
    }

    step(&format!(
        "load: {RATE} requests/s through HAProxy at {frontend}"
    ));
    let load = LoadGen::start(LoadConfig::new(frontend, RATE));
    let observer = Observer::start(&haproxy);
    std::thread::sleep(Duration::from_secs(2));

    step("deploying v2 host by host, each under a slot of the lock");
    let mut windows = Vec::new();
    for a in &agents {
        let t = Instant::now();
        let out_ms = deploy(a, "v2", &v2.0, &v2.1)?;
        windows.push((a.host_id().to_string(), out_ms, t.elapsed()));
    }
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop();
    let seen = observer.stop();

    println!();
    println!("== result");
    println!(
        "requests: {}   ok: {}   failed: {}   p50 {:.1} ms   p99 {:.1} ms",
        report.requests, report.ok, report.failed, report.latency_p50_ms, report.latency_p99_ms
    );
    println!("versions served: {:?}", report.versions);
    for (host, out_ms, total) in &windows {
        println!(
            "  {host}: out of rotation {out_ms} ms (deploy took {:.1} s)",
            total.as_secs_f64()
        );
    }
    println!(
        "most servers out of rotation at once (HAProxy observer): {}",
        seen.max_not_up
    );
    let on_v2 = agents
        .iter()
        .filter(|a| a.app_version().as_deref() == Some("v2"))
        .count();
    println!("hosts serving v2: {on_v2}/{HOSTS}");
    if report.failed > 0 {
        println!("failures: {:?}", report.error_samples);
        bail!("{} requests failed during the rollout", report.failed);
    }
    if on_v2 != HOSTS {
        bail!("only {on_v2} of {HOSTS} hosts serve v2");
    }
    println!("zero failed requests; every host on v2");
    Ok(())
}

fn step(msg: &str) {
    println!("== {msg}");
}

/// Runs `hotdeployctl agent deploy` with its progress on our stderr; returns the time out of
/// rotation the agent reported.
fn deploy(agent: &AgentProc, release: &str, artifact: &Path, sha: &str) -> anyhow::Result<u64> {
    println!("  {}: deploy {release}", agent.host_id());
    let out = Command::new(bins::ctl())
        .args(["--insecure", "-o", "json", "agent", "--address"])
        .arg(agent.grpc_addr().to_string())
        .args(["deploy", "--release", release, "--artifact"])
        .arg(format!("file://{}", artifact.display()))
        .args(["--sha256", sha])
        .stderr(Stdio::inherit())
        .output()
        .context("running hotdeployctl")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if !out.status.success() {
        bail!("deploy of {release} on {} failed: {json}", agent.host_id());
    }
    Ok(json["out_of_rotation_ms"].as_u64().unwrap_or(0))
}
