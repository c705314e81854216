//! `hotdeploy-agent --config FILE`: the per-host daemon (DESIGN §4).
//!
//! Exit codes: 2 for a config that cannot be used, 1 for a start-up failure, 0 after a clean
//! shutdown on SIGTERM/SIGINT. Shutting down stops the API and the coordinator link but never
//! the supervised service: an agent restart or upgrade must not take the application down.
//! SIGHUP re-reads the `[tls]` files (certificate rotation without a restart).
//!
//! `hotdeploy-agent maint --config FILE --reason TEXT [--timeout DUR] -- CMD...` is a client of
//! the running daemon, not a second daemon: it reads the same config only to find the daemon's
//! API (`listen`, a wildcard address reached on loopback) and its `[tls]` files, and asks for
//! `RunMaintenance`, authenticated with this host's own agent certificate (or plaintext with
//! `insecure = true`). The daemon takes the slot, drains, runs CMD, verifies, undrains and
//! releases, and this command prints its progress to stderr and exits 0 only when that all
//! succeeded (1 otherwise, 2 for bad usage or config). It never opens the agent's data_dir.

use clap::{Parser, Subcommand};
use hotdeploy_agent::api::Daemon;
use hotdeploy_common::config::AgentConfig;
use hotdeploy_common::maint_progress;
use hotdeploy_common::proto::agent_client::AgentClient;
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
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<AgentCommand>,
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Maintenance without a release, through the running daemon: take a slot, drain, run CMD,
    /// verify, undrain and release.
    Maint(MaintArgs),
}

#[derive(Debug, clap::Args)]
struct MaintArgs {
    /// Why (shown in `hotdeployctl locks list`).
    #[arg(long)]
    reason: String,
    /// Kill CMD if it runs longer ("30m"); no limit by default.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    cmd: Vec<String>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let Some(path) = &args.config else {
        eprintln!("hotdeploy-agent: --config FILE is required");
        std::process::exit(2);
    };
    let cfg = match AgentConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hotdeploy-agent: {e}");
            std::process::exit(2);
        }
    };
    if let Some(AgentCommand::Maint(m)) = args.command {
        std::process::exit(maint(cfg, m).await);
    }
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
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::debug!(error = %e, "sd_notify READY failed (not under systemd?)");
    }
    // WATCHDOG=1 comes from the daemon's own work loops (`hotdeploy_agent::watchdog`).
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
    Ok(())
}

/// `hotdeploy-agent maint`: the exit code.
async fn maint(cfg: AgentConfig, m: MaintArgs) -> i32 {
    let address = local_address(&cfg.listen);
    let channel = match channel(&address, &cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hotdeploy-agent maint: {e}");
            return 2;
        }
    };
    let req = maint_progress::request(m.reason, m.cmd, m.timeout);
    let mut client = AgentClient::new(channel);
    let mut stream = match client.run_maintenance(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            eprintln!(
                "hotdeploy-agent maint: no maintenance through the agent at {address}: {:?}: {}",
                s.code(),
                s.message()
            );
            return 1;
        }
    };
    let last =
        maint_progress::follow(&mut stream, |p| eprintln!("[{}] {}", p.step, p.message)).await;
    match last {
        Ok(last) => {
            if m.json {
                println!("{}", maint_progress::to_json(&last));
            } else {
                println!("{}", maint_progress::to_text(&last));
            }
            maint_progress::exit_code(&last)
        }
        Err(e) => {
            eprintln!("hotdeploy-agent maint: {e}");
            1
        }
    }
}

/// Where to reach the daemon's `listen` from this host: a wildcard address on loopback.
fn local_address(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let ip: std::net::IpAddr = if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            std::net::SocketAddr::new(ip, a.port()).to_string()
        }
        _ => listen.to_owned(),
    }
}

/// A channel to the daemon with the config's own `[tls]` (this host's agent certificate).
fn channel(address: &str, cfg: &AgentConfig) -> Result<tonic::transport::Channel, String> {
    let scheme = if cfg.tls.insecure { "http" } else { "https" };
    let mut ep = tonic::transport::Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| format!("bad listen address {address:?}: {e}"))?
        .connect_timeout(Duration::from_secs(3));
    if let Some(t) =
        hotdeploy_common::tls::client_tls(&cfg.tls).map_err(|e| format!("[tls]: {e}"))?
    {
        ep = ep.tls_config(t).map_err(|e| format!("[tls]: {e}"))?;
    }
    Ok(ep.connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_is_reached_on_loopback() {
        assert_eq!(local_address("0.0.0.0:7070"), "127.0.0.1:7070");
        assert_eq!(local_address("[::]:7070"), "[::1]:7070");
        assert_eq!(local_address("127.0.0.5:7070"), "127.0.0.5:7070");
        assert_eq!(local_address("agent.local:7070"), "agent.local:7070");
    }
}
