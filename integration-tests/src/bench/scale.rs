//! `hd-bench scale`: how many heartbeating agents one 3-node cluster holds, and what the lock
//! costs under that load.
//!
//! Issue 10, Benchmarks, "Scale": N agents registered and heartbeating against a real 3-node
//! cluster (separate release processes, real sled): the leader's CPU and RSS, and the p99 of the
//! lock (acquire + release) from a separate client under that load; then the largest N with a
//! lock p99 under 50 ms.
//!
//! Each level of the ramp (`--agents 10000,20000,...`) adds agents to the same cluster:
//!
//! 1. the new agents are registered with `Register` by 32 concurrent clients at the leader
//!    (hosts `sc-h00000`..., round-robin over 10 groups of budget 10 %);
//! 2. each opens its own `Heartbeat` stream and sends a report every `--interval-ms` (1 s, the
//!    agents' own interval) at an offset of its own, so beats are spread over the interval; the
//!    streams share HTTP/2 connections (`--streams-per-connection`, under the server's 1,024
//!    concurrent streams per connection), as light agents. A stream that ends or fails is
//!    counted, never silently dropped;
//! 3. after a settle of 3 s, a measured window of `--window-s`: the leader's CPU (utime + stime
//!    from `/proc`, as a share of one core) and RSS, every answer the streams received, and
//!    sequential acquire + release pairs of a separate host `sc-lock` (group `sc-lock`, budget
//!    1, `allow_zero_available`) from a client with its own connection. `sc-lock` heartbeats
//!    too, on its own stream.
//! 4. the leader's `Status` must count every host reachable: `[liveness] unreachable_after` is
//!    10 s, so an agent whose beats did not arrive would show.
//!
//! The ramp stops at the first level whose lock p99 is 50 ms or more, whose streams failed, or
//! whose hosts went unreachable; "largest held" is the last level before it.
//!
//! The cluster is plaintext (`insecure`), like every other `hd-bench` cluster. Under mTLS an
//! agent's stream must come over a connection with that host's own certificate
//! (`service/auth.rs`), so N agents mean N TLS connections; streams sharing a few connections,
//! as here, are possible only without TLS. The per-connection TLS cost is therefore not in
//! these numbers.

use super::hd_client::{self, HdClient};
use super::machine::{self, Machine};
use super::report::Target;
use super::setup::{self, GroupSpec};
use super::stats::{self, Summary};
use crate::cluster::{Cluster, ClusterOpts};
use anyhow::{anyhow, bail, Result};
use hotdeploy_common::proto::coordinator_client::CoordinatorClient;
use hotdeploy_common::proto::HeartbeatRequest;
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Groups the agents are spread over.
const GROUPS: usize = 10;
/// The lock client's host and group.
const LOCK_HOST: &str = "sc-lock";
/// The lock p99 a level must stay under.
pub const LOCK_P99_LIMIT_MS: f64 = 50.0;
/// Registering clients.
const REGISTER_CLIENTS: usize = 32;
/// Streams opened at once.
const OPENING: usize = 256;

/// Knobs of `hd-bench scale`.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleOpts {
    /// The agent counts of the ramp, ascending.
    pub agents: Vec<usize>,
    /// Heartbeat streams per HTTP/2 connection.
    pub streams_per_connection: usize,
    /// Each agent's heartbeat interval, ms.
    pub interval_ms: u64,
    /// The measured window of each level, s.
    pub window_s: u64,
}

/// One level of the ramp.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleLevel {
    /// Agents registered and heartbeating.
    pub agents: usize,
    /// Time to register this level's new agents, s.
    pub register_s: f64,
    /// Streams open at the end of the window.
    pub streams_open: u64,
    /// Streams that ended or failed so far.
    pub streams_failed: u64,
    /// Heartbeat answers received per second in the window (≈ agents / interval when every
    /// beat is answered).
    pub answers_per_s: f64,
    /// The leader's CPU in the window, % of one core.
    pub leader_cpu_pct: f64,
    /// The leader's RSS at the end of the window, MiB.
    pub leader_rss_mib: Option<f64>,
    /// Hosts the leader counts unreachable at the end of the window.
    pub unreachable: u64,
    /// Acquire + release pairs of `sc-lock` in the window.
    pub lock: Summary,
    /// 1-minute load average before and after the level.
    pub load_before: f64,
    pub load_after: f64,
}

