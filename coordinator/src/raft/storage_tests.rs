//! Tests of [`SledStorage`]: persistence across reopen, compaction, conflicting tails, installing
//! a leader's snapshot, bootstrap, and a single-voter `RawNode` running a minimal Ready loop over
//! it and restarting from disk.

use std::path::Path;

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{Config, GetEntriesContext, RawNode, ReadOnlyOption, Storage};

use super::*;

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

fn entries_range(low: u64, high: u64, term: u64) -> Vec<Entry> {
    (low..high)
        .map(|i| entry(i, term, format!("v{i}").as_bytes()))
        .collect()
}

fn voters(ids: &[u64]) -> ConfState {
    ConfState {
        voters: ids.to_vec(),
        ..Default::default()
    }
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn compacted() -> raft::Error {
    raft::Error::Store(raft::StorageError::Compacted)
}

fn unavailable() -> raft::Error {
    raft::Error::Store(raft::StorageError::Unavailable)
}

fn snap_unavailable() -> raft::Error {
    raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable)
}

fn all_entries(s: &SledStorage) -> Vec<Entry> {
    let (lo, hi) = (s.first_index().unwrap(), s.last_index().unwrap() + 1);
    s.entries(lo, hi, None, ctx()).unwrap()
}

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ents = vec![
        entry(1, 1, b"a"),
        entry(2, 1, b"b"),
        entry(3, 2, b"c"),
        entry(4, 2, b"d"),
        entry(5, 2, b"e"),
    ];
    {
        let s = SledStorage::open(dir.path()).unwrap();
        assert!(s.is_blank());
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        assert_eq!(s.term(0).unwrap(), 0);
        s.set_conf_state(&voters(&[1, 2, 3])).unwrap();
        s.append_and_persist(&ents, Some(&hs(2, 1, 3))).unwrap();
        s.set_cluster_id(77).unwrap();
        assert!(!s.is_blank());
    }
    let s = SledStorage::open(dir.path()).unwrap();
    assert!(!s.is_blank());
    let state = s.initial_state().unwrap();
    assert_eq!(state.hard_state, hs(2, 1, 3));
    assert_eq!(state.conf_state, voters(&[1, 2, 3]));
    assert_eq!(s.hard_state(), hs(2, 1, 3));
    assert_eq!(s.conf_state(), voters(&[1, 2, 3]));
    assert_eq!(s.cluster_id(), Some(77));
    assert_eq!(s.first_index().unwrap(), 1);
    assert_eq!(s.last_index().unwrap(), 5);
    assert_eq!(s.entries(1, 6, None, ctx()).unwrap(), ents);
    assert_eq!(s.entries(2, 4, None, ctx()).unwrap(), ents[1..3].to_vec());
    let terms: Vec<u64> = (0..=5).map(|i| s.term(i).unwrap()).collect();
    assert_eq!(terms, vec![0, 1, 1, 2, 2, 2]);
    assert_eq!(s.term(6), Err(unavailable()));
    assert_eq!(s.entries(1, 7, None, ctx()), Err(unavailable()));
    assert_eq!(s.latest_snapshot().unwrap(), None);
    // A blank storage has nothing to send.
    assert_eq!(s.snapshot(0, 2), Err(snap_unavailable()));
}

#[test]
fn entries_honour_max_size() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStorage::open(dir.path()).unwrap();
    let ents = entries_range(1, 6, 1);
    s.append_and_persist(&ents, None).unwrap();
    let one = u64::from(ents[0].compute_size());
    // Always at least one entry, even if it alone exceeds the limit.
    assert_eq!(s.entries(1, 6, Some(0), ctx()).unwrap(), ents[..1].to_vec());
    assert_eq!(
        s.entries(1, 6, Some(one * 2), ctx()).unwrap(),
        ents[..2].to_vec()
    );
    assert_eq!(
        s.entries(1, 6, Some(one * 3 - 1), ctx()).unwrap(),
        ents[..2].to_vec()
    );
    assert_eq!(s.entries(1, 6, raft::NO_LIMIT, ctx()).unwrap(), ents);
    assert_eq!(s.entries(1, 6, Some(one * 100), ctx()).unwrap(), ents);
}

