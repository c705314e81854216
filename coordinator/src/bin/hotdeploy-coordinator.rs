//! `hotdeploy-coordinator --config FILE`: one node of the coordinator cluster.
//! `hotdeploy-coordinator restore --from FILE --config FILE`: rebuild a one-node cluster in an
//! empty data_dir from a `hotdeployctl snapshot save` file (disaster recovery; see
//! `hotdeploy_coordinator::recovery`), then exit.
//!
//! Start-up order: parse and check the config (a bad one exits 2 with the key named), bind the
//! listener, open storage; a blank node with `initial_cluster_state = "new"` then asks its peers
//! before it bootstraps, answering theirs meanwhile (`ClusterInfo` only); start raft, seed
//! groups when this node leads a brand-new cluster, serve gRPC. The supervisor tells systemd
//! READY=1 once the server accepts connections and the raft loop runs, and feeds the watchdog
//! (and reports `grpc.health.v1` SERVING) only while the raft loop keeps turning. SIGHUP re-reads
//! the `[tls]` files (`hotdeploy_coordinator::tls_reload`).
//!
//! With `http_listen` set, its listener is bound next to the gRPC one (a bad address stops the
//! start), and serves `/metrics`, `/leader` and, with `[fleetlock] enabled`, FleetLock once the
//! raft node runs. SIGTERM (or Ctrl-C) is the one shutdown signal: both listeners stop
//! accepting and finish what is in flight, and every other long-lived task (the supervisor, the
//! SIGHUP reloader, the liveness check, the group seeding, rollout progress) ends and is awaited.

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use hotdeploy_common::config::{ClusterState, CoordinatorConfig};
use hotdeploy_common::time::now_ms;
use hotdeploy_common::tls::{ClientTls, ServerTls};
use hotdeploy_coordinator::fleetlock::FleetLock;
use hotdeploy_coordinator::http::{self, Routes};
use hotdeploy_coordinator::liveness::Liveness;
use hotdeploy_coordinator::metrics::Metrics;
use hotdeploy_coordinator::raft::{bootstrap, RaftNode};
use hotdeploy_coordinator::service::{self, CoordinatorService};
use hotdeploy_coordinator::state::{Command, GroupSeed, Proposal, StateMachine};
use hotdeploy_coordinator::supervisor::{self, Systemd};
use hotdeploy_coordinator::tls_reload::Reloader;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// `--version`: the release, and the newest command format version this binary knows (what
/// a rolling upgrade is about: docs/operations.md). Built from
/// [`hotdeploy_coordinator::state::FORMAT_VERSION`], so renumbering a format is a change there
/// alone.
fn version() -> String {
    format!(
        "{} (command format {})",
        env!("CARGO_PKG_VERSION"),
        hotdeploy_coordinator::state::FORMAT_VERSION
    )
}

#[derive(Debug, Parser)]
#[command(
    name = "hotdeploy-coordinator",
    about = "A node of the hotdeploy coordinator cluster",
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// The node's TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Rebuild a one-node cluster, in the config's empty data_dir, from a snapshot file written
    /// by `hotdeployctl snapshot save` (after the cluster lost its quorum for good). Then start
    /// the node as usual and add members back with `hotdeployctl members add`.
    Restore {
        /// The snapshot file.
        #[arg(long)]
        from: PathBuf,
        /// The config of the node to restore (its id, listen address and data_dir).
        #[arg(long)]
        config: PathBuf,
    },
}

