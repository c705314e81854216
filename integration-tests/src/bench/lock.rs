//! `hd-bench lock`: the lock round trip, ours against etcd 3.4's, in one run.
//!
//! **Ours.** A 3-node cluster ([`super::setup`]) seeded with one group per client (`b00`,
//! `b01`, ...; budget 1, `allow_zero_available = true`), and one pseudo-host per group
//! registered over gRPC `Register` (healthy, in rotation). Groups are separate so that the 32
//! concurrent clients never contend for budget: each measures the replicated write path, not
//! lock waiting. Every client has its own connection to the leader (found with `hotdeployctl
//! status -o json`) and its own `client_id`; one measured operation is `AcquireSlot` (with
//! `wait_ms` 5 s by default, as agents call it: the leader queues acquires first come, first
//! served, so a concurrent acquire that may not wait is refused while an earlier one commits)
//! then `ReleaseSlot` with the granted token, two raft writes, each acknowledged after the
//! leader and one follower made it durable (`fdatasync`) and the leader applied it.
//!
//! **etcd.** 3 members on their own loopback IPs ([`super::etcd_cluster`]), default fsync. Each
//! client has its own connection to the etcd leader (found with `Maintenance.Status`), grants
//! one lease, and measures `Lock{name, lease}` then `Unlock{key}` on a lock name of its own,
//! through etcd's v3 concurrency API (the server-side `v3lock` service).
//!
//! Each system is started, measured with 1 client and then N clients, and torn down before the
//! other starts, so they never share the CPUs. The report holds both systems' summaries side by
//! side, the ratios ours/etcd (p50 with 1 client; throughput with N clients), and the targets of
//! issue 9 at equal durability (1-client p50 at most 0.5x etcd's; N-client throughput at least
//! 2x etcd's), with parity as a second line.

use super::costs::{self, NodeCost};
use super::driver::{self, Pairer};
use super::etcd_client::EtcdLocker;
use super::etcd_cluster::{self, EtcdCluster};
use super::hd_client::HdClient;
use super::machine::{self, Machine};
use super::report::Target;
use super::setup::{self, GroupSpec};
use super::stats::{ratio, Summary};
use super::syscalls::{SyscallWindow, Traced, Tracing};
use anyhow::{Context, Result};
use serde::Serialize;
use std::time::Duration;
use tokio::runtime::Runtime;

/// The etcd lease TTL, seconds: far longer than a run, since the bench sends no keep-alives.
pub const ETCD_LEASE_TTL_S: i64 = 600;

/// Knobs of `hd-bench lock`.
#[derive(Debug, Clone, Serialize)]
pub struct LockOpts {
    /// Measured pairs with 1 client.
    pub ops: usize,
    /// Concurrent clients in the second case.
    pub clients: usize,
    /// Measured pairs per client in the N-client case.
    pub per_client: usize,
    /// Warm-up pairs per client, not measured.
    pub warmup: usize,
    /// Measure only our cluster.
    pub skip_etcd: bool,
    /// `AcquireSlot.wait_ms` of our clients.
    pub acquire_wait_ms: u64,
    /// Also measure N clients doing two `Register` writes per operation (our write path
    /// without the acquire queue).
    pub diagnose: bool,
    /// Also count every node's sync syscalls per committed entry under strace, after the
    /// measured phases (`--syscalls`).
    pub syscalls: bool,
    /// Lock pairs in each syscall window (1 client, then N clients).
    pub syscall_pairs: usize,
}

/// One system's results.
#[derive(Debug, Clone, Serialize)]
pub struct SystemRun {
    /// `hotdeploy` or `etcd`.
    pub system: String,
    /// 1 client.
    pub one_client: Summary,
    /// `clients` concurrent clients.
    pub many_clients: Summary,
    /// How many clients `many_clients` used.
    pub clients: usize,
    /// VmRSS of each node after the run, KiB.
    pub rss_kib: Vec<Option<u64>>,
    /// With `--diagnose` (ours only): N clients, two `Register` writes per operation.
    pub register_pairs: Option<Summary>,
    /// With `--syscalls`: sync calls per committed entry, 1 client then N clients.
    pub syscalls: Vec<SyscallWindow>,
    /// Context switches and CPU per committed entry, each node, during the 1-client phase
    /// (warm-up included).
    pub costs_one_client: Vec<NodeCost>,
    /// The same during the N-client phase.
    pub costs_many_clients: Vec<NodeCost>,
}

