//! The node driver: one task owns raft-rs's `RawNode` and runs the Ready loop.
//!
//! Everything that touches raft goes through this task's inbox ([`Msg`]): client proposals,
//! conf changes, ReadIndex requests, messages from peers, and transport reports. Between inbox
//! messages the task ticks the raft clock and handles `Ready` in DESIGN §2's order:
//!
//! 1. send `messages`;
//! 2. apply the snapshot (storage first, then the state machine);
//! 3. apply the committed entries to the state machine and answer their proposers;
//! 4. append the entries and hard state in one sled batch, then make them durable (sled's flush
//!    and `fdatasync`, see `sled_files`; when raft says it must: new entries, term or vote; a
//!    commit index alone is written without a sync);
//! 5. send `persisted_messages`;
//! 6. `advance`, then handle the light ready the same way.
//!
//! A storage error is fatal: the process logs it and exits, and systemd restarts it. `advance`
//! is never called after a failed write.
//!
//! The state machine lives in memory behind an `RwLock` that only this task writes. Every
//! [`SNAPSHOT_EVERY`] applied entries it is serialized into sled as a raft snapshot and the log
//! before it is compacted; a restart loads that snapshot and replays the log after it.
//!
//! Deliberately absent: request deadlines (the service layer owns them) and any wall clock in
//! the state machine (proposers stamp time into each command).

use super::logger::raft_logger;
use super::proposals::{Pending, Waiter};
use super::status::{NodeStatus, Role};
use super::storage::SledStorage;
use super::transport::Transport;
use super::NodeError;
use crate::state::{Command, Proposal, Response, StateMachine};
use protobuf::Message as _;
use raft::prelude::*;
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Entries applied between two state-machine snapshots. Small enough that a restart replays
/// little, large enough that the (whole-state) snapshot cost is amortised.
pub(crate) const SNAPSHOT_EVERY: u64 = 1000;

/// Inbox messages processed per loop turn before handling Ready, so that a burst of proposals
/// is batched into one append + sync.
const BATCH: usize = 256;

/// What the node task is asked to do.
pub(crate) enum Msg {
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Response, NodeError>>,
    },
    ConfChange {
        cc: ConfChangeV2,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<u64, NodeError>>,
    },
    Step(Box<Message>),
    Unreachable(u64),
    Snapshot(u64, SnapshotStatus),
}

/// Timing and identity of a node.
pub(crate) struct NodeConfig {
    pub id: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
}

pub(crate) struct Node {
    id: u64,
    raw: RawNode<SledStorage>,
    storage: SledStorage,
    state: Arc<RwLock<StateMachine>>,
    /// The index of the last entry applied to `state` (empty entries included).
    applied: u64,
    /// The index of the latest stored state-machine snapshot.
    snapshot_index: u64,
    pending: Pending,
    reads: HashMap<u64, oneshot::Sender<Result<u64, NodeError>>>,
    next_read: u64,
    transport: Transport,
    status: watch::Sender<NodeStatus>,
    /// (leader id, role) on every change of either: for tasks that care about leadership
    /// only, and would otherwise wake on every status change (one per commit).
    leadership: watch::Sender<(u64, Role)>,
    applied_tx: watch::Sender<u64>,
    inbox: mpsc::Receiver<Msg>,
    tick: Duration,
    last_leader: u64,
    last_role: StateRole,
}

