//! Conversions between the state machine's types and the wire types of `hotdeploy.v1`.
//!
//! The state machine has its own enums (it must not depend on generated code to stay pure and
//! stable across proto changes); this file is the only place that maps them.
//!
//! Missing data is never read as good news: a report that is absent, or a health the agent left
//! `UNSPECIFIED` (or a value this binary does not know), is `unhealthy`, never `unprovisioned`.
//! An unprovisioned host counts in no budget, so defaulting to it would free budget on a
//! malformed report.

use crate::state::{self, GroupView, Host, Slot};
use hotdeploy_common::proto;
use tonic::Status;

pub(crate) fn health_from_wire(h: i32) -> state::Health {
    match proto::Health::try_from(h).unwrap_or(proto::Health::Unspecified) {
        proto::Health::Healthy => state::Health::Healthy,
        proto::Health::Unprovisioned => state::Health::Unprovisioned,
        proto::Health::Unhealthy | proto::Health::Unspecified => state::Health::Unhealthy,
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
            health: state::Health::Unhealthy,
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
        kind: match h.kind {
            state::HostKind::Agent => proto::HostKind::Agent,
            state::HostKind::LockOnly => proto::HostKind::LockOnly,
        } as i32,
    }
}

/// The longest `client_id` a write may carry. Sessions are keyed by it and replicated.
pub(crate) const MAX_CLIENT_ID: usize = 128;

/// The write id of a request: `None` without one; an over-long client id is refused (cutting it
/// would merge distinct clients' sessions).
pub(crate) fn write_id(w: Option<proto::WriteId>) -> Result<Option<state::WriteId>, Status> {
    let Some(w) = w.filter(|w| !w.client_id.is_empty()) else {
        return Ok(None);
    };
    if w.client_id.len() > MAX_CLIENT_ID {
        return Err(Status::invalid_argument(format!(
            "write.client_id is {} bytes; at most {MAX_CLIENT_ID} allowed",
            w.client_id.len()
        )));
    }
    Ok(Some(state::WriteId {
        client_id: w.client_id,
        seq: w.seq,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_unspecified_health_is_unhealthy() {
        assert_eq!(report_from_wire(None).health, state::Health::Unhealthy);
        assert_eq!(
            health_from_wire(proto::Health::Unspecified as i32),
            state::Health::Unhealthy
        );
        assert_eq!(health_from_wire(99), state::Health::Unhealthy);
        assert_eq!(
            health_from_wire(proto::Health::Unprovisioned as i32),
            state::Health::Unprovisioned
        );
        let empty = proto::HostReport::default();
        assert_eq!(
            report_from_wire(Some(&empty)).health,
            state::Health::Unhealthy
        );
    }

    #[test]
    fn an_over_long_client_id_is_refused_not_cut() {
        let w = |id: &str| {
            Some(proto::WriteId {
                client_id: id.to_string(),
                seq: 3,
            })
        };
        let ok = "c".repeat(MAX_CLIENT_ID);
        assert_eq!(write_id(w(&ok)).unwrap().unwrap().client_id, ok);
        let err = write_id(w(&"c".repeat(MAX_CLIENT_ID + 1))).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("129 bytes"), "{}", err.message());
        assert_eq!(write_id(w("")).unwrap(), None);
        assert_eq!(write_id(None).unwrap(), None);
    }
}
