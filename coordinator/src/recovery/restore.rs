//! `hotdeploy-coordinator restore --from FILE --config CONFIG`: a one-node cluster, in an empty
//! data_dir, from a snapshot file, after the old cluster lost its quorum for good.
//!
//! What it writes is what a brand-new node's bootstrap writes (`raft/bootstrap.rs`), with the
//! backup's state in place of the empty one:
//!
//! - **one voter**, this node (`id` of the config). The old members are not members of the new
//!   cluster: the operator adds members back with `hotdeployctl members add`, each started
//!   blank with `initial_cluster_state = "existing"`;
//! - **a new cluster id**, drawn at random (never the old one, never 0). Survivors of the old
//!   cluster still carry the old id: every peer frame between them and the new cluster is
//!   refused, both ways, and a blank node adopts a cluster id only from a leader's message, so
//!   a survivor asking for votes cannot pull a new member into the old cluster;
//! - **the snapshot one index above the backup's** (`index + 1`, the backup's term): the new log
//!   starts after it, so every new slot token (the raft index of its grant) is above every
//!   token in the backup, and fencing keeps working for slots held at backup time.
//!
//! The state itself is kept: hosts, groups, slots (with their tokens: a slot held at backup time
//! stays held, since nothing frees a slot by a timer), rollouts, client sessions, the audit
//! trail. Only the member list and the recorded member versions are reset, and the restore is
//! audited (`restore`, with the backup's cluster, index, term and time).
//!
//! Refused, with nothing written: a data_dir that is not empty (or not a directory), a file that
//! is not a snapshot, of an unknown format, truncated, corrupt, or whose state does not restore
//! (an unknown state format, one made by newer commands than this binary knows, an inconsistent
//! state).

use super::file::{FileError, SnapshotFile};
use crate::raft::{SledStorage, StorageError};
use crate::state::StateMachine;
use hotdeploy_common::config::CoordinatorConfig;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub node: u64,
    pub data_dir: PathBuf,
    pub cluster_id: u64,
    pub old_cluster_id: String,
    /// The backup's index, and the index the new cluster's state starts at (one above).
    pub backup_index: u64,
    pub index: u64,
    pub term: u64,
    pub hosts: usize,
    pub groups: usize,
    pub slots: usize,
    pub rollouts: usize,
}

/// Why a restore was refused.
#[derive(Debug, Error)]
pub enum RestoreError {
    #[error(
        "refusing to restore into data_dir {path}: it is not empty (it holds {found}). A restore \
         builds a new cluster in an empty data_dir; move the old one away first"
    )]
    DataDirNotEmpty { path: PathBuf, found: String },
    #[error("data_dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: FileError,
    },
    #[error("{path}: the state in the snapshot file cannot be restored: {detail}")]
    State { path: PathBuf, detail: String },
    #[error("writing the restored state into {path}: {source}")]
    Storage {
        path: PathBuf,
        #[source]
        source: StorageError,
    },
}

/// Restores `from` into the empty data_dir of `cfg` (module docs). `now_ms` and `actor` stamp
/// the audit event.
pub fn restore(
    cfg: &CoordinatorConfig,
    from: &Path,
    now_ms: u64,
    actor: &str,
) -> Result<Restored, RestoreError> {
    check_empty(&cfg.data_dir)?;
    let file = SnapshotFile::read(from).map_err(|source| RestoreError::File {
        path: from.to_path_buf(),
        source,
    })?;
    let h = &file.header;
    let mut state = StateMachine::restore(&file.state).map_err(|e| RestoreError::State {
        path: from.to_path_buf(),
        detail: e.to_string(),
    })?;
    if state.applied_index() != h.index {
        return Err(RestoreError::State {
            path: from.to_path_buf(),
            detail: format!(
                "the header names index {}, the state is at {}",
                h.index,
                state.applied_index()
            ),
        });
    }
    let cluster_id = new_cluster_id(&h.cluster_id);
    let index = h.index + 1;
    let term = h.term.max(1);
    let detail = format!(
        "restored from a snapshot of cluster {} at index {} (term {}), taken at {} by node {}, \
         file {}; new one-node cluster {cluster_id:016x} of node {} at {}; members are to be \
         added back with `hotdeployctl members add`",
        h.cluster_id,
        h.index,
        h.term,
        h.taken_at,
        h.node,
        from.display(),
        cfg.id,
        cfg.listen,
    );
    state
        .rebase_for_restore(index, now_ms, actor, cfg.id, &cfg.listen, detail)
        .map_err(|e| RestoreError::State {
            path: from.to_path_buf(),
            detail: e.to_string(),
        })?;
    let data = state.snapshot().map_err(|e| RestoreError::State {
        path: from.to_path_buf(),
        detail: format!("cannot serialize it again: {e}"),
    })?;
    let dir_err = |source| RestoreError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&cfg.data_dir).map_err(dir_err)?;
    let storage_err = |source| RestoreError::Storage {
        path: cfg.data_dir.clone(),
        source,
    };
    let storage = SledStorage::open(&cfg.data_dir).map_err(storage_err)?;
    storage
        .initialize_restored(&[cfg.id], cluster_id, data, index, term)
        .map_err(storage_err)?;
    Ok(Restored {
        node: cfg.id,
        data_dir: cfg.data_dir.clone(),
        cluster_id,
        old_cluster_id: h.cluster_id.clone(),
        backup_index: h.index,
        index,
        term,
        hosts: state.hosts().count(),
        groups: state.group_views().len(),
        slots: state.slots().len(),
        rollouts: state.rollouts().len(),
    })
}

