//! Engine tests with a fake host and a fake lock that record every effect in order
//! ([`fake`]), and with the real link against a fake coordinator ([`with_link`]).

use super::*;
use crate::health::{HealthFact, Owner};
use crate::journal::{DeployKind, DeployRecord, Journal, Outcome, Phase};
use hotdeploy_common::proto::Rotation;

pub(crate) mod fake;
pub(crate) mod linked;
mod maint;
mod transitions;
mod with_link;

use fake::Fake;

fn engine(fake: &Fake, dir: &std::path::Path, with_lock: bool) -> Engine {
    engine_on(fake, Journal::open(dir, "web-1").unwrap(), with_lock)
}

fn engine_on(fake: &Fake, journal: Journal, with_lock: bool) -> Engine {
    engine_with(fake, journal, with_lock, CancellationToken::new())
}

fn engine_with(
    fake: &Fake,
    journal: Journal,
    with_lock: bool,
    shutdown: CancellationToken,
) -> Engine {
    Engine::new(EngineParts {
        host_id: "web-1".into(),
        ops: Arc::new(fake.clone()),
        lock: with_lock.then(|| Arc::new(fake.clone()) as Arc<dyn SlotLock>),
        journal,
        timing: Timing::default(),
        health: fake.fact_or_default(),
        shutdown,
    })
    .unwrap()
}

fn params(id: &str, sha: &str) -> DeployParams {
    DeployParams {
        release: id.into(),
        artifact: ArtifactRef {
            url: format!("file:///x/{id}.tar.gz"),
            sha256: sha.into(),
            signature: None,
        },
        rollout: String::new(),
        step: None,
    }
}

/// The effects that matter for ordering (hooks and reports left out unless asked).
fn core(effects: &[String]) -> Vec<String> {
    effects
        .iter()
        .filter(|e| !e.starts_with("hook") && !e.starts_with("report") && !e.starts_with("claim"))
        .cloned()
        .collect()
}

fn pos(effects: &[String], e: &str) -> usize {
    effects
        .iter()
        .position(|x| x == e)
        .unwrap_or_else(|| panic!("{e} missing from {effects:?}"))
}

#[tokio::test]
async fn happy_path_orders_effects() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[true]);
    let eng = engine(&fake, dir.path(), true);
    let (outcome, err) = eng
        .deploy(params("v2", "aa"), Progress::none())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded, "{err}");
    let e = fake.effects();
    assert_eq!(
        core(&e),
        [
            "stage v2",
            "acquire deploy",
            "drain",
            "set_current v2",
            "restart v2",
            "verify ok",
            "set_previous v1",
            "undrain",
            "release 7",
            "gc"
        ]
    );
    // Each disruptive step is fenced before it is taken.
    assert!(pos(&e, "report draining") < pos(&e, "drain"));
    assert!(pos(&e, "report swapped") < pos(&e, "set_current v2"));
    assert!(pos(&e, "report restarted") < pos(&e, "restart v2"));
    assert!(pos(&e, "hook BeforeDrain") < pos(&e, "drain"));
    assert!(pos(&e, "hook BeforeSwap") < pos(&e, "set_current v2"));
    // Gate hooks run before the fence, so no hook sits between a fence and its step.
    assert!(pos(&e, "hook BeforeDrain") < pos(&e, "report draining"));
    assert!(pos(&e, "hook BeforeSwap") < pos(&e, "report swapped"));
    let v = eng.view();
    assert_eq!(v.phase, "idle");
    assert_eq!(v.last_outcome, Some(Outcome::Succeeded));
    assert_eq!(v.token, 0);
}

/// With no `before_drain` hook, the deploy asks for the drain's fence with its grant. When the
/// coordinators take it, no separate `draining` report is sent: the grant is the fence, and the
/// drain follows it. The swap and the restart are fenced as before.
#[tokio::test]
async fn a_grant_that_fences_the_drain_takes_the_place_of_its_report() {
    let (_, e) = deploy_v2_over_v1(|s| s.grant_fences_draining = true, "the deploy hung").await;
    assert!(
        !e.iter().any(|x| x == "report draining"),
        "the grant fenced the drain: {e:?}"
    );
    assert!(pos(&e, "acquire deploy (draining fenced)") < pos(&e, "drain"));
    assert!(pos(&e, "report swapped") < pos(&e, "set_current v2"));
    assert!(pos(&e, "report restarted") < pos(&e, "restart v2"));
}

/// A `before_drain` hook may run for a long time (and outlive the slot), so a deploy with one
/// never lets its grant fence the drain: it fences after the hook, right before the drain.
#[tokio::test]
async fn a_before_drain_hook_keeps_the_drain_fenced_after_it() {
    let setup = |s: &mut fake::State| {
        s.grant_fences_draining = true;
        s.hooks = vec![Hook::BeforeDrain];
    };
    let (_, e) = deploy_v2_over_v1(setup, "the deploy hung").await;
    assert!(e.iter().any(|x| x == "acquire deploy"), "not asked: {e:?}");
    assert!(pos(&e, "hook BeforeDrain") < pos(&e, "report draining"));
    assert!(pos(&e, "report draining") < pos(&e, "drain"));
}

