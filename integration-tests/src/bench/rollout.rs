//! `hd-bench rollout`: a rollout's time against its physical floor (issue 10, Benchmarks).
//!
//! N simulated agents ([`super::sim_agent`]: the agent crate's real link, rollout driver and
//! deploy engine, on a host whose restart takes exactly T and whose verify passes after exactly
//! V, with a rotation that completes at once) register in one group of a real 3-node cluster
//! whose `max_unavailable` is B. Then `hotdeployctl rollout start` rolls release `v2` over the
//! group (no canary, batch = the budget), and the bench polls the rollout's status
//! (`GetRollout`, over gRPC from this process) until it is `completed`.
//!
//! No host can be faster than its restart plus its verify, and no more than B hosts are out at
//! once, so no rollout can take less than the floor ceil(N/B) × (T + V) ([`floor`]). What the
//! bench reports is the measured time ÷ the floor: the cost of everything else (the lock's raft
//! round trips, the fenced phase reports, the step reports, the coordinators' admission of the
//! next hosts, the heartbeat stream that carries it). The measured time runs from just before
//! `rollout start` is spawned to the first status poll (every [`POLL`]) that sees it completed,
//! so it includes up to one poll interval and one `hotdeployctl` process start. The poll is a
//! gRPC call from this process rather than a `hotdeployctl rollout status` process: twenty
//! process starts a second, each printing and parsing a thousand steps, took about a tenth of
//! the machine's CPU from the agents and coordinators being measured. The time at which the
//! last host's verify passed is reported beside it.
//!
//! The bench also reports what the rollout cost the log ([`log_entries`]): committed entries
//! per host, and the proposals by command kind, read from the members' `/metrics` before
//! `rollout start` and once it is completed.
//!
//! Every host must be on `v2` at the end, or the run is an error, not a number.

use super::hd_client;
use super::log_entries::{self, Tally};
use super::machine::{self, Machine};
use super::report::Target;
use super::rollout_timeline::{self, Timeline};
use super::setup::{self, GroupSpec};
use super::sim_agent::SimAgent;
use super::sim_host::Costs;
use crate::cluster::Cluster;
use anyhow::{bail, Context, Result};
use hotdeploy_common::proto::coordinator_client::CoordinatorClient;
use hotdeploy_common::proto::{GetRolloutRequest, RolloutInfo, RolloutState};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::time::Instant;

/// How often the rollout's status is polled.
pub const POLL: Duration = Duration::from_millis(50);
/// How long the fleet may take to register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(300);
const GROUP: &str = "web";
const ROLLOUT_ID: &str = "bench-rollout";
const FROM: &str = "v1";
const TO: &str = "v2";
const SHA: &str = "5f3c9d1e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d";
/// The target for measured ÷ floor.
pub const TARGET_RATIO: f64 = 1.15;

/// Knobs of `hd-bench rollout`.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutOpts {
    /// Simulated agents (N).
    pub agents: usize,
    /// The group's `max_unavailable` (B).
    pub budget: usize,
    /// A restart's cost (T), ms.
    pub restart_ms: u64,
    /// A verify's cost, ms.
    pub verify_ms: u64,
    /// How long the rollout may take, s.
    pub timeout_s: u64,
}

/// The whole `hd-bench rollout` result.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutReport {
    /// The machine (load when the run started).
    pub machine: Machine,
    /// The 1-minute load when the rollout ended.
    pub load1_after: f64,
    /// The knobs.
    pub opts: RolloutOpts,
    /// How long the fleet took to start and register, s.
    pub register_s: f64,
    /// ceil(N/B) × (T + V), s.
    pub floor_s: f64,
    /// From `rollout start` to the poll that saw it completed, s.
    pub measured_s: f64,
    /// From `rollout start` to the last host's passed verify, s.
    pub last_verify_s: f64,
    /// measured ÷ floor.
    pub ratio: f64,
    /// last verify ÷ floor.
    pub last_verify_ratio: f64,
    /// Where the time went, from the rollout's phase times.
    pub timeline: Timeline,
    /// Raft entries per host, and the proposals by kind.
    pub entries: log_entries::PerHost,
    /// The verdicts.
    pub targets: Vec<Target>,
}

/// The physical floor of a rollout of `agents` hosts, `budget` at a time, each out for
/// `restart + verify`: ceil(agents / budget) waves.
pub fn floor(agents: usize, budget: usize, restart: Duration, verify: Duration) -> Duration {
    let waves = u32::try_from(agents.div_ceil(budget.max(1))).unwrap_or(u32::MAX);
    (restart + verify) * waves
}

