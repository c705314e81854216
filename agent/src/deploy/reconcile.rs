//! Keeping what the coordinators say this host holds in line with what the engine uses, and
//! the host in rotation unless something keeps it out.
//!
//! One task, woken by every change of the coordinators' answer ([`SlotView`]) and once a
//! second. Each round, when no other operation runs:
//!
//! 1. **`current`** is re-read, so that a repaired link clears the problem it reported.
//! 2. **A slot nobody uses** (its token claimed by no operation, no acquire or release of this
//!    host in flight: see `link::claims`), of one of the agent's own purposes:
//!    - with a journal that is new (a first start, or a lost journal) and a slot whose last
//!      committed phase says the host may have been disrupted (`draining` through
//!      `undraining`), the lost operation is **rebuilt** from the slot and the release store:
//!      a drain or maintenance becomes a hold again (the operator asked for it); a deploy or
//!      rollback becomes a recovery of `current` (`previous` to fall back on) under that slot,
//!      which verifies it, rolls back if it fails, returns to rotation, and releases;
//!    - otherwise it is **released**, but only once the host's rotation is confirmed: in
//!      rotation, or held out by the journal and reporting so. A host out of rotation with
//!      nothing keeping it out is returned first (3), so that the slot is never released while
//!      the host is out but about to report itself available.
//!
//!    A slot of any other purpose (an operator's `locks acquire`, purpose `maintenance`) is
//!    never touched.
//! 3. **A host out of rotation that nothing keeps out** (no hold, no deploy in progress, no
//!    fenced deploy left drained; for instance a server that HAProxy still had in `DRAIN` at
//!    start) is returned to rotation, confirmed. With coordinators configured this waits for
//!    their first answer, since it may call for a rebuild instead.
//!
//! Releases (and the decisions before them) run without marking the engine busy: a deploy asked
//! for meanwhile is not refused, its acquire waits for the release to end and then gets a
//! fresh token (see `link::claims`). Rebuilds and returns to rotation are operations of their
//! own, run only when no other one runs.

use super::run::Run;
use super::{recover, starts_drained, Inner, Progress, SlotLock};
use super::{HeldSlot, SlotOwner, SlotView};
use crate::journal::{DeployKind, DeployRecord, Hold, HoldKind, Phase, Purpose};
use hotdeploy_common::proto::Rotation;
use hotdeploy_common::time::now_ms;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the state is looked at when nothing changes.
const ROUND: Duration = Duration::from_secs(1);
/// After a failed return to rotation, the next attempt waits this long.
const UNDRAIN_RETRY: Duration = Duration::from_secs(10);

/// The longest one round may take with these rotation bounds: it may drain (a rebuilt hold) or
/// return the host to rotation, each bounded by `drain_bound`.
pub fn round_bound(drain_bound: Duration) -> Duration {
    ROUND + drain_bound * 2 + Duration::from_secs(15)
}

pub(super) async fn run(eng: Arc<Inner>, beat: Option<crate::watchdog::Beat>) {
    let mut slots = eng.lock.as_ref().map(|l| l.slot());
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_undrain = Instant::now();
    loop {
        let view = match &mut slots {
            Some(rx) => {
                tokio::select! {
                    _ = tick.tick() => {}
                    r = rx.changed() => if r.is_err() { return },
                }
                Some(rx.borrow_and_update().clone())
            }
            None => {
                tick.tick().await;
                None
            }
        };
        if let Some(b) = &beat {
            b.beat();
        }
        round(&eng, view, &mut next_undrain).await;
    }
}

/// One round; `view` is `None` standalone.
async fn round(eng: &Arc<Inner>, view: Option<SlotView>, next_undrain: &mut Instant) {
    if !eng.is_busy() {
        let _ = eng.refresh_current();
    }
    match view {
        None => {}
        Some(SlotView::Unknown) => return,
        Some(SlotView::Free) => mark_reconciled(eng),
        Some(SlotView::Held(slot)) => {
            if let Some(lock) = &eng.lock {
                if orphan(eng, lock, slot).await {
                    return;
                }
            }
        }
    }
    // An undrain is an operation of its own: it runs only when no other one does.
    let Ok(_guard) = eng.try_busy("returning the host to rotation".into()) else {
        return;
    };
    return_to_rotation(eng, next_undrain).await;
}

fn mark_reconciled(eng: &Inner) {
    if let Err(e) = eng.journal.reconciled() {
        tracing::warn!(error = %e, "cannot journal that the slot was reconciled");
    }
}

