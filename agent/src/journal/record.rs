//! What the journal keeps: the deploy record, the slot held outside a deploy, and write ids.

use super::phase::{Outcome, Phase};
use serde::{Deserialize, Serialize};

/// The identity of one coordinator write, `(client_id, seq)`: a retry reuses it so that the
/// coordinator applies the write once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteId {
    pub client_id: String,
    pub seq: u64,
}

impl WriteId {
    /// The wire message.
    pub fn to_proto(&self) -> hotdeploy_common::proto::WriteId {
        hotdeploy_common::proto::WriteId {
            client_id: self.client_id.clone(),
            seq: self.seq,
        }
    }
}

/// What a deploy record is for: both walk the same phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployKind {
    /// Install a (new) release.
    Deploy,
    /// Swap `previous` back in.
    Rollback,
}

impl DeployKind {
    /// The slot purpose this kind of deploy asks for.
    pub fn purpose(self) -> &'static str {
        match self {
            DeployKind::Deploy => "deploy",
            DeployKind::Rollback => "rollback",
        }
    }
}

/// One deploy, from staging to its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRecord {
    pub kind: DeployKind,
    /// The rollout this deploy serves; empty for a local one.
    pub rollout: String,
    /// The slot token, 0 until granted (and always 0 standalone).
    pub token: u64,
    /// The live release when the deploy began; `None` on an unprovisioned host.
    pub from: Option<String>,
    pub to: String,
    pub phase: Phase,
    /// The write id of the slot request, persisted before the request is sent.
    pub write: Option<WriteId>,
    /// Why the deploy failed or rolled back.
    pub error: Option<String>,
    /// The outcome, once decided. It is decided before `undraining` so that a restarted agent
    /// knows what it was finishing.
    pub outcome: Option<Outcome>,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
    /// Set when the deploy is over; a record without it is in progress.
    pub finished_at_ms: Option<u64>,
    /// When the host left rotation, for `out_of_rotation_ms`.
    pub drained_at_ms: Option<u64>,
}

impl DeployRecord {
    /// A new record in phase `staging`.
    pub fn new(kind: DeployKind, rollout: &str, from: Option<String>, to: &str, now: u64) -> Self {
        Self {
            kind,
            rollout: rollout.to_owned(),
            token: 0,
            from,
            to: to.to_owned(),
            phase: Phase::Staging,
            write: None,
            error: None,
            outcome: None,
            started_at_ms: now,
            updated_at_ms: now,
            finished_at_ms: None,
            drained_at_ms: None,
        }
    }

    /// Whether the deploy is still in progress.
    pub fn in_progress(&self) -> bool {
        self.finished_at_ms.is_none()
    }
}

/// A slot (and a drain) held outside any deploy: an operator's drain, maintenance, or a host
/// whose new and old releases both failed verify and that keeps its slot so that the budget
/// accounts for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// "drain", "maintenance" or "deploy" (a broken host).
    pub purpose: String,
    /// 0 standalone.
    pub token: u64,
    pub reason: String,
    pub since_ms: u64,
}