#[tokio::test]
async fn verify_failure_rolls_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[false, true]);
    let eng = engine(&fake, dir.path(), true);
    let (outcome, err) = eng
        .deploy(params("v2", "aa"), Progress::none())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::RolledBack);
    assert!(err.contains("verify of v2 failed"), "{err}");
    let e = fake.effects();
    assert_eq!(
        core(&e),
        [
            "stage v2",
            "acquire deploy",
            "drain",
            "set_current v2",
            "restart v2",
            "verify fail",
            "set_current v1",
            "restart v1",
            "verify ok",
            "undrain",
            "release 7"
        ]
    );
    assert!(pos(&e, "report rolling_back") < pos(&e, "set_current v1"));
    assert!(pos(&e, "hook OnRollback") < pos(&e, "set_current v1"));
    assert_eq!(fake.current().as_deref(), Some("v1"));
    assert!(!eng.view().verify_failed);
}

#[tokio::test]
async fn failed_rollback_keeps_the_slot_out_of_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[false, false]);
    let eng = engine(&fake, dir.path(), true);
    let (outcome, err) = eng
        .deploy(params("v2", "aa"), Progress::none())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Failed);
    assert!(err.contains("also failed"), "{err}");
    let e = fake.effects();
    assert!(!e.contains(&"undrain".to_owned()), "{e:?}");
    assert!(!e.iter().any(|x| x.starts_with("release")), "{e:?}");
    let v = eng.view();
    assert!(v.verify_failed);
    assert_eq!(v.token, 7);
    assert_eq!(
        v.hold.as_ref().map(|h| h.kind),
        Some(HoldKind::VerifyFailed)
    );
    // A later deploy repairs the host, under the same (re-entrant) slot, and clears the hold.
    fake.0.lock().unwrap().verify = [true].into_iter().collect();
    let (outcome, err) = eng
        .deploy(params("v3", "aa"), Progress::none())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded, "{err}");
    assert!(eng.view().hold.is_none());
    assert!(!eng.view().verify_failed);
}

#[tokio::test]
async fn stale_token_stops_everything_disruptive() {
    for stale in [Phase::Draining, Phase::Swapped, Phase::Restarted] {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::with(Some("v1"), None, &[true]);
        fake.0.lock().unwrap().stale_at = Some(stale);
        let eng = engine(&fake, dir.path(), true);
        let (outcome, err) = eng
            .deploy(params("v2", "aa"), Progress::none())
            .unwrap()
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Fenced, "{stale}");
        assert!(err.contains("stale"), "{err}");
        let e = fake.effects();
        let at = pos(&e, &format!("report {stale}"));
        // The restart's fence goes out behind the swap's (refused too, it changes nothing).
        let sent_behind = |x: &String| stale == Phase::Swapped && x == "report restarted";
        let after: Vec<_> = e[at + 1..].iter().filter(|x| !sent_behind(x)).collect();
        assert!(after.is_empty(), "after a stale {stale}: {after:?}");
        assert_eq!(eng.view().last_outcome, Some(Outcome::Fenced));
    }
}

/// The deploy's verdict, if it comes within 10 s (else the test fails, saying `why`).
async fn within_10_s<F, T, E>(run: F, why: &str) -> T
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Debug,
{
    tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .expect(why)
        .unwrap()
}

/// Deploys v2 over v1 (whose verify passes), with a lock, on a fake that `setup` prepares; the
/// deploy must succeed within 10 s (else the test fails, saying `why`). Answers the fake and its
/// effects.
async fn deploy_v2_over_v1(setup: impl FnOnce(&mut fake::State), why: &str) -> (Fake, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[true]);
    fake.set(setup);
    let eng = engine(&fake, dir.path(), true);
    let run = eng.deploy(params("v2", "aa"), Progress::none()).unwrap();
    let (outcome, err) = within_10_s(run, why).await;
    assert_eq!(outcome, Outcome::Succeeded, "{err}");
    let e = fake.effects();
    (fake, e)
}

/// The `verifying` phase report commits while the verify runs, not before it: a fence that
/// answers only once a verify has begun still lets the deploy succeed (waiting for it first
/// would wait forever).
#[tokio::test]
async fn the_verifying_fence_overlaps_the_verify() {
    let setup = |s: &mut fake::State| s.verifying_waits_for_verify = true;
    let (fake, e) = deploy_v2_over_v1(setup, "the verify waited for the verifying fence").await;
    assert!(
        pos(&e, "report restarted") < pos(&e, "verify ok"),
        "the restart is fenced before the verify: {e:?}"
    );
    assert!(pos(&e, "report verifying") < pos(&e, "undrain"), "{e:?}");
    assert_eq!(fake.current().as_deref(), Some("v2"));
}

