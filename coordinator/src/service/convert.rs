//! Conversions between the state machine's types and the wire types of `hotdeploy.v1`.
//!
//! The state machine has its own enums (it must not depend on generated code to stay pure and
//! stable across proto changes); this file is the only place that maps them.

use crate::state::{self, GroupView, Host, Slot};
use hotdeploy_common::proto;

pub(crate) fn health_from_wire(h: i32) -> state::Health {
    match proto::Health::try_from(h).unwrap_or(proto::Health::Unspecified) {
        proto::Health::Healthy => state::Health::Healthy,
        proto::Health::Unhealthy => state::Health::Unhealthy,
        proto::Health::Unprovisioned | proto::Health::Unspecified => state::Health::Unprovisioned,
    }
}

pub(crate) fn rotation_from_wire(r: i32) -> state::Rotation {
    match proto::Rotation::try_from(r).unwrap_or(proto::Rotation::Unspecified) {
        proto::Rotation::InRotation => state::Rotation::InRotation,
        proto::Rotation::Draining => state::Rotation::Draining,
        proto::Rotation::OutOfRotation | proto::Rotation::Unspecified => {
            state::Rotation::OutOfRotation
        }
    }
}

pub(crate) fn report_from_wire(r: Option<&proto::HostReport>) -> state::Report {
    match r {
        Some(r) => state::Report {
            health: health_from_wire(r.health),
            rotation: rotation_from_wire(r.rotation),
            release: r.release.chars().take(64).collect(),
            phase: r.phase.chars().take(32).collect(),
        },
        None => state::Report {
            health: state::Health::Unprovisioned,
            rotation: state::Rotation::OutOfRotation,
            release: String::new(),
            phase: String::new(),
        },
    }
}

pub(crate) fn health_to_wire(h: state::Health) -> proto::Health {
    match h {
        state::Health::Unprovisioned => proto::Health::Unprovisioned,
        state::Health::Healthy => proto::Health::Healthy,
        state::Health::Unhealthy => proto::Health::Unhealthy,
    }
}

pub(crate) fn rotation_to_wire(r: state::Rotation) -> proto::Rotation {
    match r {
        state::Rotation::InRotation => proto::Rotation::InRotation,
        state::Rotation::Draining => proto::Rotation::Draining,
        state::Rotation::OutOfRotation => proto::Rotation::OutOfRotation,
    }
}

pub(crate) fn slot_to_wire(s: &Slot) -> proto::Slot {
    proto::Slot {
        host: s.host.clone(),
        groups: s.groups.clone(),
        token: s.token,
        purpose: s.purpose.clone(),
        reason: s.reason.clone(),
        rollout: s.rollout.clone(),
        granted_at_ms: s.granted_at_ms,
        phase: s.phase.clone(),
    }
}

pub(crate) fn group_to_wire(g: &GroupView) -> proto::GroupInfo {
    proto::GroupInfo {
        name: g.name.clone(),
        max_unavailable: g.max_unavailable.to_string(),
        budget: g.budget,
        allow_zero_available: g.allow_zero_available,
        size: g.size,
        unavailable: g.unavailable,
        holders: g.holders.clone(),
    }
}

pub(crate) fn host_to_wire(h: &Host, last_seen_ms: Option<u64>) -> proto::HostInfo {
    let reach = match h.reachability {
        state::Reachability::Reachable => proto::Reachability::Reachable,
        state::Reachability::Unreachable => proto::Reachability::Unreachable,
    };
    proto::HostInfo {
        host: h.id.clone(),
        groups: h.groups.clone(),
        reachability: reach as i32,
        health: health_to_wire(h.health) as i32,
        rotation: rotation_to_wire(h.rotation) as i32,
        release: h.release.clone(),
        slot_token: h.slot.unwrap_or(0),
        last_seen_ms,
        phase: h.phase.clone(),
        address: h.address.clone(),
    }
}

pub(crate) fn write_id(w: Option<proto::WriteId>) -> Option<state::WriteId> {
    w.filter(|w| !w.client_id.is_empty())
        .map(|w| state::WriteId {
            client_id: w.client_id.chars().take(128).collect(),
            seq: w.seq,
        })
}
