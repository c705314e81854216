//! The rollout driver with the real engine (on a fake host) and the real link, against a fake
//! coordinator that assigns a step and records every `ReportStep`, slot call and phase.

use super::RolloutDriver;
use crate::deploy::tests::fake::Fake;
use crate::deploy::tests::linked::{linked, Linked};
use crate::deploy::Engine;
use crate::journal::{
    DeployKind, DeployRecord, HoldKind, Journal, Outcome, OutcomeReport, Phase, RolloutStep,
};
use crate::testing::coordinator::{slot, FakeCoordinator, ServeGuard};
use hotdeploy_common::proto::{Assignment, Release, StepPhase};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const GOOD: &str = "aa";

/// An agent: the engine on `ops`, the link to `coord`, reconciliation, recovery and the driver,
/// all on one shutdown token.
struct Agent {
    journal: Journal,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _engine: Engine,
    _coord: ServeGuard,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Cancels the token and waits for the driver and the link to end.
    async fn stop(mut self) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("a task did not stop within 5 s of shutdown")
                .unwrap();
        }
    }
}

async fn agent(ops: &Fake, coord: &FakeCoordinator, prepare: impl FnOnce(&Journal)) -> Agent {
    let Linked {
        engine,
        link,
        journal,
        shutdown,
        guard,
        dir,
    } = linked(ops, coord, prepare, false).await;
    engine.start_recovery().unwrap();
    let mut tasks = vec![link.start(shutdown.clone())];
    engine.start_reconcile();
    let driver = RolloutDriver::new(
        engine.clone(),
        Arc::new(link.clone()),
        link.subscribe_assignment(),
    )
    .with_jitter(Duration::ZERO);
    tasks.push(tokio::spawn(driver.run(shutdown.clone())));
    Agent {
        journal,
        shutdown,
        tasks,
        _engine: engine,
        _coord: guard,
        _dir: dir,
    }
}

/// Step `attempt` of rollout r1: v2 from `sha256`.
fn step(attempt: u32, sha256: &str, phase: StepPhase, may_deploy: bool) -> Assignment {
    Assignment {
        rollout: "r1".into(),
        release: Some(Release {
            id: "v2".into(),
            artifact_url: "file:///x/v2.tar.gz".into(),
            sha256: sha256.into(),
            signature: String::new(),
        }),
        attempt,
        phase: phase as i32,
        canary: true,
        may_deploy,
        first_install: false,
        auto_rollback: true,
    }
}