/// The whole `hd-bench scale` result.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub machine: Machine,
    pub opts: ScaleOpts,
    pub levels: Vec<ScaleLevel>,
    /// Why the ramp stopped before its last level, if it did.
    pub stopped: Option<String>,
    /// The largest level held with lock p99 under the limit and every stream up.
    pub largest_held: Option<usize>,
    pub targets: Vec<Target>,
}

/// What the streams have seen, across all of them.
#[derive(Default)]
struct Counters {
    open: AtomicU64,
    failed: AtomicU64,
    answers: AtomicU64,
}

/// Runs the scale benchmark.
pub fn run(rt: &Runtime, opts: &ScaleOpts) -> Result<ScaleReport> {
    let machine = Machine::read();
    eprintln!("hd-bench scale: {}", machine.line());
    if opts.agents.is_empty() || opts.agents.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--agents must be ascending counts, e.g. 10000,20000,30000,50000");
    }
    let mut groups: Vec<GroupSpec> = (0..GROUPS)
        .map(|i| GroupSpec {
            name: format!("sc{i}"),
            max_unavailable: "10%".into(),
            allow_zero_available: false,
        })
        .collect();
    groups.push(GroupSpec {
        name: LOCK_HOST.into(),
        max_unavailable: "1".into(),
        allow_zero_available: true,
    });
    let cluster = start_cluster(&groups, opts.interval_ms);
    let leader = cluster.wait_leader(setup::ELECTION_TIMEOUT, None);
    let leader_addr = cluster.addr(leader);
    let pid = setup::node_pid(&cluster, leader)
        .ok_or_else(|| anyhow!("cannot find the leader's process"))?;
    let result = rt.block_on(ramp(leader_addr, pid, opts, &groups));
    drop(cluster);
    let (levels, stopped) = result?;
    let held = levels
        .iter()
        .take_while(|l| held(l).is_none())
        .last()
        .map(|l| l.agents);
    let at_10k = levels.iter().find(|l| l.agents >= 10_000);
    Ok(ScaleReport {
        machine,
        opts: opts.clone(),
        stopped,
        largest_held: held,
        targets: vec![
            Target::at_most(
                "lock p99 with 10,000 agents, ms",
                at_10k.map(|l| l.lock.p99_ms),
                LOCK_P99_LIMIT_MS,
                None,
            ),
            Target::at_least(
                "agents held with lock p99 < 50 ms",
                held.map(|n| n as f64),
                50_000.0,
                None,
            ),
        ],
        levels,
    })
}

/// Why `level` does not count as held, if it does not.
fn held(level: &ScaleLevel) -> Option<String> {
    if level.lock.p99_ms >= LOCK_P99_LIMIT_MS || level.lock.errors > 0 {
        return Some(format!(
            "lock p99 {:.1} ms ({} errors) at {} agents",
            level.lock.p99_ms, level.lock.errors, level.agents
        ));
    }
    if level.streams_failed > 0 || level.streams_open < level.agents as u64 {
        return Some(format!(
            "{} of {} streams open, {} failed",
            level.streams_open, level.agents, level.streams_failed
        ));
    }
    if level.unreachable > 0 {
        return Some(format!("{} hosts unreachable", level.unreachable));
    }
    None
}

fn start_cluster(groups: &[GroupSpec], interval_ms: u64) -> Cluster {
    let opts = ClusterOpts {
        heartbeat_interval: format!("{interval_ms}ms"),
        unreachable_after: "10s".into(),
        ..ClusterOpts::default()
    };
    setup::start_cluster_with(groups, opts)
}

