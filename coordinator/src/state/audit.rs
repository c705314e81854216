//! The audit trail of operator actions, replicated with the rest of the state.
//!
//! DESIGN §7 asks that budget changes, forced releases, host removals, membership changes and
//! maintenance locks be recorded with who did them. Keeping them in the replicated state (rather
//! than each node's log file) means every coordinator can list the same history, and it survives
//! the loss of any node. Each event names the raft index that made it, the proposer's time, the
//! actor from the proposal, an action and a human-readable detail.
//!
//! The trail is bounded to the last [`CAPACITY`] events so that the state (and every snapshot)
//! stays small; older events fall off the front. Only successful actions are recorded: a refused
//! command changed nothing. Refused *calls* (a certificate outside its role) are audited by the
//! service layer, since they never reach the log.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Events kept. Operator actions are rare (a few a day); 1,000 covers months of them while
/// keeping a snapshot's audit part to some hundred kilobytes.
pub const CAPACITY: usize = 1000;

/// One recorded operator action.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// The raft index of the entry that did it.
    pub index: u64,
    pub at_ms: u64,
    pub actor: String,
    /// A stable word: `set_group_policy`, `force_release`, `remove_host`, ...
    pub action: String,
    pub detail: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub(super) struct AuditLog {
    events: VecDeque<AuditEvent>,
}

impl AuditLog {
    pub fn push(&mut self, event: AuditEvent) {
        while self.events.len() >= CAPACITY {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &AuditEvent> {
        self.events.iter()
    }
}
