//! Engine tests with a fake host and a fake lock that record every effect in order.

use super::*;
use crate::health::{HealthFact, Owner};
use crate::journal::{DeployKind, DeployRecord, Journal, Outcome, Phase};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::VecDeque;
use std::sync::Mutex;

#[derive(Default)]
struct State {
    log: Vec<String>,
    current: Option<String>,
    previous: Option<String>,
    verify: VecDeque<bool>,
    stale_at: Option<String>,
    block_stage: Option<Arc<tokio::sync::Notify>>,
    /// The engine's health fact, and what it said at each effect ("effect: Owner health").
    fact: Option<Arc<HealthFact>>,
    seen: Vec<String>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn with(current: Option<&str>, previous: Option<&str>, verify: &[bool]) -> Self {
        let f = Fake::default();
        {
            let mut s = f.0.lock().unwrap();
            s.current = current.map(str::to_owned);
            s.previous = previous.map(str::to_owned);
            s.verify = verify.iter().copied().collect();
        }
        f
    }
    fn log(&self, e: impl Into<String>) {
        let mut s = self.0.lock().unwrap();
        let e = e.into();
        if let Some(f) = s.fact.clone() {
            let snap = f.snapshot();
            s.seen
                .push(format!("{e}: {:?} {}", snap.owner, snap.health.label()));
        }
        s.log.push(e);
    }
    /// What the health fact said when `effect` happened.
    fn health_at(&self, effect: &str) -> String {
        let s = self.0.lock().unwrap();
        let prefix = format!("{effect}: ");
        s.seen
            .iter()
            .find_map(|x| x.strip_prefix(&prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("{effect} missing from {:?}", s.seen))
    }
    fn fact(&self) -> Arc<HealthFact> {
        self.0.lock().unwrap().fact.clone().unwrap()
    }
    fn effects(&self) -> Vec<String> {
        self.0.lock().unwrap().log.clone()
    }
    fn current(&self) -> Option<String> {
        self.0.lock().unwrap().current.clone()
    }
}

impl HostOps for Fake {
    fn current(&self) -> OpResult<Option<String>> {
        Ok(self.0.lock().unwrap().current.clone())
    }
    fn previous(&self) -> OpResult<Option<String>> {
        Ok(self.0.lock().unwrap().previous.clone())
    }
    fn has_release(&self, _id: &str) -> OpResult<bool> {
        Ok(true)
    }
    fn stage<'a>(
        &'a self,
        id: &'a str,
        spec: &'a ArtifactRef,
        _p: ProgressFn<'a>,
    ) -> BoxFuture<'a, OpResult> {
        async move {
            let block = self.0.lock().unwrap().block_stage.clone();
            if let Some(n) = block {
                n.notified().await;
            }
            self.log(format!("stage {id}"));
            if spec.sha256.starts_with("bad") {
                return Err(OpError::fatal("sha256 mismatch"));
            }
            Ok(())
        }
        .boxed()
    }
    fn set_current(&self, id: &str) -> OpResult {
        self.log(format!("set_current {id}"));
        self.0.lock().unwrap().current = Some(id.to_owned());
        Ok(())
    }
    fn clear_current(&self) -> OpResult {
        self.log("clear_current");
        self.0.lock().unwrap().current = None;
        Ok(())
    }
    fn set_previous(&self, id: &str) -> OpResult {
        self.log(format!("set_previous {id}"));
        self.0.lock().unwrap().previous = Some(id.to_owned());
        Ok(())
    }
    fn gc(&self, _protect: &[&str]) -> OpResult {
        self.log("gc");
        Ok(())
    }
    fn drain(&self) -> BoxFuture<'_, OpResult<Duration>> {
        self.log("drain");
        async { Ok(Duration::ZERO) }.boxed()
    }
    fn undrain(&self) -> BoxFuture<'_, OpResult<Duration>> {
        self.log("undrain");
        async { Ok(Duration::ZERO) }.boxed()
    }
    fn restart<'a>(&'a self, id: &'a str) -> BoxFuture<'a, OpResult> {
        self.log(format!("restart {id}"));
        async { Ok(()) }.boxed()
    }
    fn stop(&self) -> BoxFuture<'_, OpResult> {
        self.log("stop");
        async { Ok(()) }.boxed()
    }
    fn verify<'a>(&'a self, _p: ProgressFn<'a>) -> BoxFuture<'a, OpResult> {
        let ok = self.0.lock().unwrap().verify.pop_front().unwrap_or(true);
        self.log(format!("verify {}", if ok { "ok" } else { "fail" }));
        async move {
            if ok {
                Ok(())
            } else {
                Err(OpError::fatal("health 500"))
            }
        }
        .boxed()
    }
    fn hook<'a>(&'a self, point: Hook, _ctx: &'a HookCtx) -> BoxFuture<'a, OpResult> {
        self.log(format!("hook {point:?}"));
        async { Ok(()) }.boxed()
    }
}