/// Logs the coordinator's events into the host's effect log, so orders can be asserted.
fn log_events_into(coord: &FakeCoordinator, ops: &Fake) {
    let ops = ops.clone();
    coord.state().on_event = Some(Arc::new(move |e| ops.log(format!("coordinator {e}"))));
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn reports(coord: &FakeCoordinator) -> Vec<String> {
    coord
        .state()
        .steps
        .iter()
        .map(|(_, attempt, r, _)| format!("{r}@{attempt}"))
        .collect()
}

fn has_report(coord: &FakeCoordinator, report: &str) -> bool {
    coord.state().steps.iter().any(|(_, _, r, _)| r == report)
}

fn pos(effects: &[String], e: &str) -> usize {
    effects
        .iter()
        .position(|x| x == e)
        .unwrap_or_else(|| panic!("{e} missing from {effects:?}"))
}

fn last_report(journal: &Journal) -> Option<OutcomeReport> {
    journal
        .deploy()
        .unwrap()
        .and_then(|r| r.step.map(|s| s.report))
}

#[tokio::test]
async fn stages_at_once_deploys_once_admitted_and_reports_the_outcome_before_the_release() {
    let ops = Fake::with(Some("v1"), None, &[true]);
    let coord = FakeCoordinator::default();
    coord.state().assignment = Some(step(1, GOOD, StepPhase::Pending, false));
    log_events_into(&coord, &ops);
    let a = agent(&ops, &coord, |_| {}).await;

    // Staged without the lock, and nothing more while not admitted.
    wait_for("STAGED", || has_report(&coord, "staged")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        reports(&coord),
        ["staged@1"],
        "a quick stage is reported staged alone"
    );
    assert!(ops.effects().contains(&"stage v2".to_string()));
    assert!(
        coord.state().acquires.is_empty(),
        "no slot before admission"
    );
    assert!(!ops.effects().contains(&"drain".to_string()));

    // Admitted: the deploy runs, under a canary slot for r1.
    coord.state().assignment = Some(step(1, GOOD, StepPhase::Waiting, true));
    wait_for("the slot released", || !coord.state().released.is_empty()).await;
    wait_for("the outcome journaled as sent", || {
        last_report(&a.journal) == Some(OutcomeReport::Sent)
    })
    .await;
    assert_eq!(reports(&coord), ["staged@1", "succeeded@1"]);
    assert_eq!(
        coord.state().acquire_rollouts,
        [("r1".to_string(), true)],
        "one acquire, for r1, as a canary"
    );
    let phases: Vec<String> = coord
        .state()
        .reports
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(phases, ["draining", "swapped", "restarted", "verifying"]);
    assert_eq!(coord.state().step_releases.last().unwrap(), "v2");
    let e = ops.effects();
    assert!(
        pos(&e, "coordinator step succeeded") < pos(&e, "coordinator release 41"),
        "the outcome goes before the release: {e:?}"
    );
    assert!(pos(&e, "undrain") < pos(&e, "coordinator step succeeded"));
    assert_eq!(
        coord.state().step_release_tokens.last(),
        Some(&41),
        "the outcome names the slot"
    );
    assert!(
        coord.state().release_calls.is_empty(),
        "released with the outcome, not by a ReleaseSlot of its own"
    );
    assert_eq!(ops.current().as_deref(), Some("v2"));

    // The same step is never deployed twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(coord.state().acquires.len(), 1);
    a.stop().await;
}

/// A stage that takes longer than `STAGING_REPORT_AFTER` is reported `STAGING` while it
/// runs, then `STAGED`.
#[tokio::test]
async fn a_slow_stage_is_reported_staging_while_it_runs() {
    let ops = Fake::with(Some("v1"), None, &[true]);
    let gate = Arc::new(tokio::sync::Notify::new());
    ops.set(|s| s.block_stage = Some(gate.clone()));
    let coord = FakeCoordinator::default();
    coord.state().assignment = Some(step(1, GOOD, StepPhase::Pending, false));
    let a = agent(&ops, &coord, |_| {}).await;

    wait_for("STAGING", || has_report(&coord, "staging")).await;
    assert_eq!(reports(&coord), ["staging@1"], "staging still runs");
    assert!(!ops.effects().contains(&"stage v2".to_string()));
    gate.notify_one();
    wait_for("STAGED", || has_report(&coord, "staged")).await;
    assert_eq!(reports(&coord), ["staging@1", "staged@1"]);
    a.stop().await;
}

#[tokio::test]
async fn a_staging_failure_touches_nothing_and_reports_failed_with_its_error() {
    let ops = Fake::with(Some("v1"), None, &[true]);
    let coord = FakeCoordinator::default();
    coord.state().assignment = Some(step(1, "bad-digest", StepPhase::Pending, true));
    let a = agent(&ops, &coord, |_| {}).await;

    wait_for("FAILED", || has_report(&coord, "failed")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reports(&coord), ["failed@1"], "reported once");
    let error = coord.state().steps[0].3.clone();
    assert!(
        error.contains("staging v2 failed") && error.contains("sha256 mismatch"),
        "{error}"
    );
    assert!(coord.state().acquires.is_empty(), "no slot taken");
    let e = ops.effects();
    assert!(
        !e.iter()
            .any(|x| x == "drain" || x.starts_with("set_current") || x.starts_with("restart")),
        "nothing live touched: {e:?}"
    );
    assert_eq!(ops.current().as_deref(), Some("v1"));
    a.stop().await;
}

#[tokio::test]
async fn a_failed_verify_rolls_back_and_reports_rolled_back_with_the_reason_before_the_release() {
    let ops = Fake::with(Some("v1"), None, &[false, true]);
    let coord = FakeCoordinator::default();
    coord.state().assignment = Some(step(1, GOOD, StepPhase::Waiting, true));
    log_events_into(&coord, &ops);
    let a = agent(&ops, &coord, |_| {}).await;

    wait_for("the slot released", || !coord.state().released.is_empty()).await;
    assert_eq!(reports(&coord), ["staged@1", "rolled_back@1"]);
    let error = coord.state().steps[1].3.clone();
    assert!(error.contains("verify of v2 failed"), "{error}");
    assert_eq!(coord.state().step_releases[1], "v1", "back on v1");
    let e = ops.effects();
    assert!(pos(&e, "coordinator step rolled_back") < pos(&e, "coordinator release 41"));
    assert_eq!(ops.current().as_deref(), Some("v1"));
    a.stop().await;
}

/// A coordinator that takes the outcome alone (it predates the combined entry, or a member of
/// its cluster does) answers "not released": the agent releases the slot itself, after the
/// outcome, and nothing is left held.
#[tokio::test]
async fn an_outcome_taken_alone_is_followed_by_a_release_of_its_own() {
    let ops = Fake::with(Some("v1"), None, &[true]);
    let coord = FakeCoordinator::default();
    coord.state().old_report_step = true;
    coord.state().assignment = Some(step(1, GOOD, StepPhase::Waiting, true));
    log_events_into(&coord, &ops);
    let a = agent(&ops, &coord, |_| {}).await;

    wait_for("the slot released", || !coord.state().released.is_empty()).await;
    assert_eq!(reports(&coord), ["staged@1", "succeeded@1"]);
    assert_eq!(coord.state().release_calls, [41], "one ReleaseSlot");
    assert!(coord.state().held.is_none(), "nothing left held");
    let e = ops.effects();
    assert!(
        pos(&e, "coordinator step succeeded") < pos(&e, "coordinator release 41"),
        "the outcome still goes first: {e:?}"
    );
    a.stop().await;
}

#[tokio::test]
async fn without_auto_rollback_a_failed_verify_keeps_the_slot_and_reports_failed() {
    let ops = Fake::with(Some("v1"), None, &[false]);
    let coord = FakeCoordinator::default();
    let mut s = step(1, GOOD, StepPhase::Waiting, true);
    s.auto_rollback = false;
    coord.state().assignment = Some(s);
    let a = agent(&ops, &coord, |_| {}).await;

    wait_for("FAILED", || has_report(&coord, "failed")).await;
    let error = coord.state().steps.last().unwrap().3.clone();
    assert!(error.contains("not rolled back"), "{error}");
    assert!(coord.state().released.is_empty(), "the slot is kept");
    assert_eq!(
        a.journal.hold().unwrap().map(|h| h.kind),
        Some(HoldKind::VerifyFailed)
    );
    assert_eq!(ops.current().as_deref(), Some("v2"), "not rolled back");
    a.stop().await;
}

#[tokio::test]
async fn a_fenced_deploy_touches_nothing_more_and_reports_fenced() {
    let ops = Fake::with(Some("v1"), None, &[true]);
    let coord = FakeCoordinator::default();
    coord.state().assignment = Some(step(1, GOOD, StepPhase::Waiting, true));
    // The first fenced phase (draining) finds the token stale.
    coord
        .state()
        .report_faults
        .push_back(tonic::Code::FailedPrecondition);
    let a = agent(&ops, &coord, |_| {}).await;

    wait_for("FENCED", || has_report(&coord, "fenced")).await;
    let error = coord.state().steps.last().unwrap().3.clone();
    assert!(error.contains("stale"), "{error}");
    assert!(!ops.effects().contains(&"drain".to_string()));
    assert_eq!(ops.current().as_deref(), Some("v1"));
    a.stop().await;
}

#[tokio::test]
async fn a_slot_not_granted_for_the_rollout_reports_nothing_and_is_asked_again() {
    let ops = Fake::with(Some("v1"), None, &[true]);
    let coord = FakeCoordinator::default();
    coord.state().assignment = Some(step(1, GOOD, StepPhase::Waiting, true));
    coord
        .state()
        .acquire_faults
        .push_back(tonic::Code::FailedPrecondition);
    let a = agent(&ops, &coord, |_| {}).await;

    wait_for("SUCCEEDED", || has_report(&coord, "succeeded")).await;
    assert_eq!(reports(&coord), ["staged@1", "succeeded@1"], "no failure");
    assert_eq!(coord.state().acquire_rollouts.len(), 2, "asked again");
    a.stop().await;
}

#[tokio::test]
async fn an_outcome_never_reported_before_a_restart_is_reported_at_start() {
    let ops = Fake::with(Some("v2"), Some("v1"), &[]);
    let coord = FakeCoordinator::default();
    coord.state().assignment = Some(step(1, GOOD, StepPhase::Verifying, true));
    let a = agent(&ops, &coord, |j| {
        let mut rec = DeployRecord::new(DeployKind::Deploy, "r1", Some("v1".into()), "v2", 1);
        rec.phase = Phase::Released;
        rec.outcome = Some(Outcome::Succeeded);
        rec.finished_at_ms = Some(2);
        rec.step = Some(RolloutStep::new(1, false, true));
        j.put_deploy(&rec).unwrap();
    })
    .await;

    wait_for("SUCCEEDED", || has_report(&coord, "succeeded")).await;
    wait_for("the report journaled", || {
        last_report(&a.journal) == Some(OutcomeReport::Sent)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        reports(&coord),
        ["succeeded@1"],
        "reported once, nothing redone"
    );
    assert!(coord.state().acquires.is_empty());
    assert!(!ops.effects().iter().any(|e| e.starts_with("stage")));
    a.stop().await;
}

#[tokio::test]
async fn recovery_reports_the_outcome_of_a_rollout_deploy_before_it_releases() {
    let ops = Fake::with(Some("v2"), Some("v1"), &[]);
    let coord = FakeCoordinator::holding(Some(slot(41, "deploy", "verifying")));
    coord.state().assignment = Some(step(1, GOOD, StepPhase::Verifying, true));
    log_events_into(&coord, &ops);
    let a = agent(&ops, &coord, |j| {
        let mut rec = DeployRecord::new(DeployKind::Deploy, "r1", Some("v1".into()), "v2", 1);
        rec.phase = Phase::Undraining;
        rec.token = 41;
        rec.outcome = Some(Outcome::Succeeded);
        rec.drained_at_ms = Some(1);
        rec.step = Some(RolloutStep::new(1, false, true));
        j.put_deploy(&rec).unwrap();
    })
    .await;

    wait_for("the slot released", || !coord.state().released.is_empty()).await;
    let e = ops.effects();
    assert!(
        pos(&e, "coordinator step succeeded") < pos(&e, "coordinator release 41"),
        "{e:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        reports(&coord),
        ["succeeded@1"],
        "no second deploy of the step"
    );
    a.stop().await;
}