/// The restart's fence is sent behind the swap's, while that one is still in flight, not after
/// the swap: a `swapped` report that answers only once the `restarted` one was sent still lets
/// the deploy succeed (sending them one after the other would wait forever). Each still
/// answers before its step.
#[tokio::test]
async fn the_restart_fence_is_sent_while_the_swap_fence_commits() {
    let setup = |s: &mut fake::State| s.swapped_waits_for_restarted = true;
    let (_, e) = deploy_v2_over_v1(setup, "the swap's fence waited for the restart's").await;
    assert!(
        pos(&e, "report swapped") < pos(&e, "report restarted"),
        "{e:?}"
    );
    assert!(
        pos(&e, "report restarted") < pos(&e, "set_current v2"),
        "{e:?}"
    );
    assert!(pos(&e, "set_current v2") < pos(&e, "restart v2"), "{e:?}");
}

/// A stale token found by the overlapped `verifying` fence stops the deploy at once, even while
/// the verify is still running (here it never ends): nothing more happens under the slot.
#[tokio::test]
async fn a_stale_verifying_fence_stops_a_verify_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[true]);
    fake.set(|s| {
        s.stale_at = Some(Phase::Verifying);
        s.hang_verify = true;
    });
    let eng = engine(&fake, dir.path(), true);
    let run = eng.deploy(params("v2", "aa"), Progress::none()).unwrap();
    let (outcome, err) =
        within_10_s(run, "a stale fence waited for a verify that never ends").await;
    assert_eq!(outcome, Outcome::Fenced);
    assert!(err.contains("stale"), "{err}");
    let e = fake.effects();
    let after: Vec<_> = e[pos(&e, "report verifying") + 1..]
        .iter()
        .filter(|x| *x != "verify ok")
        .cloned()
        .collect();
    assert!(after.is_empty(), "after a stale verifying: {after:?}");
    assert_eq!(fake.previous(), None, "previous moved under a stale token");
}

#[tokio::test]
async fn first_deploy_needs_no_slot_and_no_drain() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(None, None, &[true]);
    let eng = engine(&fake, dir.path(), true);
    let (outcome, _) = eng
        .deploy(params("v1", "aa"), Progress::none())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(
        core(&fake.effects()),
        ["stage v1", "set_current v1", "restart v1", "verify ok"]
    );
    assert!(!fake.effects().iter().any(|e| e.starts_with("report")));
}

#[tokio::test]
async fn failed_first_deploy_stops_and_unprovisions() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(None, None, &[false]);
    let eng = engine(&fake, dir.path(), false);
    let (outcome, _) = eng
        .deploy(params("v1", "aa"), Progress::none())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Failed);
    assert_eq!(
        core(&fake.effects()),
        [
            "stage v1",
            "set_current v1",
            "restart v1",
            "verify fail",
            "stop",
            "clear_current"
        ]
    );
    assert_eq!(fake.current(), None);
}

#[tokio::test]
async fn staging_error_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[]);
    let eng = engine(&fake, dir.path(), true);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (outcome, err) = eng
        .deploy(params("v2", "bad"), Progress::to(tx))
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Failed);
    assert!(err.contains("sha256"), "{err}");
    assert_eq!(fake.effects(), ["stage v2"]);
    let mut last = None;
    while let Ok(m) = rx.try_recv() {
        last = Some(m);
    }
    let last = last.unwrap();
    assert!(last.done);
    assert_eq!(
        last.outcome,
        hotdeploy_common::proto::Outcome::Failed as i32
    );
}

#[tokio::test]
async fn standalone_drains_without_slots() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[true]);
    let eng = engine(&fake, dir.path(), false);
    let (outcome, _) = eng
        .deploy(params("v2", "aa"), Progress::none())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    let e = fake.effects();
    assert!(!e
        .iter()
        .any(|x| x.starts_with("acquire") || x.starts_with("report")));
    assert!(pos(&e, "drain") < pos(&e, "set_current v2"));
    assert!(pos(&e, "verify ok") < pos(&e, "undrain"));
}

#[tokio::test]
async fn a_second_deploy_is_refused_while_one_runs() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[true]);
    let gate = Arc::new(tokio::sync::Notify::new());
    fake.0.lock().unwrap().block_stage = Some(gate.clone());
    let eng = engine(&fake, dir.path(), true);
    let first = eng.deploy(params("v2", "aa"), Progress::none()).unwrap();
    let err = eng
        .deploy(params("v3", "aa"), Progress::none())
        .err()
        .unwrap();
    assert_eq!(err.to_string(), "deploy of v2 in progress");
    assert!(matches!(
        eng.drain(Purpose::Drain, "x"),
        Err(EngineError::Busy(_))
    ));
    fake.0.lock().unwrap().block_stage = None;
    gate.notify_one();
    assert_eq!(first.await.unwrap().0, Outcome::Succeeded);
    assert!(eng.deploy(params("v3", "aa"), Progress::none()).is_ok());
}

#[tokio::test]
async fn drain_holds_a_slot_until_undrain() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[]);
    let eng = engine(&fake, dir.path(), true);
    eng.drain(Purpose::Drain, "ops")
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert!(eng.starts_drained().unwrap());
    assert!(matches!(
        eng.deploy(params("v2", "aa"), Progress::none()),
        Err(EngineError::Precondition(_))
    ));
    eng.undrain().unwrap().await.unwrap().unwrap();
    assert_eq!(
        fake.effects(),
        [
            "acquire drain",
            "report draining",
            "drain",
            "undrain",
            "release 7"
        ]
    );
    assert!(!eng.starts_drained().unwrap());
}