impl SlotLock for Fake {
    fn acquire(
        &self,
        req: SlotRequest,
        _w: crate::journal::WriteId,
    ) -> BoxFuture<'_, Result<u64, LinkError>> {
        self.log(format!("acquire {}", req.purpose));
        async { Ok(7) }.boxed()
    }
    fn release(&self, token: u64) -> BoxFuture<'_, Result<(), LinkError>> {
        self.log(format!("release {token}"));
        async { Ok(()) }.boxed()
    }
    fn report_phase<'a>(
        &'a self,
        token: u64,
        phase: &'a str,
    ) -> BoxFuture<'a, Result<(), LinkError>> {
        self.log(format!("report {phase}"));
        let stale = self.0.lock().unwrap().stale_at.as_deref() == Some(phase);
        async move {
            if stale {
                Err(LinkError::Stale(format!("token {token} revoked")))
            } else {
                Ok(())
            }
        }
        .boxed()
    }
    fn claim(&self, _token: u64) {}
    fn unclaim(&self, _token: u64) {}
}

fn engine(fake: &Fake, dir: &std::path::Path, with_lock: bool) -> Engine {
    engine_on(fake, Journal::open(dir, "web-1").unwrap(), with_lock)
}

fn engine_on(fake: &Fake, journal: Journal, with_lock: bool) -> Engine {
    let health = {
        let mut s = fake.0.lock().unwrap();
        let initial = if s.current.is_some() {
            Health::Healthy
        } else {
            Health::Unprovisioned
        };
        s.fact
            .get_or_insert_with(|| HealthFact::in_memory(initial))
            .clone()
    };
    Engine::new(EngineParts {
        host_id: "web-1".into(),
        ops: Arc::new(fake.clone()),
        lock: with_lock.then(|| Arc::new(fake.clone()) as Arc<dyn SlotLock>),
        journal,
        timing: Timing::default(),
        health,
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
    }
}

/// The effects that matter for ordering (hooks and reports left out unless asked).
fn core(effects: &[String]) -> Vec<String> {
    effects
        .iter()
        .filter(|e| !e.starts_with("hook") && !e.starts_with("report"))
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
    assert_eq!(v.hold.as_ref().map(|h| h.purpose.as_str()), Some("deploy"));
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
    for stale in ["draining", "swapped", "restarted"] {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::with(Some("v1"), None, &[true]);
        fake.0.lock().unwrap().stale_at = Some(stale.into());
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
        let after: Vec<_> = e[at + 1..].to_vec();
        assert!(after.is_empty(), "after a stale {stale}: {after:?}");
        assert_eq!(eng.view().last_outcome, Some(Outcome::Fenced));
    }
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
        eng.drain("drain", "x").await,
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
    eng.drain("drain", "ops").await.unwrap();
    assert!(eng.starts_drained().unwrap());
    assert!(matches!(
        eng.deploy(params("v2", "aa"), Progress::none()),
        Err(EngineError::Precondition(_))
    ));
    eng.undrain().await.unwrap();
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
    fake.0.lock().unwrap().stale_at = Some("rolling_back".into());
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
    fake.0.lock().unwrap().stale_at = Some("restarted".into());
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