fn load_config(path: &std::path::Path) -> CoordinatorConfig {
    match CoordinatorConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

fn main() {
    // clap's derive takes a `&'static str` version; the string is built once, at start-up.
    let version: &'static str = Box::leak(version().into_boxed_str());
    let args = match Args::from_arg_matches(&Args::command().version(version).get_matches()) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    hotdeploy_common::telemetry::init();
    let config = match args.command {
        Some(Cmd::Restore { from, config }) => {
            let cfg = load_config(&config);
            std::process::exit(restore(&cfg, &from));
        }
        None => match args.config {
            Some(c) => c,
            None => {
                eprintln!(
                    "error: --config FILE is required (or `restore --from FILE --config FILE`); \
                     see --help"
                );
                std::process::exit(2);
            }
        },
    };
    let cfg = load_config(&config);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cfg)) {
        tracing::error!("{e:#}");
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `restore`: writes the data_dir and says what to do next. The exit code.
fn restore(cfg: &CoordinatorConfig, from: &std::path::Path) -> i32 {
    let actor = format!(
        "local/{}",
        std::env::var("USER").unwrap_or_else(|_| "restore".into())
    );
    match hotdeploy_coordinator::recovery::restore(cfg, from, now_ms(), &actor) {
        Ok(r) => {
            tracing::info!(
                audit = true,
                node = r.node,
                cluster_id = format!("{:016x}", r.cluster_id),
                old_cluster_id = %r.old_cluster_id,
                index = r.index,
                "restored a one-node cluster from {}",
                from.display()
            );
            println!(
                "restored {} into {}: node {} alone, new cluster id {:016x} (the backup was of \
                 cluster {} at index {}, term {}); {} hosts, {} groups, {} slots held, {} \
                 rollouts.\nNext: start it (hotdeploy-coordinator --config ...), then add each \
                 member back, started blank with initial_cluster_state = \"existing\": \
                 hotdeployctl members add ID HOST:PORT",
                from.display(),
                r.data_dir.display(),
                r.node,
                r.cluster_id,
                r.old_cluster_id,
                r.backup_index,
                r.term,
                r.hosts,
                r.groups,
                r.slots,
                r.rollouts
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

async fn run(cfg: CoordinatorConfig) -> anyhow::Result<()> {
    let span = tracing::info_span!("node", id = cfg.id);
    let _enter = span.enter();
    if cfg.tls.insecure {
        tracing::warn!("[tls] insecure = true: gRPC is plaintext and unauthenticated; anyone who can reach {} controls the fleet", cfg.listen);
    }
    let addr: SocketAddr = tokio::net::lookup_host(&cfg.listen)
        .await
        .with_context(|| format!("cannot resolve listen address {}", cfg.listen))?
        .next()
        .with_context(|| format!("listen address {} resolves to nothing", cfg.listen))?;
    let server_tls = ServerTls::load(&cfg.tls)?;
    let client_tls = ClientTls::load(&cfg.tls)?;
    // The one shutdown signal, for every long-lived task.
    let (stop, stopping) = watch::channel(false);
    let signalled = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = signalled.send(true);
    });
    let reloading = match Reloader::listen(server_tls.clone(), client_tls.clone()) {
        Ok(r) => Some(tokio::spawn(r.run(stopped(stopping.clone())))),
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP ({e}): certificates reload only on restart");
            None
        }
    };
    let result = serve_node(cfg, addr, server_tls, client_tls, &stop, stopping).await;
    // However the node ended (shut down, or failed to start), the reloader ends with it.
    let _ = stop.send(true);
    if let Some(r) = reloading {
        let _ = r.await;
    }
    result
}

/// Everything after the TLS settings are loaded: listeners, storage, bootstrap, raft, the
/// long-lived tasks and the servers, until `stopping` (sent through `stop` once the gRPC server
/// has ended).
async fn serve_node(
    cfg: CoordinatorConfig,
    addr: SocketAddr,
    server_tls: Option<ServerTls>,
    client_tls: ClientTls,
    stop: &watch::Sender<bool>,
    stopping: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let http_listener = match &cfg.http_listen {
        Some(a) => Some(bind_http(a).await?),
        None => None,
    };
    let storage = RaftNode::open_storage(&cfg)?;
    if storage.is_blank() && cfg.initial_cluster_state == ClusterState::New {
        // Answer the peers' ClusterInfo while asking them: a brand-new cluster's nodes each wait
        // for a quorum of the others to answer.
        let (stop_blank, blank_stopped) = tokio::sync::oneshot::channel::<()>();
        let blank = tokio::spawn(service::serve_blank(
            clone_listener(&listener)?,
            server_tls.clone(),
            cfg.limits.max_connections,
            cfg.id,
            async {
                let _ = blank_stopped.await;
            },
        ));
        let result = tokio::select! {
            r = bootstrap::bootstrap_new::<StateMachine>(&cfg, &storage, &client_tls) => Some(r),
            _ = stopped(stopping.clone()) => None,
        };
        let _ = stop_blank.send(());
        if let Ok(Err(e)) = blank.await {
            tracing::warn!("the bootstrap-time peer service: {e:#}");
        }
        let Some(result) = result else {
            tracing::info!("shut down while waiting to bootstrap");
            return Ok(());
        };
        result?;
    }
    let (node, peer) = RaftNode::start(&cfg, storage, client_tls).await?;
    let liveness = Liveness::new(node.clone(), cfg.liveness.clone());
    let checking = tokio::spawn(liveness.clone().run(stopped(stopping.clone())));
    let seeding = tokio::spawn(seed_groups(
        node.clone(),
        cfg.clone(),
        stopped(stopping.clone()),
    ));
    let progress = tokio::spawn(hotdeploy_coordinator::progress::run(
        node.clone(),
        stopping.clone(),
    ));
    let metrics = Arc::new(Metrics::new(&node));
    let http_server = http_listener.map(|l| {
        let fleetlock = cfg
            .fleetlock
            .enabled
            .then(|| FleetLock::new(node.clone(), cfg.fleetlock.allow.clone(), metrics.clone()));
        let routes = Arc::new(Routes::new(node.clone(), metrics.clone(), fleetlock));
        tracing::info!(
            http_listen = ?cfg.http_listen,
            tls = server_tls.is_some(),
            fleetlock = cfg.fleetlock.enabled,
            "serving /metrics, /leader{} over HTTP{}",
            if cfg.fleetlock.enabled { " and FleetLock" } else { "" },
            if server_tls.is_some() { "S" } else { "" },
        );
        tokio::spawn(http::serve(
            l,
            server_tls.clone(),
            http::Limits::default(),
            routes,
            stopped(stopping.clone()),
        ))
    });
    let svc = CoordinatorService::new(node.clone(), liveness).with_metrics(&metrics);
    let health = tonic_health::server::HealthReporter::new();
    let (serving, is_serving) = tokio::sync::oneshot::channel();
    let supervisor = tokio::spawn(supervisor::supervise(
        node.progress(),
        health.clone(),
        Systemd,
        async {
            let _ = is_serving.await;
        },
        supervisor::LIVE_WITHIN,
        stopped(stopping.clone()),
    ));
    tracing::info!(listen = %cfg.listen, "serving");
    let served = service::serve(
        listener,
        server_tls,
        cfg.limits.max_connections,
        svc,
        peer,
        health,
        serving,
        stopped(stopping),
    )
    .await;
    let _ = stop.send(true);
    let _ = supervisor.await;
    let _ = checking.await;
    let _ = seeding.await;
    let _ = progress.await;
    if let Some(h) = http_server {
        let _ = h.await;
    }
    served?;
    tracing::info!("shut down");
    Ok(())
}

/// A second handle on the same listening socket (for the bootstrap-time server, which is
/// stopped before the real one starts on the first).
fn clone_listener(listener: &TcpListener) -> anyhow::Result<TcpListener> {
    use std::os::fd::AsFd;
    let fd = listener
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate the listening socket")?;
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)
        .context("cannot make the listening socket non-blocking")?;
    TcpListener::from_std(std).context("cannot reuse the listening socket")
}

/// When this node leads a cluster that has no groups yet, proposes the config's `[groups]`.
/// The state machine ignores the seed once any group exists, so the config's values apply only
/// to a newly bootstrapped cluster.
async fn seed_groups(
    node: RaftNode,
    cfg: CoordinatorConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        _ = seed_groups_once(node, cfg) => {}
        _ = shutdown => {}
    }
}

