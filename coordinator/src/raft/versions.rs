//! The version gate (DESIGN §8, "Rolling upgrade"): a leader proposes an entry of command
//! format version N only once every member of the current configuration knows N.
//!
//! Every entry is stamped with the version its command kind needs (`state/command.rs`), and a
//! node that meets a committed entry it does not know stops (it cannot apply it, and skipping
//! it would fork the replicas). During a rolling upgrade old and new binaries run side by side,
//! so the leader must keep the new kinds out of the log until the last old member is gone. This
//! file decides, for one proposal, whether that is so.
//!
//! **What a member knows**, as this node sees it ([`Known`]), in order:
//! 1. this node: the version it was built with;
//! 2. *reported*: every peer frame carries its sender's version (`PeerFrame.format_version`; a
//!    coordinator from before versions were reported sends 0, which reads as 1). The latest
//!    report counts while the member is heard from (within an election timeout), so a member
//!    that stopped and came back with another binary is judged by what it says now;
//! 3. *recorded*: the leader records each member's reported version in the replicated state
//!    (`SetMemberVersion`, itself a version 3 kind, so it is recorded only once every member
//!    knows version 3). A later leader judges a member that is down by it, so one coordinator
//!    being down does not stop rollouts;
//! 4. otherwise *unknown*.
//!
//! **The rule** ([`check`]), for an entry that needs version N > 1 (version 1 entries, the lock,
//! every binary knows; they pass at once, so the write path pays nothing):
//! - a member that knows less than N refuses it, not retryable: "member 3 knows command format
//!   version 1; StartRollout needs 2: upgrade it first" ([`NodeError::MemberTooOld`]);
//! - a member whose version is unknown refuses it, retryable ([`NodeError::VersionUnknown`]):
//!   it is joining, down with nothing recorded, or not heard from since this leader took office;
//! - while a membership change is being applied, it is refused, retryable
//!   ([`NodeError::VersionGatePending`]): the member it adds is not in the configuration yet,
//!   and an entry proposed now would reach it with its first log.
//!
//! Members are the voters and learners of the configuration (both sides of a joint one).
//!
//! Left out, deliberately: protection against downgrades. A member recorded at version 3 that
//! is stopped and started again with an older binary is judged by its record until its first
//! frame arrives; an entry committed in that window stops it, naming the entry (the outcome a
//! node added with too old a binary meets too). `members add` asks a new node its version
//! first and refuses one that cannot apply the cluster's state (`service/members.rs`).

use super::error::NodeError;
pub(crate) use crate::state::BASE_VERSION;
use std::collections::BTreeMap;

/// What a proposal needs, for the gate and its error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gate {
    /// The command format version of the entry.
    pub needs: u32,
    /// Its command's kind (`StartRollout`), for the error.
    pub kind: &'static str,
}

impl Gate {
    /// An entry every member can apply.
    pub(crate) fn base(kind: &'static str) -> Self {
        Self {
            needs: BASE_VERSION,
            kind,
        }
    }
}

/// What this node knows of one member's command format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// This node itself.
    Own(u32),
    /// From the member's own frames, recently.
    Reported(u32),
    /// From the replicated record (the member has not been heard from lately).
    Recorded(u32),
    Unknown,
}

impl Known {
    /// The version, when known.
    pub fn version(self) -> Option<u32> {
        match self {
            Known::Own(v) | Known::Reported(v) | Known::Recorded(v) => Some(v),
            Known::Unknown => None,
        }
    }
}

/// What the gate looks at, gathered by the core.
pub(crate) struct View<'a> {
    pub me: u64,
    pub own: u32,
    /// Voters and learners of the configuration.
    pub members: &'a [u64],
    /// The latest version each peer reported, and whether it was heard from recently.
    pub reported: &'a BTreeMap<u64, (u32, bool)>,
    pub recorded: &'a BTreeMap<u64, u32>,
    /// A membership change is proposed and not applied yet.
    pub conf_pending: bool,
}

impl View<'_> {
    /// What this node knows of member `id`.
    pub(crate) fn known(&self, id: u64) -> Known {
        if id == self.me {
            return Known::Own(self.own);
        }
        if let Some((v, true)) = self.reported.get(&id) {
            return Known::Reported(*v);
        }
        match self.recorded.get(&id) {
            Some(v) => Known::Recorded(*v),
            None => Known::Unknown,
        }
    }
}

