//! The state machine's side of rolling upgrades and disaster recovery: the format version a
//! state needs, the recorded member versions, and the rebase of a restored backup.

use super::*;

const AT: u64 = 1_700_000_000_000;

/// Applies `commands` at indexes 1.. as operator proposals; returns the machine.
fn applied(commands: Vec<Command>) -> StateMachine {
    let mut sm = StateMachine::new();
    for (i, command) in commands.into_iter().enumerate() {
        let index = i as u64 + 1;
        let p = Proposal::new(None, AT + index, "operator/alice", command);
        if let Err(e) = sm.apply(index, p) {
            eprintln!("entry {index} refused: {e}");
        }
    }
    sm
}

fn web() -> Command {
    Command::SetGroupPolicy {
        group: "web".into(),
        max_unavailable: Some(hotdeploy_common::config::MaxUnavailable::Count(1)),
        allow_zero_available: None,
    }
}

fn host(name: &str) -> Command {
    Command::Register {
        host: name.into(),
        groups: vec!["web".into()],
        address: format!("{name}:7401"),
        report: Report {
            health: Health::Healthy,
            rotation: Rotation::InRotation,
            release: "v1".into(),
            phase: "idle".into(),
        },
    }
}

fn rollout(group: &str) -> Command {
    Command::StartRollout {
        spec: RolloutSpec {
            id: "r1".into(),
            group: group.into(),
            release: ReleaseSpec {
                id: "v2".into(),
                artifact_url: "file:///releases/v2.tar.gz".into(),
                sha256: "ab".repeat(32),
                signature: String::new(),
            },
            batch: 0,
            canary: 0,
            pause_after_canary: false,
            max_failures: 0,
            auto_rollback: true,
            supersede: false,
            progress_deadline_ms: 0,
        },
    }
}

#[test]
fn a_state_remembers_the_newest_format_that_changed_it() {
    let sm = applied(vec![web()]);
    assert_eq!(sm.format_version(), BASE_VERSION);
    // A refused rollout (no such group) changes nothing, its version included.
    let sm = applied(vec![web(), host("web-1"), host("web-2"), rollout("db")]);
    assert!(sm.rollouts().is_empty());
    assert_eq!(sm.format_version(), BASE_VERSION);
    let sm = applied(vec![web(), host("web-1"), host("web-2"), rollout("web")]);
    assert!(sm.rollout("r1").is_some());
    assert_eq!(sm.format_version(), ROLLOUTS_VERSION);
}

#[test]
fn a_node_that_knows_less_refuses_a_newer_state() {
    let sm = applied(vec![web(), host("web-1"), host("web-2"), rollout("web")]);
    let bytes = sm.snapshot().unwrap();
    assert_eq!(
        StateMachine::restore_known(&bytes, ROLLOUTS_VERSION).unwrap(),
        sm
    );
    let err = StateMachine::restore_known(&bytes, BASE_VERSION).unwrap_err();
    assert!(
        err.to_string()
            .contains("made by entries of command format version 2")
            && err.to_string().contains("knows versions up to 1")
            && err.to_string().contains("upgrade this coordinator"),
        "{err}"
    );
    // A state written before versions were tracked: its rollouts tell.
    let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    json["state"]
        .as_object_mut()
        .unwrap()
        .remove("format_version");
    let old = serde_json::to_vec(&json).unwrap();
    assert!(StateMachine::restore_known(&old, BASE_VERSION).is_err());
    assert_eq!(
        StateMachine::restore_known(&old, ROLLOUTS_VERSION)
            .unwrap()
            .format_version(),
        ROLLOUTS_VERSION
    );
    // Without rollouts, version 1 loads it.
    let lock_only = applied(vec![web()]).snapshot().unwrap();
    assert!(StateMachine::restore_known(&lock_only, BASE_VERSION).is_ok());
}

#[test]
fn member_versions_are_recorded_and_forgotten_with_the_member() {
    let mut sm = applied(vec![
        web(),
        Command::SetMember {
            id: 3,
            address: "c3:7400".into(),
        },
        Command::SetMemberVersion { id: 3, version: 1 },
        Command::SetMemberVersion { id: 3, version: 3 },
        Command::SetMemberVersion { id: 3, version: 3 },
    ]);
    assert_eq!(sm.member_versions().get(&3), Some(&3));
    assert_eq!(sm.format_version(), VERSION_GATE_VERSION);
    let recorded: Vec<String> = sm
        .audit()
        .filter(|e| e.action == "member_version")
        .map(|e| e.detail.clone())
        .collect();
    assert_eq!(
        recorded,
        vec![
            "member 3 knows command format version 1".to_string(),
            "member 3 knows command format version 3 (was 1)".to_string(),
        ],
        "an unchanged version is not audited again"
    );
    let p = Proposal::new(None, AT, "operator/alice", Command::RemoveMember { id: 3 });
    sm.apply(10, p).unwrap();
    assert!(sm.member_versions().is_empty());
    // Version 0 does not exist.
    let p = Proposal::new(
        None,
        AT,
        "leader",
        Command::SetMemberVersion { id: 2, version: 0 },
    );
    assert!(sm.apply(11, p).is_err());
}

#[test]
fn a_restored_backup_becomes_a_one_node_cluster_above_its_index() {
    let mut sm = applied(vec![
        web(),
        Command::SetMember {
            id: 1,
            address: "c1:7400".into(),
        },
        Command::SetMember {
            id: 2,
            address: "c2:7400".into(),
        },
        Command::SetMemberVersion { id: 2, version: 3 },
    ]);
    let before = sm.clone();
    let index = sm.applied_index();
    let err = sm
        .rebase_for_restore(index, AT, "local/root", 7, "c7:7400", "again".into())
        .unwrap_err();
    assert!(matches!(err, StateError::AlreadyApplied { .. }), "{err}");
    assert_eq!(sm, before, "a refused rebase changes nothing");
    sm.rebase_for_restore(
        index + 1,
        AT + 5,
        "local/root",
        7,
        "c7:7400",
        "restored from a backup".into(),
    )
    .unwrap();
    assert_eq!(sm.applied_index(), index + 1);
    assert_eq!(
        sm.members().clone(),
        std::collections::BTreeMap::from([(7, "c7:7400".to_string())])
    );
    assert!(sm.member_versions().is_empty());
    let last = sm.audit().last().unwrap().clone();
    assert_eq!(
        (last.index, last.action.as_str(), last.actor.as_str()),
        (index + 1, "restore", "local/root")
    );
    assert_eq!(sm.group_views(), before.group_views());
    // The rebased state is a consistent snapshot.
    assert_eq!(StateMachine::restore(&sm.snapshot().unwrap()).unwrap(), sm);
}
