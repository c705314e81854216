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
    pub fn purpose(self) -> Purpose {
        match self {
            DeployKind::Deploy => Purpose::Deploy,
            DeployKind::Rollback => Purpose::Rollback,
        }
    }

    /// The word for it in messages ("deploy", "rollback").
    pub fn as_str(self) -> &'static str {
        match self {
            DeployKind::Deploy => "deploy",
            DeployKind::Rollback => "rollback",
        }
    }
}

/// What one of *this agent's* slots is for. The coordinators keep a slot's purpose as a string
/// (`locks list` shows it); the agent maps it at the edge ([`Purpose::wire`],
/// [`Purpose::from_wire`]) and never compares strings elsewhere.
///
/// An operator's `hotdeployctl locks acquire HOST` takes a slot of purpose `maintenance`. That
/// slot is not the agent's: the agent's own maintenance (the `Maintenance` call of its API) asks
/// for `agent-maintenance`, so a grant can never hand the operator's slot to the agent (grants
/// are re-entrant per purpose), and a slot of any purpose not listed here is never adopted nor
/// released by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// A deploy of a new release (local or for a rollout).
    Deploy,
    /// A rollback to `previous` asked for through the agent API.
    Rollback,
    /// An operator's drain through the agent API.
    Drain,
    /// Maintenance through the agent API (`Maintenance{enable: true}`).
    Maintenance,
}

impl Purpose {
    /// The purpose string on the wire.
    pub fn wire(self) -> &'static str {
        match self {
            Purpose::Deploy => "deploy",
            Purpose::Rollback => "rollback",
            Purpose::Drain => "drain",
            Purpose::Maintenance => "agent-maintenance",
        }
    }

    /// The agent's purpose named by a wire string; `None` for a slot that is not the agent's
    /// (an operator's `maintenance`, or anything else).
    pub fn from_wire(s: &str) -> Option<Purpose> {
        [
            Purpose::Deploy,
            Purpose::Rollback,
            Purpose::Drain,
            Purpose::Maintenance,
        ]
        .into_iter()
        .find(|p| p.wire() == s)
    }
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wire())
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
    /// The hold this deploy started from (a host a deploy left out of rotation, being
    /// repaired under the slot it kept): if this deploy fails too, the hold is kept.
    #[serde(default)]
    pub repairs: Option<HoldKind>,
    /// The rollout step this deploy serves (its attempt, and whether its outcome reached the
    /// coordinators); `None` for a local deploy. Journals written before rollouts lack it.
    #[serde(default)]
    pub step: Option<RolloutStep>,
}

/// A deploy driven by a rollout assignment: what the coordinators must hear about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStep {
    /// The step's attempt (every report carries it; a re-driven step has a higher one).
    pub attempt: u32,
    /// Canary hosts are served first by the lock.
    pub canary: bool,
    /// `false`: a failed verify is not rolled back; the host keeps its slot.
    pub auto_rollback: bool,
    /// Where the outcome's `ReportStep` stands.
    #[serde(default)]
    pub report: OutcomeReport,
}

impl RolloutStep {
    /// A step of `attempt`, its outcome not reported yet.
    pub fn new(attempt: u32, canary: bool, auto_rollback: bool) -> Self {
        Self {
            attempt,
            canary,
            auto_rollback,
            report: OutcomeReport::Due,
        }
    }
}

/// Where the `ReportStep` of a rollout deploy's outcome stands. It is sent before the slot is
/// released; a restarted agent sends one that is still [`OutcomeReport::Due`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeReport {
    /// Not sent yet (or not acknowledged): send it once the outcome is known.
    #[default]
    Due,
    /// The coordinators took it, or refused it as stale (the step was driven again): done.
    Sent,
    /// The coordinators did not admit the deploy (no slot for this rollout now): nothing was
    /// disrupted and there is no outcome to report; the driver asks again later.
    NotAdmitted,
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
            repairs: None,
            step: None,
        }
    }

    /// Whether the deploy is still in progress.
    pub fn in_progress(&self) -> bool {
        self.finished_at_ms.is_none()
    }
}