#[test]
fn create_snapshot_compacts_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cs = voters(&[1, 2, 3]);
    let ents: Vec<Entry> = (1..=10)
        .map(|i| entry(i, if i <= 4 { 1 } else { 2 }, b"x"))
        .collect();
    {
        let s = SledStorage::open(dir.path()).unwrap();
        s.set_conf_state(&cs).unwrap();
        // The stored commit (5) lags what the driver has applied (6): create_snapshot raises it.
        s.append_and_persist(&ents, Some(&hs(2, 1, 5))).unwrap();
        s.create_snapshot(6, &cs, b"state@6".to_vec()).unwrap();
        assert_eq!(s.hard_state().commit, 6);
        // Out of range and stale requests are refused.
        assert!(matches!(
            s.create_snapshot(11, &cs, vec![]),
            Err(StorageError::Invalid(_))
        ));
        assert!(matches!(
            s.create_snapshot(5, &cs, vec![]),
            Err(StorageError::SnapshotOutOfDate {
                index: 5,
                truncated: 6
            })
        ));
        // Appending into the compacted prefix is refused.
        assert!(matches!(
            s.append_and_persist(&[entry(6, 3, b"")], None),
            Err(StorageError::Invalid(_))
        ));
    }
    let s = SledStorage::open(dir.path()).unwrap();
    assert_eq!(s.first_index().unwrap(), 7);
    assert_eq!(s.last_index().unwrap(), 10);
    assert_eq!(s.term(6).unwrap(), 2);
    assert_eq!(s.term(5), Err(compacted()));
    assert_eq!(s.term(1), Err(compacted()));
    assert_eq!(s.entries(6, 8, None, ctx()), Err(compacted()));
    assert_eq!(s.entries(1, 11, None, ctx()), Err(compacted()));
    assert_eq!(s.entries(7, 11, None, ctx()).unwrap(), ents[6..].to_vec());
    assert_eq!(s.hard_state(), hs(2, 1, 6));
    assert_eq!(s.conf_state(), cs);

    let snap = s.latest_snapshot().unwrap().unwrap();
    assert_eq!(snap.get_metadata().index, 6);
    assert_eq!(snap.get_metadata().term, 2);
    assert_eq!(snap.get_metadata().get_conf_state(), &cs);
    assert_eq!(&snap.data[..], b"state@6");
    // The compacted keys are really gone from sled.
    assert_eq!(s.inner.db.scan_prefix(ENTRY_PREFIX).count(), 4);

    // What raft-rs's leader gets when a follower needs compacted entries.
    assert_eq!(s.snapshot(0, 2).unwrap(), snap);
    // A peer outside the snapshot's conf state would drop it: don't send.
    assert_eq!(s.snapshot(0, 9), Err(snap_unavailable()));
    // A request for a newer snapshot than stored cannot be served.
    assert_eq!(s.snapshot(7, 2), Err(snap_unavailable()));

    // Snapshotting the whole log leaves it empty but still answering term(first - 1).
    s.create_snapshot(10, &cs, b"state@10".to_vec()).unwrap();
    assert_eq!(s.first_index().unwrap(), 11);
    assert_eq!(s.last_index().unwrap(), 10);
    assert_eq!(s.term(10).unwrap(), 2);
    assert_eq!(s.entries(11, 11, None, ctx()).unwrap(), vec![]);
    s.append_and_persist(&[entry(11, 3, b"y")], None).unwrap();
    drop(s);
    let s = SledStorage::open(dir.path()).unwrap();
    assert_eq!(s.first_index().unwrap(), 11);
    assert_eq!(s.last_index().unwrap(), 11);
    assert_eq!(s.term(10).unwrap(), 2);
    assert_eq!(s.term(11).unwrap(), 3);
}

