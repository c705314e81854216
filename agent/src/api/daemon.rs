//! The agent, assembled: what `hotdeploy-agent` runs and what the end-to-end test starts.
//!
//! Start-up order matters:
//! 1. the release store (crash debris removed) and the journal;
//! 2. the service: the journaled child is *adopted* if it still runs (or, the record lost or
//!    unreadable, the service found running from the release store), so that restarting (or
//!    upgrading) the agent never restarts the application. Nothing is started when a deploy in
//!    progress may have swapped `current` to a release not verified yet: recovery starts it,
//!    under a fence;
//! 3. the health fact ([`crate::health`]), from the journal: the front ends answer as soon as
//!    they listen, so a restarting agent starts from what it last established;
//! 4. the rotation front ends, starting out of rotation if the journal says the host was
//!    drained, and the state asserted to HAProxy (a server HAProxy still holds out is reported
//!    out until an undrain confirms it back);
//! 5. the engine, which claims the slots the journal holds, and the report task;
//! 6. recovery of an interrupted deploy, which takes the health fact *before* the monitor
//!    exists, so that no probe round ever judges a half-done deploy;
//! 7. the health monitor, reconciliation of the slot the coordinators list, the coordinator
//!    link and the rollout driver ([`crate::rollout`]; both if coordinators are configured), the
//!    metrics listener ([`crate::metrics`], with `metrics_listen`) and the gRPC server, which
//!    also serves `grpc.health.v1` (SERVING from here on, NOT_SERVING once
//!    [`Daemon::shutdown`] begins) and server reflection listing only the services served.
//!
//! Who owns what: the engine's tasks (deploys, drains, recovery, reconciliation) own the
//! journal's deploy record, the holds and the slot; the monitor owns the health fact between
//! deploys, a deploy during them; the report task alone turns the fact, the engine's view and
//! the rotation state into the health and the report everyone else reads
//! ([`health::reported`]): the rotation front ends, `Status` and the heartbeat.
//!
//! An unusable `current` link does not stop the start: it is logged, reported (`unhealthy`,
//! and in `Status`), and deploys are refused until it is repaired.
//!
//! One [`CancellationToken`] is the shutdown signal of every long-lived task: the gRPC server,
//! the rotation front ends, the coordinator link, the rollout driver, the engine's tasks, the
//! health monitor, the report task, the watchdog pinger ([`crate::watchdog`]: `WATCHDOG=1`
//! only while the health monitor and reconciliation beat) and the exec supervisors. [`Daemon::shutdown`] cancels it and waits (bounded)
//! for them to end, aborting none; it leaves the supervised service running.

