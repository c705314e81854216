//! What this node tells the outside world about its own health: systemd (`READY=1`, the
//! watchdog) and `grpc.health.v1`.
//!
//! Both follow the raft loop's own progress ([`Progress`]), not the liveness of some other task:
//! a process whose raft loop is stuck (a hung disk, a lock never released) still answers gRPC,
//! and would otherwise look healthy while agents stay attached to a leader that commits nothing.
//!
//! - `READY=1` is sent once the gRPC server is accepting connections and the raft loop has
//!   turned, not after a fixed delay.
//! - `STOPPING=1` is sent as soon as the shutdown signal fires, before the listeners drain, so
//!   systemd shows the node as deactivating rather than as hung while it finishes.
//! - From then on, every check (a quarter of the watchdog interval, at most a second): the node
//!   is *live* when the raft loop turned within `live_within`. Live, it is `SERVING` and the
//!   watchdog is fed; not live, it is `NOT_SERVING` and the watchdog is not fed, so systemd
//!   restarts the node once its `WatchdogSec` passes. The change is logged both ways.
//!
//! A panic on the raft thread aborts the process (see `raft::node`), so a loop that died takes
//! the node with it; this module covers the loop that is alive but stuck.

use crate::raft::Progress;
use hotdeploy_common::proto::coordinator_server::CoordinatorServer;
use std::future::Future;
use std::time::Duration;
use tonic::server::NamedService;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// How long the raft loop may go without a turn before the node counts as stuck. The loop turns
/// at least once per raft tick (100 ms by default); a second fdatasync-bound turn is already slow.
pub const LIVE_WITHIN: Duration = Duration::from_secs(5);

/// Where readiness and watchdog pings go.
pub trait Notifier: Send + Sync + 'static {
    fn ready(&self);
    fn watchdog(&self);
    /// The node has begun to shut down.
    fn stopping(&self);
    /// The watchdog interval systemd asked for, if any.
    fn watchdog_interval(&self) -> Option<Duration>;
}

/// systemd's notify socket (a no-op when not run by systemd).
pub struct Systemd;

impl Notifier for Systemd {
    fn ready(&self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }

    fn watchdog(&self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
    }

    fn stopping(&self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    }

    fn watchdog_interval(&self) -> Option<Duration> {
        let mut usec = 0u64;
        (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
            .then(|| Duration::from_micros(usec))
    }
}

/// The name the Coordinator service is reported under in `grpc.health.v1`.
pub fn coordinator_service_name() -> &'static str {
    <CoordinatorServer<crate::service::CoordinatorService> as NamedService>::NAME
}

/// Sets the overall (`""`) and the Coordinator service's health status.
pub async fn set_health(health: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    health
        .set_service_status(coordinator_service_name(), status)
        .await;
}

/// Waits for `serving` and the raft loop's first turn, says READY, then keeps the health status
/// and the watchdog in step with the raft loop until `shutdown`, when it says STOPPING.
pub async fn supervise(
    progress: Progress,
    health: HealthReporter,
    notifier: impl Notifier,
    serving: impl Future<Output = ()>,
    live_within: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let watchdog = notifier.watchdog_interval();
    let every = watchdog
        .map(|w| w / 4)
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let started = async {
        serving.await;
        while progress.turns() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        _ = started => {}
        _ = &mut shutdown => return say_stopping(&notifier),
    }
    set_health(&health, true).await;
    notifier.ready();
    tracing::info!("ready: serving, raft loop running");
    let mut live = true;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => return say_stopping(&notifier),
        }
        let now_live = progress.is_live(live_within);
        if now_live != live {
            if now_live {
                tracing::info!("the raft loop is turning again: SERVING, feeding the watchdog");
            } else {
                tracing::error!(
                    stalled = ?progress.since_last_turn(),
                    "the raft loop has not turned for over {live_within:?}: NOT_SERVING, and \
                     the systemd watchdog is no longer fed"
                );
            }
            set_health(&health, now_live).await;
            live = now_live;
        }
        if live && watchdog.is_some() {
            notifier.watchdog();
        }
    }
}

