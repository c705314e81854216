//! The monitor against a real `exec` probe whose answer a test sets with files: `fail` makes
//! it exit 1, `hang` makes it sleep far past its timeout.

use super::*;
use hotdeploy_common::config::{HealthConfig, VerifyConfig};
use hotdeploy_common::proto::Health;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    stop: CancellationToken,
    rounds: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Running {
    fn rounds(&self) -> u64 {
        *self.rounds.borrow()
    }

    async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("the monitor did not stop within 2 s of shutdown")
            .expect("monitor task");
    }
}

fn config(interval: Duration) -> HealthConfig {
    HealthConfig {
        interval,
        unhealthy_after: 3,
        healthy_after: 2,
        probe_timeout: Some(Duration::from_millis(300)),
        ..HealthConfig::default()
    }
}

fn verify(dir: &Path) -> VerifyConfig {
    let d = dir.display();
    VerifyConfig {
        exec: vec![
            "sh".into(),
            "-c".into(),
            format!("if [ -e {d}/hang ]; then sleep 30; fi; [ ! -e {d}/fail ]"),
        ],
        ..VerifyConfig::default()
    }
}

fn start(
    dir: &Path,
    interval: Duration,
    fact: &Arc<HealthFact>,
    alive: Option<watch::Receiver<bool>>,
) -> Running {
    let m = HealthMonitor::new(&config(interval), &verify(dir), fact.clone(), alive);
    let rounds = m.subscribe_rounds();
    let stop = CancellationToken::new();
    let task = tokio::spawn(m.run(stop.clone()));
    Running { stop, rounds, task }
}

fn touch(dir: &Path, name: &str) {
    std::fs::write(dir.join(name), b"").unwrap();
}

fn remove(dir: &Path, name: &str) {
    std::fs::remove_file(dir.join(name)).unwrap();
}

async fn wait_health(fact: &HealthFact, want: Health, within: Duration) {
    let mut rx = fact.subscribe();
    tokio::time::timeout(within, rx.wait_for(|h| *h == want))
        .await
        .unwrap_or_else(|_| panic!("health not {want:?} within {within:?}: {:?}", fact.get()))
        .unwrap();
}

async fn wait_rounds(m: &Running, n: u64) {
    let mut rx = m.rounds.clone();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|r| *r >= n))
        .await
        .unwrap_or_else(|_| panic!("fewer than {n} rounds in 10 s"))
        .unwrap();
}

#[tokio::test]
async fn failing_probes_make_the_host_unhealthy_and_passing_ones_bring_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let fact = HealthFact::in_memory(Health::Healthy);
    let m = start(dir.path(), Duration::from_millis(50), &fact, None);
    wait_rounds(&m, 2).await;
    assert_eq!(fact.get(), Health::Healthy);

    touch(dir.path(), "fail");
    let from = m.rounds();
    wait_health(&fact, Health::Unhealthy, Duration::from_secs(5)).await;
    // At least unhealthy_after rounds, and the one in flight may have passed.
    assert!(
        m.rounds() >= from + 3,
        "unhealthy after {} rounds",
        m.rounds() - from
    );

    remove(dir.path(), "fail");
    let from = m.rounds();
    wait_health(&fact, Health::Healthy, Duration::from_secs(5)).await;
    assert!(m.rounds() >= from + 2);
    m.shutdown().await;
}

#[tokio::test]
async fn a_hung_probe_is_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let fact = HealthFact::in_memory(Health::Healthy);
    let m = start(dir.path(), Duration::from_millis(50), &fact, None);
    wait_rounds(&m, 1).await;
    touch(dir.path(), "hang");
    let t0 = std::time::Instant::now();
    // Three rounds of at most probe_timeout (300 ms) each, plus the intervals.
    wait_health(&fact, Health::Unhealthy, Duration::from_secs(5)).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t0.elapsed()
    );
    remove(dir.path(), "hang");
    wait_health(&fact, Health::Healthy, Duration::from_secs(5)).await;
    m.shutdown().await;
}

#[tokio::test]
async fn a_dead_exec_child_is_unhealthy_at_once_and_must_pass_rounds_to_return() {
    let dir = tempfile::tempdir().unwrap();
    let fact = HealthFact::in_memory(Health::Healthy);
    let (alive_tx, alive_rx) = watch::channel(true);
    // Rounds are far apart: only the death can explain a quick change.
    let m = start(dir.path(), Duration::from_secs(30), &fact, Some(alive_rx));
    wait_rounds(&m, 1).await;
    alive_tx.send_replace(false);
    wait_health(&fact, Health::Unhealthy, Duration::from_secs(1)).await;
    assert_eq!(m.rounds(), 1, "no probe round ran to decide it");
    m.shutdown().await;

    // Alive again: `healthy_after` good rounds bring it back, not the flag alone.
    let m = start(
        dir.path(),
        Duration::from_millis(50),
        &fact,
        Some(alive_tx.subscribe()),
    );
    alive_tx.send_replace(true);
    wait_health(&fact, Health::Healthy, Duration::from_secs(5)).await;
    assert!(m.rounds() >= 2, "{} rounds", m.rounds());
    m.shutdown().await;
}