/// Handles a slot the coordinators list for this host. `true` when something was done (or is
/// under way) about it, and nothing else should happen this round.
///
/// Deciding needs no busy guard: whether the token is in use is what the claims say (every
/// token the journal or an operation uses is claimed, and none is adopted while an acquire is
/// in flight), so a deploy asked for meanwhile is never refused on account of this.
async fn orphan(eng: &Arc<Inner>, lock: &Arc<dyn SlotLock>, slot: HeldSlot) -> bool {
    let SlotOwner::Agent(purpose) = slot.owner else {
        mark_reconciled(eng);
        return false; // not ours: never adopted nor released
    };
    let token = slot.token;
    if !lock.adopt(token) {
        mark_reconciled(eng);
        return false; // in use (claimed), or an acquire or a release is in flight
    }
    let hold = eng.journal.hold().ok().flatten();
    let new_journal = eng.journal.is_new().unwrap_or(false);
    let disrupted = slot
        .phase
        .is_some_and(|p| p >= Phase::Draining && p <= Phase::Undraining);
    if new_journal && disrupted && hold.is_none() {
        let Ok(guard) = eng.try_busy(format!("rebuilding slot {token}")) else {
            lock.unclaim(token);
            return true; // an operation runs: next round
        };
        tracing::warn!(
            token,
            %purpose,
            phase = ?slot.phase,
            "the coordinators say this host holds a slot the journal does not know, in a phase \
             that may have disrupted it: the journal was lost; rebuilding from the slot"
        );
        mark_reconciled(eng);
        rebuild(eng, purpose, token, slot.phase, guard).await;
        return true;
    }
    let rotation = eng.ops.rotation();
    let kept_out = hold.is_some() || starts_drained(&eng.journal).unwrap_or(false);
    let confirmed = rotation.settled && (rotation.state == Rotation::InRotation || kept_out);
    if !confirmed {
        // Not released while the host is out (or its state unconfirmed) and about to come
        // back: first the return to rotation, confirmed.
        lock.unclaim(token);
        return false;
    }
    tracing::warn!(
        token,
        %purpose,
        "the coordinators say this host holds a slot nothing here uses; releasing it"
    );
    mark_reconciled(eng);
    let lock = lock.clone();
    eng.spawn((), async move {
        if let Err(e) = lock.release(token).await {
            tracing::warn!(token, error = %e, "releasing an unused slot failed; will try again");
            lock.unclaim(token);
        }
    });
    true
}

/// Rebuilds the operation a lost journal knew about, from the slot (see the module docs).
async fn rebuild(
    eng: &Arc<Inner>,
    purpose: Purpose,
    token: u64,
    phase: Option<Phase>,
    guard: super::BusyGuard,
) {
    let note = format!(
        "rebuilt from the coordinators' slot {token} (last phase {}) after the journal was lost",
        phase.map(Phase::as_str).unwrap_or("none")
    );
    if let Some(kind) = HoldKind::for_operator(purpose) {
        let hold = Hold {
            kind,
            purpose,
            token,
            note,
            since_ms: now_ms(),
        };
        if let Err(e) = eng.journal.set_hold(Some(&hold)) {
            tracing::error!(error = %e, "cannot journal the rebuilt hold");
            return;
        }
        eng.update(|v| {
            v.token = token;
            v.hold = Some(hold);
        });
        if let Err(e) = eng.ops.drain().await {
            tracing::warn!(error = %e, "drain of the rebuilt hold failed");
        }
        drop(guard);
        return;
    }
    let Ok(Some(current)) = eng.ops.current() else {
        // Nothing installed (or unreadable): there is no deploy to finish. The slot is
        // released once the host is confirmed in rotation.
        if let Some(lock) = &eng.lock {
            lock.unclaim(token);
        }
        return;
    };
    let previous = eng.ops.previous().ok().flatten();
    let kind = match purpose {
        Purpose::Rollback => DeployKind::Rollback,
        _ => DeployKind::Deploy,
    };
    // Without a different `previous`, a failing `current` can only be restarted and verified
    // again, never replaced.
    let from = previous
        .filter(|p| *p != current)
        .unwrap_or(current.clone());
    let mut rec = DeployRecord::new(kind, "", Some(from), &current, now_ms());
    rec.token = token;
    rec.error = Some(note);
    // Before the swap, the live release is the old one: return to rotation, release. From the
    // swap on, `current` is judged by verify.
    rec.phase = if phase.is_some_and(|p| p >= Phase::Swapped) {
        Phase::Verifying
    } else {
        Phase::Draining
    };
    if let Err(e) = eng.journal.put_deploy(&rec) {
        tracing::error!(error = %e, "cannot journal the rebuilt deploy");
        return;
    }
    let mut run = Run::new(eng.clone(), rec, Progress::none());
    // As in a recovery at start: the service may be disrupted, and the health is the
    // engine's until the rebuilt deploy ends.
    run.recovering();
    eng.spawn((), async move {
        let _guard = guard;
        recover::recover(run).await;
    });
}

/// Returns to rotation a host that reports itself out while nothing keeps it out.
async fn return_to_rotation(eng: &Arc<Inner>, next: &mut Instant) {
    let rotation = eng.ops.rotation();
    if rotation.state == Rotation::InRotation || !rotation.settled || Instant::now() < *next {
        return;
    }
    let held = eng.journal.hold().ok().flatten().is_some();
    if held || starts_drained(&eng.journal).unwrap_or(true) {
        return;
    }
    if eng
        .journal
        .deploy()
        .ok()
        .flatten()
        .is_some_and(|r| r.in_progress())
    {
        return;
    }
    if eng.ops.current().ok().flatten().is_none() {
        return; // nothing deployed: nothing to put in rotation
    }
    tracing::warn!("the host is out of rotation and nothing keeps it out; returning it");
    match eng.ops.undrain().await {
        Ok(took) => tracing::info!("back in rotation (took {} ms)", took.as_millis()),
        Err(e) => {
            tracing::warn!(error = %e, "return to rotation failed; trying again later");
            *next = Instant::now() + UNDRAIN_RETRY;
        }
    }
}
