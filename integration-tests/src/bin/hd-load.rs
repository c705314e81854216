//! `hd-load`: steady-rate HTTP load for the local demo, with a JSON summary.
//!
//! `hd-load --target 127.0.0.1:8000 --rate 200 --duration 30s` sends `GET /` at 200 requests
//! per second over keep-alive connections for 30 seconds (or until Ctrl-C), then prints the
//! [`LoadReport`](hotdeploy_integration_tests::load::LoadReport): ok and failed counts, failure
//! kinds and samples, responses per release id, and latency percentiles. It exits 1 when any
//! request failed and `--fail-on-error` is given.

use clap::Parser;
use hotdeploy_integration_tests::load::{self, LoadConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "Steady-rate keep-alive HTTP load; prints a JSON summary")]
struct Args {
    /// HOST:PORT to load.
    #[arg(long)]
    target: SocketAddr,
    /// Total requests per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// How long to run ("30s", "2m"); until Ctrl-C when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// A request slower than this fails.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    timeout: Duration,
    /// The request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Exit 1 if any request failed.
    #[arg(long)]
    fail_on_error: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = LoadConfig {
        target: args.target,
        rate: args.rate,
        workers: args.workers,
        duration: args.duration,
        timeout: args.timeout,
        path: args.path,
    };
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop.send(true);
        }
        // Keep the sender alive: dropping it would also stop the run.
        std::future::pending::<()>().await;
    });
    let report = load::run(cfg, stop_rx).await;
    // writeln!, not println!: a closed pipe (`| head`) is an error, not a panic.
    writeln!(
        std::io::stdout(),
        "{}",
        serde_json::to_string_pretty(&report)?
    )?;
    if args.fail_on_error && report.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
