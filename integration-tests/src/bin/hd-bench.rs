//! `hd-bench`: the coordinator benchmarks (DESIGN §9), run against real release binaries.
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/hd-bench lock      # acquire+release p50/p99 and throughput, 1 and 32 clients, vs etcd 3.4
//! target/release/hd-bench lock --syscalls  # ... and fdatasync/fsync per committed entry, per node (strace)
//! target/release/hd-bench failover  # kill -9 of the leader -> next successful acquire, p50/p99
//! target/release/hd-bench memory    # leader/follower RSS with 10,000 registered hosts
//! target/release/hd-bench waiters   # 1,000 waiting acquires in a 1,000-host group: grant latency, leader CPU
//! target/release/hd-bench rollout --agents 1000 --budget 50  # rollout time / ceil(N/B) x (T + verify)
//! target/release/hd-bench scale --agents 10000,20000,30000,50000  # heartbeating agents: leader CPU/RSS, lock p99
//! ```
//!
//! Each subcommand starts its own clusters on loopback (3 coordinators; for `lock` also 3 etcd
//! members), prints a table on stdout, and with `--json` prints the report as JSON on stdout
//! instead (the table then goes to stderr). Progress goes to stderr. Every process it starts is
//! killed when it ends, on errors and on SIGINT/SIGTERM too. The binaries it drives are found
//! next to it (`target/release/`); etcd is `/usr/bin/etcd` or `$HD_BENCH_ETCD`.
//!
//! The modules under `hotdeploy_integration_tests::bench` hold the logic; this file only parses
//! the command line and prints.

use anyhow::Context;
use clap::{Parser, Subcommand};
use hotdeploy_integration_tests::bench::{
    cleanup, failover, lock, memory, report, rollout, scale, waiters,
};
use serde::Serialize;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    about = "Coordinator benchmarks: lock latency/throughput vs etcd, failover, memory, waiters, rollout, scale"
)]
struct Args {
    /// Print the report as JSON on stdout (the table goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Exit 1 when a target is missed.
    #[arg(long, global = true)]
    fail_on_miss: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Acquire+release round trips, 1 client and N clients, ours and etcd's.
    Lock {
        /// Measured pairs with 1 client.
        #[arg(long, default_value_t = 2000)]
        ops: usize,
        /// Concurrent clients in the second case.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Measured pairs per client in the N-client case (default: enough for --ops in
        /// total, and at least 100).
        #[arg(long)]
        per_client: Option<usize>,
        /// Unmeasured warm-up pairs per client.
        #[arg(long, default_value_t = 20)]
        warmup: usize,
        /// Do not run etcd.
        #[arg(long)]
        skip_etcd: bool,
        /// `wait_ms` of our AcquireSlot calls (0 refuses a call queued behind another).
        #[arg(long, default_value_t = 5000)]
        acquire_wait_ms: u64,
        /// Also measure N clients doing 2 x Register per operation: our raft write path
        /// without the leader's acquire queue (for profiling).
        #[arg(long)]
        diagnose: bool,
        /// Also count every node's fdatasync/fsync calls per committed entry, with
        /// `strace -f -c` attached (1 client, then N clients; after the measured phases).
        #[arg(long)]
        syscalls: bool,
        /// Lock pairs in each `--syscalls` window.
        #[arg(long, default_value_t = 200)]
        syscall_pairs: usize,
    },
    /// Time from kill -9 of the leader to the next successful acquire.
    Failover {
        /// Leader kills.
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Deadline of one acquire attempt, ms.
        #[arg(long, default_value_t = 1000)]
        attempt_timeout_ms: u64,
        /// Pause after the cluster is current, before each kill, ms.
        #[arg(long, default_value_t = 500)]
        settle_ms: u64,
    },
    /// RSS of the leader and followers with many registered hosts.
    Memory {
        /// Hosts to register.
        #[arg(long, default_value_t = 10_000)]
        hosts: usize,
        /// Groups to spread them over.
        #[arg(long, default_value_t = 10)]
        groups: usize,
        /// Concurrent registering clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
    },
    /// Many AcquireSlot calls waiting at once in one group: grant latency and leader CPU.
    Waiters {
        /// Hosts in the group.
        #[arg(long, default_value_t = 1000)]
        hosts: usize,
        /// Concurrent waiters.
        #[arg(long, default_value_t = 1000)]
        waiters: usize,
        /// The group's max_unavailable.
        #[arg(long, default_value = "10")]
        budget: String,
        /// How long each waiter may wait for its grant, s.
        #[arg(long, default_value_t = 300)]
        wait_s: u64,
        /// HTTP/2 connections the waiters share.
        #[arg(long, default_value_t = 16)]
        connections: usize,
    },
    /// A rollout of N simulated agents (the real agent logic) against its physical floor.
    Rollout {
        /// Simulated agents (N).
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// The group's max_unavailable (B).
        #[arg(long, default_value_t = 50)]
        budget: usize,
        /// How long a restart takes (T), ms.
        #[arg(long, default_value_t = 100)]
        restart_ms: u64,
        /// How long a verify takes before it passes, ms.
        #[arg(long, default_value_t = 100)]
        verify_ms: u64,
        /// How long the rollout may take, s.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
    /// Many agents registered and heartbeating: leader CPU and RSS, lock p99; ramped.
    Scale {
        /// Agent counts of the ramp, ascending, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10000,20000,30000,50000")]
        agents: Vec<usize>,
        /// Heartbeat streams per HTTP/2 connection (the server allows 1,024).
        #[arg(long, default_value_t = 1000)]
        streams_per_connection: usize,
        /// Each agent's heartbeat interval, ms (the agents' own is 1 s).
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Measured window of each level, s.
        #[arg(long, default_value_t = 10)]
        window_s: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("hd-bench: {e:#}");
            cleanup::kill_tracked();
            ExitCode::from(1)
        }
    }
}