fn say_stopping(notifier: &impl Notifier) {
    notifier.stopping();
    tracing::info!("stopping: shutdown signalled");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::Liveness;
    use crate::raft::test_node;
    use crate::service::{self, CoordinatorService};
    use crate::state::{Command, Proposal};
    use std::sync::{Arc, Mutex};
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    #[derive(Clone, Default)]
    struct Recorder {
        events: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Recorder {
        fn count(&self, what: &str) -> usize {
            self.events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| **e == what)
                .count()
        }
    }

    impl Notifier for Recorder {
        fn ready(&self) {
            self.events.lock().unwrap().push("ready");
        }

        fn watchdog(&self) {
            self.events.lock().unwrap().push("watchdog");
        }

        fn stopping(&self) {
            self.events.lock().unwrap().push("stopping");
        }

        fn watchdog_interval(&self) -> Option<Duration> {
            Some(Duration::from_millis(40))
        }
    }

    async fn health(addr: std::net::SocketAddr) -> i32 {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = HealthClient::new(channel);
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status
    }

    async fn until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !ok().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// READY=1 only once the server accepts connections; then health and the watchdog follow
    /// the raft loop: a stuck loop is NOT_SERVING and starves the watchdog, and recovers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ready_health_and_watchdog_follow_the_raft_loop() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_node::config(dir.path(), &addr.to_string());
        let (node, peer) = test_node::start_with_peer(&cfg).await;
        let reporter = HealthReporter::new();
        let notifier = Recorder::default();
        let (serving, is_serving) = tokio::sync::oneshot::channel();
        tokio::spawn(supervise(
            node.progress(),
            reporter.clone(),
            notifier.clone(),
            async {
                let _ = is_serving.await;
            },
            Duration::from_millis(700),
            std::future::pending::<()>(),
        ));
        // The raft loop runs, but nothing serves yet: no READY.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(notifier.count("ready"), 0, "READY before the server serves");
        let liveness = Liveness::new(node.clone(), cfg.liveness.clone());
        tokio::spawn(service::serve(
            listener,
            None,
            64,
            CoordinatorService::new(node.clone(), liveness),
            peer,
            reporter,
            serving,
            std::future::pending::<()>(),
        ));
        until("READY", async || notifier.count("ready") == 1).await;
        assert_eq!(health(addr).await, Wire::Serving as i32);
        until("watchdog pings", async || notifier.count("watchdog") >= 3).await;

        // Stall the raft loop: hold the state's read lock while an entry must be applied.
        let held = node.clone();
        let (locked, is_locked) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let _guard = held.state();
            locked.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(3));
        });
        is_locked.recv().unwrap();
        let stalled = node.clone();
        tokio::spawn(async move {
            let p = Proposal::new(None, 1, "operator/t", Command::RemoveMember { id: 9 });
            let _ = stalled.propose(p, Duration::from_secs(30)).await;
        });
        until("NOT_SERVING", async || {
            health(addr).await == Wire::NotServing as i32
        })
        .await;
        let pings = notifier.count("watchdog");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            notifier.count("watchdog"),
            pings,
            "the watchdog was fed while the raft loop was stuck"
        );

        holder.join().unwrap();
        until("SERVING again", async || {
            health(addr).await == Wire::Serving as i32
        })
        .await;
        let pings = notifier.count("watchdog");
        until("pings again", async || {
            notifier.count("watchdog") > pings + 2
        })
        .await;
    }

    /// The shutdown signal ends the supervisor, which says STOPPING once, and never pings after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_says_stopping_once_and_ends_the_pings() {
        let addr = "127.0.0.1:0";
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_node::config(dir.path(), addr);
        let (node, _peer) = test_node::start_with_peer(&cfg).await;
        let notifier = Recorder::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let supervisor = tokio::spawn(supervise(
            node.progress(),
            HealthReporter::new(),
            notifier.clone(),
            async {},
            Duration::from_secs(5),
            async {
                let _ = stopped.await;
            },
        ));
        until("READY", async || notifier.count("ready") == 1).await;
        until("watchdog pings", async || notifier.count("watchdog") >= 2).await;
        assert_eq!(notifier.count("stopping"), 0, "STOPPING before shutdown");
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), supervisor)
            .await
            .expect("the supervisor ends on shutdown")
            .unwrap();
        assert_eq!(notifier.count("stopping"), 1);
        let events = notifier.events.lock().unwrap().clone();
        assert_eq!(
            events.last(),
            Some(&"stopping"),
            "pinged after STOPPING: {events:?}"
        );
    }
}