impl Node {
    /// Builds the node from storage: restores the state machine from the latest snapshot and
    /// sets raft's `applied` to it, so raft replays only what comes after.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: &NodeConfig,
        storage: SledStorage,
        transport: Transport,
        inbox: mpsc::Receiver<Msg>,
        state: Arc<RwLock<StateMachine>>,
        status: watch::Sender<NodeStatus>,
        leadership: watch::Sender<(u64, Role)>,
        applied_tx: watch::Sender<u64>,
    ) -> anyhow::Result<Self> {
        let mut applied = 0;
        if let Some(snap) = storage
            .latest_snapshot()
            .map_err(|e| anyhow::anyhow!("cannot read the stored snapshot: {e}"))?
        {
            let meta = snap.get_metadata();
            applied = meta.index;
            if !snap.data.is_empty() {
                let restored = StateMachine::restore(&snap.data)
                    .map_err(|e| anyhow::anyhow!("cannot restore state snapshot: {e}"))?;
                *state
                    .write()
                    .map_err(|_| anyhow::anyhow!("state lock poisoned"))? = restored;
            }
        }
        let config = Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            // A narrower randomisation than raft's default [e, 2e) keeps failover well under
            // 3 s with the default 100 ms tick, while still separating candidates.
            min_election_tick: cfg.election_ticks,
            max_election_tick: cfg.election_ticks * 3 / 2 + 1,
            pre_vote: true,
            check_quorum: true,
            read_only_option: ReadOnlyOption::Safe,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("raft config: {e}"))?;
        let raw = RawNode::new(&config, storage.clone(), &raft_logger())
            .map_err(|e| anyhow::anyhow!("cannot start raft: {e}"))?;
        Ok(Self {
            id: cfg.id,
            raw,
            storage,
            state,
            applied,
            snapshot_index: applied,
            pending: Pending::default(),
            reads: HashMap::new(),
            next_read: 1,
            transport,
            status,
            leadership,
            applied_tx,
            inbox,
            tick: cfg.tick,
            last_leader: 0,
            last_role: StateRole::Follower,
        })
    }

    /// Runs the loop until every handle is dropped.
    pub(crate) async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.publish_status();
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.raw.tick();
                }
                msg = self.inbox.recv() => {
                    let Some(msg) = msg else { return };
                    self.handle(msg);
                    for _ in 0..BATCH {
                        match self.inbox.try_recv() {
                            Ok(m) => self.handle(m),
                            Err(_) => break,
                        }
                    }
                }
            }
            self.on_ready().await;
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Propose { data, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(NodeError::NotLeader {
                        leader: self.raw.raft.leader_id,
                    }));
                    return;
                }
                match self.raw.propose(vec![], data) {
                    Ok(()) => {
                        let index = self.raw.raft.raft_log.last_index();
                        self.pending
                            .insert(index, self.raw.raft.term, Waiter::Command(reply));
                    }
                    Err(e) => drop(reply.send(Err(NodeError::Dropped(e.to_string())))),
                }
            }
            Msg::ConfChange { cc, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(NodeError::NotLeader {
                        leader: self.raw.raft.leader_id,
                    }));
                    return;
                }
                let before = self.raw.raft.raft_log.last_index();
                match self.raw.propose_conf_change(vec![], cc) {
                    Ok(()) if self.raw.raft.raft_log.last_index() > before => {
                        let index = self.raw.raft.raft_log.last_index();
                        self.pending
                            .insert(index, self.raw.raft.term, Waiter::ConfChange(reply));
                    }
                    Ok(()) => drop(reply.send(Err(NodeError::Dropped(
                        "another membership change is still in progress".into(),
                    )))),
                    Err(e) => drop(reply.send(Err(NodeError::Dropped(e.to_string())))),
                }
            }
            Msg::ReadIndex { reply } => {
                let ctx = self.next_read;
                self.next_read += 1;
                self.reads.insert(ctx, reply);
                self.raw.read_index(ctx.to_be_bytes().to_vec());
            }
            Msg::Step(m) => {
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!("raft step: {e}");
                }
            }
            Msg::Unreachable(id) => self.raw.report_unreachable(id),
            Msg::Snapshot(id, status) => self.raw.report_snapshot(id, status),
        }
    }

    async fn on_ready(&mut self) {
        if !self.raw.has_ready() {
            self.publish_status();
            return;
        }
        let mut rd = self.raw.ready();
        // 1. Messages that need no persistence first (leader's appends, heartbeats). The peer
        //    streams run on this thread: before it blocks in fdatasync (step 4), yield once so
        //    that they put these on the wire, and the followers persist while the leader does.
        let messages = rd.take_messages();
        let blocks = !rd.entries().is_empty() || rd.must_sync() || !rd.snapshot().is_empty();
        let yield_first = !messages.is_empty() && blocks;
        self.transport.send(messages);
        if yield_first {
            tokio::task::yield_now().await;
        }
        // 2. A snapshot from the leader.
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.fatal_on_err("apply snapshot", self.storage.apply_snapshot(&snap));
            self.install_snapshot(&snap);
        }
        // 3. Committed entries.
        let committed = rd.take_committed_entries();
        self.apply_entries(committed);
        // 4. New entries and hard state: one batch, one flush.
        let hs = rd.hs().cloned();
        let sync = rd.must_sync();
        self.fatal_on_err(
            "append entries",
            self.storage.persist_ready(rd.entries(), hs.as_ref(), sync),
        );
        // 5. Messages that must follow persistence (votes, append responses); on the wire before
        //    the light ready's work (they are what the leader is waiting for).
        let persisted = rd.take_persisted_messages();
        let answered = !persisted.is_empty();
        self.transport.send(persisted);
        if answered {
            tokio::task::yield_now().await;
        }
        for rs in rd.take_read_states() {
            self.answer_read(&rs.request_ctx, rs.index);
        }
        // 6. Advance, and the light ready.
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.fatal_on_err("persist commit", self.storage.set_commit(commit));
        }
        self.transport.send(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply_entries(committed);
        self.raw.advance_apply();
        self.maybe_snapshot();
        self.publish_status();
    }

    fn install_snapshot(&mut self, snap: &Snapshot) {
        let index = snap.get_metadata().index;
        match StateMachine::restore(&snap.data) {
            Ok(sm) => {
                if let Ok(mut st) = self.state.write() {
                    *st = sm;
                }
            }
            Err(e) => {
                tracing::error!(
                    "snapshot from the leader at index {index} cannot be restored: {e}"
                );
                std::process::exit(1);
            }
        }
        for (id, addr) in self
            .state
            .read()
            .map(|s| s.members().clone())
            .unwrap_or_default()
        {
            self.transport.ensure_peer(id, &addr);
        }
        self.applied = index;
        self.snapshot_index = index;
        let _ = self.applied_tx.send(index);
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(&e),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => self.apply_conf(&e),
            }
            self.applied = e.index;
        }
        let _ = self.applied_tx.send(self.applied);
    }

    fn apply_normal(&mut self, e: &Entry) {
        let waiter = self.pending.take(e.index, e.term);
        if e.data.is_empty() {
            // A new leader's no-op entry.
            return;
        }
        let response = match Proposal::decode(&e.data) {
            Ok(p) => match self.state.write() {
                Ok(mut st) => st.apply(e.index, p),
                Err(_) => {
                    tracing::error!("state lock poisoned; exiting");
                    std::process::exit(1);
                }
            },
            Err(err) => {
                tracing::warn!(index = e.index, "undecodable log entry skipped: {err}");
                Err(err)
            }
        };
        if let Some(Waiter::Command(tx)) = waiter {
            let _ = tx.send(Ok(response));
        }
    }

    fn apply_conf(&mut self, e: &Entry) {
        let waiter = self.pending.take(e.index, e.term);
        let cc = if e.get_entry_type() == EntryType::EntryConfChangeV2 {
            ConfChangeV2::parse_from_bytes(&e.data)
        } else {
            ConfChange::parse_from_bytes(&e.data).map(|c| {
                // A v1 change (never proposed by us, but valid raft): one single change.
                let mut single = ConfChangeSingle::default();
                single.set_change_type(c.get_change_type());
                single.node_id = c.node_id;
                let mut v2 = ConfChangeV2::default();
                v2.mut_changes().push(single);
                v2.context = c.context;
                v2
            })
        };
        let cc = match cc {
            Ok(cc) => cc,
            Err(err) => {
                tracing::error!(index = e.index, "undecodable conf change: {err}");
                return;
            }
        };
        let result = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => {
                let address = String::from_utf8_lossy(&cc.context).to_string();
                for change in cc.get_changes() {
                    let id = change.node_id;
                    let command = match change.get_change_type() {
                        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                            if !address.is_empty() {
                                self.transport.ensure_peer(id, &address);
                            }
                            Command::SetMember {
                                id,
                                address: address.clone(),
                            }
                        }
                        ConfChangeType::RemoveNode => {
                            if id != self.id {
                                self.transport.remove_peer(id);
                            }
                            Command::RemoveMember { id }
                        }
                    };
                    let p = Proposal {
                        version: crate::state::FORMAT_VERSION,
                        write: None,
                        at_ms: 0,
                        actor: "raft".into(),
                        command,
                    };
                    if let Ok(mut st) = self.state.write() {
                        let _ = st.apply(e.index, p);
                    }
                }
                // Persist the new configuration as a snapshot at this index (not as a bare
                // conf state): a restart must not re-apply this change on top of its own result,
                // and a member added now must be sendable a snapshot that includes it.
                let data = self.state.read().map(|s| s.snapshot()).unwrap_or_default();
                self.fatal_on_err(
                    "snapshot after membership change",
                    self.storage.create_snapshot(e.index, &cs, data),
                );
                self.snapshot_index = e.index;
                tracing::info!(index = e.index, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
                Ok(())
            }
            Err(err) => Err(NodeError::Dropped(format!("conf change refused: {err}"))),
        };
        if let Some(Waiter::ConfChange(tx)) = waiter {
            let _ = tx.send(result);
        }
    }

    fn answer_read(&mut self, ctx: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 8]>::try_from(ctx) else {
            return;
        };
        if let Some(tx) = self.reads.remove(&u64::from_be_bytes(bytes)) {
            let _ = tx.send(Ok(index));
        }
    }

    fn maybe_snapshot(&mut self) {
        if self.applied < self.snapshot_index + SNAPSHOT_EVERY {
            return;
        }
        let data = match self.state.read() {
            Ok(st) => st.snapshot(),
            Err(_) => return,
        };
        let cs = self.raw.raft.prs().conf().to_conf_state();
        self.fatal_on_err(
            "create snapshot",
            self.storage.create_snapshot(self.applied, &cs, data),
        );
        tracing::debug!(index = self.applied, "state snapshot stored, log compacted");
        self.snapshot_index = self.applied;
    }

    fn publish_status(&mut self) {
        let raft = &self.raw.raft;
        let role = match raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower => {
                if raft.prs().conf().learners().contains(&self.id) {
                    Role::Learner
                } else {
                    Role::Follower
                }
            }
        };
        if raft.state != self.last_role || raft.leader_id != self.last_leader {
            if self.last_role == StateRole::Leader && raft.state != StateRole::Leader {
                self.pending.fail_all(NodeError::LeadershipLost);
            }
            // Outstanding reads were addressed to the old leader and may never be answered.
            for (_, tx) in self.reads.drain() {
                let _ = tx.send(Err(NodeError::LeadershipLost));
            }
            self.last_role = raft.state;
            self.last_leader = raft.leader_id;
        }
        let conf = raft.prs().conf();
        let voters: Vec<u64> = conf.voters().ids().iter().collect();
        let learners: Vec<u64> = conf.learners().iter().copied().collect();
        let mut matched = std::collections::BTreeMap::new();
        let mut active = std::collections::BTreeMap::new();
        if raft.state == StateRole::Leader {
            for (id, pr) in raft.prs().iter() {
                matched.insert(*id, pr.matched);
                active.insert(*id, pr.recent_active || *id == self.id);
            }
        }
        let status = NodeStatus {
            id: self.id,
            role,
            leader: raft.leader_id,
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: self.applied,
            voters,
            learners,
            matched,
            active,
        };
        let leadership = (status.leader, status.role);
        self.leadership.send_if_modified(|old| {
            let changed = *old != leadership;
            *old = leadership;
            changed
        });
        self.status.send_if_modified(|old| {
            if *old != status {
                *old = status;
                true
            } else {
                false
            }
        });
    }

    fn fatal_on_err<E: std::fmt::Display>(&self, what: &str, r: Result<(), E>) {
        if let Err(e) = r {
            tracing::error!(
                "fatal storage error ({what}): {e}; exiting so that systemd restarts the node"
            );
            std::process::exit(1);
        }
    }
}