/// Runs the benchmark.
pub fn run(rt: &Runtime, opts: &RolloutOpts) -> Result<RolloutReport> {
    if opts.agents < 2 || opts.budget == 0 || opts.budget >= opts.agents {
        bail!("need --agents >= 2 and 0 < --budget < --agents (a group keeps one host available)");
    }
    let machine = Machine::read();
    let costs = Costs {
        restart: Duration::from_millis(opts.restart_ms),
        verify: Duration::from_millis(opts.verify_ms),
    };
    eprintln!(
        "starting a 3-node cluster (group {GROUP}, max_unavailable {})",
        opts.budget
    );
    let (cluster, _leader) = setup::start_cluster(&[GroupSpec {
        name: GROUP.into(),
        max_unavailable: opts.budget.to_string(),
        allow_zero_available: false,
    }]);
    let coordinators = cluster.coordinator_addrs();

    eprintln!("starting {} simulated agents", opts.agents);
    let started = Instant::now();
    let mut agents = Vec::with_capacity(opts.agents);
    let result = (|| -> Result<RolloutReport> {
        {
            let _guard = rt.enter();
            for i in 0..opts.agents {
                let host = format!("sim-{i:05}");
                agents.push(SimAgent::start(&host, GROUP, FROM, &coordinators, costs)?);
            }
        }
        wait_registered(&cluster, opts.agents)?;
        let register_s = started.elapsed().as_secs_f64();
        eprintln!(
            "{} hosts registered in {register_s:.1} s; rolling out",
            opts.agents
        );

        let log_before = Tally::read(&cluster)?;
        let t0 = Instant::now();
        start_rollout(&cluster)?;
        let done = rt.block_on(wait_completed(
            &coordinators,
            Duration::from_secs(opts.timeout_s),
        ))?;
        let measured = t0.elapsed();
        let load1_after = machine::load1();
        let entries = Tally::read(&cluster)?.per_host_since(&log_before, opts.agents);

        let mut last_verify = Duration::ZERO;
        for a in &agents {
            if a.host.live().as_deref() != Some(TO) {
                bail!("rollout completed but a host runs {:?}", a.host.live());
            }
            let at = a
                .host
                .verified_at()
                .context("a host on v2 never verified")?;
            last_verify = last_verify.max(at.saturating_duration_since(t0));
        }
        let floor = floor(opts.agents, opts.budget, costs.restart, costs.verify);
        let ratio = measured.as_secs_f64() / floor.as_secs_f64();
        let last_verify_ratio = last_verify.as_secs_f64() / floor.as_secs_f64();
        Ok(RolloutReport {
            machine: machine.clone(),
            load1_after,
            opts: opts.clone(),
            register_s,
            floor_s: floor.as_secs_f64(),
            measured_s: measured.as_secs_f64(),
            last_verify_s: last_verify.as_secs_f64(),
            ratio,
            last_verify_ratio,
            timeline: rollout_timeline::of(&done, opts.budget),
            entries,
            targets: vec![Target::at_most(
                "rollout time / floor",
                Some(ratio),
                TARGET_RATIO,
                None,
            )],
        })
    })();
    eprintln!("stopping the agents");
    rt.block_on(async {
        for a in agents {
            a.stop().await;
        }
    });
    drop(cluster);
    result
}

/// Waits until `n` hosts are registered.
fn wait_registered(cluster: &Cluster, n: usize) -> Result<()> {
    let deadline = Instant::now() + REGISTER_TIMEOUT;
    loop {
        let hosts = cluster
            .try_ctl_json(&["hosts", "list"])
            .map_err(anyhow::Error::msg)?;
        let count = hosts.as_array().map_or(0, Vec::len);
        if count >= n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("only {count} of {n} hosts registered within {REGISTER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `hotdeployctl rollout start web --release v2 ...` (no canary; the batch is the budget).
fn start_rollout(cluster: &Cluster) -> Result<()> {
    let url = format!("file:///releases/{TO}.tar.gz");
    let out = cluster.ctl(&[
        "rollout",
        "start",
        GROUP,
        "--id",
        ROLLOUT_ID,
        "--release",
        TO,
        "--artifact",
        &url,
        "--sha256",
        SHA,
    ]);
    if !out.status.success() {
        bail!(
            "rollout start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Polls the rollout's status every [`POLL`] until it is completed, asking each coordinator in
/// turn until one answers (a read is served by the leader), and returns it.
async fn wait_completed(coordinators: &[SocketAddr], within: Duration) -> Result<RolloutInfo> {
    let deadline = Instant::now() + within;
    let mut clients = coordinators
        .iter()
        .map(|a| Ok(CoordinatorClient::new(hd_client::channel(&a.to_string())?)))
        .collect::<Result<Vec<_>>>()?;
    let mut last = String::from("no coordinator answered");
    loop {
        for c in &mut clients {
            let asked = GetRolloutRequest {
                id: ROLLOUT_ID.into(),
            };
            let info =
                match tokio::time::timeout(hd_client::CALL_TIMEOUT, c.get_rollout(asked)).await {
                    Ok(Ok(r)) => r.into_inner().rollout,
                    Ok(Err(e)) => {
                        last = hd_client::status_error("GetRollout", &e).to_string();
                        continue;
                    }
                    Err(_) => {
                        last = "GetRollout timed out".into();
                        continue;
                    }
                };
            let state = info.as_ref().map(|r| r.state());
            match (state, info) {
                (Some(RolloutState::Completed), Some(info)) => return Ok(info),
                (Some(RolloutState::Halted | RolloutState::Aborted), Some(info)) => {
                    bail!("the rollout stopped: {}", info.reason);
                }
                _ => last = format!("the rollout is {state:?}"),
            }
            break;
        }
        if Instant::now() >= deadline {
            bail!("the rollout did not complete within {within:?}: {last}");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_whole_waves_of_restart_plus_verify() {
        let ms = Duration::from_millis;
        // 1000 hosts, 50 at a time: 20 waves of 200 ms.
        assert_eq!(floor(1000, 50, ms(100), ms(100)), ms(4000));
        // A partial last wave is a whole wave.
        assert_eq!(floor(101, 10, ms(100), ms(50)), ms(11 * 150));
        assert_eq!(floor(100, 10, ms(100), ms(100)), ms(2000));
        // One at a time.
        assert_eq!(floor(3, 1, ms(100), ms(0)), ms(300));
    }
}
