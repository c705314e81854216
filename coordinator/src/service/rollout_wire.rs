//! Conversions between the state machine's rollout types and the wire types of `hotdeploy.v1`.
//!
//! The state machine keeps its own enums and structs (it must not depend on generated code);
//! this file is the only place that maps rollouts to and from the wire, as `convert.rs` does
//! for hosts, groups and slots.

use crate::state::{
    self, Assignment, ReleaseSpec, Rollout, RolloutKind, RolloutState, StateMachine, StepPhase,
    StepReport,
};
use hotdeploy_common::proto;

pub(crate) fn release_to_wire(r: &ReleaseSpec) -> proto::Release {
    proto::Release {
        id: r.id.clone(),
        artifact_url: r.artifact_url.clone(),
        sha256: r.sha256.clone(),
        signature: r.signature.clone(),
    }
}

pub(crate) fn release_from_wire(r: &proto::Release) -> ReleaseSpec {
    ReleaseSpec {
        id: r.id.clone(),
        artifact_url: r.artifact_url.clone(),
        sha256: r.sha256.trim().to_ascii_lowercase(),
        signature: r.signature.trim().to_string(),
    }
}

pub(crate) fn state_to_wire(s: RolloutState) -> proto::RolloutState {
    match s {
        RolloutState::Running => proto::RolloutState::Running,
        RolloutState::Paused => proto::RolloutState::Paused,
        RolloutState::Completed => proto::RolloutState::Completed,
        RolloutState::Halted => proto::RolloutState::Halted,
        RolloutState::Aborted => proto::RolloutState::Aborted,
    }
}

pub(crate) fn kind_to_wire(k: RolloutKind) -> proto::RolloutKind {
    match k {
        RolloutKind::Operator => proto::RolloutKind::Operator,
        RolloutKind::Rollback => proto::RolloutKind::Rollback,
        RolloutKind::CatchUp => proto::RolloutKind::CatchUp,
    }
}

pub(crate) fn phase_to_wire(p: StepPhase) -> proto::StepPhase {
    match p {
        StepPhase::Pending => proto::StepPhase::Pending,
        StepPhase::Staging => proto::StepPhase::Staging,
        StepPhase::Staged => proto::StepPhase::Staged,
        StepPhase::Waiting => proto::StepPhase::Waiting,
        StepPhase::Draining => proto::StepPhase::Draining,
        StepPhase::Swapping => proto::StepPhase::Swapping,
        StepPhase::Verifying => proto::StepPhase::Verifying,
        StepPhase::RollingBack => proto::StepPhase::RollingBack,
        StepPhase::Succeeded => proto::StepPhase::Succeeded,
        StepPhase::Failed => proto::StepPhase::Failed,
        StepPhase::RolledBack => proto::StepPhase::RolledBack,
    }
}

/// The report an agent sent, or `None` for an unknown value (refused by the caller).
pub(crate) fn report_from_wire(r: i32) -> Option<StepReport> {
    Some(
        match proto::StepReport::try_from(r).unwrap_or(proto::StepReport::Unspecified) {
            proto::StepReport::Unspecified => return None,
            proto::StepReport::Staging => StepReport::Staging,
            proto::StepReport::Staged => StepReport::Staged,
            proto::StepReport::Swapping => StepReport::Swapping,
            proto::StepReport::Verifying => StepReport::Verifying,
            proto::StepReport::Succeeded => StepReport::Succeeded,
            proto::StepReport::Failed => StepReport::Failed,
            proto::StepReport::RolledBack => StepReport::RolledBack,
            proto::StepReport::Fenced => StepReport::Fenced,
        },
    )
}

pub(crate) fn assignment_to_wire(a: &Assignment) -> proto::Assignment {
    proto::Assignment {
        rollout: a.rollout.clone(),
        release: Some(release_to_wire(&a.release)),
        attempt: a.attempt,
        phase: phase_to_wire(a.phase) as i32,
        canary: a.canary,
        may_deploy: a.may_deploy,
        first_install: a.first_install,
        auto_rollback: a.auto_rollback,
    }
}

pub(crate) fn summary_to_wire(r: &Rollout) -> proto::RolloutSummary {
    proto::RolloutSummary {
        id: r.id.clone(),
        kind: kind_to_wire(r.kind) as i32,
        group: r.group.clone(),
        release: r.release.id.clone(),
        state: state_to_wire(r.state) as i32,
        reason: r.reason.clone(),
        created_at_ms: r.created_at_ms,
        finished_at_ms: r.finished_at_ms,
        succeeded: r.succeeded(),
        failed: r.failures(),
        pending: r.pending(),
        hosts: r.steps.len() as u64,
    }
}

/// The whole rollout, with each host's live release and what it waits on.
pub(crate) fn rollout_to_wire(r: &Rollout, st: &StateMachine) -> proto::RolloutInfo {
    let waits = st.rollout_waits(r);
    let hosts = r
        .steps
        .iter()
        .map(|s| proto::RolloutHost {
            host: s.host.clone(),
            phase: phase_to_wire(s.phase) as i32,
            release: st
                .host(&s.host)
                .map(|h| h.release.clone())
                .unwrap_or_default(),
            from_release: s.from_release.clone(),
            error: s.error.clone(),
            canary: s.canary,
            attempt: s.attempt,
            token: s.token.unwrap_or(0),
            first_install: s.first_install,
            since_ms: s.since_ms(),
            waiting_on: waits
                .get(&s.host)
                .map(|w| w.to_string())
                .unwrap_or_default(),
            phases: s
                .phases
                .iter()
                .map(|p| proto::PhaseTime {
                    phase: phase_to_wire(p.phase) as i32,
                    at_ms: p.at_ms,
                })
                .collect(),
        })
        .collect();
    proto::RolloutInfo {
        id: r.id.clone(),
        kind: kind_to_wire(r.kind) as i32,
        group: r.group.clone(),
        release: Some(release_to_wire(&r.release)),
        state: state_to_wire(r.state) as i32,
        reason: r.reason.clone(),
        batch: r.policy.batch,
        canary: r.policy.canary,
        pause_after_canary: r.policy.pause_after_canary,
        max_failures: r.policy.max_failures,
        auto_rollback: r.policy.auto_rollback,
        progress_deadline_ms: r.policy.progress_deadline_ms,
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        last_progress_at_ms: r.last_progress_at_ms,
        finished_at_ms: r.finished_at_ms,
        actor: r.actor.clone(),
        previous_release: r
            .previous
            .as_ref()
            .map(|p| p.id.clone())
            .unwrap_or_default(),
        superseded_by: r.superseded_by.clone(),
        rollback: r.rollback.clone(),
        succeeded: r.succeeded(),
        failed: r.failures(),
        pending: r.pending(),
        hosts,
        events: r
            .events
            .iter()
            .map(|e| proto::RolloutEvent {
                index: e.index,
                at_ms: e.at_ms,
                host: e.host.clone(),
                message: e.message.clone(),
            })
            .collect(),
        events_dropped: r.events_dropped,
    }
}

/// Whether a wire state is terminal (a watch ends after it).
pub(crate) fn is_terminal(info: &proto::RolloutInfo) -> bool {
    !matches!(
        proto::RolloutState::try_from(info.state),
        Ok(proto::RolloutState::Running | proto::RolloutState::Paused)
    )
}

/// A host report from the wire, for `ReportStep`.
pub(crate) fn host_report_from_wire(r: Option<&proto::HostReport>) -> Option<state::Report> {
    r.map(|r| super::convert::report_from_wire(Some(r)))
}