#[test]
fn conflicting_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStorage::open(dir.path()).unwrap();
        s.append_and_persist(&entries_range(1, 11, 1), Some(&hs(1, 1, 0)))
            .unwrap();
        assert_eq!(s.last_index().unwrap(), 10);
        s.append_and_persist(&entries_range(6, 8, 2), Some(&hs(2, 2, 0)))
            .unwrap();
        // A gap after the last entry, and non-contiguous input, are refused.
        assert!(matches!(
            s.append_and_persist(&[entry(9, 2, b"")], None),
            Err(StorageError::Invalid(_))
        ));
        assert!(matches!(
            s.append_and_persist(&[entry(8, 2, b""), entry(10, 2, b"")], None),
            Err(StorageError::Invalid(_))
        ));
        assert_eq!(s.last_index().unwrap(), 7);
    }
    let s = SledStorage::open(dir.path()).unwrap();
    assert_eq!(s.last_index().unwrap(), 7);
    let terms: Vec<u64> = (1..=7).map(|i| s.term(i).unwrap()).collect();
    assert_eq!(terms, vec![1, 1, 1, 1, 1, 2, 2]);
    assert_eq!(s.term(8), Err(unavailable()));
    let got = all_entries(&s);
    let mut want = entries_range(1, 6, 1);
    want.extend(entries_range(6, 8, 2));
    assert_eq!(got, want);
    assert_eq!(s.inner.db.scan_prefix(ENTRY_PREFIX).count(), 7);
    assert_eq!(s.hard_state(), hs(2, 2, 0));
}

fn leader_snapshot(index: u64, term: u64, cs: ConfState, data: &[u8]) -> Snapshot {
    new_snapshot(LogPosition { index, term }, cs, data.to_vec())
}

#[test]
fn apply_snapshot_from_leader_on_fresh_storage() {
    let dir = tempfile::tempdir().unwrap();
    let cs = ConfState {
        voters: vec![1, 2, 3],
        learners: vec![4],
        ..Default::default()
    };
    let snap = leader_snapshot(20, 3, cs.clone(), b"leader state");
    {
        let s = SledStorage::open(dir.path()).unwrap();
        assert!(s.is_blank());
        s.apply_snapshot(&snap).unwrap();
        assert!(!s.is_blank());
        // Going back is refused.
        assert!(matches!(
            s.apply_snapshot(&leader_snapshot(20, 3, cs.clone(), b"")),
            Err(StorageError::SnapshotOutOfDate { .. })
        ));
        s.append_and_persist(&entries_range(21, 23, 3), Some(&hs(3, 0, 21)))
            .unwrap();
    }
    let s = SledStorage::open(dir.path()).unwrap();
    assert_eq!(s.first_index().unwrap(), 21);
    assert_eq!(s.last_index().unwrap(), 22);
    assert_eq!(s.term(20).unwrap(), 3);
    assert_eq!(s.term(19), Err(compacted()));
    assert_eq!(s.conf_state(), cs);
    assert_eq!(s.hard_state(), hs(3, 0, 21));
    assert_eq!(s.latest_snapshot().unwrap(), Some(snap.clone()));
    assert_eq!(s.snapshot(0, 4).unwrap(), snap);

    // A second snapshot drops the whole log (here, a conflicting one) and raises the commit.
    let snap2 = leader_snapshot(30, 5, voters(&[1, 2, 3, 4]), b"later");
    s.apply_snapshot(&snap2).unwrap();
    assert_eq!(s.first_index().unwrap(), 31);
    assert_eq!(s.last_index().unwrap(), 30);
    assert_eq!(s.hard_state(), hs(5, 0, 30));
    assert_eq!(s.inner.db.scan_prefix(ENTRY_PREFIX).count(), 0);
}

#[test]
fn initialize_bootstraps_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStorage::open(dir.path()).unwrap();
        assert!(s.is_blank());
        assert_eq!(s.cluster_id(), None);
        assert!(matches!(
            s.initialize(&[], 1),
            Err(StorageError::Invalid(_))
        ));
        s.initialize(&[1, 2, 3], 42).unwrap();
        assert!(matches!(
            s.initialize(&[1, 2, 3], 42),
            Err(StorageError::AlreadyInitialized)
        ));
    }
    let s = SledStorage::open(dir.path()).unwrap();
    assert!(!s.is_blank());
    assert_eq!(s.cluster_id(), Some(42));
    assert_eq!(s.conf_state(), voters(&[1, 2, 3]));
    assert_eq!(s.hard_state(), hs(BOOTSTRAP_TERM, 0, BOOTSTRAP_INDEX));
    assert_eq!(s.first_index().unwrap(), BOOTSTRAP_INDEX + 1);
    assert_eq!(s.last_index().unwrap(), BOOTSTRAP_INDEX);
    assert_eq!(s.term(BOOTSTRAP_INDEX).unwrap(), BOOTSTRAP_TERM);
    // A node joining later asks for index 1..: compacted, so the leader sends this snapshot.
    assert_eq!(s.term(0), Err(compacted()));
    let snap = s.snapshot(0, 3).unwrap();
    assert_eq!(snap.get_metadata().index, BOOTSTRAP_INDEX);
    assert_eq!(snap.get_metadata().get_conf_state(), &voters(&[1, 2, 3]));
    assert!(snap.data.is_empty());
}

