//! The scrape-time metrics: a prometheus-client [`Collector`] that reads the agent's state on
//! every scrape (the engine's view, the health this host reports, the rotation state) and
//! writes it out as gauges.
//!
//! Where a value is one of a fixed set (a phase, a health, a rotation state) every value gets a
//! series, 1 for the one that holds and 0 for the others, so that no series vanishes when the
//! value changes.
//!
//! The slot's age is the time since this agent saw it granted (the metered lock times each
//! grant); for a slot it did not see granted (held across an agent restart) it is the age of the
//! hold that keeps it, else the time since the first scrape that saw it. The coordinators'
//! `hotdeploy_slot_age_seconds` is the authoritative age.

use super::deploy::DeployStats;
use crate::deploy::Engine;
use crate::journal::Phase;
use crate::rotation::{readiness, RotationControl};
use hotdeploy_common::proto::{Health, Rotation};
use hotdeploy_common::time::now_ms;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use std::fmt;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Every value of `hotdeploy_agent_deploy_phase{phase}` but `idle`: the journal's phases.
const PHASES: [Phase; 11] = [
    Phase::Staging,
    Phase::Staged,
    Phase::SlotRequested,
    Phase::SlotHeld,
    Phase::Draining,
    Phase::Swapped,
    Phase::Restarted,
    Phase::Verifying,
    Phase::RollingBack,
    Phase::Undraining,
    Phase::Released,
];

const HEALTHS: [Health; 3] = [Health::Unprovisioned, Health::Healthy, Health::Unhealthy];

const ROTATIONS: [Rotation; 3] = [
    Rotation::InRotation,
    Rotation::Draining,
    Rotation::OutOfRotation,
];

/// What a scrape reads.
pub struct AgentState {
    pub engine: Engine,
    /// The health this host reports (`health::reported`).
    pub health: watch::Receiver<Health>,
    pub rotation: Arc<RotationControl>,
    pub stats: DeployStats,
    /// A slot first seen by a scrape without a known grant time: `(token, seen_at_ms)`.
    first_seen: Mutex<Option<(u64, u64)>>,
}

impl AgentState {
    pub fn new(
        engine: Engine,
        health: watch::Receiver<Health>,
        rotation: Arc<RotationControl>,
        stats: DeployStats,
    ) -> Self {
        Self {
            engine,
            health,
            rotation,
            stats,
            first_seen: Mutex::new(None),
        }
    }

    /// When the slot `token` was taken, as well as this agent knows (see the module docs).
    fn slot_since(&self, token: u64, hold_since: Option<u64>, now: u64) -> u64 {
        if let Some(at) = self.stats.granted_at(token).or(hold_since) {
            return at;
        }
        let mut seen = self.first_seen.lock().unwrap_or_else(|p| p.into_inner());
        match *seen {
            Some((t, at)) if t == token => at,
            _ => {
                *seen = Some((token, now));
                now
            }
        }
    }
}

impl fmt::Debug for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentState")
    }
}

fn gauge<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: V,
) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(value).encode(m)
}

fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for AgentState {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let view = self.engine.view();
        let health = *self.health.borrow();
        let rotation = self.rotation.state();
        let now = now_ms();
        gauges(
            &mut enc,
            "deploy_phase",
            "The phase of the deploy in progress (journal phases), or idle: 1 for the current one",
            std::iter::once("idle")
                .chain(PHASES.iter().map(|p| p.as_str()))
                .map(|p| ([("phase", p)], i64::from(view.phase == p))),
        )?;
        gauges(
            &mut enc,
            "health",
            "The health this host reports: 1 for the current one",
            HEALTHS
                .iter()
                .map(|h| ([("health", h.label())], i64::from(health == *h))),
        )?;
        gauges(
            &mut enc,
            "rotation",
            "The rotation state this host reports: 1 for the current one",
            ROTATIONS
                .iter()
                .map(|r| ([("state", r.label())], i64::from(rotation == *r))),
        )?;
        gauge(
            &mut enc,
            "in_rotation",
            "1 while the host is in rotation (confirmed with the load balancer)",
            None,
            i64::from(rotation == Rotation::InRotation),
        )?;
        gauge(
            &mut enc,
            "ready",
            "1 while GET /ready answers 200 (in rotation and healthy)",
            None,
            i64::from(readiness(self.rotation.advertised(), health).is_ok()),
        )?;
        gauge(
            &mut enc,
            "held_out",
            "1 while a hold keeps the host out of rotation (an operator's drain or maintenance, \
             or a deploy that could not bring it back)",
            None,
            i64::from(view.hold.is_some()),
        )?;
        let token = view.token;
        gauge(
            &mut enc,
            "slot_held",
            "1 while this host holds a slot of the coordinators' lock",
            None,
            i64::from(token != 0),
        )?;
        gauge(
            &mut enc,
            "slot_token",
            "The token of the slot held; 0 for none",
            None,
            token as i64,
        )?;
        let age = if token == 0 {
            0.0
        } else {
            let hold_since = view
                .hold
                .as_ref()
                .filter(|h| h.token == token)
                .map(|h| h.since_ms);
            now.saturating_sub(self.slot_since(token, hold_since, now)) as f64 / 1000.0
        };
        gauge(
            &mut enc,
            "slot_age",
            "How long the slot held has been held; 0 for none",
            Some(&Unit::Seconds),
            age,
        )?;
        if let Some(release) = &view.current {
            gauges(
                &mut enc,
                "release",
                "The live release (1, labelled with its id)",
                [([("release", release.as_str())], 1i64)],
            )?;
        }
        Ok(())
    }
}
