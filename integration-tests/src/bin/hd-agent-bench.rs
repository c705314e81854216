//! `hd-agent-bench`: the agent benchmarks (DESIGN §4 targets, §9 benchmarks), run against real
//! release binaries.
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/hd-agent-bench idle      # idle RSS and CPU of a standalone agent (target RSS ≤ 15 MB)
//! target/release/hd-agent-bench window    # out-of-rotation window per phase, agent overhead (target ≤ 100 ms)
//! target/release/hd-agent-bench window --coordinators 3   # ... under real rollouts, fences included
//! target/release/hd-agent-bench staging   # ~200 MB .tar.gz/.tar.zst staging vs sha256sum + tar -x (target ≤ 1.2×)
//! ```
//!
//! Each subcommand starts what it needs on loopback (agents, sample apps, HAProxy), prints a
//! table on stdout, and with `--json` prints the report as JSON on stdout instead (the table
//! then goes to stderr). Progress goes to stderr. Everything it starts lives under one temp dir
//! and is killed when it ends, on errors, panics and SIGINT/SIGTERM too. The binaries it drives
//! are found next to it (`target/release/`).
//!
//! The logic is in `hotdeploy_integration_tests::agent_bench`; this file parses the command
//! line and prints.

use clap::{Parser, Subcommand};
use hotdeploy_integration_tests::agent_bench::{fleet, guard, idle, staging, window};
use hotdeploy_integration_tests::pack::ArtifactFormat;
use hotdeploy_integration_tests::proc;
use serde::Serialize;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "Agent benchmarks: idle footprint, out-of-rotation window, staging throughput")]
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
    /// RSS and CPU of a standalone agent running sample-app v1, idle.
    Idle {
        /// The idle window, seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Rest after the deploy before the window, seconds.
        #[arg(long, default_value_t = 3)]
        settle: u64,
    },
    /// The out-of-rotation window of v1<->v2 deploys behind HAProxy, per phase.
    Window {
        /// 0: standalone agents deployed over their Deploy API. 3: agents attached to a real
        /// 3-node coordinator cluster (mTLS), each cycle one rollout of the whole group.
        #[arg(long, default_value_t = 0)]
        coordinators: usize,
        /// Deploys (alternating v2, v1, ...); with --coordinators, rollouts of every host.
        #[arg(long, default_value_t = 6)]
        deploys: usize,
        /// Hosts in the group (with --coordinators; budget 1).
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Requests per second through HAProxy (default 50 standalone, 200 with --coordinators).
        #[arg(long)]
        rate: Option<u32>,
        /// The path the load requests (with --coordinators): `/`, or `/slow?ms=N` so that
        /// drains find sessions still open.
        #[arg(long, default_value = "/")]
        path: String,
        /// Cycles of the separate sample-app stop/start measurement.
        #[arg(long, default_value_t = 10)]
        restart_samples: usize,
        /// `[verify] success_threshold`.
        #[arg(long, default_value_t = 3)]
        verify_threshold: u64,
        /// `[verify] interval`.
        #[arg(long, default_value = "200ms")]
        verify_interval: String,
        /// `[verify] settle`.
        #[arg(long, default_value = "500ms")]
        verify_settle: String,
    },
    /// Staging a ~200 MB artifact through the agent vs sha256sum + tar -x.
    Staging {
        /// Alternating rounds per format.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// MiB of incompressible blobs in the release.
        #[arg(long, default_value_t = 176)]
        random_mib: u64,
        /// MiB of compressible text in the release.
        #[arg(long, default_value_t = 128)]
        text_mib: u64,
        /// Small files in the release.
        #[arg(long, default_value_t = 2000)]
        small_files: usize,
        /// Only .tar.gz (skip .tar.zst).
        #[arg(long)]
        gz_only: bool,
    },
}

fn main() -> ExitCode {
    hotdeploy_common::telemetry::init();
    let args = Args::parse();
    let root = match tempfile::Builder::new().prefix("hd-agent-bench-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot create the bench directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Every temp dir the harness makes from here on lives under `root`, so one marker finds
    // every process the bench started.
    std::env::set_var("TMPDIR", root.path());
    guard::install(root.path());
    let marker = root.path().to_path_buf();
    let result = std::panic::catch_unwind(|| run(&args, &marker));
    proc::kill_strays(&marker);
    match result {
        Ok(Ok(met)) => {
            if args.fail_on_miss && !met {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Ok(Err(e)) => {
            eprintln!("hd-agent-bench failed: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}

/// Runs the subcommand; returns whether its targets were met.
fn run(args: &Args, dir: &Path) -> anyhow::Result<bool> {
    match &args.command {
        Cmd::Idle { seconds, settle } => {
            let opts = idle::IdleOpts {
                window: Duration::from_secs(*seconds),
                settle: Duration::from_secs(*settle),
            };
            let r = idle::run(dir, &opts)?;
            emit(args.json, &idle::table(&r), &r)?;
            Ok(r.target_met)
        }
        Cmd::Window {
            coordinators,
            deploys,
            hosts,
            rate,
            path,
            restart_samples,
            verify_threshold,
            verify_interval,
            verify_settle,
        } => {
            if *coordinators != 0 && *coordinators != fleet::NODES {
                anyhow::bail!(
                    "--coordinators {coordinators}: 0 (standalone) or {} (a real cluster)",
                    fleet::NODES
                );
            }
            if *coordinators > 0 {
                let opts = fleet::FleetOpts {
                    cycles: *deploys,
                    hosts: *hosts,
                    rate: rate.unwrap_or(200),
                    path: path.clone(),
                    restart_samples: *restart_samples,
                    verify_threshold: *verify_threshold,
                    verify_interval: verify_interval.clone(),
                    verify_settle: verify_settle.clone(),
                };
                let r = fleet::run(dir, &opts)?;
                emit(args.json, &fleet::table(&r), &r)?;
                return Ok(r.target_met_p50 && r.target_met_max);
            }
            let opts = window::WindowOpts {
                deploys: *deploys,
                rate: rate.unwrap_or(50),
                restart_samples: *restart_samples,
                verify_threshold: *verify_threshold,
                verify_interval: verify_interval.clone(),
                verify_settle: verify_settle.clone(),
            };
            let r = window::run(dir, &opts)?;
            emit(args.json, &window::table(&r), &r)?;
            Ok(r.target_met_p50 && r.target_met_max)
        }
        Cmd::Staging {
            rounds,
            random_mib,
            text_mib,
            small_files,
            gz_only,
        } => {
            let mut formats = vec![ArtifactFormat::TarGz];
            if !gz_only {
                formats.push(ArtifactFormat::TarZst);
            }
            let opts = staging::StagingOpts {
                rounds: *rounds,
                random_mib: *random_mib,
                text_mib: *text_mib,
                small_files: *small_files,
                formats,
            };
            let r = staging::run(dir, &opts)?;
            emit(args.json, &staging::table(&r), &r)?;
            Ok(r.formats.iter().all(|f| f.target_met))
        }
    }
}

/// The table on stdout, or the JSON on stdout and the table on stderr.
fn emit<T: Serialize>(json: bool, table: &str, report: &T) -> anyhow::Result<()> {
    if json {
        eprintln!("{table}");
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{table}");
    }
    Ok(())
}
