//! The engine's maintenance runs, with the fake host and lock: the order of effects, what a
//! failed command or verify leaves, refusals that disrupt nothing, and recovery from a journal
//! left mid-run (another boot: verify; before the command: undo).

use super::fake::Fake;
use super::*;
use crate::journal::{
    CmdExit, Hold, HoldKind, MaintChild, MaintRecord, MaintResult, MaintStep, Purpose,
};

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn maint_params(argv: Vec<String>) -> MaintParams {
    MaintParams {
        reason: "os patch".into(),
        argv,
        timeout: None,
    }
}

async fn run(eng: &Engine, argv: Vec<String>) -> MaintVerdict {
    eng.maint(maint_params(argv), MaintProgress::default())
        .unwrap_or_else(|e| panic!("maint refused: {e}"))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_maintenance_run_takes_the_slot_drains_runs_verifies_undrains_and_releases() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[true]);
    let eng = engine(&fake, dir.path(), true);
    let marker = dir.path().join("ran");
    let v = run(
        &eng,
        sh(&format!(
            "echo $HOTDEPLOY_SLOT_TOKEN > {}",
            marker.display()
        )),
    )
    .await;
    assert_eq!(v.result, MaintResult::Succeeded, "{v:?}");
    assert_eq!(v.exit, Some(CmdExit::Code(0)));
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "7");
    let e = fake.effects();
    assert_eq!(
        core(&e),
        [
            "acquire agent-maintenance",
            "drain",
            "verify ok",
            "undrain",
            "release 7"
        ]
    );
    // Both disruptive steps are fenced first: the drain, and the command.
    assert!(pos(&e, "report draining") < pos(&e, "drain"));
    assert!(pos(&e, "report restarted") > pos(&e, "drain"));
    let view = eng.view();
    assert_eq!(view.phase, "idle");
    assert_eq!(view.token, 0);
    assert!(view.hold.is_none());
}

#[tokio::test]
async fn a_failed_command_is_reported_with_its_status_and_the_host_stays_out_holding_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[true]);
    let eng = engine(&fake, dir.path(), true);
    let v = run(&eng, sh("exit 3")).await;
    assert_eq!(v.result, MaintResult::CommandFailed, "{v:?}");
    assert_eq!(v.exit, Some(CmdExit::Code(3)));
    assert!(v.error.contains("exited with status 3"), "{}", v.error);
    let e = core(&fake.effects());
    assert_eq!(
        e,
        ["acquire agent-maintenance", "drain"],
        "no verify, no undrain, no release"
    );
    let hold = eng.view().hold.expect("the maintenance hold is kept");
    assert_eq!(
        (hold.kind, hold.purpose, hold.token),
        (HoldKind::Maintenance, Purpose::Maintenance, 7)
    );
    // The operator's undrain ends it.
    eng.undrain().unwrap().await.unwrap().unwrap();
    assert_eq!(core(&fake.effects())[2..], ["undrain", "release 7"]);
}

#[tokio::test]
async fn a_failed_verify_keeps_the_slot_as_verify_failed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[false]);
    let eng = engine(&fake, dir.path(), true);
    let v = run(&eng, sh("true")).await;
    assert_eq!(v.result, MaintResult::VerifyFailed, "{v:?}");
    let view = eng.view();
    assert!(view.verify_failed);
    assert_eq!(
        view.hold.map(|h| (h.kind, h.token)),
        Some((HoldKind::VerifyFailed, 7))
    );
    assert!(!fake.effects().iter().any(|e| e.starts_with("release")));
}

