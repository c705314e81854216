//! `hd-bench waiters`: 1,000 concurrent `AcquireSlot` waiters in one 1,000-host group.
//!
//! The leader keeps waiting acquires in a queue, and every applied entry wakes every waiter to
//! ask whether it may propose now (issue 9 §2.5). This bench puts that queue under load: a
//! 3-node cluster with one group of `--hosts` healthy pseudo-hosts (budget `--budget`), then
//! `--waiters` of them call `AcquireSlot` at once, each waiting up to `--wait-s` for its turn,
//! and release their slot the moment it is granted. So the queue is at its longest at the
//! start and drains grant by grant; every grant and every release is an applied entry that
//! wakes all the waiters still queued.
//!
//! Reported: each waiter's grant latency (from its call to its grant: mostly time in the
//! queue, so the median is about half the run), the whole run's wall time and grants per
//! second, and the leader's CPU time over the run (utime + stime from `/proc/<pid>/stat`, in
//! clock ticks of 10 ms) with its share of one core. A waiter that is not granted within
//! `--wait-s` counts as an error. Calls share `--connections` HTTP/2 connections.

use super::hd_client::{self, HdClient};
use super::machine::Machine;
use super::report::Target;
use super::setup::{self, GroupSpec};
use super::stats::{self, Summary};
use anyhow::{anyhow, bail, Result};
use hotdeploy_common::proto::coordinator_client::CoordinatorClient;
use hotdeploy_common::proto::{AcquireSlotRequest, ReleaseSlotRequest, WriteId};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

/// The kernel reports process times in USER_HZ ticks, 100 per second on Linux.
const TICKS_PER_S: f64 = 100.0;

/// Knobs of `hd-bench waiters`.
#[derive(Debug, Clone, Serialize)]
pub struct WaitersOpts {
    /// Hosts in the group.
    pub hosts: usize,
    /// Concurrent waiters (the first `waiters` hosts).
    pub waiters: usize,
    /// The group's `max_unavailable`.
    pub budget: String,
    /// How long each waiter may wait for its grant, s.
    pub wait_s: u64,
    /// HTTP/2 connections the waiters share.
    pub connections: usize,
}

/// The whole `hd-bench waiters` result.
#[derive(Debug, Clone, Serialize)]
pub struct WaitersReport {
    /// The machine.
    pub machine: Machine,
    /// The knobs.
    pub opts: WaitersOpts,
    /// Grant latencies (one per granted waiter), wall time and grants per second.
    pub grants: Summary,
    /// The leader's CPU time over the run, s.
    pub leader_cpu_s: Option<f64>,
    /// That CPU time as a share of one core over the run's wall time, %.
    pub leader_cpu_pct: Option<f64>,
    /// Every waiter granted.
    pub targets: Vec<Target>,
}

/// Runs the waiters benchmark.
pub fn run(rt: &Runtime, opts: &WaitersOpts) -> Result<WaitersReport> {
    if opts.waiters > opts.hosts || opts.waiters == 0 {
        bail!("--waiters must be between 1 and --hosts");
    }
    let machine = Machine::read();
    eprintln!("hd-bench waiters: {}", machine.line());
    let group = GroupSpec {
        name: "w".into(),
        max_unavailable: opts.budget.clone(),
        allow_zero_available: false,
    };
    let (cluster, leader) = setup::start_cluster(std::slice::from_ref(&group));
    let leader_addr = cluster.addr(leader);
    let pid = setup::node_pid(&cluster, leader)
        .ok_or_else(|| anyhow!("cannot find the leader's process"))?;
    let (grants, cpu) = rt.block_on(async {
        let mut admin = HdClient::new(leader_addr, "bench-admin")?;
        setup::check_groups(&mut admin, std::slice::from_ref(&group)).await?;
        eprintln!("hd-bench waiters: registering {} hosts", opts.hosts);
        register(leader_addr, opts.hosts).await?;
        let cpu_before = cpu_ticks(pid);
        eprintln!(
            "hd-bench waiters: {} waiters at node {leader}, budget {}",
            opts.waiters, opts.budget
        );
        let started = Instant::now();
        let (samples, errors) = wait_all(leader_addr, opts).await?;
        let wall = started.elapsed();
        let cpu = cpu_before
            .zip(cpu_ticks(pid))
            .map(|(a, b)| b.saturating_sub(a) as f64 / TICKS_PER_S);
        anyhow::Ok((stats::summarize(samples, errors, wall), cpu))
    })?;
    drop(cluster);
    let pct = cpu.map(|c| 100.0 * c / grants.wall_s.max(1e-9));
    let granted = grants.ops as f64;
    Ok(WaitersReport {
        machine,
        opts: opts.clone(),
        leader_cpu_s: cpu,
        leader_cpu_pct: pct,
        targets: vec![Target::at_least(
            "waiters granted",
            Some(granted),
            opts.waiters as f64,
            None,
        )],
        grants,
    })
}

