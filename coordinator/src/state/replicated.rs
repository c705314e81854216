//! The state machine as the raft driver sees it: the [`Replicated`] trait over
//! [`StateMachine`].
//!
//! This is the only place that turns raft's view (entry bytes, membership changes) into
//! commands: a normal entry's bytes are a [`Proposal`]; a membership change becomes
//! `SetMember`/`RemoveMember` with the operator and time its proposer stamped; the leader's
//! record of a member that acknowledged the log is a `SetMember` from `leader`, and of the
//! command format version a member reports a `SetMemberVersion` from `leader`. The driver
//! builds no command itself.
//!
//! Decoding follows the version rule of `command.rs`: an entry stamped with a newer command
//! format than the node knows, or one that does not decode, is an [`EntryError`] and stops the
//! node; it is never skipped. The version the node knows comes from the driver (production:
//! [`crate::state::FORMAT_VERSION`]; the simulator also runs older nodes).

use super::command::{Command, DecodeError, Proposal, Response};
use super::machine::StateMachine;
use crate::raft::{EntryError, MemberChange, MembershipChange, Replicated, SnapshotError};
use std::collections::BTreeMap;

impl Replicated for StateMachine {
    type Answer = Response;

    fn apply(&mut self, index: u64, data: &[u8], known: u32) -> Result<Response, EntryError> {
        let proposal = Proposal::decode_known(data, known).map_err(|e| match e {
            DecodeError::NeedsVersion { needs, known } => EntryError::NeedsVersion { needs, known },
            DecodeError::Malformed(m) => EntryError::Malformed(m),
        })?;
        Ok(StateMachine::apply(self, index, proposal))
    }

    fn skip(&mut self, index: u64) {
        StateMachine::skip(self, index);
    }

    fn apply_membership(&mut self, index: u64, change: &MembershipChange) {
        let commands = change
            .changes
            .iter()
            .map(|c| match c {
                MemberChange::Added { id, address } => Command::SetMember {
                    id: *id,
                    // A promotion may come without an address: keep the recorded one.
                    address: if address.is_empty() {
                        self.members().get(id).cloned().unwrap_or_default()
                    } else {
                        address.clone()
                    },
                },
                MemberChange::Removed { id } => Command::RemoveMember { id: *id },
            })
            .collect();
        for response in self.apply_internal(index, change.at_ms, &change.actor, commands) {
            if let Err(e) = response {
                tracing::warn!(index, "membership change not recorded: {e}");
            }
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        StateMachine::snapshot(self).map_err(|e| SnapshotError(e.to_string()))
    }

    fn restore(data: &[u8], known: u32) -> Result<Self, SnapshotError> {
        StateMachine::restore_known(data, known).map_err(|e| SnapshotError(e.to_string()))
    }

    fn members(&self) -> BTreeMap<u64, String> {
        StateMachine::members(self).clone()
    }

    fn member_versions(&self) -> BTreeMap<u64, u32> {
        StateMachine::member_versions(self).clone()
    }

    fn member_version_entry(id: u64, version: u32, at_ms: u64) -> (Vec<u8>, u32) {
        let p = Proposal::new(
            None,
            at_ms,
            "leader",
            Command::SetMemberVersion { id, version },
        );
        (p.encode(), p.version)
    }

    fn member_entry(id: u64, address: &str, at_ms: u64) -> Vec<u8> {
        Proposal::new(
            None,
            at_ms,
            "leader",
            Command::SetMember {
                id,
                address: address.to_string(),
            },
        )
        .encode()
    }
}