#[tokio::test]
async fn refusals_disrupt_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[true]);
    let eng = engine(&fake, dir.path(), true);
    let err = eng
        .maint(
            maint_params(vec!["/nonexistent/patch".into()]),
            MaintProgress::default(),
        )
        .expect_err("a missing command is refused");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let err = eng
        .maint(maint_params(Vec::new()), MaintProgress::default())
        .expect_err("an empty command is refused");
    assert!(err.to_string().contains("empty"), "{err}");
    // A stale token before the command: not run, back in rotation.
    fake.set(|s| s.stale_at = Some(Phase::Restarted));
    let marker = dir.path().join("ran");
    let v = run(&eng, sh(&format!("touch {}", marker.display()))).await;
    assert_eq!(v.result, MaintResult::Failed, "{v:?}");
    assert!(!marker.exists(), "the command ran under a revoked slot");
    assert_eq!(
        core(&fake.effects()),
        ["acquire agent-maintenance", "drain", "undrain", "release 7"]
    );
    fake.set(|s| s.stale_at = None);
    // A second run while one runs: busy.
    let long = eng
        .maint(maint_params(sh("sleep 1")), MaintProgress::default())
        .unwrap();
    let err = eng
        .maint(maint_params(sh("true")), MaintProgress::default())
        .expect_err("a second run is refused");
    assert!(err.to_string().contains("in progress"), "{err}");
    assert_eq!(long.await.unwrap().result, MaintResult::Succeeded);
    // A host already held out (an operator's drain) is refused.
    eng.drain(Purpose::Drain, "ops")
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let err = eng
        .maint(maint_params(sh("true")), MaintProgress::default())
        .expect_err("a held host is refused");
    assert!(err.to_string().contains("undrain it first"), "{err}");
}

fn held_journal(dir: &std::path::Path, step: MaintStep, boot: &str) -> Journal {
    let j = Journal::open(dir, "web-1").unwrap();
    let mut rec = MaintRecord::new("kernel", sh("reboot"), None, 1);
    rec.step = step;
    rec.token = 7;
    rec.boot_id = Some(boot.into());
    rec.child = Some(MaintChild {
        pid: i32::MAX,
        start_time: 1,
    });
    j.put_maint(&rec).unwrap();
    j.set_hold(Some(&Hold {
        kind: HoldKind::Maintenance,
        purpose: Purpose::Maintenance,
        token: 7,
        note: "kernel".into(),
        since_ms: 1,
    }))
    .unwrap();
    j
}

/// A record of another boot: the command rebooted the host; the run continues with verify,
/// then undrain and release, and says the exit status is unknown.
#[tokio::test]
async fn after_a_reboot_recovery_verifies_undrains_and_releases() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[true]);
    let j = held_journal(dir.path(), MaintStep::Running, "a-boot-before-this-one");
    assert!(
        starts_drained(&j).unwrap(),
        "the host starts out of rotation"
    );
    let eng = engine_on(&fake, j.clone(), true);
    assert_eq!(eng.view().phase, "maint_running");
    eng.start_recovery()
        .unwrap()
        .expect("a recovery")
        .await
        .unwrap();
    assert_eq!(core(&fake.effects()), ["verify ok", "undrain", "release 7"]);
    let rec = j.maint().unwrap().unwrap();
    assert_eq!(rec.result, Some(MaintResult::Succeeded));
    assert!(
        matches!(&rec.exit, Some(CmdExit::Unknown(why)) if why.contains("rebooted")),
        "{rec:?}"
    );
    assert!(eng.view().last_error.contains("unknown"));
    assert!(j.hold().unwrap().is_none());
}

/// Interrupted before the command: it is not run; the host returns and the slot is released.
#[tokio::test]
async fn before_the_command_recovery_undoes_without_running_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[true]);
    let j = held_journal(dir.path(), MaintStep::Draining, "any");
    let eng = engine_on(&fake, j.clone(), true);
    eng.start_recovery()
        .unwrap()
        .expect("a recovery")
        .await
        .unwrap();
    assert_eq!(core(&fake.effects()), ["undrain", "release 7"]);
    assert_eq!(
        j.maint().unwrap().unwrap().result,
        Some(MaintResult::Failed)
    );
}