/// The rule (module docs): may an entry needing `gate.needs` be proposed now?
pub(crate) fn check(gate: Gate, view: &View<'_>) -> Result<(), NodeError> {
    if gate.needs <= BASE_VERSION {
        return Ok(());
    }
    // Too old first: that answer does not change by retrying, and names what to do.
    let mut unknown = None;
    for &id in view.members {
        match view.known(id).version() {
            Some(knows) if knows < gate.needs => {
                return Err(NodeError::MemberTooOld {
                    member: id,
                    this_node: id == view.me,
                    knows,
                    needs: gate.needs,
                    kind: gate.kind,
                })
            }
            Some(_) => {}
            None => unknown = unknown.or(Some(id)),
        }
    }
    if let Some(member) = unknown {
        return Err(NodeError::VersionUnknown {
            member,
            needs: gate.needs,
            kind: gate.kind,
        });
    }
    if view.conf_pending {
        return Err(NodeError::VersionGatePending {
            needs: gate.needs,
            kind: gate.kind,
        });
    }
    Ok(())
}

/// A reported version as it counts: 0 (a coordinator from before versions were reported) is 1.
pub(crate) fn reported(version: u32) -> u32 {
    version.max(BASE_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: Gate = Gate {
        needs: 2,
        kind: "StartRollout",
    };

    fn view<'a>(
        members: &'a [u64],
        reported: &'a BTreeMap<u64, (u32, bool)>,
        recorded: &'a BTreeMap<u64, u32>,
    ) -> View<'a> {
        View {
            me: 1,
            own: 3,
            members,
            reported,
            recorded,
            conf_pending: false,
        }
    }

    #[test]
    fn an_old_member_stops_a_new_kind_and_is_named() {
        let reported = BTreeMap::from([(2, (3, true)), (3, (1, true))]);
        let recorded = BTreeMap::new();
        let err = check(START, &view(&[1, 2, 3], &reported, &recorded)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "member 3 knows command format version 1; StartRollout needs 2: upgrade it first"
        );
        assert!(!err.is_retryable());
        // The lock's own commands pass whatever the members know.
        assert_eq!(
            check(
                Gate::base("Acquire"),
                &view(&[1, 2, 3], &reported, &recorded)
            ),
            Ok(())
        );
        // Once 3 reports a version that knows the kind, it passes.
        let upgraded = BTreeMap::from([(2, (3, true)), (3, (2, true))]);
        assert_eq!(
            check(START, &view(&[1, 2, 3], &upgraded, &recorded)),
            Ok(())
        );
    }

    #[test]
    fn a_member_not_heard_lately_is_judged_by_its_record() {
        // 3 said version 3 long ago and is down now: its record counts, and says 3.
        let reported = BTreeMap::from([(2, (3, true)), (3, (1, false))]);
        let recorded = BTreeMap::from([(3, 3)]);
        assert_eq!(
            check(START, &view(&[1, 2, 3], &reported, &recorded)),
            Ok(())
        );
        // With no record, it is unknown: refused, but retryable.
        let err = check(START, &view(&[1, 2, 3], &reported, &BTreeMap::new())).unwrap_err();
        assert!(
            matches!(err, NodeError::VersionUnknown { member: 3, .. }),
            "{err}"
        );
        assert!(err.is_retryable());
        // A fresh report wins over the record (a member started again with another binary).
        let downgraded = BTreeMap::from([(2, (3, true)), (3, (1, true))]);
        let err = check(START, &view(&[1, 2, 3], &downgraded, &recorded)).unwrap_err();
        assert!(matches!(err, NodeError::MemberTooOld { member: 3, .. }));
    }

    #[test]
    fn learners_count_and_a_pending_change_waits() {
        // Learner 4 has not reported yet (it is being added).
        let reported = BTreeMap::from([(2, (3, true)), (3, (3, true))]);
        let recorded = BTreeMap::new();
        let err = check(START, &view(&[1, 2, 3, 4], &reported, &recorded)).unwrap_err();
        assert!(
            matches!(err, NodeError::VersionUnknown { member: 4, .. }),
            "{err}"
        );
        let mut pending = view(&[1, 2, 3], &reported, &recorded);
        pending.conf_pending = true;
        let err = check(START, &pending).unwrap_err();
        assert!(matches!(err, NodeError::VersionGatePending { .. }), "{err}");
        assert!(err.is_retryable());
        // This node itself may be the old one.
        let mut old_me = view(&[1, 2, 3], &reported, &recorded);
        old_me.own = 1;
        let err = check(START, &old_me).unwrap_err();
        assert!(
            err.to_string().starts_with("member 1 (this node) knows"),
            "{err}"
        );
    }

    #[test]
    fn nothing_reported_reads_as_version_one() {
        assert_eq!(reported(0), 1);
        assert_eq!(reported(3), 3);
    }
}
