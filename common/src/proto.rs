//! Generated gRPC code for `hotdeploy.v1`, plus the encoded file descriptor set that server
//! reflection serves.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("hotdeploy.v1");

/// The encoded `FileDescriptorSet` of every hotdeploy proto, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hotdeploy_descriptor");

/// Response metadata key with the leader's address, set by a follower that refuses a write.
pub const LEADER_ADDRESS_KEY: &str = "x-hotdeploy-leader";
/// Response metadata key with the leader's raft id.
pub const LEADER_ID_KEY: &str = "x-hotdeploy-leader-id";

impl Health {
    /// The lower-case name used in JSON and tables.
    pub fn label(self) -> &'static str {
        match self {
            Health::Unspecified => "unknown",
            Health::Unprovisioned => "unprovisioned",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

impl Rotation {
    /// The lower-case name used in JSON and tables.
    pub fn label(self) -> &'static str {
        match self {
            Rotation::Unspecified => "unknown",
            Rotation::InRotation => "in_rotation",
            Rotation::Draining => "draining",
            Rotation::OutOfRotation => "out_of_rotation",
        }
    }
}

impl HostKind {
    /// The lower-case name used in JSON and tables (unspecified, from an older coordinator, is
    /// an agent host).
    pub fn label(self) -> &'static str {
        match self {
            HostKind::Unspecified | HostKind::Agent => "agent",
            HostKind::LockOnly => "lock_only",
        }
    }
}

impl Reachability {
    /// The lower-case name used in JSON and tables.
    pub fn label(self) -> &'static str {
        match self {
            Reachability::Unspecified => "unknown",
            Reachability::Reachable => "reachable",
            Reachability::Unreachable => "unreachable",
        }
    }
}

impl RolloutState {
    /// The lower-case name used in JSON and tables.
    pub fn label(self) -> &'static str {
        match self {
            RolloutState::Unspecified => "unknown",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
            RolloutState::Halted => "halted",
            RolloutState::Aborted => "aborted",
        }
    }
}

impl RolloutKind {
    /// The lower-case name used in JSON and tables.
    pub fn label(self) -> &'static str {
        match self {
            RolloutKind::Unspecified => "unknown",
            RolloutKind::Operator => "operator",
            RolloutKind::Rollback => "rollback",
            RolloutKind::CatchUp => "catch_up",
        }
    }
}

impl StepPhase {
    /// The lower-case name used in JSON and tables.
    pub fn label(self) -> &'static str {
        match self {
            StepPhase::Unspecified => "unknown",
            StepPhase::Pending => "pending",
            StepPhase::Staging => "staging",
            StepPhase::Staged => "staged",
            StepPhase::Waiting => "waiting",
            StepPhase::Draining => "draining",
            StepPhase::Swapping => "swapping",
            StepPhase::Verifying => "verifying",
            StepPhase::RollingBack => "rolling_back",
            StepPhase::Succeeded => "succeeded",
            StepPhase::Failed => "failed",
            StepPhase::RolledBack => "rolled_back",
        }
    }

    /// Whether the step is done (succeeded, failed or rolled back).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepPhase::Succeeded | StepPhase::Failed | StepPhase::RolledBack
        )
    }
}
