//! The health a starting agent reports before its first probe round.
//!
//! The rotation front ends answer as soon as they listen, so this first value matters: an agent
//! restarted under a serving host must say `ready up` from its first answer, and one restarted
//! under a broken host must not. The rules, in order:
//!
//! 0. A `current` link that cannot be read: `unhealthy` (something is installed, and it is
//!    broken; see [`super::reported`]); once it is repaired, the probes decide.
//! 1. No `current`: `unprovisioned`.
//! 2. A deploy in progress: what the journal last recorded (the engine's value when the agent
//!    died), except that a service this agent had to start afresh (after a reboot) is
//!    `unhealthy`; recovery owns the fact from here. Without a record, `unprovisioned` for a
//!    first deploy, else `unhealthy`.
//! 3. A record for the live release: its value, except that a service this agent had to start
//!    afresh (not adopted) is `unhealthy` until its probes pass. A record that says
//!    `unprovisioned` stays so: no verify has passed on this host.
//! 4. No usable record (an older agent's journal, a lost one): `healthy` only if the last deploy
//!    verified the live release and the service was not started afresh; else `unhealthy`,
//!    and the probes decide.

use super::record::{HealthRecord, HostHealth};
use crate::journal::{DeployRecord, Outcome};
use hotdeploy_common::proto::Health;

/// What the agent knows at start.
#[derive(Debug, Clone, Copy)]
pub struct StartFacts<'a> {
    /// The release `current` names.
    pub current: Option<&'a str>,
    /// The `current` link exists but cannot be read (`current` is then `None`).
    pub current_broken: bool,
    /// The journal's health record.
    pub record: Option<&'a HealthRecord>,
    /// The journal's last deploy.
    pub deploy: Option<&'a DeployRecord>,
    /// `exec` mode: the service was started by this agent rather than adopted.
    pub started_afresh: bool,
}

/// The health to start from; see the module docs.
pub fn initial(f: StartFacts<'_>) -> Health {
    if f.current_broken {
        return Health::Unhealthy;
    }
    let Some(current) = f.current else {
        return Health::Unprovisioned;
    };
    if let Some(rec) = f.deploy.filter(|r| r.in_progress()) {
        return match (f.record, &rec.from) {
            (Some(r), _) if r.health == HostHealth::Unprovisioned => Health::Unprovisioned,
            (Some(_), _) if f.started_afresh => Health::Unhealthy,
            (Some(r), _) => r.health.into(),
            (None, None) => Health::Unprovisioned,
            (None, Some(_)) => Health::Unhealthy,
        };
    }
    let vouched = match f.record {
        Some(r) if r.health == HostHealth::Unprovisioned => return Health::Unprovisioned,
        Some(r) => r.release.as_deref() == Some(current) && r.health == HostHealth::Healthy,
        None => f.deploy.is_some_and(|d| verified(d, current)),
    };
    if vouched && !f.started_afresh {
        Health::Healthy
    } else {
        Health::Unhealthy
    }
}