/// Every level, in order; stops at the first that is not held.
async fn ramp(
    leader: SocketAddr,
    pid: u32,
    opts: &ScaleOpts,
    groups: &[GroupSpec],
) -> Result<(Vec<ScaleLevel>, Option<String>)> {
    let mut admin = HdClient::new(leader, "sc-admin")?;
    setup::check_groups(&mut admin, groups).await?;
    let (stop_tx, stop) = watch::channel(false);
    let counters = Arc::new(Counters::default());
    let interval = Duration::from_millis(opts.interval_ms.max(10));
    let mut tasks = JoinSet::new();
    // The lock host heartbeats like every agent, on its own connection.
    admin.register(LOCK_HOST, &[LOCK_HOST.to_string()]).await?;
    let lock_channel = hd_client::channel(&leader.to_string())?;
    tasks.spawn(open_stream(&lock_channel, LOCK_HOST, interval, &counters, &stop).await?);
    let mut levels = Vec::new();
    let mut stopped = None;
    let mut have = 0;
    let mut channel = hd_client::channel(&leader.to_string())?;
    let mut on_channel = 0;
    for &target in &opts.agents {
        let load_before = machine::load1();
        eprintln!(
            "hd-bench scale: {target} agents: registering {}",
            target - have
        );
        let started = Instant::now();
        register(leader, have, target).await?;
        let register_s = started.elapsed().as_secs_f64();
        eprintln!("hd-bench scale: {target} agents: opening their heartbeat streams");
        let mut opening = JoinSet::new();
        for i in have..target {
            if on_channel >= opts.streams_per_connection.max(1) {
                channel = hd_client::channel(&leader.to_string())?;
                on_channel = 0;
            }
            on_channel += 1;
            let (ch, counters, stop) = (channel.clone(), counters.clone(), stop.clone());
            opening
                .spawn(async move { open_stream(&ch, &host(i), interval, &counters, &stop).await });
            while opening.len() >= OPENING {
                absorb(&mut opening, &mut tasks).await?;
            }
        }
        while !opening.is_empty() {
            absorb(&mut opening, &mut tasks).await?;
        }
        have = target;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let level = measure(leader, pid, target, register_s, opts, &counters, &mut admin).await?;
        let level = ScaleLevel {
            load_before,
            load_after: machine::load1(),
            ..level
        };
        eprintln!(
            "hd-bench scale: {target} agents: lock p99 {:.1} ms, leader CPU {:.0} %, RSS {:.1} \
             MiB, {:.0} answers/s, {} unreachable, {} streams failed",
            level.lock.p99_ms,
            level.leader_cpu_pct,
            level.leader_rss_mib.unwrap_or(0.0),
            level.answers_per_s,
            level.unreachable,
            level.streams_failed
        );
        let why = held(&level);
        levels.push(level);
        if let Some(why) = why {
            stopped = Some(why);
            break;
        }
    }
    let _ = stop_tx.send(true);
    // Every stream task ends on the stop signal; bounded anyway.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok((levels, stopped))
}

/// A stream's beating task, to be spawned.
type StreamTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Spawns the task of one stream that finished opening.
async fn absorb(opening: &mut JoinSet<Result<StreamTask>>, tasks: &mut JoinSet<()>) -> Result<()> {
    if let Some(joined) = opening.join_next().await {
        tasks.spawn(joined.map_err(|e| anyhow!("opening a stream: {e}"))??);
    }
    Ok(())
}

fn host(i: usize) -> String {
    format!("sc-h{i:05}")
}

