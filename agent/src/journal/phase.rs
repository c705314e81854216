//! The phases of a deploy and its possible outcomes.
//!
//! A deploy walks the phases in the order they are declared; [`Phase::rank`] gives that order,
//! which recovery uses to tell "before the swap" from "after it". The outcome is decided once
//! per deploy and kept in the journal as the last deploy's result.

use serde::{Deserialize, Serialize};

/// Where a deploy stands. Each phase is made durable before it is acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Fetching and unpacking the artifact (no lock held).
    Staging,
    /// The release is in the store.
    Staged,
    /// An AcquireSlot with the journaled write id is (about to be) in flight.
    SlotRequested,
    /// The coordinator granted the slot; the token is journaled.
    SlotHeld,
    /// Leaving rotation.
    Draining,
    /// `current` is (about to be) swapped to the new release.
    Swapped,
    /// The service is (about to be) restarted on `current`.
    Restarted,
    /// The probes run against the new release.
    Verifying,
    /// Verify failed: the old release is (about to be) swapped back in.
    RollingBack,
    /// Returning to rotation; the slot is released only once that is confirmed.
    Undraining,
    /// The slot is released; the deploy is over.
    Released,
}

impl Phase {
    /// The name used in progress messages, ReportPhase and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Staging => "staging",
            Phase::Staged => "staged",
            Phase::SlotRequested => "slot_requested",
            Phase::SlotHeld => "slot_held",
            Phase::Draining => "draining",
            Phase::Swapped => "swapped",
            Phase::Restarted => "restarted",
            Phase::Verifying => "verifying",
            Phase::RollingBack => "rolling_back",
            Phase::Undraining => "undraining",
            Phase::Released => "released",
        }
    }

    /// The phase named `s` (as [`Phase::as_str`] writes it), e.g. in a slot's last committed
    /// phase.
    pub fn parse(s: &str) -> Option<Phase> {
        ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether `current` may name a release that has not passed verify in this phase: from the
    /// swap until the rollback is done. An agent starting with such a deploy in progress must
    /// not start the service on `current` before recovery fences the restart.
    pub fn current_may_be_unverified(self) -> bool {
        self >= Phase::Swapped && self <= Phase::RollingBack
    }

    /// Whether the host may be out of rotation in this phase.
    pub fn may_be_drained(self) -> bool {
        self >= Phase::Draining && self < Phase::Released
    }
}

const ALL: [Phase; 11] = [
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

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a deploy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The new release is live, verified and in rotation.
    Succeeded,
    /// Nothing was swapped (staging error, refused slot), or neither release verifies.
    Failed,
    /// The new release failed verify; the old one is live again and in rotation.
    RolledBack,
    /// The slot was revoked under the agent; it stopped and left the service as it was.
    Fenced,
}

impl Outcome {
    /// The name shown in status (`last_outcome`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Fenced => "fenced",
        }
    }

    /// The wire enum.
    pub fn to_proto(self) -> hotdeploy_common::proto::Outcome {
        use hotdeploy_common::proto::Outcome as P;
        match self {
            Outcome::Succeeded => P::Succeeded,
            Outcome::Failed => P::Failed,
            Outcome::RolledBack => P::RolledBack,
            Outcome::Fenced => P::Fenced,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_ordered_and_snake_case() {
        assert!(Phase::Staging < Phase::SlotHeld);
        assert!(Phase::Draining < Phase::Swapped);
        assert!(Phase::RollingBack < Phase::Undraining);
        assert_eq!(
            serde_json::to_string(&Phase::SlotRequested).unwrap_or_default(),
            "\"slot_requested\""
        );
        assert_eq!(
            serde_json::to_string(&Outcome::RolledBack).unwrap_or_default(),
            "\"rolled_back\""
        );
        assert!(Phase::Draining.may_be_drained());
        assert!(!Phase::SlotHeld.may_be_drained());
        for p in ALL {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        assert_eq!(Phase::parse("nope"), None);
    }
}