/// Whether a finished deploy ended with `current` verified.
fn verified(d: &DeployRecord, current: &str) -> bool {
    match d.outcome {
        Some(Outcome::Succeeded) => d.to == current,
        Some(Outcome::RolledBack) => d.from.as_deref() == Some(current),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{DeployKind, Phase};

    fn rec(h: HostHealth, release: Option<&str>) -> HealthRecord {
        HealthRecord {
            health: h,
            release: release.map(str::to_owned),
            at_ms: 1,
        }
    }

    fn deploy(from: Option<&str>, to: &str, outcome: Option<Outcome>) -> DeployRecord {
        let mut d = DeployRecord::new(DeployKind::Deploy, "", from.map(str::to_owned), to, 1);
        d.phase = Phase::Verifying;
        if outcome.is_some() {
            d.outcome = outcome;
            d.phase = Phase::Released;
            d.finished_at_ms = Some(2);
        }
        d
    }

    fn facts<'a>(
        current: Option<&'a str>,
        record: Option<&'a HealthRecord>,
        deploy: Option<&'a DeployRecord>,
        started_afresh: bool,
    ) -> StartFacts<'a> {
        StartFacts {
            current,
            current_broken: false,
            record,
            deploy,
            started_afresh,
        }
    }

    #[test]
    fn nothing_live_is_unprovisioned() {
        let r = rec(HostHealth::Healthy, Some("v1"));
        assert_eq!(
            initial(facts(None, Some(&r), None, false)),
            Health::Unprovisioned
        );
    }

    #[test]
    fn a_broken_current_link_is_unhealthy_not_unprovisioned() {
        let r = rec(HostHealth::Healthy, Some("v1"));
        let f = StartFacts {
            current_broken: true,
            ..facts(None, Some(&r), None, false)
        };
        assert_eq!(initial(f), Health::Unhealthy);
    }

    #[test]
    fn setting_current_alone_vouches_for_nothing() {
        // A first deploy interrupted after the swap, before its verify passed.
        let d = deploy(None, "v1", None);
        assert_eq!(
            initial(facts(Some("v1"), None, Some(&d), false)),
            Health::Unprovisioned
        );
        let r = rec(HostHealth::Unprovisioned, None);
        assert_eq!(
            initial(facts(Some("v1"), Some(&r), Some(&d), false)),
            Health::Unprovisioned
        );
        // A failed first deploy whose `current` could not be removed.
        let failed = deploy(None, "v1", Some(Outcome::Failed));
        assert_eq!(
            initial(facts(Some("v1"), Some(&r), Some(&failed), false)),
            Health::Unprovisioned
        );
        // No journal at all: the probes must prove it.
        assert_eq!(
            initial(facts(Some("v1"), None, None, false)),
            Health::Unhealthy
        );
    }

    #[test]
    fn the_record_of_the_live_release_stands() {
        let good = rec(HostHealth::Healthy, Some("v1"));
        let bad = rec(HostHealth::Unhealthy, Some("v1"));
        assert_eq!(
            initial(facts(Some("v1"), Some(&good), None, false)),
            Health::Healthy
        );
        assert_eq!(
            initial(facts(Some("v1"), Some(&bad), None, false)),
            Health::Unhealthy
        );
        // Of another release: unproven.
        assert_eq!(
            initial(facts(Some("v2"), Some(&good), None, false)),
            Health::Unhealthy
        );
        // A service started afresh must prove itself.
        assert_eq!(
            initial(facts(Some("v1"), Some(&good), None, true)),
            Health::Unhealthy
        );
    }

    #[test]
    fn an_older_journal_falls_back_to_the_last_verified_deploy() {
        let ok = deploy(Some("v0"), "v1", Some(Outcome::Succeeded));
        assert_eq!(
            initial(facts(Some("v1"), None, Some(&ok), false)),
            Health::Healthy
        );
        let rolled = deploy(Some("v0"), "v1", Some(Outcome::RolledBack));
        assert_eq!(
            initial(facts(Some("v0"), None, Some(&rolled), false)),
            Health::Healthy
        );
        let failed = deploy(Some("v0"), "v1", Some(Outcome::Failed));
        assert_eq!(
            initial(facts(Some("v1"), None, Some(&failed), false)),
            Health::Unhealthy
        );
    }

    #[test]
    fn an_interrupted_deploy_keeps_the_recorded_value() {
        let d = deploy(Some("v0"), "v1", None);
        let r = rec(HostHealth::Healthy, Some("v0"));
        assert_eq!(
            initial(facts(Some("v1"), Some(&r), Some(&d), false)),
            Health::Healthy
        );
        assert_eq!(
            initial(facts(Some("v1"), None, Some(&d), false)),
            Health::Unhealthy
        );
        // After a reboot the service was started afresh: the record is of a process now gone.
        assert_eq!(
            initial(facts(Some("v1"), Some(&r), Some(&d), true)),
            Health::Unhealthy
        );
        // A first deploy stays unprovisioned whatever ran.
        let first = deploy(None, "v1", None);
        let unprov = rec(HostHealth::Unprovisioned, None);
        assert_eq!(
            initial(facts(Some("v1"), Some(&unprov), Some(&first), true)),
            Health::Unprovisioned
        );
    }
}