/// Registers hosts `from..to` with [`REGISTER_CLIENTS`] concurrent clients.
async fn register(leader: SocketAddr, from: usize, to: usize) -> Result<()> {
    let mut set = JoinSet::new();
    for k in 0..REGISTER_CLIENTS {
        let mut client = HdClient::new(leader, &format!("sc-reg-{from}-{k}"))?;
        set.spawn(async move {
            for i in (from + k..to).step_by(REGISTER_CLIENTS) {
                client
                    .register(&host(i), &[format!("sc{}", i % GROUPS)])
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.map_err(|e| anyhow!("a registering task failed: {e}"))??;
    }
    Ok(())
}

/// Opens `host`'s heartbeat stream on `channel`, waits for its first answer, and returns the
/// task that beats every `interval` and reads the answers until `stop`.
async fn open_stream(
    channel: &Channel,
    host: &str,
    interval: Duration,
    counters: &Arc<Counters>,
    stop: &watch::Receiver<bool>,
) -> Result<StreamTask> {
    let beat = HeartbeatRequest {
        host: host.to_string(),
        report: Some(hd_client::healthy_report()),
    };
    let (tx, rx) = mpsc::channel(4);
    tx.try_send(beat.clone())
        .map_err(|_| anyhow!("{host}: the beat queue is closed"))?;
    let mut client = CoordinatorClient::new(channel.clone());
    let opened = tokio::time::timeout(
        hd_client::CALL_TIMEOUT,
        client.heartbeat(ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| anyhow!("{host}: heartbeat stream not opened within 10 s"))?
    .map_err(|s| hd_client::status_error(&format!("heartbeat {host}"), &s))?;
    let mut answers = opened.into_inner();
    match tokio::time::timeout(hd_client::CALL_TIMEOUT, answers.message()).await {
        Ok(Ok(Some(_))) => {}
        Ok(Ok(None)) => bail!("{host}: the heartbeat stream ended before its first answer"),
        Ok(Err(s)) => return Err(hd_client::status_error(&format!("heartbeat {host}"), &s)),
        Err(_) => bail!("{host}: no first heartbeat answer within 10 s"),
    }
    counters.open.fetch_add(1, Ordering::Relaxed);
    counters.answers.fetch_add(1, Ordering::Relaxed);
    // Spread the beats over the interval: an offset from the host's name.
    let offset = host
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let offset = Duration::from_millis(offset % interval.as_millis().max(1) as u64);
    let (counters, mut stop) = (counters.clone(), stop.clone());
    Ok(Box::pin(async move {
        let mut tick = tokio::time::interval_at(Instant::now() + offset, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // A full queue drops the beat, as the agent does; the next carries on.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(beat.clone()) {
                        break;
                    }
                }
                m = answers.message() => match m {
                    Ok(Some(_)) => {
                        counters.answers.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) | Err(_) => break,
                },
                _ = stop.changed() => {
                    counters.open.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        counters.open.fetch_sub(1, Ordering::Relaxed);
        counters.failed.fetch_add(1, Ordering::Relaxed);
    }))
}

/// The measured window of one level.
async fn measure(
    leader: SocketAddr,
    pid: u32,
    agents: usize,
    register_s: f64,
    opts: &ScaleOpts,
    counters: &Counters,
    admin: &mut HdClient,
) -> Result<ScaleLevel> {
    let window = Duration::from_secs(opts.window_s.max(1));
    // A client id per level: each client numbers its writes from 1.
    let mut lock = HdClient::new(leader, &format!("sc-lock-{agents}"))?.with_acquire_wait(5000);
    // Warm-up: the connection and the first pairs.
    for _ in 0..5 {
        lock.pair(LOCK_HOST).await?;
    }
    let cpu_before = super::costs::sample(pid).cpu_ticks;
    let answers_before = counters.answers.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut errors = 0;
    while started.elapsed() < window {
        let t = Instant::now();
        match lock.pair(LOCK_HOST).await {
            Ok(()) => samples.push(t.elapsed()),
            Err(e) => {
                errors += 1;
                eprintln!("hd-bench scale: lock pair failed: {e:#}");
            }
        }
    }
    let wall = started.elapsed();
    let cpu_after = super::costs::sample(pid).cpu_ticks;
    let answers = counters.answers.load(Ordering::Relaxed) - answers_before;
    let status = admin.status().await?;
    Ok(ScaleLevel {
        agents,
        register_s,
        streams_open: counters.open.load(Ordering::Relaxed).saturating_sub(1),
        streams_failed: counters.failed.load(Ordering::Relaxed),
        answers_per_s: answers as f64 / wall.as_secs_f64(),
        // /proc times are in clock ticks of 10 ms.
        leader_cpu_pct: (cpu_after - cpu_before) as f64 / wall.as_secs_f64(),
        leader_rss_mib: machine::proc_status_kib(pid, "VmRSS").map(|k| k as f64 / 1024.0),
        unreachable: status.hosts.map(|h| h.unreachable).unwrap_or(0),
        lock: stats::summarize(samples, errors, wall),
        load_before: 0.0,
        load_after: 0.0,
    })
}
