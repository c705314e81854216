//! One simulated agent of `hd-bench rollout`: the real agent logic on a [`SimHost`].
//!
//! What runs is what `hotdeploy-agent`'s daemon wires together for the rollout path, taken from
//! the agent crate as it is: the journal (sled, in the agent's own temp dir: see below), the coordinator
//! link (register, heartbeat stream, acquire/release/fence, `ReportStep`), the deploy engine
//! (with its recovery and slot reconciliation) and the rollout driver. Only the host is
//! simulated ([`super::sim_host`]). Left out, as the rollout path does not need them: the
//! agent's gRPC API, the health monitor and the rotation front ends. The host report is a
//! healthy, in-rotation one whose release follows the engine's live release (as the agent's
//! report task makes it), so the coordinators know each host's release as it changes; unlike
//! the real report task it does not carry the deploy's phase and rotation changes, each of
//! which a real agent's heartbeat would also report.
//!
//! **The journals are on the host's side of the simulation.** Each real agent syncs its own
//! journal on its own host's disk at every phase; a thousand simulated agents on one machine
//! would instead queue those syncs on one disk, behind each other and behind the coordinators'
//! own, and measure that queue rather than the rollout. So each agent's journal goes under
//! [`JOURNAL_ROOT`] (tmpfs) when it exists: the journal code and its syncs run as they are, and
//! the host's disk costs nothing, like the rest of the simulated host. The coordinators' data
//! stays on the real disk: that is what the bench measures.
//!
//! The driver's staging jitter is zero: staging is free here and outside the floor, and the
//! jitter only spreads the fleet's first `STAGED` reports.
//!
//! Every task runs on one shutdown token; [`SimAgent::stop`] cancels it and waits (bounded) for
//! the link and the driver.

use super::sim_host::{Costs, SimHost};
use anyhow::{Context, Result};
use hotdeploy_agent::deploy::{Engine, EngineParts, Timing, View};
use hotdeploy_agent::health::HealthFact;
use hotdeploy_agent::journal::Journal;
use hotdeploy_agent::link::{Link, LinkConfig};
use hotdeploy_agent::rollout::RolloutDriver;
use hotdeploy_common::config::TlsConfig;
use hotdeploy_common::proto::{Health, HostReport, Rotation};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where the simulated agents' journals go, if it exists (see the module docs).
pub const JOURNAL_ROOT: &str = "/dev/shm";

/// How long a stopping agent's tasks may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// One running simulated agent.
pub struct SimAgent {
    /// The host it deploys on.
    pub host: SimHost,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _engine: Engine,
    _report: Arc<watch::Sender<HostReport>>,
    _dir: tempfile::TempDir,
}

impl SimAgent {
    /// Starts agent `host_id` in `group`, running release `release`, linked to `coordinators`
    /// (insecure transport, as the bench cluster on loopback is). Must run inside a runtime.
    pub fn start(
        host_id: &str,
        group: &str,
        release: &str,
        coordinators: &[SocketAddr],
        costs: Costs,
    ) -> Result<SimAgent> {
        let root = std::path::Path::new(JOURNAL_ROOT);
        let root = if root.is_dir() {
            root.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("hd-bench-agent-")
            .tempdir_in(&root)
            .with_context(|| format!("creating the agent's temp dir in {}", root.display()))?;
        let journal = Journal::open(dir.path(), host_id).context("opening the journal")?;
        journal.reconciled().context("marking the journal")?;
        let (report, rx) = watch::channel(HostReport {
            health: Health::Healthy as i32,
            rotation: Rotation::InRotation as i32,
            release: release.into(),
            phase: "idle".into(),
        });
        let report = Arc::new(report);
        let link = Link::new(
            LinkConfig {
                host_id: host_id.into(),
                groups: vec![group.into()],
                address: "127.0.0.1:1".into(),
                coordinators: coordinators.iter().map(ToString::to_string).collect(),
                tls: TlsConfig {
                    insecure: true,
                    ..Default::default()
                },
            },
            journal.clone(),
            rx,
        )
        .context("building the link")?;
        let host = SimHost::new(release, costs);
        let shutdown = CancellationToken::new();
        let engine = Engine::new(EngineParts {
            host_id: host_id.into(),
            ops: Arc::new(host.clone()),
            lock: Some(Arc::new(link.clone())),
            journal,
            timing: Timing::default(),
            health: HealthFact::in_memory(Health::Healthy),
            shutdown: shutdown.clone(),
        })
        .context("building the engine")?;
        engine.start_recovery().context("starting recovery")?;
        let mut tasks = vec![link.start(shutdown.clone())];
        tasks.push(tokio::spawn(follow_release(
            engine.subscribe(),
            report.clone(),
            shutdown.clone(),
        )));
        engine.start_reconcile();
        let driver = RolloutDriver::new(
            engine.clone(),
            Arc::new(link.clone()),
            link.subscribe_assignment(),
        )
        .with_jitter(Duration::ZERO);
        tasks.push(tokio::spawn(driver.run(shutdown.clone())));
        Ok(SimAgent {
            host,
            shutdown,
            tasks,
            _engine: engine,
            _report: report,
            _dir: dir,
        })
    }

    /// Cancels the agent's token and waits for its link and driver to end.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(STOP_TIMEOUT, t).await;
        }
    }
}

/// Keeps the host report's release at the engine's live release (`View::current`) until the
/// shutdown: the one part of the agent's report task the rollout path needs.
async fn follow_release(
    mut view: watch::Receiver<View>,
    report: Arc<watch::Sender<HostReport>>,
    shutdown: CancellationToken,
) {
    loop {
        let live = view.borrow_and_update().current.clone().unwrap_or_default();
        report.send_if_modified(|r| {
            let changed = r.release != live;
            r.release = live;
            changed
        });
        tokio::select! {
            r = view.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}