#[test]
fn open_refuses_a_log_with_a_hole_at_the_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStorage::open(dir.path()).unwrap();
        s.append_and_persist(&entries_range(1, 4, 1), None).unwrap();
        s.inner.db.remove(entry_key(1)).unwrap();
        s.inner.db.flush().unwrap();
    }
    let err = SledStorage::open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
    // And the raft-facing conversion keeps the context.
    let raft_err: raft::Error = err.into();
    assert!(
        raft_err.to_string().contains("first log entry is 2"),
        "{raft_err}"
    );
}

// ---- Snapshot payloads in their own tree ------------------------------------------------------

/// The keys of the `snapshots` tree.
fn payload_keys(s: &SledStorage) -> Vec<Vec<u8>> {
    s.inner
        .snapshots
        .iter()
        .keys()
        .map(|k| k.unwrap().to_vec())
        .collect()
}

/// A store with entries 2..=10 (term 2) and a snapshot at 5 holding `b"state@5"`.
fn store_with_snapshot_at_5(dir: &Path) -> SledStorage {
    let s = SledStorage::open(dir).unwrap();
    s.initialize(&[1, 2, 3], 7).unwrap();
    s.append_and_persist(&entries_range(2, 11, 2), Some(&hs(2, 1, 10)))
        .unwrap();
    s.create_snapshot(5, &voters(&[1, 2, 3]), b"state@5".to_vec())
        .unwrap();
    s
}

#[test]
fn snapshot_payload_lives_outside_the_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_with_snapshot_at_5(dir.path());
    // m/snapshot is a small record, and the payload is the only one in its tree: the bootstrap
    // payload was deleted once the snapshot at 5 was committed.
    let record = s.inner.db.get(KEY_SNAPSHOT).unwrap().unwrap();
    assert_eq!(record[0], SNAPSHOT_RECORD_FORMAT);
    assert!(record.len() < 100, "{} bytes", record.len());
    let sha: [u8; 32] = Sha256::digest(b"state@5").into();
    assert_eq!(payload_keys(&s), vec![payload_key(5, &sha).to_vec()]);

    // Re-snapshotting at the same index with other bytes writes another key, never over the
    // live payload; the old one goes once the new record is committed.
    s.create_snapshot(5, &voters(&[1, 2, 3]), b"state@5, again".to_vec())
        .unwrap();
    let sha2: [u8; 32] = Sha256::digest(b"state@5, again").into();
    assert_eq!(payload_keys(&s), vec![payload_key(5, &sha2).to_vec()]);
    drop(s);
    let s = SledStorage::open(dir.path()).unwrap();
    let snap = s.latest_snapshot().unwrap().unwrap();
    assert_eq!(&snap.data[..], b"state@5, again");
    assert_eq!(snap.get_metadata().index, 5);
    assert_eq!(snap.get_metadata().term, 2);
    assert_eq!(s.snapshot(0, 2).unwrap(), snap);
}

#[test]
fn crash_between_payload_and_metadata_keeps_the_old_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store_with_snapshot_at_5(dir.path());
        // create_snapshot(8, ..) got as far as writing and flushing its payload, then the
        // process died before the metadata batch.
        let pos = LogPosition { index: 8, term: 2 };
        let record = SnapshotRecord::new(snapshot_metadata(pos, voters(&[1, 2, 3])), b"state@8");
        write_payload(
            &s.inner.db,
            &s.inner.files,
            &s.inner.snapshots,
            &record,
            b"state@8",
        )
        .unwrap();
        assert_eq!(payload_keys(&s).len(), 2);
    }
    let s = SledStorage::open(dir.path()).unwrap();
    // Still the snapshot at 5, its log untouched, and the orphan payload is gone.
    let snap = s.latest_snapshot().unwrap().unwrap();
    assert_eq!(snap.get_metadata().index, 5);
    assert_eq!(&snap.data[..], b"state@5");
    assert_eq!(s.first_index().unwrap(), 6);
    assert_eq!(s.last_index().unwrap(), 10);
    let sha: [u8; 32] = Sha256::digest(b"state@5").into();
    assert_eq!(payload_keys(&s), vec![payload_key(5, &sha).to_vec()]);
    // And the interrupted snapshot can simply be taken again.
    s.create_snapshot(8, &voters(&[1, 2, 3]), b"state@8".to_vec())
        .unwrap();
    assert_eq!(payload_keys(&s).len(), 1);
}

