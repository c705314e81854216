//! Progress of one deploy: to the caller's stream (if it is still listening) and to the status
//! that `Status` and the heartbeat report.

use crate::journal::{Outcome, Phase};
use hotdeploy_common::proto::DeployProgress;
use hotdeploy_common::time::now_ms;
use tokio::sync::mpsc::UnboundedSender;

/// Where progress messages go. Sending never fails the deploy: a client that hung up just stops
/// receiving, and the deploy goes on.
#[derive(Clone, Default)]
pub struct Progress {
    tx: Option<UnboundedSender<DeployProgress>>,
}

impl Progress {
    /// Progress sent to `tx`.
    pub fn to(tx: UnboundedSender<DeployProgress>) -> Self {
        Self { tx: Some(tx) }
    }

    /// Progress sent nowhere (recovery).
    pub fn none() -> Self {
        Self { tx: None }
    }

    fn send(&self, msg: DeployProgress) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(msg);
        }
    }

    /// A phase was entered.
    pub fn phase(&self, phase: Phase, message: impl Into<String>) {
        self.send(DeployProgress {
            phase: phase.as_str().to_owned(),
            message: message.into(),
            at_ms: now_ms(),
            ..Default::default()
        });
    }

    /// A note within a phase (download progress, probe results).
    pub fn note(&self, phase: &str, message: impl Into<String>) {
        self.send(DeployProgress {
            phase: phase.to_owned(),
            message: message.into(),
            at_ms: now_ms(),
            ..Default::default()
        });
    }

    /// The last message: the outcome.
    pub fn done(&self, outcome: Outcome, error: &str, out_of_rotation_ms: u64) {
        self.send(DeployProgress {
            phase: outcome.as_str().to_owned(),
            message: format!("deploy {outcome}"),
            at_ms: now_ms(),
            done: true,
            outcome: outcome.to_proto() as i32,
            error: error.to_owned(),
            out_of_rotation_ms,
        });
    }
}
