//! Commands the simulated clients send, as the services would build them.

use crate::state::{
    Command, Health, Proposal, ReleaseSpec, Report, RolloutSpec, Rotation, WriteId,
};
use hotdeploy_common::config::MaxUnavailable;

pub(crate) fn report(health: Health) -> Report {
    Report {
        health,
        rotation: if health == Health::Unprovisioned {
            Rotation::OutOfRotation
        } else {
            Rotation::InRotation
        },
        release: if health == Health::Unprovisioned {
            String::new()
        } else {
            "v1".into()
        },
        phase: "idle".into(),
    }
}

pub(crate) fn group(name: &str, max_unavailable: &str) -> Command {
    Command::SetGroupPolicy {
        group: name.into(),
        max_unavailable: Some(MaxUnavailable::parse(max_unavailable).expect("a budget")),
        allow_zero_available: None,
    }
}

pub(crate) fn register(host: &str, groups: &[&str], health: Health) -> Command {
    Command::Register {
        host: host.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        address: format!("{host}:7401"),
        report: report(health),
    }
}

pub(crate) fn acquire(host: &str) -> Command {
    Command::Acquire {
        host: host.into(),
        purpose: "deploy".into(),
        reason: "sim".into(),
        rollout: String::new(),
        phase: None,
    }
}

pub(crate) fn release(host: &str, token: u64) -> Command {
    Command::Release {
        host: host.into(),
        token,
    }
}

pub(crate) fn force_release(host: &str) -> Command {
    Command::ForceRelease { host: host.into() }
}

/// An operator's proposal at `at_ms`.
pub(crate) fn operator(at_ms: u64, command: Command) -> Proposal {
    Proposal::new(None, at_ms, "operator/sim", command)
}

/// A host's agent's write `seq` at `at_ms`.
pub(crate) fn agent(host: &str, seq: u64, at_ms: u64, command: Command) -> Proposal {
    Proposal::new(
        Some(WriteId {
            client_id: format!("agent/{host}/sim"),
            seq,
        }),
        at_ms,
        format!("agent/{host}"),
        command,
    )
}

/// `StartRollout` of `release` to `group`, one host at a time, as `rollout start` sends it.
pub(crate) fn start_rollout(id: &str, group: &str, release: &str) -> Command {
    Command::StartRollout {
        spec: RolloutSpec {
            id: id.into(),
            group: group.into(),
            release: ReleaseSpec {
                id: release.into(),
                artifact_url: format!("file:///releases/{release}.tar.gz"),
                sha256: "ab".repeat(32),
                signature: String::new(),
            },
            batch: 0,
            canary: 0,
            pause_after_canary: false,
            max_failures: 0,
            auto_rollback: true,
            supersede: false,
            progress_deadline_ms: 0,
        },
    }
}

pub(crate) fn pause_rollout(id: &str) -> Command {
    Command::PauseRollout { id: id.into() }
}