/// The whole `hd-bench lock` result.
#[derive(Debug, Clone, Serialize)]
pub struct LockReport {
    /// The machine.
    pub machine: Machine,
    /// The knobs.
    pub opts: LockOpts,
    /// Ours.
    pub hotdeploy: SystemRun,
    /// etcd's, unless skipped.
    pub etcd: Option<SystemRun>,
    /// ours/etcd p50 latency with 1 client (lower is better).
    pub p50_ratio_one_client: Option<f64>,
    /// ours/etcd throughput with N clients (higher is better).
    pub throughput_ratio_many_clients: Option<f64>,
    /// The targets and whether they were met.
    pub targets: Vec<Target>,
}

/// Runs the lock benchmark.
pub fn run(rt: &Runtime, opts: &LockOpts) -> Result<LockReport> {
    let machine = Machine::read();
    eprintln!("hd-bench lock: {}", machine.line());
    let hotdeploy = run_hotdeploy(rt, opts).context("benchmarking hotdeploy")?;
    let etcd = if opts.skip_etcd {
        None
    } else {
        Some(run_etcd(rt, opts).context("benchmarking etcd")?)
    };
    let p50_ratio = etcd
        .as_ref()
        .and_then(|e| ratio(hotdeploy.one_client.p50_ms, e.one_client.p50_ms));
    let tput_ratio = etcd
        .as_ref()
        .and_then(|e| ratio(hotdeploy.many_clients.per_s, e.many_clients.per_s));
    // Issue 9's targets, at equal durability (both sides fdatasync every Ready that must be
    // durable: `--syscalls` shows it). Parity (1.0) is shown as the secondary goal.
    let targets = vec![
        Target::at_most("1-client p50 latency, ours/etcd", p50_ratio, 0.5, None),
        Target::at_least(
            &format!("{}-client throughput, ours/etcd", opts.clients),
            tput_ratio,
            2.0,
            None,
        ),
        Target::at_most(
            "1-client p50 latency, ours/etcd (parity)",
            p50_ratio,
            1.0,
            None,
        ),
        Target::at_least(
            &format!("{}-client throughput, ours/etcd (parity)", opts.clients),
            tput_ratio,
            1.0,
            None,
        ),
    ];
    Ok(LockReport {
        machine,
        opts: opts.clone(),
        hotdeploy,
        etcd,
        p50_ratio_one_client: p50_ratio,
        throughput_ratio_many_clients: tput_ratio,
        targets,
    })
}

fn groups(n: usize) -> Vec<GroupSpec> {
    (0..n)
        .map(|i| GroupSpec {
            name: format!("b{i:02}"),
            max_unavailable: "1".into(),
            allow_zero_available: true,
        })
        .collect()
}

fn host(i: usize) -> String {
    format!("bench-h{i:02}")
}