#[test]
fn crash_before_old_payloads_are_deleted_is_cleaned_up_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store_with_snapshot_at_5(dir.path());
        // The metadata batch of the snapshot at 5 was flushed, but the deletion of an older
        // payload (say the bootstrap one) never reached disk.
        let pos = LogPosition {
            index: BOOTSTRAP_INDEX,
            term: BOOTSTRAP_TERM,
        };
        let record = SnapshotRecord::new(snapshot_metadata(pos, voters(&[1, 2, 3])), b"");
        write_payload(
            &s.inner.db,
            &s.inner.files,
            &s.inner.snapshots,
            &record,
            b"",
        )
        .unwrap();
    }
    let s = SledStorage::open(dir.path()).unwrap();
    assert_eq!(payload_keys(&s).len(), 1);
    assert_eq!(&s.latest_snapshot().unwrap().unwrap().data[..], b"state@5");
}

fn assert_corrupt(err: StorageError, needle: &str) {
    match &err {
        StorageError::Corrupt(msg) => assert!(msg.contains(needle), "{msg}"),
        other => panic!("expected Corrupt containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn missing_or_damaged_payload_is_a_clear_error() {
    let sha: [u8; 32] = Sha256::digest(b"state@5").into();
    let key = payload_key(5, &sha);

    // Missing: open refuses to start (no silently empty state machine).
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store_with_snapshot_at_5(dir.path());
        s.inner.snapshots.remove(key).unwrap();
        s.inner.db.flush().unwrap();
    }
    let err = SledStorage::open(dir.path()).unwrap_err();
    assert_corrupt(err, "snapshot at index 5 (term 2) is missing");

    // Same length, other bytes: the sha256 catches it.
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store_with_snapshot_at_5(dir.path());
        s.inner.snapshots.insert(key, &b"state@6"[..]).unwrap();
        s.inner.db.flush().unwrap();
    }
    let err = SledStorage::open(dir.path()).unwrap_err();
    assert_corrupt(err, "fails its sha256 check");

    // Torn (short): the length catches it.
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store_with_snapshot_at_5(dir.path());
        s.inner.snapshots.insert(key, &b"state"[..]).unwrap();
        s.inner.db.flush().unwrap();
    }
    let err = SledStorage::open(dir.path()).unwrap_err();
    assert_corrupt(err, "has 5 bytes; m/snapshot records 7");

    // Lost while running: latest_snapshot and raft's snapshot() fail instead of serving
    // something empty.
    let dir = tempfile::tempdir().unwrap();
    let s = store_with_snapshot_at_5(dir.path());
    s.inner.snapshots.remove(key).unwrap();
    assert_corrupt(s.latest_snapshot().unwrap_err(), "is missing");
    let raft_err = s.snapshot(0, 2).unwrap_err();
    assert!(raft_err.to_string().contains("is missing"), "{raft_err}");
}

#[test]
fn earlier_layout_is_migrated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = leader_snapshot(5, 2, voters(&[1, 2, 3]), b"state@5");
    {
        // What the earlier layout left: the whole Snapshot in m/snapshot, no payload tree.
        let s = store_with_snapshot_at_5(dir.path());
        s.inner
            .db
            .insert(KEY_SNAPSHOT, legacy.write_to_bytes().unwrap())
            .unwrap();
        s.inner.snapshots.clear().unwrap();
        s.inner.db.flush().unwrap();
    }
    let s = SledStorage::open(dir.path()).unwrap();
    assert_eq!(s.latest_snapshot().unwrap(), Some(legacy.clone()));
    assert_eq!(
        s.inner.db.get(KEY_SNAPSHOT).unwrap().unwrap()[0],
        SNAPSHOT_RECORD_FORMAT
    );
    assert_eq!(payload_keys(&s).len(), 1);
    drop(s);
    let s = SledStorage::open(dir.path()).unwrap();
    assert_eq!(s.latest_snapshot().unwrap(), Some(legacy));
}

// ---- RawNode smoke test ---------------------------------------------------------------------

