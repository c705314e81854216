//! Why a coordinator call did not succeed, sorted by what the caller should do about it.

use thiserror::Error;
use tonic::Code;

/// A coordinator call that failed.
#[derive(Debug, Clone, Error)]
pub enum LinkError {
    /// The slot token is no longer valid (force-released, host removed): the agent is fenced
    /// and must stop acting.
    #[error("slot token is stale: {0}")]
    Stale(String),
    /// A deterministic refusal: another purpose holds the slot, a group of one host, an unknown
    /// group or host, a permission. Retrying will not help.
    #[error("refused by the coordinator: {0}")]
    Refused(String),
    /// Kept failing with retryable errors (no leader, no budget) until the deadline.
    #[error("gave up after {waited_ms} ms: {last}")]
    Timeout { waited_ms: u64, last: String },
    /// The agent has no coordinators configured.
    #[error("no coordinators configured")]
    Standalone,
    /// A local failure (the journal could not hand out a write id, a bad address).
    #[error("{0}")]
    Local(String),
}

impl LinkError {
    /// Whether asking again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LinkError::Timeout { .. })
    }
}

/// How the link reacts to a status from a coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Ask the leader named in the metadata (or the next address), same write id.
    Redirect(Option<String>),
    /// Transient: back off and try again (same write id).
    Retry,
    /// A definitive "not now" (no budget within the wait): ask again with a fresh write id.
    NotNow,
    /// FAILED_PRECONDITION: stale token for fenced calls, a refusal for others.
    Precondition,
    /// Deterministic failure.
    Fatal,
}

/// Sorts a status from a coordinator.
pub(crate) fn classify(status: &tonic::Status) -> Verdict {
    match status.code() {
        Code::Unavailable => Verdict::Redirect(
            status
                .metadata()
                .get(hotdeploy_common::proto::LEADER_ADDRESS_KEY)
                .and_then(|v| v.to_str().ok())
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        ),
        Code::ResourceExhausted | Code::DeadlineExceeded => Verdict::NotNow,
        Code::Aborted | Code::Cancelled | Code::Unknown | Code::Internal => Verdict::Retry,
        Code::FailedPrecondition => Verdict::Precondition,
        _ => Verdict::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follower_hint_is_read() {
        let mut s = tonic::Status::unavailable("not the leader");
        s.metadata_mut().insert(
            hotdeploy_common::proto::LEADER_ADDRESS_KEY,
            "127.0.0.22:7400".parse().unwrap(),
        );
        assert_eq!(
            classify(&s),
            Verdict::Redirect(Some("127.0.0.22:7400".into()))
        );
        assert_eq!(
            classify(&tonic::Status::unavailable("x")),
            Verdict::Redirect(None)
        );
        assert_eq!(
            classify(&tonic::Status::failed_precondition("stale")),
            Verdict::Precondition
        );
        assert_eq!(
            classify(&tonic::Status::resource_exhausted("budget")),
            Verdict::NotNow
        );
        assert_eq!(
            classify(&tonic::Status::invalid_argument("x")),
            Verdict::Fatal
        );
    }
}