/// Runs the subcommand; `Ok(false)` when a target was missed and `--fail-on-miss` was given.
fn run(args: &Args) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    cleanup::install(&rt).context("installing signal handlers")?;
    let (table, json, targets) = match &args.command {
        Cmd::Lock {
            ops,
            clients,
            per_client,
            warmup,
            skip_etcd,
            acquire_wait_ms,
            diagnose,
            syscalls,
            syscall_pairs,
        } => {
            anyhow::ensure!(
                *ops > 0 && *clients > 0,
                "--ops and --clients must be positive"
            );
            let opts = lock::LockOpts {
                ops: *ops,
                clients: *clients,
                per_client: per_client.unwrap_or_else(|| ops.div_ceil(*clients).max(100)),
                warmup: *warmup,
                skip_etcd: *skip_etcd,
                acquire_wait_ms: *acquire_wait_ms,
                diagnose: *diagnose,
                syscalls: *syscalls,
                syscall_pairs: *syscall_pairs,
            };
            let r = lock::run(&rt, &opts)?;
            (report::lock_table(&r), to_json(&r)?, r.targets)
        }
        Cmd::Failover {
            kills,
            attempt_timeout_ms,
            settle_ms,
        } => {
            let opts = failover::FailoverOpts {
                kills: *kills,
                attempt_timeout_ms: *attempt_timeout_ms,
                settle_ms: *settle_ms,
            };
            let r = failover::run(&rt, &opts)?;
            (report::failover_table(&r), to_json(&r)?, r.targets)
        }
        Cmd::Memory {
            hosts,
            groups,
            clients,
        } => {
            let opts = memory::MemoryOpts {
                hosts: *hosts,
                groups: *groups,
                clients: *clients,
            };
            let r = memory::run(&rt, &opts)?;
            (report::memory_table(&r), to_json(&r)?, r.targets)
        }
        Cmd::Waiters {
            hosts,
            waiters,
            budget,
            wait_s,
            connections,
        } => {
            let opts = waiters::WaitersOpts {
                hosts: *hosts,
                waiters: *waiters,
                budget: budget.clone(),
                wait_s: *wait_s,
                connections: *connections,
            };
            let r = waiters::run(&rt, &opts)?;
            (report::waiters_table(&r), to_json(&r)?, r.targets)
        }
        Cmd::Rollout {
            agents,
            budget,
            restart_ms,
            verify_ms,
            timeout_s,
        } => {
            let opts = rollout::RolloutOpts {
                agents: *agents,
                budget: *budget,
                restart_ms: *restart_ms,
                verify_ms: *verify_ms,
                timeout_s: *timeout_s,
            };
            let r = rollout::run(&rt, &opts)?;
            (report::rollout_table(&r), to_json(&r)?, r.targets)
        }
        Cmd::Scale {
            agents,
            streams_per_connection,
            interval_ms,
            window_s,
        } => {
            let opts = scale::ScaleOpts {
                agents: agents.clone(),
                streams_per_connection: *streams_per_connection,
                interval_ms: *interval_ms,
                window_s: *window_s,
            };
            let r = scale::run(&rt, &opts)?;
            (report::scale_table(&r), to_json(&r)?, r.targets)
        }
    };
    if args.json {
        eprint!("{table}");
        println!("{json}");
    } else {
        print!("{table}");
    }
    let all_met = targets.iter().all(|t| t.met != Some(false));
    Ok(all_met || !args.fail_on_miss)
}

fn to_json<T: Serialize>(report: &T) -> anyhow::Result<String> {
    serde_json::to_string_pretty(report).context("serializing the report")
}
