//! The agent, assembled: what `hotdeploy-agent` runs and what the end-to-end test starts.
//!
//! Start-up order matters:
//! 1. the release store (crash debris removed) and the journal;
//! 2. the service: the journaled child is *adopted* if it still runs, so that restarting (or
//!    upgrading) the agent never restarts the application;
//! 3. the rotation front ends, starting out of rotation if the journal says the host was drained;
//! 4. the engine, which claims the slots the journal holds, and recovery of an interrupted
//!    deploy, in the background (recovery takes the health fact before the monitor starts);
//! 5. the health monitor ([`crate::health`]), the coordinator link (if configured) and the
//!    gRPC server.
//!
//! [`Daemon::shutdown`] stops serving but leaves the supervised service running.

use super::service::AgentService;
use crate::artifact::ArtifactPolicy;
use crate::deploy::{self, Engine, EngineParts, RealHost, SlotLock, Timing, View};
use crate::health::{self, HealthMonitor};
use crate::hooks::Hooks;
use crate::journal::Journal;
use crate::link::{Link, LinkConfig};
use crate::rotation::RotationControl;
use crate::service::{ChildRecord, ServiceController};
use crate::store::ReleaseStore;
use crate::verify::Verifier;
use hotdeploy_common::config::{AgentConfig, ServiceControl};
use hotdeploy_common::proto::agent_server::AgentServer;
use hotdeploy_common::proto::{Health, HostReport, Rotation};
use hotdeploy_common::tls::{ServerTls, TlsError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

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
    pub engine: Engine,
    pub service: Arc<ServiceController>,
    pub rotation: Arc<RotationControl>,
    pub link: Option<Link>,
    /// The API listener's TLS settings (`None`: plaintext), reloaded by [`Daemon::reload_tls`].
    server_tls: Option<ServerTls>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Stops the health monitor (see [`HealthMonitor::run`]).
    stop_health: watch::Sender<bool>,
    monitor: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

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

        // The service: adopt the journaled child rather than start a second copy.
        let child: Option<ChildRecord> = journal.child().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "journaled child unreadable; not adopting");
            None
        });
        let j = journal.clone();
        let on_child: Arc<dyn Fn(Option<ChildRecord>) + Send + Sync> =
            Arc::new(move |c: Option<ChildRecord>| {
                if let Err(e) = j.set_child(c.as_ref()) {
                    tracing::error!(error = %e, "cannot journal the supervised child");
                }
            });
        let service = ServiceController::new(svc, &svc.root, on_child);
        let current = store.current().unwrap_or_else(|e| {
            tracing::error!(error = %e, "current is unreadable");
            None
        });
        if let Err(e) = service
            .adopt_or_start(child.clone(), current.as_deref())
            .await
        {
            tracing::error!(error = %e, "cannot start the service");
        }

        // Health, from the journal: the front ends answer as soon as they listen, so a
        // restarting agent must start from what it last established (an adopted service that
        // was healthy is `healthy` from the first answer; one started afresh must prove itself).
        let started_afresh = svc.control == ServiceControl::Exec
            && service.child().is_some()
            && service.child() != child;
        let health = health::journaled_fact(&journal, &store, current.as_deref(), started_afresh)
            .map_err(|e| fail("deploy journal")(e.to_string()))?;
        let health_rx = health.subscribe();
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
            .serve()
            .await
            .map_err(|e| fail("rotation front ends")(e.to_string()))?;

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
        let engine = Engine::new(EngineParts {
            host_id: cfg.host_id.clone(),
            ops: Arc::new(host),
            lock: link.clone().map(|l| Arc::new(l) as Arc<dyn SlotLock>),
            journal,
            timing: Timing::default(),
            health: health.clone(),
        })
        .map_err(|e| fail("deploy engine")(e.to_string()))?;

        let mut tasks = vec![tokio::spawn(report_task(
            engine.subscribe(),
            health.subscribe(),
            rotation.subscribe(),
            report_tx,
        ))];
        if let Some(t) = engine
            .start_recovery()
            .map_err(|e| fail("recovery")(e.to_string()))?
        {
            tasks.push(t);
        }
        // After recovery has taken the fact, so the monitor never judges a half-done deploy.
        let alive = (svc.control == ServiceControl::Exec).then(|| service.subscribe_alive());
        let (stop_health, stop_health_rx) = watch::channel(false);
        let monitor = tokio::spawn(
            HealthMonitor::new(&cfg.health, &cfg.verify, health, alive).run(stop_health_rx),
        );
        if let Some(l) = &link {
            tasks.push(l.start());
        }

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
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
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
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                }),
        );
        tracing::info!(%addr, host = %cfg.host_id, "agent serving");
        Ok(Daemon {
            addr,
            engine,
            service,
            rotation,
            link,
            server_tls,
            shutdown: Some(stop_tx),
            server,
            stop_health,
            monitor,
            tasks,
        })
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

    /// Stops serving, gracefully. The supervised service keeps running: an agent restart or
    /// upgrade must not take it down.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(std::time::Duration::from_secs(10), &mut self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
            Err(_) => {
                tracing::warn!("gRPC server did not stop within 10 s");
                self.server.abort();
            }
        }
        self.stop_health.send_replace(true);
        if tokio::time::timeout(Duration::from_secs(5), &mut self.monitor)
            .await
            .is_err()
        {
            tracing::warn!("the health monitor did not stop within 5 s");
            self.monitor.abort();
        }
        for t in &self.tasks {
            t.abort();
        }
        tracing::info!("agent stopped; the service is left running");
    }
}

/// Keeps the host report (for the coordinators) up to date with the engine, the health fact and
/// the rotation state. The link sends a changed report at once.
async fn report_task(
    mut view: watch::Receiver<View>,
    mut health: watch::Receiver<Health>,
    mut rotation: watch::Receiver<Rotation>,
    report_tx: watch::Sender<HostReport>,
) {
    loop {
        let v = view.borrow_and_update().clone();
        let h = *health.borrow_and_update();
        let rot = *rotation.borrow_and_update();
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
        }
    }
}