/// Writes an interrupted deploy v1 → v2 in `phase` and runs recovery.
async fn recover_from(phase: Phase, current: &str, verify: &[bool]) -> (Fake, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some(current), Some("v0"), verify);
    let j = Journal::open(dir.path(), "web-1").unwrap();
    {
        let mut rec = DeployRecord::new(DeployKind::Deploy, "", Some("v1".into()), "v2", 1);
        rec.phase = phase;
        rec.token = 7;
        if phase == Phase::Undraining {
            rec.outcome = Some(Outcome::Succeeded);
        }
        if phase == Phase::RollingBack {
            rec.error = Some("verify of v2 failed: 500".into());
        }
        j.put_deploy(&rec).unwrap();
    }
    let eng = engine_on(&fake, j, true);
    assert_eq!(eng.starts_drained().unwrap(), phase.may_be_drained());
    eng.start_recovery().unwrap().unwrap().await.unwrap();
    // The journal outlives the engine: keep the dir alive until the checks are done.
    std::mem::forget(dir);
    (fake, eng)
}

#[tokio::test]
async fn recovery_before_the_swap_undrains_and_releases() {
    for phase in [Phase::SlotHeld, Phase::Draining] {
        let (fake, eng) = recover_from(phase, "v1", &[]).await;
        let e = core(&fake.effects());
        if phase == Phase::Draining {
            assert_eq!(e, ["undrain", "release 7"], "{phase}");
        } else {
            assert_eq!(e, ["release 7"], "{phase}");
        }
        assert_eq!(eng.view().last_outcome, Some(Outcome::Failed));
        assert_eq!(fake.current().as_deref(), Some("v1"));
    }
    let (fake, eng) = recover_from(Phase::SlotRequested, "v1", &[]).await;
    assert!(core(&fake.effects()).is_empty());
    assert_eq!(eng.view().last_outcome, Some(Outcome::Failed));
}

#[tokio::test]
async fn recovery_after_the_swap_verifies_current() {
    let (fake, eng) = recover_from(Phase::Swapped, "v2", &[true]).await;
    assert_eq!(
        core(&fake.effects()),
        [
            "restart v2",
            "verify ok",
            "set_previous v1",
            "undrain",
            "release 7",
            "gc"
        ]
    );
    assert_eq!(eng.view().last_outcome, Some(Outcome::Succeeded));

    // The swap never took effect: an abort, back in rotation on v1.
    let (fake, eng) = recover_from(Phase::Swapped, "v1", &[]).await;
    assert_eq!(core(&fake.effects()), ["undrain", "release 7"]);
    assert_eq!(eng.view().last_outcome, Some(Outcome::Failed));

    // Verifying: the restart happened; verify fails → roll back.
    let (fake, eng) = recover_from(Phase::Verifying, "v2", &[false, true]).await;
    assert_eq!(
        core(&fake.effects()),
        [
            "verify fail",
            "set_current v1",
            "restart v1",
            "verify ok",
            "undrain",
            "release 7"
        ]
    );
    assert_eq!(eng.view().last_outcome, Some(Outcome::RolledBack));
    assert_eq!(fake.current().as_deref(), Some("v1"));
}

#[tokio::test]
async fn recovery_finishes_a_rollback_and_an_undrain() {
    let (fake, eng) = recover_from(Phase::RollingBack, "v2", &[true]).await;
    assert_eq!(
        core(&fake.effects()),
        [
            "set_current v1",
            "restart v1",
            "verify ok",
            "undrain",
            "release 7"
        ]
    );
    assert_eq!(eng.view().last_outcome, Some(Outcome::RolledBack));

    let (fake, eng) = recover_from(Phase::Undraining, "v2", &[]).await;
    assert_eq!(core(&fake.effects()), ["undrain", "release 7", "gc"]);
    assert_eq!(eng.view().last_outcome, Some(Outcome::Succeeded));
    assert_eq!(eng.view().phase, "idle");
}

// ---- Health: who owns the fact, and what a deploy hands back (crate::health) ----

/// A fake whose health fact starts at `health`.
fn fake_at(current: Option<&str>, verify: &[bool], health: Health) -> Fake {
    let fake = Fake::with(current, None, verify);
    fake.0.lock().unwrap().fact = Some(HealthFact::in_memory(health));
    fake
}

async fn run_deploy(eng: &Engine, id: &str) -> (Outcome, String) {
    eng.deploy(params(id, "aa"), Progress::none())
        .unwrap()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_first_deploy_is_unprovisioned_until_its_verify_passes() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_at(None, &[true], Health::Unprovisioned);
    let eng = engine(&fake, dir.path(), true);
    assert_eq!(run_deploy(&eng, "v1").await.0, Outcome::Succeeded);
    // `current` is set, the service started and probed: still not healthy until verified.
    assert_eq!(fake.health_at("set_current v1"), "Engine unprovisioned");
    assert_eq!(fake.health_at("restart v1"), "Engine unprovisioned");
    assert_eq!(fake.health_at("verify ok"), "Engine unprovisioned");
    let after = fake.fact().snapshot();
    assert_eq!(
        (after.owner, after.health),
        (Owner::Monitor, Health::Healthy)
    );
}

