//! The health fact and who owns it: the monitor between deploys, the engine during them.
//!
//! One mutex orders every change, so the hand-over is race-free: the monitor publishes only
//! with the handover number it resumed from ([`HealthFact::publish_from_monitor`]), and any
//! claim by the engine bumps that number, so a probe result that was in flight when a deploy
//! began is refused rather than overwriting the engine's verdict. Every change is handed to
//! `persist` (the journal) under the same lock, so the journal sees the changes in order.

use hotdeploy_common::proto::Health;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Who decides the health right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Between deploys: the monitor's probes.
    Monitor,
    /// A deploy, rollback or recovery is under way.
    Engine,
}

/// The fact as the monitor reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub owner: Owner,
    /// Bumped by every claim and release.
    pub handover: u64,
    pub health: Health,
}

struct Ownership {
    /// Claims held by the engine (one in practice: the engine runs one operation at a time).
    claims: u32,
    handover: u64,
}

/// What a change of health is handed to (the journal, in the daemon).
pub type Persist = Box<dyn Fn(Health) + Send + Sync>;

/// The host's health, its owner, and its subscribers.
pub struct HealthFact {
    tx: watch::Sender<Health>,
    own: Mutex<Ownership>,
    persist: Persist,
}

impl HealthFact {
    /// A fact starting at `initial`, owned by the monitor; `persist` hears every change.
    pub fn new(initial: Health, persist: Persist) -> Arc<Self> {
        let (tx, _) = watch::channel(initial);
        Arc::new(Self {
            tx,
            own: Mutex::new(Ownership {
                claims: 0,
                handover: 0,
            }),
            persist,
        })
    }

    /// A fact that is persisted nowhere (tests, tools).
    pub fn in_memory(initial: Health) -> Arc<Self> {
        Self::new(initial, Box::new(|_| {}))
    }

    /// The health now.
    pub fn get(&self) -> Health {
        *self.tx.borrow()
    }

    /// Follows the health.
    pub fn subscribe(&self) -> watch::Receiver<Health> {
        self.tx.subscribe()
    }

    /// Health, owner and handover number, read together.
    pub fn snapshot(&self) -> Snapshot {
        let own = self.lock();
        Snapshot {
            owner: if own.claims > 0 {
                Owner::Engine
            } else {
                Owner::Monitor
            },
            handover: own.handover,
            health: self.get(),
        }
    }

    /// The engine takes the fact: the monitor pauses until the claim is released (or dropped).
    /// The health is left as it is.
    pub fn claim(self: &Arc<Self>) -> EngineClaim {
        let mut own = self.lock();
        own.claims += 1;
        own.handover += 1;
        EngineClaim {
            fact: self.clone(),
            released: false,
        }
    }

    /// The monitor's verdict, accepted only while the monitor owns the fact and nothing was
    /// handed over since it resumed at `handover`. Returns whether it was accepted.
    pub(crate) fn publish_from_monitor(&self, handover: u64, health: Health) -> bool {
        let own = self.lock();
        if own.claims > 0 || own.handover != handover {
            return false;
        }
        self.set_locked(&own, health);
        true
    }

    fn release(&self, health: Option<Health>) {
        let mut own = self.lock();
        if let Some(h) = health {
            self.set_locked(&own, h);
        }
        own.claims = own.claims.saturating_sub(1);
        own.handover += 1;
    }

    /// Sets the health; the caller holds the ownership lock (it orders persistence too).
    fn set_locked(&self, _own: &MutexGuard<'_, Ownership>, health: Health) {
        let changed = self.tx.send_if_modified(|h| {
            let changed = *h != health;
            *h = health;
            changed
        });
        if changed {
            tracing::info!(health = health.label(), "host health changed");
            (self.persist)(health);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ownership> {
        self.own.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The engine's hold on the health fact. Dropping it releases it with the health unchanged
/// (a deploy task that ends any other way than through [`EngineClaim::release`] still hands the
/// fact back to the monitor).
pub struct EngineClaim {
    fact: Arc<HealthFact>,
    released: bool,
}

impl EngineClaim {
    /// Sets a verdict the engine has established (a verify passed or failed).
    pub fn set(&self, health: Health) {
        let own = self.fact.lock();
        self.fact.set_locked(&own, health);
    }

    /// Hands the fact back to the monitor, at `health` if given.
    pub fn release(mut self, health: Option<Health>) {
        self.released = true;
        self.fact.release(health);
    }
}

impl Drop for EngineClaim {
    fn drop(&mut self) {
        if !self.released {
            self.fact.release(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_refuses_the_monitor_and_bumps_the_handover() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let fact = HealthFact::new(
            Health::Healthy,
            Box::new(move |h| s.lock().unwrap().push(h)),
        );
        let before = fact.snapshot();
        assert_eq!(before.owner, Owner::Monitor);
        assert!(fact.publish_from_monitor(before.handover, Health::Healthy));

        let claim = fact.claim();
        assert_eq!(fact.snapshot().owner, Owner::Engine);
        // A probe result from before the claim is thrown away.
        assert!(!fact.publish_from_monitor(before.handover, Health::Unhealthy));
        assert_eq!(fact.get(), Health::Healthy);
        claim.set(Health::Unhealthy);
        claim.release(Some(Health::Healthy));

        let after = fact.snapshot();
        assert_eq!(after.owner, Owner::Monitor);
        assert_eq!(after.health, Health::Healthy);
        // Still refused: the monitor must resume from the handover first.
        assert!(!fact.publish_from_monitor(before.handover, Health::Unhealthy));
        assert!(fact.publish_from_monitor(after.handover, Health::Unhealthy));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Health::Unhealthy, Health::Healthy, Health::Unhealthy],
            "every change is persisted, in order, and nothing else"
        );
    }

    #[test]
    fn a_dropped_claim_hands_the_fact_back() {
        let fact = HealthFact::in_memory(Health::Unprovisioned);
        {
            let _claim = fact.claim();
            assert_eq!(fact.snapshot().owner, Owner::Engine);
        }
        let s = fact.snapshot();
        assert_eq!(s.owner, Owner::Monitor);
        assert_eq!(s.health, Health::Unprovisioned);
    }
}