/// Registers `hosts` healthy pseudo-hosts in group `w`, 32 at a time.
async fn register(leader: std::net::SocketAddr, hosts: usize) -> Result<()> {
    let mut set = JoinSet::new();
    let clients = 32;
    for k in 0..clients {
        let mut client = HdClient::new(leader, &format!("bench-reg-{k}"))?;
        set.spawn(async move {
            for i in (k..hosts).step_by(clients) {
                client.register(&host(i), &["w".to_string()]).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.map_err(|e| anyhow!("a registering task failed: {e}"))??;
    }
    Ok(())
}

fn host(i: usize) -> String {
    format!("wait-h{i:04}")
}

/// Starts every waiter at once; returns the grant latencies and the number of failures.
async fn wait_all(
    leader: std::net::SocketAddr,
    opts: &WaitersOpts,
) -> Result<(Vec<Duration>, usize)> {
    let channels: Vec<Channel> = (0..opts.connections.max(1))
        .map(|_| hd_client::channel(&leader.to_string()))
        .collect::<Result<_>>()?;
    let barrier = Arc::new(Barrier::new(opts.waiters));
    let wait = Duration::from_secs(opts.wait_s);
    let mut set = JoinSet::new();
    for i in 0..opts.waiters {
        let mut client = CoordinatorClient::new(channels[i % channels.len()].clone());
        let barrier = barrier.clone();
        set.spawn(async move {
            let h = host(i);
            let write = |seq| {
                Some(WriteId {
                    client_id: format!("bench-waiter-{i}"),
                    seq,
                })
            };
            barrier.wait().await;
            let started = Instant::now();
            let req = AcquireSlotRequest {
                write: write(1),
                host: h.clone(),
                purpose: "deploy".into(),
                reason: "hd-bench waiters".into(),
                rollout: String::new(),
                wait_ms: wait.as_millis() as u64,
                canary: false,
                fence_draining: false,
            };
            let granted =
                tokio::time::timeout(wait + Duration::from_secs(10), client.acquire_slot(req))
                    .await
                    .map_err(|_| anyhow!("{h}: no answer within {wait:?}"))?
                    .map_err(|s| hd_client::status_error(&format!("acquire {h}"), &s))?;
            let latency = started.elapsed();
            let token = granted
                .into_inner()
                .slot
                .map(|s| s.token)
                .ok_or_else(|| anyhow!("{h}: the answer carries no slot"))?;
            let release = ReleaseSlotRequest {
                write: write(2),
                host: h.clone(),
                token,
            };
            tokio::time::timeout(hd_client::CALL_TIMEOUT, client.release_slot(release))
                .await
                .map_err(|_| anyhow!("{h}: release not answered"))?
                .map_err(|s| hd_client::status_error(&format!("release {h}"), &s))?;
            anyhow::Ok(latency)
        });
    }
    let mut samples = Vec::with_capacity(opts.waiters);
    let mut errors = 0;
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        match joined.map_err(|e| anyhow!("a waiter task failed: {e}"))? {
            Ok(latency) => samples.push(latency),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("hd-bench waiters: {errors} waiters failed; the first: {e:#}");
    }
    Ok((samples, errors))
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing paren are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the paren: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}