#[tokio::test]
async fn a_failed_first_deploy_stays_unprovisioned() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_at(None, &[false], Health::Unprovisioned);
    let eng = engine(&fake, dir.path(), false);
    assert_eq!(run_deploy(&eng, "v1").await.0, Outcome::Failed);
    let after = fake.fact().snapshot();
    assert_eq!(
        (after.owner, after.health),
        (Owner::Monitor, Health::Unprovisioned)
    );
}

#[tokio::test]
async fn a_deploy_owns_the_health_from_its_drain_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_at(Some("v1"), &[true], Health::Healthy);
    let eng = engine(&fake, dir.path(), true);
    assert_eq!(run_deploy(&eng, "v2").await.0, Outcome::Succeeded);
    // Staging and waiting for a slot disrupt nothing: the monitor keeps probing.
    assert_eq!(fake.health_at("stage v2"), "Monitor healthy");
    assert_eq!(fake.health_at("acquire deploy"), "Monitor healthy");
    for step in [
        "drain",
        "set_current v2",
        "restart v2",
        "verify ok",
        "undrain",
    ] {
        assert_eq!(fake.health_at(step), "Engine healthy", "at {step}");
    }
    let after = fake.fact().snapshot();
    assert_eq!(
        (after.owner, after.health),
        (Owner::Monitor, Health::Healthy)
    );
}

#[tokio::test]
async fn neither_release_verifying_hands_back_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_at(Some("v1"), &[false, false], Health::Healthy);
    let eng = engine(&fake, dir.path(), true);
    assert_eq!(run_deploy(&eng, "v2").await.0, Outcome::Failed);
    let after = fake.fact().snapshot();
    assert_eq!(
        (after.owner, after.health),
        (Owner::Monitor, Health::Unhealthy)
    );
}

#[tokio::test]
async fn a_rollback_that_verifies_hands_back_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_at(Some("v1"), &[false, true], Health::Healthy);
    let eng = engine(&fake, dir.path(), true);
    assert_eq!(run_deploy(&eng, "v2").await.0, Outcome::RolledBack);
    assert_eq!(fake.fact().get(), Health::Healthy);
}

#[tokio::test]
async fn a_service_restarted_and_never_judged_is_handed_back_unhealthy() {
    // Verify of v2 failed, then the rollback's fence found the token stale: the service runs
    // the unverified v2 and the engine stops there.
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_at(Some("v1"), &[false], Health::Healthy);
    fake.0.lock().unwrap().stale_at = Some(Phase::RollingBack);
    let eng = engine(&fake, dir.path(), true);
    assert_eq!(run_deploy(&eng, "v2").await.0, Outcome::Fenced);
    let after = fake.fact().snapshot();
    assert_eq!(
        (after.owner, after.health),
        (Owner::Monitor, Health::Unhealthy)
    );
    // Fenced before anything was restarted: the health is left as it was.
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_at(Some("v1"), &[true], Health::Healthy);
    fake.0.lock().unwrap().stale_at = Some(Phase::Restarted);
    let eng = engine(&fake, dir.path(), true);
    assert_eq!(run_deploy(&eng, "v2").await.0, Outcome::Fenced);
    assert_eq!(fake.fact().get(), Health::Healthy);
}

#[tokio::test]
async fn redeploying_the_live_release_repairs_an_unhealthy_host() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_at(Some("v1"), &[true], Health::Unhealthy);
    fake.0.lock().unwrap().previous = Some("v0".into());
    let eng = engine(&fake, dir.path(), true);
    assert_eq!(run_deploy(&eng, "v1").await.0, Outcome::Succeeded);
    let e = core(&fake.effects());
    assert!(e.contains(&"restart v1".to_owned()), "not repaired: {e:?}");
    assert!(e.contains(&"verify ok".to_owned()), "{e:?}");
    assert!(
        !e.iter().any(|x| x.starts_with("set_previous")),
        "previous moved to the live release: {e:?}"
    );
    assert_eq!(fake.fact().get(), Health::Healthy);
    // Healthy now: the same deploy again is a no-op.
    let before = fake.effects().len();
    assert_eq!(run_deploy(&eng, "v1").await.0, Outcome::Succeeded);
    assert_eq!(fake.effects().len(), before, "{:?}", fake.effects());
}