use super::service::AgentService;
use crate::artifact::ArtifactPolicy;
use crate::deploy::{self, Engine, EngineParts, RealHost, SlotLock, Timing, View};
use crate::health::{self, HealthMonitor};
use crate::hooks::Hooks;
use crate::journal::Journal;
use crate::link::{Link, LinkConfig};
use crate::metrics::{
    AgentMetrics, AgentState, DeployStats, MeteredHost, MeteredLock, ProbeCounters,
};
use crate::rollout::RolloutDriver;
use crate::rotation::RotationControl;
use crate::service::ServiceHooks;
use crate::service::{ChildRecord, ServiceController};
use crate::store::ReleaseStore;
use crate::verify::Verifier;
use crate::watchdog::Liveness;
use hotdeploy_common::config::{AgentConfig, ServiceControl};
use hotdeploy_common::proto::agent_server::AgentServer;
use hotdeploy_common::proto::{Health, HostReport, Rotation};
use hotdeploy_common::tls::{ServerTls, TlsError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

/// The agent could not start.
#[derive(Debug, Error)]
#[error("{what}: {message}")]
pub struct StartError {
    pub what: &'static str,
    pub message: String,
}

fn fail(what: &'static str) -> impl FnOnce(String) -> StartError {
    move |message| StartError { what, message }
}

/// Largest request the agent API takes. Requests name a release, a URL, a digest and a
/// signature: a few hundred bytes. The limit bounds a hostile one.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Concurrent streams per connection: operators make a handful of calls at a time.
const MAX_STREAMS: u32 = 64;

/// A running agent.
pub struct Daemon {
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The bound `metrics_listen` address, if configured.
    pub metrics_addr: Option<SocketAddr>,
    pub engine: Engine,
    pub service: Arc<ServiceController>,
    pub rotation: Arc<RotationControl>,
    pub link: Option<Link>,
    /// The work loops' beats, which the systemd watchdog follows.
    pub liveness: Liveness,
    /// The API listener's TLS settings (`None`: plaintext), reloaded by [`Daemon::reload_tls`].
    server_tls: Option<ServerTls>,
    /// `grpc.health.v1`: SERVING once started, NOT_SERVING from the shutdown on.
    grpc_health: HealthReporter,
    /// The shutdown signal of every long-lived task (see the module docs).
    shutdown: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Slack on top of a work loop's own bound before the watchdog counts it stalled.
const BEAT_SLACK: Duration = Duration::from_secs(5);

/// How long [`Daemon::shutdown`] waits for each kind of task.
const STOP_BOUND: Duration = Duration::from_secs(10);

impl Daemon {
    /// Starts everything; returns once the gRPC server listens.
    pub async fn start(cfg: AgentConfig) -> Result<Daemon, StartError> {
        if cfg.tls.insecure {
            tracing::warn!(
                "[tls] insecure = true: the agent API and the coordinator link are PLAINTEXT and \
                 unauthenticated; anyone who reaches {} can deploy to this host",
                cfg.listen
            );
        }
        let svc = &cfg.service;
        for dir in [&cfg.data_dir, &svc.root] {
            std::fs::create_dir_all(dir).map_err(|e| {
                fail("cannot create a directory")(format!("{}: {e}", dir.display()))
            })?;
        }
        let store = ReleaseStore::open(&svc.root, svc.keep_releases)
            .map_err(|e| fail("release store")(e.to_string()))?;
        store
            .clean_debris()
            .map_err(|e| fail("release store debris")(e.to_string()))?;
        let journal = Journal::open(&cfg.data_dir, &cfg.host_id)
            .map_err(|e| fail("deploy journal")(e.to_string()))?;
        let policy = ArtifactPolicy::from_config(&cfg.artifact)
            .map_err(|e| fail("[artifact]")(e.to_string()))?;

        let shutdown = CancellationToken::new();

        // The service: adopt the running service rather than start a second copy.
        let child: Option<ChildRecord> = journal.child().unwrap_or_else(|e| {
            tracing::warn!(
                error = %e,
                "journaled child unreadable; looking for the service in the release store"
            );
            None
        });
        let j = journal.clone();
        let on_child: Arc<dyn Fn(Option<ChildRecord>) + Send + Sync> =
            Arc::new(move |c: Option<ChildRecord>| {
                if let Err(e) = j.set_child(c.as_ref()) {
                    tracing::error!(error = %e, "cannot journal the supervised child");
                }
            });
        let j = journal.clone();
        let on_release: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(move |id: &str| {
            if let Err(e) = j.set_service_release(Some(id)) {
                tracing::error!(error = %e, "cannot journal the service's release");
            }
        });
        let hooks = ServiceHooks {
            on_child,
            on_release,
            last_release: journal.service_release().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "journaled service release unreadable");
                None
            }),
            shutdown: shutdown.clone(),
        };
        let service = ServiceController::with_hooks(svc, &svc.root, hooks);
        let (current, current_broken) = match store.current() {
            Ok(c) => (c, false),
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "the `current` link is unusable: not starting the service, refusing deploys \
                     until it is repaired"
                );
                (None, true)
            }
        };
        let unverified = deploy::current_may_be_unverified(&journal)
            .map_err(|e| fail("deploy journal")(e.to_string()))?;
        let started_afresh = if unverified {
            tracing::warn!(
                "a deploy was in progress and `current` may not be verified: the service is \
                 started by recovery, under a fence, not now"
            );
            if let Err(e) = service.adopt(child, None).await {
                tracing::error!(error = %e, "cannot adopt the service");
            }
            false
        } else {
            start_service(&service, child, current.as_deref()).await
        };

        // Health: the fact from the journal (an adopted service that was healthy is `healthy`
        // from the first answer; one started afresh must prove itself), and what this host
        // reports, which the report task keeps up to date from here on.
        let health = health::journaled_fact(
            &journal,
            &store,
            health::AtStart {
                current: current.as_deref(),
                current_broken,
                started_afresh,
            },
        )
        .map_err(|e| fail("deploy journal")(e.to_string()))?;
        let verify_failed = journal
            .hold()
            .map_err(|e| fail("deploy journal")(e.to_string()))?
            .is_some_and(|h| h.kind.service_failed());
        let (reported_tx, health_rx) = watch::channel(health::reported(
            health.get(),
            verify_failed,
            current_broken,
        ));
        let drained =
            deploy::starts_drained(&journal).map_err(|e| fail("deploy journal")(e.to_string()))?;
        let initial = if drained {
            Rotation::OutOfRotation
        } else {
            Rotation::InRotation
        };
        let rotation = RotationControl::new(
            &cfg.rotation,
            cfg.haproxy_server(),
            initial,
            health_rx.clone(),
        );
        rotation
            .serve(shutdown.clone())
            .await
            .map_err(|e| fail("rotation front ends")(e.to_string()))?;
        rotation.reassert(drained).await;

        // The link and the engine.
        let (report_tx, report_rx) = watch::channel(HostReport::default());
        let link = if cfg.coordinators.is_empty() {
            None
        } else {
            let lc = LinkConfig {
                host_id: cfg.host_id.clone(),
                groups: cfg.groups.clone(),
                address: cfg.listen.clone(),
                coordinators: cfg.coordinators.clone(),
                tls: cfg.tls.clone(),
            };
            Some(
                Link::new(lc, journal.clone(), report_rx)
                    .map_err(|e| fail("coordinator link")(e.to_string()))?,
            )
        };
        let host = RealHost {
            store: store.clone(),
            policy,
            rotation: rotation.clone(),
            service: service.clone(),
            verifier: Verifier::new(&cfg.verify),
            hooks: Hooks::new(&cfg.hooks),
            service_name: svc.name.clone(),
        };
        // Every effect's failure and every grant is counted on its way (`metrics::metered`).
        let stats = DeployStats::default();
        let engine = Engine::with_stats(
            EngineParts {
                host_id: cfg.host_id.clone(),
                ops: Arc::new(MeteredHost::new(host, stats.errors())),
                lock: link.clone().map(|l| {
                    let lock = Arc::new(l) as Arc<dyn SlotLock>;
                    Arc::new(MeteredLock::new(lock, stats.clone())) as Arc<dyn SlotLock>
                }),
                journal,
                timing: Timing::default(),
                health: health.clone(),
                shutdown: shutdown.clone(),
            },
            stats.clone(),
        )
        .map_err(|e| fail("deploy engine")(e.to_string()))?;

        let mut tasks = vec![tokio::spawn(report_task(
            engine.subscribe(),
            health.subscribe(),
            rotation.subscribe(),
            reported_tx,
            report_tx,
            shutdown.clone(),
        ))];
        engine
            .start_recovery()
            .map_err(|e| fail("recovery")(e.to_string()))?;
        // After recovery has taken the fact, so the monitor never judges a half-done deploy.
        let alive = (svc.control == ServiceControl::Exec).then(|| service.subscribe_alive());
        let probes = ProbeCounters::default();
        // The systemd watchdog follows the work loops: the monitor and reconciliation beat,
        // and the pinger pings only while both are fresh (`crate::watchdog`).
        let liveness = Liveness::new();
        let monitor = HealthMonitor::new(&cfg.health, &cfg.verify, health, alive)
            .count_probes(probes.clone());
        let monitor_beat = liveness.register("health monitor", monitor.turn_bound() + BEAT_SLACK);
        tasks.push(tokio::spawn(
            monitor.beating(monitor_beat).run(shutdown.clone()),
        ));
        let r = &cfg.rotation;
        let drain_bound = r.drain_timeout.max(r.drain_grace).max(r.undrain_grace);
        let reconcile_beat =
            liveness.register("reconciliation", deploy::reconcile_round_bound(drain_bound));
        engine.start_reconcile_beating(Some(reconcile_beat));
        tasks.push(tokio::spawn(crate::watchdog::feed(
            liveness.clone(),
            crate::watchdog::Systemd,
            shutdown.clone(),
        )));
        if let Some(l) = &link {
            tasks.push(l.start(shutdown.clone()));
            let driver = RolloutDriver::new(
                engine.clone(),
                Arc::new(l.clone()),
                l.subscribe_assignment(),
            );
            tasks.push(tokio::spawn(driver.run(shutdown.clone())));
        }

        // Metrics, on the same shutdown token as everything else.
        let metrics_addr = match &cfg.metrics_listen {
            None => None,
            Some(at) => {
                let listener = tokio::net::TcpListener::bind(at)
                    .await
                    .map_err(|e| fail("metrics_listen: cannot listen")(format!("{at}: {e}")))?;
                let bound = listener
                    .local_addr()
                    .map_err(|e| fail("metrics_listen: cannot listen")(e.to_string()))?;
                let state = AgentState::new(
                    engine.clone(),
                    health_rx.clone(),
                    rotation.clone(),
                    stats.clone(),
                );
                let metrics = Arc::new(AgentMetrics::new(&stats, &probes, state));
                tasks.push(tokio::spawn(crate::metrics::http::serve(
                    listener,
                    metrics,
                    shutdown.clone(),
                )));
                tracing::info!(addr = %bound, "metrics on http://{bound}/metrics");
                Some(bound)
            }
        };

        // gRPC.
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .map_err(|e| fail("cannot listen")(format!("{}: {e}", cfg.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| fail("cannot listen")(e.to_string()))?;
        let api = AgentService {
            host_id: cfg.host_id.clone(),
            groups: cfg.groups.clone(),
            engine: engine.clone(),
            store,
            rotation: rotation.clone(),
            service: service.clone(),
            link: link.clone(),
            health: health_rx,
        };
        let server_tls = ServerTls::load(&cfg.tls).map_err(|e| fail("[tls]")(e.to_string()))?;
        // Health and reflection on the same listener, so behind the same mTLS.
        let grpc_health = HealthReporter::new();
        set_grpc_health(&grpc_health, ServingStatus::Serving).await;
        // The descriptor set holds the coordinator's services too: list only those served here.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(hotdeploy_common::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(agent_service_name())
            .with_service_name(<HealthServer<HealthService> as NamedService>::NAME)
            .with_service_name(REFLECTION_SERVICE)
            .build_v1()
            .map_err(|e| fail("gRPC reflection")(e.to_string()))?;
        let health_service =
            HealthServer::new(HealthService::from_health_reporter(grpc_health.clone()));
        let stop = shutdown.clone();
        let incoming = hotdeploy_common::tls::incoming(
            listener,
            server_tls.clone(),
            cfg.limits.max_connections,
        );
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(10)))
                .http2_keepalive_timeout(Some(Duration::from_secs(5)))
                .max_concurrent_streams(MAX_STREAMS)
                .add_service(AgentServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES))
                .add_service(health_service)
                .add_service(reflection)
                .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await }),
        );
        tracing::info!(%addr, host = %cfg.host_id, "agent serving");
        Ok(Daemon {
            addr,
            metrics_addr,
            grpc_health,
            engine,
            service,
            rotation,
            link,
            liveness,
            server_tls,
            shutdown,
            server,
            tasks,
        })
    }

    /// The shutdown signal every long-lived task of this agent follows; a task added to the
    /// agent ends when it is cancelled (see [`Daemon::shutdown`]).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Re-reads the `[tls]` files for the API listener and the coordinator link. New
    /// connections use them; open ones carry on. On error the old settings stay.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        if let Some(tls) = &self.server_tls {
            tls.reload()?;
        }
        if let Some(link) = &self.link {
            link.reload_tls()?;
        }
        Ok(())
    }

    /// Stops serving, gracefully: cancels the shutdown token, then waits (each bounded by
    /// [`STOP_BOUND`]) for the gRPC server, the engine's tasks, the others and the service's
    /// supervisor to end, so that nothing holds the journal any more. The
    /// supervised service keeps running: an agent restart or upgrade must not take it down.
    /// A deploy under way stops at its next step; recovery resumes it at the next start.
    pub async fn shutdown(mut self) {
        // Health checks in flight (a `Watch`) hear it before the server stops.
        set_grpc_health(&self.grpc_health, ServingStatus::NotServing).await;
        self.shutdown.cancel();
        match tokio::time::timeout(STOP_BOUND, &mut self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
            Err(_) => tracing::warn!("gRPC server did not stop within {STOP_BOUND:?}"),
        }
        if !self.engine.wait_stopped(STOP_BOUND).await {
            tracing::warn!("engine tasks did not stop within {STOP_BOUND:?}");
        }
        for t in self.tasks.drain(..) {
            if tokio::time::timeout(STOP_BOUND, t).await.is_err() {
                tracing::warn!("a task did not stop within {STOP_BOUND:?}");
            }
        }
        if !self.service.detached(STOP_BOUND).await {
            tracing::warn!("the service supervisor did not detach within {STOP_BOUND:?}");
        }
        tracing::info!("agent stopped; the service is left running");
    }
}