#[tokio::test]
async fn a_child_that_dies_mid_round_is_unhealthy_without_waiting_for_the_round() {
    let dir = tempfile::tempdir().unwrap();
    touch(dir.path(), "hang");
    let fact = HealthFact::in_memory(Health::Healthy);
    let (alive_tx, alive_rx) = watch::channel(true);
    let mut cfg = config(Duration::from_millis(50));
    cfg.probe_timeout = Some(Duration::from_secs(20));
    let m = HealthMonitor::new(&cfg, &verify(dir.path()), fact.clone(), Some(alive_rx));
    let stop = CancellationToken::new();
    let task = tokio::spawn(m.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    alive_tx.send_replace(false);
    wait_health(&fact, Health::Unhealthy, Duration::from_secs(1)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("stopped mid-round")
        .unwrap();
}

#[tokio::test]
async fn the_monitor_pauses_while_the_engine_owns_the_fact_and_resumes_from_its_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let fact = HealthFact::in_memory(Health::Healthy);
    let m = start(dir.path(), Duration::from_millis(50), &fact, None);
    wait_rounds(&m, 1).await;

    let claim = fact.claim();
    // Let a round that was in flight finish.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let paused_at = m.rounds();
    touch(dir.path(), "fail");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(m.rounds(), paused_at, "the monitor probed during a deploy");
    assert_eq!(
        fact.get(),
        Health::Healthy,
        "the monitor overrode the engine"
    );

    // The engine hands back `unhealthy`; the probes pass again and bring it back.
    remove(dir.path(), "fail");
    claim.release(Some(Health::Unhealthy));
    assert_eq!(fact.get(), Health::Unhealthy);
    wait_health(&fact, Health::Healthy, Duration::from_secs(5)).await;
    assert!(m.rounds() >= paused_at + 2);
    m.shutdown().await;
}

#[tokio::test]
async fn an_unprovisioned_host_is_never_probed_nor_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let fact = HealthFact::in_memory(Health::Unprovisioned);
    let m = start(dir.path(), Duration::from_millis(20), &fact, None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fact.get(), Health::Unprovisioned);
    assert_eq!(m.rounds(), 0);
    // A first deploy's verify is what provisions it; then the monitor takes over.
    fact.claim().release(Some(Health::Healthy));
    touch(dir.path(), "fail");
    wait_health(&fact, Health::Unhealthy, Duration::from_secs(5)).await;
    m.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_the_task_in_the_middle_of_a_hung_round() {
    let dir = tempfile::tempdir().unwrap();
    touch(dir.path(), "hang");
    let fact = HealthFact::in_memory(Health::Healthy);
    let mut cfg = config(Duration::from_millis(50));
    cfg.probe_timeout = Some(Duration::from_secs(30));
    let m = HealthMonitor::new(&cfg, &verify(dir.path()), fact.clone(), None);
    let rounds = m.subscribe_rounds();
    let stop = CancellationToken::new();
    let task = tokio::spawn(m.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the monitor did not stop within 2 s")
        .unwrap();
    assert_eq!(*rounds.borrow(), 0, "the hung round was counted as run");
    // The agent's token: a child of it (as any task may take) is cancelled with it, and a
    // token cancelled before the monitor starts ends it before its first round.
    let agent = CancellationToken::new();
    let m = HealthMonitor::new(&cfg, &verify(dir.path()), fact.clone(), None);
    let task = tokio::spawn(m.run(agent.child_token()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the monitor did not stop when the agent's token was cancelled")
        .unwrap();
    let m = HealthMonitor::new(&cfg, &verify(dir.path()), fact, None);
    let rounds = m.subscribe_rounds();
    tokio::time::timeout(Duration::from_secs(2), m.run(agent))
        .await
        .expect("a monitor started after shutdown did not end at once");
    assert_eq!(*rounds.borrow(), 0, "it probed after shutdown");
}

#[tokio::test]
async fn an_exec_service_never_started_is_not_vouched_for() {
    // The supervisor's flag before anything was started or adopted: not alive.
    let dir = tempfile::tempdir().unwrap();
    let cfg = hotdeploy_common::config::ServiceConfig {
        name: "app".into(),
        root: dir.path().to_path_buf(),
        control: hotdeploy_common::config::ServiceControl::Exec,
        exec: vec!["sleep".into(), "100".into()],
        unit: None,
        stop: Vec::new(),
        start: Vec::new(),
        stop_timeout: Duration::from_secs(5),
        keep_releases: 5,
        env: Default::default(),
    };
    let svc = crate::service::ServiceController::new(&cfg, dir.path(), Arc::new(|_| {}));
    let fact = HealthFact::in_memory(Health::Healthy);
    // The probes would pass: only the flag can make it unhealthy.
    let m = start(
        dir.path(),
        Duration::from_secs(30),
        &fact,
        Some(svc.subscribe_alive()),
    );
    wait_health(&fact, Health::Unhealthy, Duration::from_secs(2)).await;
    m.shutdown().await;
}