#[tokio::test]
async fn recovery_takes_the_health_before_the_monitor_can_judge() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_at(Some("v2"), &[true], Health::Healthy);
    let j = Journal::open(dir.path(), "web-1").unwrap();
    let mut rec = DeployRecord::new(DeployKind::Deploy, "", Some("v1".into()), "v2", 1);
    rec.phase = Phase::Verifying;
    rec.token = 7;
    j.put_deploy(&rec).unwrap();
    let eng = engine_on(&fake, j, true);
    let task = eng.start_recovery().unwrap().unwrap();
    // Not a single poll of the recovery task yet: the claim is already taken.
    assert_eq!(fake.fact().snapshot().owner, Owner::Engine);
    task.await.unwrap();
    let after = fake.fact().snapshot();
    assert_eq!(
        (after.owner, after.health),
        (Owner::Monitor, Health::Healthy)
    );
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Item 2: a finished deploy's token is not claimed at start (its release may have failed;
/// reconciliation must be free to release it). A hold's and an in-progress deploy's are.
#[tokio::test]
async fn only_tokens_in_use_are_claimed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), "web-1").unwrap();
    let mut rec = DeployRecord::new(DeployKind::Deploy, "", Some("v1".into()), "v2", 1);
    rec.token = 7;
    rec.phase = Phase::Released;
    rec.outcome = Some(Outcome::Succeeded);
    rec.finished_at_ms = Some(2);
    j.put_deploy(&rec).unwrap();
    let fake = Fake::with(Some("v2"), Some("v1"), &[]);
    let _eng = engine_on(&fake, j.clone(), true);
    assert!(
        !fake.effects().contains(&"claim 7".to_owned()),
        "{:?}",
        fake.effects()
    );

    rec.finished_at_ms = None;
    rec.phase = Phase::Verifying;
    j.put_deploy(&rec).unwrap();
    j.set_hold(Some(&Hold {
        kind: HoldKind::Drain,
        purpose: Purpose::Drain,
        token: 5,
        note: String::new(),
        since_ms: 1,
    }))
    .unwrap();
    let fake = Fake::with(Some("v2"), Some("v1"), &[]);
    let _eng = engine_on(&fake, j, true);
    let e = fake.effects();
    assert!(
        e.contains(&"claim 7".to_owned()) && e.contains(&"claim 5".to_owned()),
        "{e:?}"
    );
}

/// Item 5: a rollback whose fence cannot be committed (coordinators unreachable) is not
/// abandoned while the slot is held: the fence is retried until it commits.
#[tokio::test]
async fn an_unconfirmed_rollback_fence_is_retried_until_it_commits() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[false, true]);
    fake.set(|s| s.unconfirmed = [Phase::RollingBack, Phase::RollingBack].into());
    let eng = engine(&fake, dir.path(), true);
    let (outcome, err) = eng
        .deploy(params("v2", "aa"), Progress::none())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::RolledBack, "{err}");
    let e = fake.effects();
    let reports = e.iter().filter(|x| *x == "report rolling_back").count();
    assert_eq!(
        reports, 3,
        "two unconfirmed attempts, then the commit: {e:?}"
    );
    assert!(pos(&e, "verify fail") < pos(&e, "set_current v1"));
    assert_eq!(fake.current().as_deref(), Some("v1"));
    assert!(eng.view().hold.is_none());
}

/// Item 5: an agent that stops while a rollback's fence is still unconfirmed resumes the
/// rollback at its next start.
#[tokio::test]
async fn recovery_resumes_a_rollback_whose_fence_was_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[false]);
    fake.set(|s| s.unconfirmed = std::iter::repeat_n(Phase::RollingBack, 1000).collect());
    let shutdown = CancellationToken::new();
    let j = Journal::open(dir.path(), "web-1").unwrap();
    let eng = engine_with(&fake, j.clone(), true, shutdown.clone());
    let deploy = eng.deploy(params("v2", "aa"), Progress::none()).unwrap();
    wait_for("the rollback's fence to be tried", || {
        fake.effects().contains(&"report rolling_back".to_owned())
    })
    .await;
    shutdown.cancel();
    let (outcome, _) = deploy.await.unwrap();
    assert_eq!(outcome, Outcome::Failed);
    assert!(eng.wait_stopped(Duration::from_secs(5)).await);
    drop(eng);

    let rec = j.deploy().unwrap().unwrap();
    assert!(rec.in_progress(), "the rollback was abandoned: {rec:?}");
    assert_eq!(rec.phase, Phase::RollingBack);
    assert!(j.hold().unwrap().is_none());
    let fake2 = Fake::with(Some("v2"), None, &[true]);
    let eng = engine_on(&fake2, j, true);
    eng.start_recovery().unwrap().unwrap().await.unwrap();
    assert_eq!(
        core(&fake2.effects()),
        [
            "set_current v1",
            "restart v1",
            "verify ok",
            "undrain",
            "release 7"
        ]
    );
    assert_eq!(eng.view().last_outcome, Some(Outcome::RolledBack));
    std::mem::forget(dir);
}

/// Item 6: a drain refused at its fence journals no hold (the host would start drained with
/// no slot) and gives the fresh slot back.
#[tokio::test]
async fn a_drain_refused_at_its_fence_journals_nothing_and_gives_the_slot_back() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[]);
    fake.set(|s| s.stale_at = Some(Phase::Draining));
    let eng = engine(&fake, dir.path(), true);
    let r = eng.drain(Purpose::Drain, "ops").unwrap().await.unwrap();
    assert!(
        matches!(r, Err(EngineError::Link(LinkError::Stale(_)))),
        "{r:?}"
    );
    assert!(!eng.starts_drained().unwrap(), "a hold was journaled");
    assert!(eng.view().hold.is_none());
    assert_eq!(
        fake.effects(),
        ["acquire drain", "report draining", "release 7"]
    );
}