async fn seed_groups_once(node: RaftNode, cfg: CoordinatorConfig) {
    if cfg.groups.is_empty() {
        return;
    }
    let seeds: Vec<GroupSeed> = cfg
        .groups
        .iter()
        .map(|(name, g)| GroupSeed {
            name: name.clone(),
            max_unavailable: g.max_unavailable,
            allow_zero_available: g.allow_zero_available,
        })
        .collect();
    let mut status = node.subscribe_status();
    loop {
        let leader = status.borrow_and_update().is_leader();
        if leader {
            if node.state().group_views().is_empty() {
                let p = Proposal::new(
                    None,
                    now_ms(),
                    "config",
                    Command::SeedGroups {
                        groups: seeds.clone(),
                    },
                );
                match node.propose(p, Duration::from_secs(5)).await {
                    Ok(_) => tracing::info!(groups = seeds.len(), "seeded groups from the config"),
                    Err(e) => tracing::warn!("seeding groups: {e}"),
                }
            } else {
                return;
            }
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// Binds `http_listen`.
async fn bind_http(address: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("cannot resolve http_listen address {address}"))?
        .next()
        .with_context(|| format!("http_listen address {address} resolves to nothing"))?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on http_listen {addr}"))
}

/// Resolves once the shutdown signal is given (or its sender is gone).
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_names_the_command_format_this_binary_knows() {
        let want = format!(
            "(command format {})",
            hotdeploy_coordinator::state::FORMAT_VERSION
        );
        assert!(super::version().ends_with(&want), "{}", super::version());
    }
}
