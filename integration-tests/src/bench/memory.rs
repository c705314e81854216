//! `hd-bench memory`: the coordinators' resident memory with 10,000 registered hosts.
//!
//! A 3-node cluster is seeded with a few groups (`m0`, `m1`, ...; budget 10%), and 10,000
//! pseudo-hosts are registered over gRPC `Register` by concurrent clients at the leader, spread
//! round-robin over the groups. Once every follower has applied everything the leader committed
//! (and a moment has passed for snapshotting, which runs every 1,000 applied entries), the bench
//! reads `VmRSS` and `VmHWM` (peak) from `/proc/<pid>/status` of every node, plus the size of
//! each data dir. The readings before registration are reported too, so the per-host cost is
//! visible. The target is an RSS under 200 MB on every node.
//!
//! The registration rate is reported as a by-product: it is the write path with 32 clients and
//! a growing state machine (each snapshot serializes all hosts).

use super::hd_client::HdClient;
use super::machine::{self, Machine};
use super::report::Target;
use super::setup::{self, GroupSpec};
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Knobs of `hd-bench memory`.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryOpts {
    /// Hosts to register.
    pub hosts: usize,
    /// Groups they are spread over.
    pub groups: usize,
    /// Concurrent registering clients.
    pub clients: usize,
}

/// One node's readings.
#[derive(Debug, Clone, Serialize)]
pub struct NodeMemory {
    /// Raft id.
    pub id: u64,
    /// `leader` or `follower`.
    pub role: String,
    /// VmRSS before registration, KiB.
    pub rss_kib_before: Option<u64>,
    /// VmRSS after, KiB.
    pub rss_kib: Option<u64>,
    /// VmHWM (peak RSS) after, KiB.
    pub hwm_kib: Option<u64>,
    /// Bytes under the data dir after (apparent file sizes).
    pub data_dir_bytes: u64,
    /// Bytes allocated on disk under the data dir after (sparse files count less).
    pub data_dir_allocated_bytes: u64,
}

/// The whole `hd-bench memory` result.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    /// The machine.
    pub machine: Machine,
    /// The knobs.
    pub opts: MemoryOpts,
    /// Hosts the leader's status counts after registration.
    pub hosts_registered: u64,
    /// Time to register them all, s.
    pub register_s: f64,
    /// Registrations per second.
    pub register_per_s: f64,
    /// Every node.
    pub nodes: Vec<NodeMemory>,
    /// RSS < 200 MB.
    pub targets: Vec<Target>,
}

/// Runs the memory benchmark.
pub fn run(rt: &Runtime, opts: &MemoryOpts) -> Result<MemoryReport> {
    let machine = Machine::read();
    eprintln!("hd-bench memory: {}", machine.line());
    let groups: Vec<GroupSpec> = (0..opts.groups.max(1))
        .map(|i| GroupSpec {
            name: format!("m{i}"),
            max_unavailable: "10%".into(),
            allow_zero_available: false,
        })
        .collect();
    let (cluster, leader) = setup::start_cluster(&groups);
    let leader_addr = cluster.addr(leader);
    let rss =
        |id: u64| setup::node_pid(&cluster, id).and_then(|p| machine::proc_status_kib(p, "VmRSS"));
    let before: Vec<Option<u64>> = cluster.ids().into_iter().map(rss).collect();
    eprintln!(
        "hd-bench memory: registering {} hosts in {} groups with {} clients at node {leader}",
        opts.hosts,
        groups.len(),
        opts.clients
    );
    let nodes: Vec<_> = cluster
        .ids()
        .into_iter()
        .map(|id| (id, cluster.addr(id)))
        .collect();
    let (register_time, registered) = rt.block_on(async {
        let mut admin = HdClient::new(leader_addr, "bench-admin")?;
        setup::check_groups(&mut admin, &groups).await?;
        let started = Instant::now();
        register_all(leader_addr, opts, &groups).await?;
        let took = started.elapsed();
        let registered = admin.status().await?.hosts.map(|h| h.total).unwrap_or(0);
        setup::wait_caught_up(&nodes, leader_addr, Duration::from_secs(120)).await?;
        anyhow::Ok((took, registered))
    })?;
    if registered != opts.hosts as u64 {
        bail!(
            "the leader counts {registered} hosts; {} were registered",
            opts.hosts
        );
    }
    // Let any snapshot that the last entries triggered finish before reading.
    std::thread::sleep(Duration::from_secs(2));
    let after_leader = cluster.wait_leader(setup::ELECTION_TIMEOUT, None);
    let readings = cluster
        .ids()
        .into_iter()
        .zip(before)
        .map(|(id, rss_before)| {
            let pid = setup::node_pid(&cluster, id);
            NodeMemory {
                id,
                role: if id == after_leader {
                    "leader"
                } else {
                    "follower"
                }
                .into(),
                rss_kib_before: rss_before,
                rss_kib: pid.and_then(|p| machine::proc_status_kib(p, "VmRSS")),
                hwm_kib: pid.and_then(|p| machine::proc_status_kib(p, "VmHWM")),
                data_dir_bytes: dir_bytes(&cluster.data_dir(id)).0,
                data_dir_allocated_bytes: dir_bytes(&cluster.data_dir(id)).1,
            }
        })
        .collect::<Vec<_>>();
    drop(cluster);
    let max_rss_mb = readings
        .iter()
        .filter_map(|n| n.rss_kib)
        .max()
        .map(|k| k as f64 * 1024.0 / 1e6);
    let leader_rss_mb = readings
        .iter()
        .find(|n| n.role == "leader")
        .and_then(|n| n.rss_kib)
        .map(|k| k as f64 * 1024.0 / 1e6);
    let secs = register_time.as_secs_f64();
    Ok(MemoryReport {
        machine,
        opts: opts.clone(),
        hosts_registered: registered,
        register_s: secs,
        register_per_s: if secs > 0.0 {
            opts.hosts as f64 / secs
        } else {
            0.0
        },
        nodes: readings,
        targets: vec![
            Target::at_most("leader RSS, MB", leader_rss_mb, 200.0, None),
            Target::at_most("largest RSS of any node, MB", max_rss_mb, 200.0, None),
        ],
    })
}

/// Registers `opts.hosts` hosts with `opts.clients` concurrent clients; the first failure
/// fails the run.
async fn register_all(
    leader: std::net::SocketAddr,
    opts: &MemoryOpts,
    groups: &[GroupSpec],
) -> Result<()> {
    let clients = opts.clients.max(1);
    let mut set = JoinSet::new();
    for k in 0..clients {
        let mut client = HdClient::new(leader, &format!("bench-reg-{k}"))?;
        let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
        let hosts = opts.hosts;
        set.spawn(async move {
            for i in (k..hosts).step_by(clients) {
                let group = std::slice::from_ref(&names[i % names.len()]);
                client.register(&format!("mem-h{i:05}"), group).await?;
                if i > 0 && i % 1000 == 0 {
                    eprintln!("hd-bench memory: {i} hosts registered");
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.map_err(|e| anyhow!("a registering task failed: {e}"))??;
    }
    Ok(())
}

/// `(apparent, allocated)` bytes of the regular files under `dir`, bounded in depth.
fn dir_bytes(dir: &Path) -> (u64, u64) {
    fn walk(dir: &Path, depth: u32) -> (u64, u64) {
        if depth > 8 {
            return (0, 0);
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return (0, 0);
        };
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path(), depth + 1),
                Ok(m) => (m.len(), m.blocks() * 512),
                Err(_) => (0, 0),
            })
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
    }
    walk(dir, 0)
}
