//! Global options and channels: where to connect, and with which credentials.

use anyhow::Context;
use clap::{Args, ValueEnum};
use hotdeploy_common::config::TlsConfig;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// Options shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct GlobalOpts {
    /// Coordinator addresses, host:port, comma-separated; tried in turn, leader hints followed.
    #[arg(
        long,
        global = true,
        env = "HOTDEPLOY_ENDPOINTS",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// CA certificate (PEM).
    #[arg(long, global = true, env = "HOTDEPLOY_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, global = true, env = "HOTDEPLOY_CERT")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, global = true, env = "HOTDEPLOY_KEY")]
    pub key: Option<PathBuf>,
    /// Plaintext gRPC (no TLS).
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl GlobalOpts {
    /// The `[tls]` settings these options describe.
    pub fn tls(&self) -> anyhow::Result<TlsConfig> {
        let cfg = TlsConfig {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            insecure: self.insecure,
            crl: None,
        };
        cfg.check()
            .map_err(|m| anyhow::anyhow!("{m} (use --ca/--cert/--key or --insecure)"))?;
        Ok(cfg)
    }
}

/// A lazily connected channel to `addr` (`host:port`), with TLS per the global options.
pub fn channel_to(addr: &str, opts: &GlobalOpts) -> anyhow::Result<Channel> {
    let tls = opts.tls()?;
    let scheme = if tls.insecure { "http" } else { "https" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .with_context(|| format!("bad address {addr:?}"))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    if let Some(t) = hotdeploy_common::tls::client_tls(&tls)? {
        ep = ep.tls_config(t).context("TLS settings")?;
    }
    Ok(ep.connect_lazy())
}