fn run_hotdeploy(rt: &Runtime, opts: &LockOpts) -> Result<SystemRun> {
    let groups = groups(opts.clients.max(1));
    eprintln!("hd-bench lock: starting 3 coordinators");
    let (cluster, leader) = setup::start_cluster(&groups);
    let leader_addr = cluster.addr(leader);
    eprintln!("hd-bench lock: hotdeploy leader is node {leader} at {leader_addr}");
    let procs: Vec<(String, String, u32)> = cluster
        .ids()
        .into_iter()
        .filter_map(|id| {
            let role = if id == leader { "leader" } else { "follower" };
            Some((format!("node {id}"), role.to_string(), cluster.pid(id)?))
        })
        .collect();
    let (one, many, register_pairs, costs_one, costs_many) = rt.block_on(async {
        let mut admin = HdClient::new(leader_addr, "bench-admin")?;
        setup::check_groups(&mut admin, &groups).await?;
        for (i, g) in groups.iter().enumerate() {
            admin
                .register(&host(i), std::slice::from_ref(&g.name))
                .await?;
        }
        eprintln!("hd-bench lock: hotdeploy, 1 client, {} pairs", opts.ops);
        let single = vec![Pairer::Hotdeploy {
            client: HdClient::new(leader_addr, "bench-1c-0")?
                .with_acquire_wait(opts.acquire_wait_ms),
            host: host(0),
        }];
        let before = admin.status().await?.commit_index;
        let window = costs::Window::start(procs.clone());
        let (one, _) = driver::run(single, opts.warmup, opts.ops).await?;
        let costs_one = window.finish(admin.status().await?.commit_index - before);
        eprintln!(
            "hd-bench lock: hotdeploy, {} clients, {} pairs each",
            opts.clients, opts.per_client
        );
        let mut clients = Vec::with_capacity(opts.clients);
        for i in 0..opts.clients {
            clients.push(Pairer::Hotdeploy {
                client: HdClient::new(leader_addr, &format!("bench-{}c-{i}", opts.clients))?
                    .with_acquire_wait(opts.acquire_wait_ms),
                host: host(i),
            });
        }
        let before = admin.status().await?.commit_index;
        let window = costs::Window::start(procs.clone());
        let (many, _) = driver::run(clients, opts.warmup, opts.per_client).await?;
        let costs_many = window.finish(admin.status().await?.commit_index - before);
        let register_pairs = if opts.diagnose {
            eprintln!(
                "hd-bench lock: diagnostic: hotdeploy, {} clients, 2 x Register each",
                opts.clients
            );
            let mut clients = Vec::with_capacity(opts.clients);
            for (i, g) in groups.iter().enumerate().take(opts.clients) {
                clients.push(Pairer::HotdeployRegisters {
                    client: HdClient::new(leader_addr, &format!("bench-reg-{i}"))?,
                    host: host(i),
                    group: g.name.clone(),
                });
            }
            Some(driver::run(clients, opts.warmup, opts.per_client).await?.0)
        } else {
            None
        };
        anyhow::Ok((one, many, register_pairs, costs_one, costs_many))
    })?;
    let syscalls = if opts.syscalls {
        // The clients' lazy channels need the runtime's context.
        let _runtime = rt.enter();
        let nodes = || -> Result<Vec<Traced>> {
            cluster
                .ids()
                .into_iter()
                .map(|id| {
                    let pid = setup::node_pid(&cluster, id)
                        .with_context(|| format!("no pid for node {id}"))?;
                    Ok(Traced {
                        node: format!("node {id}"),
                        role: if id == leader { "leader" } else { "follower" }.into(),
                        pid,
                    })
                })
                .collect()
        };
        let mut windows = Vec::new();
        for clients in [1, opts.clients] {
            let per_client = (opts.syscall_pairs / clients).max(10);
            eprintln!(
                "hd-bench lock: syscalls: hotdeploy, {clients} client(s), {per_client} pairs each, under strace"
            );
            let pairers = (0..clients)
                .map(|i| {
                    Ok(Pairer::Hotdeploy {
                        client: HdClient::new(leader_addr, &format!("bench-sys{clients}-{i}"))?
                            .with_acquire_wait(opts.acquire_wait_ms),
                        host: host(i),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let mut admin = HdClient::new(leader_addr, "bench-sys-admin")?;
            let before = rt.block_on(admin.status())?.commit_index;
            let tracing = Tracing::attach(nodes()?, cluster.dir())?;
            rt.block_on(driver::run(pairers, 0, per_client))?;
            let after = rt.block_on(admin.status())?.commit_index;
            windows.push(tracing.finish(
                "hotdeploy",
                clients,
                clients * per_client,
                after.saturating_sub(before),
            )?);
        }
        windows
    } else {
        Vec::new()
    };
    let after = cluster.wait_leader(setup::ELECTION_TIMEOUT, None);
    if after != leader {
        eprintln!(
            "hd-bench lock: WARNING: the leader changed during the run ({leader} -> {after})"
        );
    }
    let rss_kib = cluster
        .ids()
        .into_iter()
        .map(|id| setup::node_pid(&cluster, id).and_then(|p| machine::proc_status_kib(p, "VmRSS")))
        .collect();
    drop(cluster);
    Ok(SystemRun {
        system: "hotdeploy".into(),
        one_client: one,
        many_clients: many,
        clients: opts.clients,
        rss_kib,
        register_pairs,
        syscalls,
        costs_one_client: costs_one,
        costs_many_clients: costs_many,
    })
}

fn run_etcd(rt: &Runtime, opts: &LockOpts) -> Result<SystemRun> {
    eprintln!("hd-bench lock: starting 3 etcd members");
    let cluster = EtcdCluster::start(3)?;
    let (one, many, costs_one, costs_many) = rt.block_on(async {
        let leader = cluster.leader(Duration::from_secs(30)).await?;
        eprintln!("hd-bench lock: etcd leader serves clients at {leader}");
        let procs: Vec<(String, String, u32)> = cluster
            .client_addrs()
            .into_iter()
            .zip(cluster.pids())
            .enumerate()
            .map(|(i, (addr, pid))| {
                let role = if addr == leader { "leader" } else { "follower" };
                (format!("e{}", i + 1), role.to_string(), pid)
            })
            .collect();
        let mut admin = super::etcd_client::EtcdClient::new(leader)?;
        eprintln!("hd-bench lock: etcd, 1 client, {} pairs", opts.ops);
        let single = vec![Pairer::Etcd(
            EtcdLocker::new(leader, "bench-lock-00", ETCD_LEASE_TTL_S).await?,
        )];
        let before = admin.raft_index().await?;
        let window = costs::Window::start(procs.clone());
        let (one, _) = driver::run(single, opts.warmup, opts.ops).await?;
        let costs_one = window.finish(admin.raft_index().await? - before);
        eprintln!(
            "hd-bench lock: etcd, {} clients, {} pairs each",
            opts.clients, opts.per_client
        );
        let mut clients = Vec::with_capacity(opts.clients);
        for i in 0..opts.clients {
            let name = format!("bench-lock-{i:02}");
            clients.push(Pairer::Etcd(
                EtcdLocker::new(leader, &name, ETCD_LEASE_TTL_S).await?,
            ));
        }
        let before = admin.raft_index().await?;
        let window = costs::Window::start(procs.clone());
        let (many, _) = driver::run(clients, opts.warmup, opts.per_client).await?;
        let costs_many = window.finish(admin.raft_index().await? - before);
        anyhow::Ok((one, many, costs_one, costs_many))
    })?;
    let syscalls = if opts.syscalls {
        etcd_syscalls(rt, opts, &cluster)?
    } else {
        Vec::new()
    };
    let rss_kib = etcd_cluster::member_rss_kib(&cluster);
    drop(cluster);
    Ok(SystemRun {
        system: "etcd".into(),
        one_client: one,
        many_clients: many,
        clients: opts.clients,
        rss_kib,
        register_pairs: None,
        syscalls,
        costs_one_client: costs_one,
        costs_many_clients: costs_many,
    })
}

/// The `--syscalls` windows on etcd: the same pairs as ours, under strace.
fn etcd_syscalls(
    rt: &Runtime,
    opts: &LockOpts,
    cluster: &EtcdCluster,
) -> Result<Vec<SyscallWindow>> {
    let _runtime = rt.enter();
    let leader = rt.block_on(cluster.leader(Duration::from_secs(30)))?;
    let nodes = || -> Vec<Traced> {
        cluster
            .client_addrs()
            .into_iter()
            .zip(cluster.pids())
            .enumerate()
            .map(|(i, (addr, pid))| Traced {
                node: format!("e{}", i + 1),
                role: if addr == leader { "leader" } else { "follower" }.into(),
                pid,
            })
            .collect()
    };
    let mut windows = Vec::new();
    for clients in [1, opts.clients] {
        let per_client = (opts.syscall_pairs / clients).max(10);
        eprintln!(
            "hd-bench lock: syscalls: etcd, {clients} client(s), {per_client} pairs each, under strace"
        );
        let pairers = rt.block_on(async {
            let mut v = Vec::with_capacity(clients);
            for i in 0..clients {
                let name = format!("bench-sys-{clients}-{i:02}");
                v.push(Pairer::Etcd(
                    EtcdLocker::new(leader, &name, ETCD_LEASE_TTL_S).await?,
                ));
            }
            anyhow::Ok(v)
        })?;
        let mut admin = super::etcd_client::EtcdClient::new(leader)?;
        let before = rt.block_on(admin.raft_index())?;
        let tracing = Tracing::attach(nodes(), cluster.dir())?;
        rt.block_on(driver::run(pairers, 0, per_client))?;
        let after = rt.block_on(admin.raft_index())?;
        windows.push(tracing.finish(
            "etcd",
            clients,
            clients * per_client,
            after.saturating_sub(before),
        )?);
    }
    Ok(windows)
}