fn raft_config(applied: u64) -> Config {
    Config {
        id: 1,
        election_tick: 10,
        heartbeat_tick: 3,
        pre_vote: true,
        check_quorum: true,
        read_only_option: ReadOnlyOption::Safe,
        applied,
        ..Default::default()
    }
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// A minimal state machine: the list of applied non-empty payloads.
#[derive(Default, Debug, Clone, PartialEq)]
struct Applied {
    index: u64,
    values: Vec<Vec<u8>>,
}

impl Applied {
    fn apply(&mut self, entries: Vec<Entry>) {
        for e in entries {
            assert_eq!(e.index, self.index + 1, "entries applied in order, no gaps");
            self.index = e.index;
            if !e.data.is_empty() {
                self.values.push(e.data.to_vec());
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        self.values.join(&b","[..])
    }

    fn decode(index: u64, data: &[u8]) -> Self {
        let values = if data.is_empty() {
            vec![]
        } else {
            data.split(|b| *b == b',').map(<[u8]>::to_vec).collect()
        };
        Applied { index, values }
    }
}

/// One round of the DESIGN §2 Ready loop for a single node (no peers, so no messages).
fn handle_ready(rn: &mut RawNode<SledStorage>, store: &SledStorage, sm: &mut Applied) {
    if !rn.has_ready() {
        return;
    }
    let mut rd = rn.ready();
    assert!(rd.messages().is_empty());
    if !rd.snapshot().is_empty() {
        store.apply_snapshot(rd.snapshot()).unwrap();
    }
    sm.apply(rd.take_committed_entries());
    store.append_and_persist(rd.entries(), rd.hs()).unwrap();
    assert!(rd.persisted_messages().is_empty());
    let mut light = rn.advance(rd);
    if let Some(commit) = light.commit_index() {
        store.set_commit(commit).unwrap();
    }
    sm.apply(light.take_committed_entries());
    rn.advance_apply();
}

fn run_until(
    rn: &mut RawNode<SledStorage>,
    store: &SledStorage,
    sm: &mut Applied,
    mut done: impl FnMut(&RawNode<SledStorage>, &Applied) -> bool,
) {
    for _ in 0..200 {
        if done(rn, sm) {
            return;
        }
        rn.tick();
        handle_ready(rn, store, sm);
    }
    panic!("condition not reached; state machine {sm:?}");
}

fn become_leader(rn: &mut RawNode<SledStorage>, store: &SledStorage, sm: &mut Applied) {
    rn.campaign().unwrap();
    // A single voter wins at once; persist the new term and the leader's empty entry.
    handle_ready(rn, store, sm);
    run_until(rn, store, sm, |rn, _| {
        rn.raft.state == raft::StateRole::Leader
    });
}

/// Opens the storage and a RawNode the way the driver restarts: state machine from the latest
/// snapshot, `Config.applied` = its index, then the Ready loop replays the committed rest.
fn restart(dir: &Path) -> (SledStorage, RawNode<SledStorage>, Applied) {
    let store = SledStorage::open(dir).unwrap();
    let snap = store.latest_snapshot().unwrap().unwrap();
    let sm = Applied::decode(snap.get_metadata().index, &snap.data);
    let rn = RawNode::new(&raft_config(sm.index), store.clone(), &logger()).unwrap();
    (store, rn, sm)
}

#[test]
fn raw_node_commits_and_restarts_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let committed_before_restart;
    {
        let store = SledStorage::open(dir.path()).unwrap();
        store.initialize(&[1], 9).unwrap();
        let (store, mut rn, mut sm) = {
            drop(store);
            restart(dir.path())
        };
        become_leader(&mut rn, &store, &mut sm);
        for v in [b"a", b"b", b"c"] {
            rn.propose(vec![], v.to_vec()).unwrap();
            handle_ready(&mut rn, &store, &mut sm);
        }
        run_until(&mut rn, &store, &mut sm, |_, sm| sm.values.len() == 3);
        assert_eq!(sm.values, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        committed_before_restart = sm.index;
        assert!(store.hard_state().commit >= committed_before_restart);
    }

    // Restart 1: no snapshot beyond the bootstrap one; the log is replayed through Ready.
    {
        let (store, mut rn, mut sm) = restart(dir.path());
        assert_eq!(sm.index, BOOTSTRAP_INDEX);
        assert!(store.hard_state().commit >= committed_before_restart);
        handle_ready(&mut rn, &store, &mut sm);
        assert_eq!(
            sm.index, committed_before_restart,
            "committed entries replayed"
        );
        assert_eq!(sm.values, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);

        // Leads again in a later term, commits more, and snapshots + compacts at applied.
        let old_term = store.hard_state().term;
        become_leader(&mut rn, &store, &mut sm);
        assert!(store.hard_state().term > old_term);
        rn.propose(vec![], b"d".to_vec()).unwrap();
        run_until(&mut rn, &store, &mut sm, |_, sm| sm.values.len() == 4);
        store
            .create_snapshot(sm.index, &store.conf_state(), sm.encode())
            .unwrap();
        assert_eq!(store.first_index().unwrap(), sm.index + 1);
        rn.propose(vec![], b"e".to_vec()).unwrap();
        run_until(&mut rn, &store, &mut sm, |_, sm| sm.values.len() == 5);
    }

    // Restart 2: state machine from the snapshot, only the entries after it are replayed.
    let (store, mut rn, mut sm) = restart(dir.path());
    assert_eq!(sm.values.len(), 4);
    handle_ready(&mut rn, &store, &mut sm);
    let want: Vec<Vec<u8>> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    assert_eq!(sm.values, want);
    become_leader(&mut rn, &store, &mut sm);
    rn.propose(vec![], b"f".to_vec()).unwrap();
    run_until(&mut rn, &store, &mut sm, |_, sm| sm.values.len() == 6);
}

// ---- Disk space ----------------------------------------------------------------------------

/// Apparent size of every file under `dir`, recursively.
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// A 2 MB state-machine payload that does not compress away, different for every `seed`.
fn big_payload(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..2_000_000)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The measured failure mode: with the whole snapshot in the same sled page as `m/hardstate`,
/// every rewrite of that page (each Ready) re-wrote the ~2 MB snapshot as a new sled blob, and
/// the data dir grew to hundreds of MB. 30 snapshots of 2 MB, each followed by 1,000 hard-state
/// writes (what a busy node does between snapshots), must leave a data dir of a few snapshots.
#[test]
fn snapshots_do_not_amplify_disk_usage() {
    let dir = tempfile::tempdir().unwrap();
    let cs = voters(&[1, 2, 3]);
    {
        let s = SledStorage::open(dir.path()).unwrap();
        s.initialize(&cs.voters, 1).unwrap();
        let mut index = BOOTSTRAP_INDEX;
        for round in 0..30u64 {
            // 1,000 Readies: one entry and a hard state each, as the driver persists them.
            for _ in 0..1_000 {
                index += 1;
                s.append_and_persist(&[entry(index, 2, b"cmd")], Some(&hs(2, 1, index)))
                    .unwrap();
            }
            s.create_snapshot(index, &cs, big_payload(round)).unwrap();
        }
    }
    let s = SledStorage::open(dir.path()).unwrap();
    let snap = s.latest_snapshot().unwrap().unwrap();
    assert_eq!(snap.get_metadata().index, BOOTSTRAP_INDEX + 30 * 1_000);
    assert_eq!(&snap.data[..], &big_payload(29)[..]);
    drop(s);
    let size = dir_size(dir.path());
    assert!(
        size < 40_000_000,
        "data dir is {size} bytes after 30 snapshots of 2 MB (expected < 40 MB)"
    );
}

/// The hard state as it is on disk (not the in-memory cache).
fn stored_hard_state(s: &SledStorage) -> HardState {
    let bytes = s.inner.db.get(KEY_HARDSTATE).unwrap().unwrap();
    HardState::parse_from_bytes(&bytes).unwrap()
}

#[test]
fn a_commit_only_hard_state_rides_after_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStorage::open(dir.path()).unwrap();
        s.set_conf_state(&voters(&[1, 2, 3])).unwrap();
        s.append_and_persist(&entries_range(1, 4, 2), Some(&hs(2, 1, 1)))
            .unwrap();
        let meta = s.read_meta();
        // Only the commit moved: deferred past the synced entries.
        assert!(commit_only(&meta, &hs(2, 1, 4)));
        // A new term or vote is part of the synced write itself.
        assert!(!commit_only(&meta, &hs(3, 1, 4)));
        assert!(!commit_only(&meta, &hs(2, 2, 4)));
        drop(meta);
        // A follower's Ready: entry 4, and the leader's commit that covers it.
        s.persist_ready(&[entry(4, 2, b"x")], Some(&hs(2, 1, 4)), true)
            .unwrap();
        assert_eq!(s.hard_state(), hs(2, 1, 4));
        assert_eq!(stored_hard_state(&s), hs(2, 1, 4));
        assert_eq!(s.last_index().unwrap(), 4);
        // A term change with entries: both in the one synced write.
        s.persist_ready(&[entry(5, 3, b"y")], Some(&hs(3, 2, 4)), true)
            .unwrap();
        assert_eq!(stored_hard_state(&s), hs(3, 2, 4));
    }
    let s = SledStorage::open(dir.path()).unwrap();
    let state = s.initial_state().unwrap();
    assert_eq!(state.hard_state, hs(3, 2, 4));
    assert!(state.hard_state.commit <= s.last_index().unwrap());
    assert_eq!(all_entries(&s).len(), 5);
    assert_eq!(s.term(5).unwrap(), 3);
}

#[test]
fn one_key_writes_and_batches_both_land() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStorage::open(dir.path()).unwrap();
        s.set_conf_state(&voters(&[1])).unwrap();
        // One key (an entry alone): written without a batch.
        s.persist_ready(&[entry(1, 1, b"a")], None, true).unwrap();
        // Two entries and a hard state: one batch.
        s.persist_ready(&entries_range(2, 4, 1), Some(&hs(1, 1, 2)), true)
            .unwrap();
        // A conflicting tail: entry 3 replaces 3 and removes nothing else.
        s.persist_ready(&[entry(3, 2, b"c")], None, true).unwrap();
    }
    let s = SledStorage::open(dir.path()).unwrap();
    assert_eq!(s.last_index().unwrap(), 3);
    let terms: Vec<u64> = (1..=3).map(|i| s.term(i).unwrap()).collect();
    assert_eq!(terms, vec![1, 1, 2]);
    assert_eq!(s.hard_state(), hs(1, 1, 2));
}