/// Why a host keeps a slot outside any deploy. Each kind says whether the service itself is
/// at fault ([`HoldKind::service_failed`]: the host reports `unhealthy`) and whether a deploy
/// may repair the host under the kept slot ([`HoldKind::operator`]: no, an operator asked for
/// it and only their undrain ends it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldKind {
    /// An operator's drain through the agent API.
    Drain,
    /// Maintenance through the agent API.
    Maintenance,
    /// Neither the new release nor the old one passed verify: the service is broken.
    // Journals written before hold kinds existed said "deploy" for every failure.
    #[serde(alias = "deploy")]
    VerifyFailed,
    /// The service is fine, but its return to rotation could not be confirmed.
    UndrainFailed,
    /// The deploy stopped where it was: a fencing phase could not be committed, or the
    /// journal could not be written.
    Interrupted,
}

impl HoldKind {
    /// The hold kind of an operator's request for `purpose`; `None` for a deploy's purposes.
    pub fn for_operator(purpose: Purpose) -> Option<HoldKind> {
        match purpose {
            Purpose::Drain => Some(HoldKind::Drain),
            Purpose::Maintenance => Some(HoldKind::Maintenance),
            Purpose::Deploy | Purpose::Rollback => None,
        }
    }

    /// Whether an operator asked for this hold (drain, maintenance).
    pub fn operator(self) -> bool {
        matches!(self, HoldKind::Drain | HoldKind::Maintenance)
    }

    /// Whether the hold means the service is broken (the host reports `unhealthy`).
    pub fn service_failed(self) -> bool {
        self == HoldKind::VerifyFailed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HoldKind::Drain => "drain",
            HoldKind::Maintenance => "maintenance",
            HoldKind::VerifyFailed => "verify_failed",
            HoldKind::UndrainFailed => "undrain_failed",
            HoldKind::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for HoldKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A slot (and a drain) held outside any deploy: an operator's drain or maintenance, or a host
/// that a deploy left out of rotation and that keeps its slot so that the budget accounts for
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HoldOnDisk")]
pub struct Hold {
    pub kind: HoldKind,
    /// The purpose the slot was granted for.
    pub purpose: Purpose,
    /// 0 standalone.
    pub token: u64,
    /// Free text for operators.
    pub note: String,
    pub since_ms: u64,
}

/// A hold as journals of every version wrote it: before hold kinds existed, `purpose` held
/// "drain", "maintenance" or "deploy" (any failure) and `reason` the text.
#[derive(Deserialize)]
struct HoldOnDisk {
    kind: Option<HoldKind>,
    purpose: Option<String>,
    token: u64,
    note: Option<String>,
    reason: Option<String>,
    since_ms: u64,
}

impl TryFrom<HoldOnDisk> for Hold {
    type Error = String;

    fn try_from(d: HoldOnDisk) -> Result<Self, String> {
        let purpose = d.purpose.as_deref();
        let (kind, purpose) = match (d.kind, purpose) {
            (Some(kind), Some(p)) => (
                kind,
                serde_json::from_value::<Purpose>(serde_json::Value::String(p.to_owned()))
                    .map_err(|e| format!("hold purpose {p:?}: {e}"))?,
            ),
            (None, Some("drain")) => (HoldKind::Drain, Purpose::Drain),
            (None, Some("maintenance")) => (HoldKind::Maintenance, Purpose::Maintenance),
            (None, Some("deploy")) => (HoldKind::VerifyFailed, Purpose::Deploy),
            (kind, p) => return Err(format!("hold of kind {kind:?} and purpose {p:?}")),
        };
        Ok(Hold {
            kind,
            purpose,
            token: d.token,
            note: d.note.or(d.reason).unwrap_or_default(),
            since_ms: d.since_ms,
        })
    }
}
