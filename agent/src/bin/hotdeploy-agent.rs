//! `hotdeploy-agent --config FILE`: the per-host daemon (DESIGN §4).
//!
//! Exit codes: 2 for a config that cannot be used, 1 for a start-up failure, 0 after a clean
//! shutdown on SIGTERM/SIGINT. Shutting down stops the API and the coordinator link but never
//! the supervised service: an agent restart or upgrade must not take the application down.
//! SIGHUP re-reads the `[tls]` files (certificate rotation without a restart).

use clap::Parser;
use hotdeploy_agent::api::Daemon;
use hotdeploy_common::config::AgentConfig;
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// The hotdeploy agent.
#[derive(Debug, Parser)]
#[command(
    name = "hotdeploy-agent",
    version,
    about = "The hotdeploy per-host agent"
)]
struct Args {
    /// The agent's TOML config file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let cfg = match AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hotdeploy-agent: {e}");
            std::process::exit(2);
        }
    };
    hotdeploy_common::telemetry::init();
    if let Err(e) = run(cfg).await {
        tracing::error!("{e:#}");
        eprintln!("hotdeploy-agent: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let daemon = Daemon::start(cfg).await?;
    let shutdown = daemon.shutdown_token();
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::debug!(error = %e, "sd_notify READY failed (not under systemd?)");
    }
    let mut usec = 0u64;
    let watchdog = if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        let every = Duration::from_micros(usec / 2);
        tracing::info!(?every, "systemd watchdog enabled");
        let shutdown = shutdown.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        }))
    } else {
        None
    };
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: shutting down (the service keeps running)");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: shutting down (the service keeps running)");
                break;
            }
            _ = hup.recv() => match daemon.reload_tls() {
                Ok(()) => tracing::info!("SIGHUP: reloaded the [tls] certificates, key, CA and CRL"),
                Err(e) => tracing::error!("SIGHUP: {e}; the previous certificates stay in use"),
            },
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    daemon.shutdown().await;
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    Ok(())
}