/// Every file in a sled database directory (recursively), directories included.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        }
        out.push(path);
    }
    out
}

/// sled 0.34's own flush only `sync_file_range`s its log and never syncs blob files or
/// directories (see `sled_files`). Every durable write must end with an `fdatasync` of the log,
/// and a snapshot payload (a 2 MB value: a sled blob file of its own) must be synced together
/// with the directories that name it.
#[test]
fn every_file_sled_wrote_is_made_durable() {
    let dir = tempfile::tempdir().unwrap();
    let raft_dir = dir.path().join(RAFT_DIR);
    let s = SledStorage::open(dir.path()).unwrap();
    s.initialize(&[1], 7).unwrap();

    let before = s.sync_counts();
    for index in 2..=41 {
        s.append_and_persist(&[entry(index, 2, b"cmd")], Some(&hs(2, 1, index - 1)))
            .unwrap();
    }
    let after = s.sync_counts();
    assert_eq!(
        after.log_fdatasyncs - before.log_fdatasyncs,
        40,
        "one fdatasync of sled's log per durable append: {before:?} -> {after:?}"
    );

    s.create_snapshot(41, &voters(&[1]), big_payload(1))
        .unwrap();
    let blobs: Vec<_> = std::fs::read_dir(raft_dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        !blobs.is_empty(),
        "a 2 MB payload is expected to be a sled blob file"
    );
    let files = s.inner.files.lock().unwrap();
    let synced = files.synced();
    for path in files_under(&raft_dir).iter().chain([&raft_dir]) {
        assert!(
            synced.contains(path),
            "{} was written by sled but never synced; synced: {synced:#?}",
            path.display()
        );
    }
    assert!(synced.contains(dir.path()), "the data dir is not synced");
}

/// A write that is not asked to be durable (a commit index alone) costs no sync.
#[test]
fn an_unsynced_write_costs_no_fdatasync() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStorage::open(dir.path()).unwrap();
    s.initialize(&[1], 7).unwrap();
    s.append_and_persist(&[entry(2, 2, b"cmd")], Some(&hs(2, 1, 1)))
        .unwrap();
    let before = s.sync_counts();
    s.set_commit(2).unwrap();
    assert_eq!(s.sync_counts(), before);
    assert_eq!(s.hard_state().commit, 2);
}
