//! What a membership change carries besides the change itself: the new member's address, and
//! who asked for the change and when.
//!
//! raft's `ConfChangeV2` has one free field, `context`. It is replicated with the change, so
//! every node learns how to reach a new member when the change applies, and the audit event
//! the state machine records names the operator and the time the proposer stamped (DESIGN §7),
//! not a placeholder. The context is JSON: `{"address":"10.0.0.4:7400","actor":"operator/alice",
//! "at_ms":1700000000000}`.
//!
//! Changes proposed by earlier versions carry only the address, as raw UTF-8. Those still
//! decode: the actor is then unknown (`raft`) and the time 0, which is what they recorded then.

use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use serde::{Deserialize, Serialize};

/// The actor recorded for a change that names none (proposed by an earlier version).
pub const UNKNOWN_ACTOR: &str = "raft";

/// The decoded context of a membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConfContext {
    /// The member's peer address; empty for a removal.
    pub address: String,
    /// Who asked: the caller's certificate identity.
    pub actor: String,
    /// The proposer's wall clock, Unix ms.
    pub at_ms: u64,
}

impl ConfContext {
    pub fn encode(&self) -> Vec<u8> {
        // Three plain fields: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a context: JSON as written by [`ConfContext::encode`], or a bare address.
    pub fn decode(bytes: &[u8]) -> Self {
        if bytes.first() == Some(&b'{') {
            if let Ok(ctx) = serde_json::from_slice::<ConfContext>(bytes) {
                return ctx;
            }
        }
        ConfContext {
            address: String::from_utf8_lossy(bytes).into_owned(),
            actor: UNKNOWN_ACTOR.to_string(),
            at_ms: 0,
        }
    }
}

/// A one-node membership change with its context.
pub fn membership_change(kind: ConfChangeType, id: u64, context: &ConfContext) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    cc.context = context.encode().into();
    cc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_round_trip_and_bare_addresses_still_decode() {
        let ctx = ConfContext {
            address: "127.0.0.4:7400".into(),
            actor: "operator/alice".into(),
            at_ms: 1_700_000_000_000,
        };
        assert_eq!(ConfContext::decode(&ctx.encode()), ctx);
        let legacy = ConfContext::decode(b"127.0.0.5:7400");
        assert_eq!(legacy.address, "127.0.0.5:7400");
        assert_eq!(legacy.actor, UNKNOWN_ACTOR);
        assert_eq!(legacy.at_ms, 0);
        assert_eq!(ConfContext::decode(b"").address, "");
    }
}