/// Item 6: an undrain that stops (a crash) between its two steps leaves, at worst, a slot
/// nobody claims (reconciliation releases it); never a journal saying "drained" for a slot
/// that may already be released.
#[tokio::test]
async fn an_undrain_cut_short_before_its_release_leaves_no_drained_journal() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[]);
    let shutdown = CancellationToken::new();
    let j = Journal::open(dir.path(), "web-1").unwrap();
    let eng = engine_with(&fake, j.clone(), true, shutdown.clone());
    eng.drain(Purpose::Drain, "ops")
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    fake.set(|s| s.hang_release = true);
    let undrain = eng.undrain().unwrap();
    wait_for("the release to be sent", || {
        fake.effects().contains(&"release 7".to_owned())
    })
    .await;
    shutdown.cancel(); // what a crash there would leave
    assert!(matches!(undrain.await.unwrap(), Err(EngineError::Shutdown)));
    assert!(
        j.hold().unwrap().is_none(),
        "the journal still says drained"
    );
    assert!(!starts_drained(&j).unwrap());
}

/// Item 8: a deploy whose only failure is the undrain keeps its slot, but the service is fine:
/// after a restart the host does not report `unhealthy`.
#[tokio::test]
async fn a_failed_undrain_keeps_the_slot_without_calling_the_service_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[true]);
    fake.set(|s| s.undrain_failures = 3);
    let j = Journal::open(dir.path(), "web-1").unwrap();
    let eng = engine_on(&fake, j.clone(), true);
    let (outcome, err) = eng
        .deploy(params("v2", "aa"), Progress::none())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Failed);
    assert!(err.contains("undrain failed"), "{err}");
    let hold = j.hold().unwrap().unwrap();
    assert_eq!((hold.kind, hold.token), (HoldKind::UndrainFailed, 7));
    assert!(!eng.view().verify_failed);
    drop(eng);
    // The agent restarts.
    let eng = engine_on(&fake, j, true);
    assert!(!eng.view().verify_failed, "unhealthy after a restart");
    assert!(
        eng.starts_drained().unwrap(),
        "but still out, keeping its slot"
    );
    std::mem::forget(dir);
}

/// Item 9: a rollback does not move `previous` to the release it rolled away from, so a second
/// rollback cannot re-deploy it.
#[tokio::test]
async fn a_rollback_leaves_previous_alone() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v2"), Some("v1"), &[true]);
    let eng = engine(&fake, dir.path(), true);
    let (outcome, err) = eng.rollback(Progress::none()).unwrap().await.unwrap();
    assert_eq!(outcome, Outcome::Succeeded, "{err}");
    assert_eq!(fake.current().as_deref(), Some("v1"));
    assert_eq!(fake.previous().as_deref(), Some("v1"), "previous moved");
    assert!(!fake.effects().iter().any(|e| e.starts_with("set_previous")));
    let again = eng.rollback(Progress::none());
    assert!(matches!(again, Err(EngineError::Precondition(_))));
}

/// Item 14: a release that may not go live under the policy at use is refused before anything
/// disruptive, whenever it was staged.
#[tokio::test]
async fn a_release_refused_at_use_disrupts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[true]);
    fake.set(|s| {
        s.refused.insert("v2".into());
    });
    let eng = engine(&fake, dir.path(), true);
    let (outcome, err) = eng
        .deploy(params("v2", "aa"), Progress::none())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Failed);
    assert!(err.contains("signatures are required"), "{err}");
    assert_eq!(fake.effects(), ["stage v2"]);
}

/// Item 10: after a reboot, with a deploy left in `verifying`, nothing runs and recovery starts
/// `current` only under a committed `restarted` fence; a stale token starts nothing.
#[tokio::test]
async fn after_a_reboot_recovery_starts_current_only_under_a_fence() {
    for stale in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::with(Some("v2"), Some("v0"), &[true]);
        fake.set(|s| {
            s.running = Some(false);
            if stale {
                s.stale_at = Some(Phase::Restarted);
            }
        });
        let j = Journal::open(dir.path(), "web-1").unwrap();
        let mut rec = DeployRecord::new(DeployKind::Deploy, "", Some("v1".into()), "v2", 1);
        rec.phase = Phase::Verifying;
        rec.token = 7;
        j.put_deploy(&rec).unwrap();
        assert!(current_may_be_unverified(&j).unwrap());
        let eng = engine_on(&fake, j, true);
        eng.start_recovery().unwrap().unwrap().await.unwrap();
        let e = fake.effects();
        if stale {
            assert_eq!(eng.view().last_outcome, Some(Outcome::Fenced));
            assert!(
                !e.iter()
                    .any(|x| x.starts_with("restart") || x.starts_with("start")),
                "{e:?}"
            );
        } else {
            assert!(pos(&e, "report restarted") < pos(&e, "restart v2"), "{e:?}");
            assert!(pos(&e, "restart v2") < pos(&e, "verify ok"), "{e:?}");
            assert_eq!(eng.view().last_outcome, Some(Outcome::Succeeded));
        }
        std::mem::forget(dir);
    }
}