/// The reflection service's own name, as `grpcurl list` shows it.
const REFLECTION_SERVICE: &str = "grpc.reflection.v1.ServerReflection";

/// The name the `Agent` service is reported under in `grpc.health.v1`.
pub fn agent_service_name() -> &'static str {
    <AgentServer<AgentService> as NamedService>::NAME
}

/// Sets the overall (`""`) and the `Agent` service's `grpc.health.v1` status.
async fn set_grpc_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(agent_service_name(), status)
        .await;
}

/// Keeps the reported health (for the rotation front ends and `Status`) and the host report
/// (for the coordinators) up to date with the engine, the health fact and the rotation state:
/// the one place where they are combined ([`health::reported`]). The link sends a changed
/// report at once.
async fn report_task(
    mut view: watch::Receiver<View>,
    mut health: watch::Receiver<Health>,
    mut rotation: watch::Receiver<Rotation>,
    reported_tx: watch::Sender<Health>,
    report_tx: watch::Sender<HostReport>,
    shutdown: CancellationToken,
) {
    loop {
        let v = view.borrow_and_update().clone();
        let h = *health.borrow_and_update();
        let rot = *rotation.borrow_and_update();
        let h = health::reported(h, v.verify_failed, v.problem.is_some());
        reported_tx.send_if_modified(|r| {
            let changed = *r != h;
            *r = h;
            changed
        });
        let report = HostReport {
            health: h as i32,
            rotation: rot as i32,
            release: v.current.clone().unwrap_or_default(),
            phase: v.phase.clone(),
        };
        report_tx.send_if_modified(|r| {
            let changed = *r != report;
            *r = report;
            changed
        });
        tokio::select! {
            r = view.changed() => if r.is_err() { return },
            r = health.changed() => if r.is_err() { return },
            r = rotation.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// `exec` mode: adopts the running service, or starts it on `current`; answers whether it had
/// to be started afresh (so that its health must be proved again). The other modes start
/// nothing here: the service is the service manager's, or the operator's.
async fn start_service(
    service: &ServiceController,
    child: Option<ChildRecord>,
    current: Option<&str>,
) -> bool {
    match service.adopt(child, current).await {
        Ok(true) => return false,
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "cannot adopt the service");
            return false;
        }
    }
    let Some(id) = current else {
        return false;
    };
    if service.running().is_none() {
        return false; // not `exec`
    }
    match service.start(id).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the service");
            // Nothing runs: as unproven as a fresh start.
            true
        }
    }
}
