//! The engine with the real link, against a fake coordinator that models the host's slot:
//! the races and orderings of slot bookkeeping, isolated deterministically.

use super::fake::Fake;
use super::linked::{linked, Linked};
use super::{params, pos};
use crate::deploy::*;
use crate::journal::{DeployKind, DeployRecord, HoldKind, Journal, Outcome, Phase, Purpose};
use crate::testing::coordinator::{slot, FakeCoordinator, ServeGuard};
use hotdeploy_common::proto::{Health, Rotation};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// An engine on `ops`, with a real link to `coord`, and the link and reconciliation running.
struct Agent {
    engine: Engine,
    journal: Journal,
    shutdown: CancellationToken,
    _coord: ServeGuard,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `journal_is_new`: a first start (or a lost journal) rather than a restart.
async fn agent(
    ops: &Fake,
    coord: &FakeCoordinator,
    prepare: impl FnOnce(&Journal),
    journal_is_new: bool,
) -> Agent {
    let Linked {
        engine,
        link,
        journal,
        shutdown,
        guard,
        dir,
    } = linked(ops, coord, prepare, journal_is_new).await;
    link.start(shutdown.clone());
    engine.start_reconcile();
    Agent {
        engine,
        journal,
        shutdown,
        _coord: guard,
        _dir: dir,
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs the coordinator's events into the host's effect log, so orders can be asserted.
fn log_events_into(coord: &FakeCoordinator, ops: &Fake) {
    let ops = ops.clone();
    coord.state().on_event = Some(Arc::new(move |e| ops.log(format!("coordinator {e}"))));
}

/// Item 1: the coordinators list a slot nobody here uses (a grant that committed after the
/// agent gave up waiting). While its release is in flight, a deploy starts: it must not be
/// handed that very token back (grants are re-entrant) and drain under a slot about to be
/// freed. Its acquire waits for the release, and the deploy drains under a fresh slot that the
/// coordinator still holds.
#[tokio::test]
async fn a_deploy_never_gets_back_a_token_being_released() {
    let coord = FakeCoordinator::holding(Some(slot(77, "deploy", "")));
    coord.state().next_token = 78;
    let gate = Arc::new(Semaphore::new(0));
    coord.state().release_gate = Some(gate.clone());
    let ops = Fake::with(Some("v1"), None, &[true]);
    // The release goes through as soon as the deploy commits a phase (the worst moment), or
    // after a second.
    {
        let (ops2, gate2) = (ops.clone(), gate.clone());
        coord.state().on_event = Some(Arc::new(move |e| {
            if e.starts_with("report") {
                gate2.add_permits(1);
            }
            ops2.log(format!("coordinator {e}"));
        }));
    }
    let c = coord.clone();
    ops.set(|s| {
        s.witness = Some(Arc::new(move || {
            format!("{:?}", c.state().held.as_ref().map(|h| h.token))
        }))
    });
    let a = agent(&ops, &coord, |_| {}, false).await;
    wait_for("the unused slot's release to be sent", || {
        coord.state().release_calls.contains(&77)
    })
    .await;
    let deploy = a
        .engine
        .deploy(params("v2", "aa"), Progress::none())
        .unwrap();
    let g = gate.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        g.add_permits(1);
    });
    let (outcome, err) = deploy.await.unwrap();
    let e = ops.effects();
    assert_eq!(outcome, Outcome::Succeeded, "{err}\n{e:?}");
    assert!(
        e.contains(&"drain witness Some(78)".to_owned()),
        "the host drained without holding its slot: {e:?}"
    );
    assert!(!e.contains(&"coordinator acquire 77".to_owned()), "{e:?}");
    assert!(
        pos(&e, "coordinator release 77") < pos(&e, "coordinator acquire 78"),
        "{e:?}"
    );
    let reports = coord.state().reports.clone();
    assert!(reports.iter().all(|(t, _)| *t == 78), "{reports:?}");
}

/// Item 2: a deploy finished, but its slot's release failed; the agent restarts. The finished
/// deploy's token is not claimed, so the slot is released instead of leaking for good.
#[tokio::test]
async fn a_slot_whose_release_failed_is_released_after_a_restart() {
    let coord = FakeCoordinator::holding(Some(slot(7, "deploy", "restarted")));
    let ops = Fake::with(Some("v2"), Some("v1"), &[]);
    let a = agent(
        &ops,
        &coord,
        |j| {
            let mut rec = DeployRecord::new(DeployKind::Deploy, "", Some("v1".into()), "v2", 1);
            rec.token = 7;
            rec.phase = Phase::Released;
            rec.outcome = Some(Outcome::Succeeded);
            rec.finished_at_ms = Some(2);
            j.put_deploy(&rec).unwrap();
        },
        false,
    )
    .await;
    wait_for("the leaked slot to be released", || {
        coord.state().released == vec![7]
    })
    .await;
    assert_eq!(a.engine.view().last_outcome, Some(Outcome::Succeeded));
    assert!(!ops.effects().iter().any(|e| e.starts_with("undrain")));
}

/// Item 3: an unused slot of a host that reports itself out of rotation with nothing keeping
/// it out (HAProxy still had it in DRAIN at start) is released only after the return to
/// rotation is confirmed.
#[tokio::test]
async fn an_unused_slot_is_released_only_after_the_undrain_is_confirmed() {
    let coord = FakeCoordinator::holding(Some(slot(9, "deploy", "")));
    let ops = Fake::with(Some("v1"), None, &[]);
    ops.set(|s| {
        s.rotation = RotationView {
            state: Rotation::OutOfRotation,
            settled: true,
        }
    });
    log_events_into(&coord, &ops);
    let _a = agent(&ops, &coord, |_| {}, false).await;
    wait_for("the release", || coord.state().released == vec![9]).await;
    let e = ops.effects();
    assert!(
        pos(&e, "undrain") < pos(&e, "coordinator release 9"),
        "{e:?}"
    );
}

/// Item 3: a lost journal is rebuilt from the slot the coordinators say the host holds and
/// from the release store: a deploy interrupted after its swap is recovered under that slot
/// (verify `current`, back to rotation, release), not simply released.
#[tokio::test]
async fn a_lost_journal_is_rebuilt_from_the_coordinators_slot() {
    // `current` verifies: back in rotation, released.
    let coord = FakeCoordinator::holding(Some(slot(9, "deploy", "verifying")));
    let ops = Fake::with(Some("v2"), Some("v1"), &[true]);
    ops.set(|s| {
        s.rotation = RotationView {
            state: Rotation::OutOfRotation,
            settled: true,
        }
    });
    log_events_into(&coord, &ops);
    let a = agent(&ops, &coord, |_| {}, true).await;
    wait_for("the rebuilt deploy to end", || {
        coord.state().released == vec![9]
    })
    .await;
    let e = ops.effects();
    assert!(pos(&e, "verify ok") < pos(&e, "undrain"), "{e:?}");
    assert!(
        pos(&e, "undrain") < pos(&e, "coordinator release 9"),
        "{e:?}"
    );
    let rec = a.journal.deploy().unwrap().unwrap();
    assert_eq!(
        (rec.token, rec.outcome),
        (9, Some(Outcome::Succeeded)),
        "{rec:?}"
    );
    assert!(!a.journal.is_new().unwrap());
    // The rebuilt deploy owns the health like any recovery: the monitor judges nothing while it
    // verifies, and gets the fact back with the verdict.
    assert_eq!(ops.health_at("verify ok"), "Engine healthy");
    let after = ops.fact().snapshot();
    assert_eq!(
        (after.owner, after.health),
        (crate::health::Owner::Monitor, Health::Healthy)
    );

    // `current` fails verify: rolled back to `previous` under the slot.
    let coord = FakeCoordinator::holding(Some(slot(9, "deploy", "swapped")));
    let ops = Fake::with(Some("v2"), Some("v1"), &[false, true]);
    let _a = agent(&ops, &coord, |_| {}, true).await;
    wait_for("the rollback", || coord.state().released == vec![9]).await;
    let e = super::core(&ops.effects());
    assert!(pos(&e, "set_current v1") < pos(&e, "verify ok"), "{e:?}");
    assert_eq!(ops.current().as_deref(), Some("v1"));

    // An operator's drain, lost with the journal: the hold is rebuilt, the slot kept.
    let coord = FakeCoordinator::holding(Some(slot(12, "drain", "draining")));
    let ops = Fake::with(Some("v1"), None, &[]);
    let a = agent(&ops, &coord, |_| {}, true).await;
    wait_for("the rebuilt hold", || a.journal.hold().unwrap().is_some()).await;
    let h = a.journal.hold().unwrap().unwrap();
    assert_eq!((h.kind, h.token), (HoldKind::Drain, 12));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(coord.state().release_calls.is_empty());
    assert!(ops.effects().contains(&"drain".to_owned()));
}

/// Item 8: an operator's `locks acquire` slot (purpose `maintenance`) is not the agent's: the
/// agent's own maintenance asks for `agent-maintenance` and is refused while the operator
/// holds the host, and the operator's slot is never adopted nor released.
#[tokio::test]
async fn an_operators_maintenance_slot_is_kept_apart() {
    let coord = FakeCoordinator::holding(Some(slot(90, "maintenance", "")));
    let ops = Fake::with(Some("v1"), None, &[]);
    let a = agent(&ops, &coord, |_| {}, false).await;
    let r = a
        .engine
        .drain(Purpose::Maintenance, "disk swap")
        .unwrap()
        .await
        .unwrap();
    let e = r.unwrap_err().to_string();
    assert!(e.contains("maintenance"), "{e}");
    assert!(a.journal.hold().unwrap().is_none());
    assert_eq!(
        coord.state().acquires.last().map(|a| a.0.clone()),
        Some("agent-maintenance".into())
    );
    let _ = a.engine.undrain().unwrap().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        coord.state().release_calls.is_empty(),
        "the operator's slot was released"
    );
    assert!(!ops.effects().contains(&"drain".to_owned()));

    // Once the operator is done, the agent's own maintenance takes a slot of its own.
    coord.state().held = None;
    a.engine
        .drain(Purpose::Maintenance, "disk swap")
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let held = coord.state().held.clone().unwrap();
    assert_eq!(held.purpose, "agent-maintenance");
    a.engine.undrain().unwrap().await.unwrap().unwrap();
    assert_eq!(coord.state().released, vec![held.token]);
}