/// Reconciliation returns to rotation a host that reports itself out while nothing keeps it
/// out, and leaves a held host alone.
#[tokio::test]
async fn a_host_out_of_rotation_for_no_reason_is_returned() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[]);
    fake.set(|s| {
        s.rotation = RotationView {
            state: Rotation::OutOfRotation,
            settled: true,
        }
    });
    let eng = engine(&fake, dir.path(), false);
    let _t = eng.start_reconcile();
    wait_for("the undrain", || {
        fake.effects().contains(&"undrain".to_owned())
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[]);
    let eng = engine(&fake, dir.path(), false);
    eng.drain(Purpose::Maintenance, "disk swap")
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let _t = eng.start_reconcile();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !fake.effects().contains(&"undrain".to_owned()),
        "{:?}",
        fake.effects()
    );
}

/// Item 16 with the health fact: a host whose `current` link is unusable refuses deploys; once
/// the link is repaired the engine hands the fact over to what it then knows: `unprovisioned`
/// if nothing is installed, `unhealthy` (for the probes to prove) if a release is.
#[tokio::test]
async fn a_repaired_current_link_hands_the_health_to_what_is_installed() {
    for (repaired_to, want) in [
        (None, Health::Unprovisioned),
        (Some("v1"), Health::Unhealthy),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_at(None, &[], Health::Unhealthy);
        fake.set(|s| s.current_error = Some("dangling symlink".into()));
        let eng = engine(&fake, dir.path(), true);
        assert!(eng.view().problem.is_some());
        let refused = eng.deploy(params("v2", "aa"), Progress::none());
        assert!(
            matches!(refused, Err(EngineError::Precondition(_))),
            "a deploy was taken with an unusable current link"
        );
        fake.set(|s| {
            s.current_error = None;
            s.current = repaired_to.map(str::to_owned);
        });
        let _t = eng.start_reconcile();
        wait_for("the repair to be noticed", || eng.view().problem.is_none()).await;
        let after = fake.fact().snapshot();
        assert_eq!(
            (after.owner, after.health),
            (Owner::Monitor, want),
            "repaired to {repaired_to:?}"
        );
    }
}

/// After a reboot with a deploy whose swap never took effect, recovery starts the old release
/// (nothing runs) and aborts. That start was never verified: the fact goes back to the monitor
/// `unhealthy`, and the probes must prove the service again, instead of the `healthy` recorded
/// before the reboot standing for a process that no longer exists.
#[tokio::test]
async fn an_old_release_started_after_a_reboot_must_prove_itself() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_at(Some("v1"), &[], Health::Healthy);
    fake.set(|s| s.running = Some(false));
    let j = Journal::open(dir.path(), "web-1").unwrap();
    let mut rec = DeployRecord::new(DeployKind::Deploy, "", Some("v1".into()), "v2", 1);
    rec.phase = Phase::Swapped;
    rec.token = 7;
    j.put_deploy(&rec).unwrap();
    let eng = engine_on(&fake, j, true);
    eng.start_recovery().unwrap().unwrap().await.unwrap();
    let e = fake.effects();
    assert!(e.contains(&"start v1".to_owned()), "{e:?}");
    assert_eq!(fake.health_at("start v1"), "Engine healthy");
    assert_eq!(eng.view().last_outcome, Some(Outcome::Failed));
    let after = fake.fact().snapshot();
    assert_eq!(
        (after.owner, after.health),
        (Owner::Monitor, Health::Unhealthy)
    );
}

/// A deploy that ends before anything was restarted (here a recovery from `draining`, on a host
/// whose health was unproven, as after a lost journal) has no verdict to give: it hands the
/// fact back to the monitor *before* returning to rotation, so that the probes, not the stale
/// value, decide what the load balancer sees while the return is confirmed. A deploy that
/// judged the service keeps its verdict through the undrain (see
/// `a_deploy_owns_the_health_from_its_drain_to_its_end`).
#[tokio::test]
async fn an_abort_hands_the_health_back_before_it_returns_to_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_at(Some("v1"), &[], Health::Unhealthy);
    let j = Journal::open(dir.path(), "web-1").unwrap();
    let mut rec = DeployRecord::new(DeployKind::Deploy, "", Some("v1".into()), "v2", 1);
    rec.phase = Phase::Draining;
    rec.token = 7;
    j.put_deploy(&rec).unwrap();
    let eng = engine_on(&fake, j, true);
    let task = eng.start_recovery().unwrap().unwrap();
    assert_eq!(fake.fact().snapshot().owner, Owner::Engine);
    task.await.unwrap();
    assert_eq!(core(&fake.effects()), ["undrain", "release 7"]);
    assert_eq!(fake.health_at("undrain"), "Monitor unhealthy");
}