/// A data_dir that does not exist, or an empty directory.
fn check_empty(path: &Path) -> Result<(), RestoreError> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RestoreError::DataDir {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let mut shown: Vec<String> = names.iter().take(3).cloned().collect();
    if names.len() > 3 {
        shown.push(format!("and {} more", names.len() - 3));
    }
    Err(RestoreError::DataDirNotEmpty {
        path: path.to_path_buf(),
        found: shown.join(", "),
    })
}

/// A random cluster id that is neither 0 nor the old one.
fn new_cluster_id(old_hex: &str) -> u64 {
    let old = u64::from_str_radix(old_hex, 16).unwrap_or(0);
    loop {
        let id: u64 = rand::random();
        if id != 0 && id != old {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{test_node, RaftNode};
    use crate::recovery::{sha256_hex, Header, FILE_FORMAT};
    use crate::state::{
        Answer, Command, Health, Proposal, Report, Rotation, StateMachine, SNAPSHOT_FORMAT,
    };
    use hotdeploy_common::config::MaxUnavailable;
    use std::time::Duration;

    const AT: u64 = 1_700_000_000_000;

    /// A state with group `web`, hosts `web-1` and `web-2`, and a slot held by `web-1` at
    /// index 4; then unrelated entries up to index 40.
    fn backup_state() -> StateMachine {
        let mut sm = StateMachine::new();
        let report = Report {
            health: Health::Healthy,
            rotation: Rotation::InRotation,
            release: "v1".into(),
            phase: "idle".into(),
        };
        let mut commands = vec![Command::SetGroupPolicy {
            group: "web".into(),
            max_unavailable: Some(MaxUnavailable::Count(1)),
            allow_zero_available: None,
        }];
        for h in ["web-1", "web-2"] {
            commands.push(Command::Register {
                host: h.into(),
                groups: vec!["web".into()],
                address: format!("{h}:7401"),
                report: report.clone(),
            });
        }
        commands.push(Command::Acquire {
            host: "web-1".into(),
            purpose: "deploy".into(),
            reason: "held at backup time".into(),
            rollout: String::new(),
            phase: None,
        });
        commands.push(Command::SetMember {
            id: 1,
            address: "old-1:7400".into(),
        });
        for (i, c) in commands.into_iter().enumerate() {
            let index = i as u64 + 1;
            sm.apply(index, Proposal::new(None, AT + index, "operator/alice", c))
                .unwrap();
        }
        sm.skip(40);
        sm
    }

    fn file_of(sm: &StateMachine) -> SnapshotFile {
        let state = sm.snapshot().unwrap();
        SnapshotFile {
            header: Header {
                format: FILE_FORMAT,
                cluster_id: "00000000c0ffee00".into(),
                index: sm.applied_index(),
                term: 7,
                taken_at_ms: AT,
                taken_at: "2023-11-14T22:13:20Z".into(),
                node: 1,
                state_format: SNAPSHOT_FORMAT,
                command_format: sm.format_version(),
                length: state.len() as u64,
                sha256: sha256_hex(&state),
            },
            state,
        }
    }

    /// The restored node leads alone; the held slot keeps its token, and a new grant's token
    /// is above every token in the backup.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restored_node_leads_alone_and_its_tokens_keep_increasing() {
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join("backup.snap");
        let sm = backup_state();
        file_of(&sm).write(&backup).unwrap();
        let held = sm.host("web-1").and_then(|h| h.slot).expect("a held slot");
        let cfg = test_node::config(dir.path(), "127.0.0.1:1");
        let r = restore(&cfg, &backup, AT + 1000, "local/root").unwrap();
        assert_eq!((r.backup_index, r.index, r.term), (40, 41, 7));
        assert_eq!((r.hosts, r.groups, r.slots, r.rollouts), (2, 1, 1, 0));
        assert_ne!(r.cluster_id, 0xc0ffee00);

        // A second restore into the same data_dir is refused, naming it.
        let again = restore(&cfg, &backup, AT, "local/root").unwrap_err();
        assert!(
            matches!(again, RestoreError::DataDirNotEmpty { .. })
                && again.to_string().contains("raft"),
            "{again}"
        );

        let node: RaftNode = test_node::start(&cfg).await;
        assert_eq!(node.cluster_id(), r.cluster_id);
        assert_eq!(node.status().voters, vec![1]);
        {
            let st = node.state();
            assert_eq!(st.host("web-1").and_then(|h| h.slot), Some(held));
            assert_eq!(st.members().keys().copied().collect::<Vec<_>>(), vec![1]);
            let restored = st
                .audit()
                .find(|e| e.action == "restore")
                .expect("the restore is audited")
                .clone();
            assert_eq!(
                (restored.index, restored.actor.as_str()),
                (41, "local/root")
            );
            assert!(
                restored
                    .detail
                    .contains("cluster 00000000c0ffee00 at index 40"),
                "{}",
                restored.detail
            );
        }
        let grant = Proposal::new(
            None,
            AT + 2000,
            "operator/alice",
            Command::Acquire {
                host: "web-2".into(),
                purpose: "maintenance".into(),
                reason: "after the restore".into(),
                rollout: String::new(),
                phase: None,
            },
        );
        // web-1 holds the group's only slot of budget: free it the way its holder would.
        let free = Proposal::new(
            None,
            AT + 1500,
            "agent/web-1",
            Command::Release {
                host: "web-1".into(),
                token: held,
            },
        );
        let freed = node.propose(free, Duration::from_secs(10)).await.unwrap();
        assert_eq!(freed, Ok(Answer::Released { token: held }));
        match node.propose(grant, Duration::from_secs(10)).await.unwrap() {
            Ok(Answer::Slot(s)) => {
                assert!(s.token > 41, "token {} is not above the backup", s.token)
            }
            other => panic!("expected a slot, got {other:?}"),
        }
    }

    #[test]
    fn bad_files_and_a_used_data_dir_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_node::config(dir.path(), "127.0.0.1:1");
        let path = dir.path().join("b.snap");
        let good = file_of(&backup_state());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"hello".to_vec(), "not a hotdeploy snapshot"),
            (
                good.encode()[..good.encode().len() - 10].to_vec(),
                "truncated",
            ),
            (
                {
                    let mut b = good.encode();
                    let n = b.len() - 3;
                    b[n] ^= 1;
                    b
                },
                "corrupt",
            ),
            (
                String::from_utf8_lossy(&good.encode())
                    .replacen("hotdeploy-snapshot 1", "hotdeploy-snapshot 2", 1)
                    .into_bytes(),
                "format 2 is unknown",
            ),
        ];
        for (bytes, needle) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let err = restore(&cfg, &path, AT, "local/root")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{needle:?} not in {err}");
            assert!(!cfg.data_dir.exists(), "{needle}: the data_dir was written");
        }
        // A state that newer commands made (a future format) is refused by the state's check.
        let mut json: serde_json::Value =
            serde_json::from_slice(&backup_state().snapshot().unwrap()).unwrap();
        json["state"]["format_version"] = 99.into();
        let state = serde_json::to_vec(&json).unwrap();
        let mut f = file_of(&backup_state());
        f.header.length = state.len() as u64;
        f.header.sha256 = sha256_hex(&state);
        f.state = state;
        f.write(&path).unwrap();
        let err = restore(&cfg, &path, AT, "local/root")
            .unwrap_err()
            .to_string();
        assert!(err.contains("command format version 99"), "{err}");
        assert!(!cfg.data_dir.exists());
        // A data_dir with anything in it.
        std::fs::create_dir_all(cfg.data_dir.join("raft")).unwrap();
        file_of(&backup_state()).write(&path).unwrap();
        let err = restore(&cfg, &path, AT, "local/root")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is not empty") && err.contains("raft"),
            "{err}"
        );
    }
}
