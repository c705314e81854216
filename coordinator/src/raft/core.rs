//! The heart of the node driver: raft-rs's `RawNode`, the storage and the replicated state, and
//! the Ready loop between them. No threads, no clock, no network of its own.
//!
//! [`Core`] is what both drivers share: the production node (`node.rs`, a thread with an inbox, a
//! ticker and the tonic transport) and the deterministic test driver (`sim`, which owns the
//! network and the clock). Each calls the same methods: hand over proposals, conf changes,
//! ReadIndex requests, messages and ticks, then handle the Ready in its stages (see below).
//! What goes out goes through a [`Network`] the caller provides; what time it is, the caller
//! says.
//!
//! A Ready is handled in DESIGN §2's order:
//!
//! 1. send `messages`;
//! 2. apply the snapshot (storage first, then the state machine);
//! 3. apply the committed entries to the state machine and answer their proposers;
//! 4. append the entries and hard state in one sled batch, then make them durable (sled's flush
//!    and `fdatasync` of every file sled wrote, see `sled_files`; when raft says it must: new
//!    entries, term or vote; a commit index alone is written without a sync);
//! 5. send `persisted_messages`, and answer ReadIndex requests;
//! 6. `advance`, then handle the light ready the same way.
//!
//! Then, in one place, it looks at the role: a node that lost leadership fails its pending
//! proposals, and any change of role or leader fails the pending reads ([`RoleChange`]).
//!
//! # Stages
//!
//! A Ready is handled in three stages, each a method that takes what the one before returned,
//! so that they can only run in order: [`Core::send_ready`] (step 1), [`Core::persist_ready`]
//! (steps 2 to 5) and [`Core::finish_ready`] (the rest of 5, and 6). `handle_ready` runs them
//! back to back; the simulator uses it. The production node runs them itself, and yields to
//! its runtime between them (see `node`): its peer streams run on the raft thread, so a yield
//! after step 1 puts the leader's appends on the wire before the thread blocks in `fdatasync`,
//! and the followers persist while the leader does; a yield after step 5 puts the answers the
//! leader waits for on the wire before the light ready's work. Between the stages nothing may
//! reach the core: the caller holds the stage, and every input (`step`, `propose`, `tick`, ...)
//! waits for the next turn.
//!
//! Durability: `persisted_messages` (votes, append responses, a follower's every message) are
//! sent only by [`Core::persist_ready`], after the storage has made the Ready's entries and hard
//! state durable; the stages keep that order whoever runs them.
//!
//! Anything that would let this replica diverge or lose state is a [`Fatal`] error, returned to
//! the caller, which stops the node: a storage error, a committed entry or conf change that does
//! not decode, a state machine that cannot be snapshotted, a snapshot that cannot be restored.
//! `advance` is never called after a failed write.
//!
//! The state machine is behind an `RwLock` that only the core writes. Every `snapshot_every`
//! applied entries it is serialized into storage as a raft snapshot and the log before it is
//! compacted; a restart loads that snapshot and replays the log after it. A snapshot is also
//! stored right after every membership change, so that a restart never re-applies a change on
//! top of its own result and a new member can be sent a snapshot that names it.
//!
//! The leader also records, through the state machine, every member that has acknowledged the
//! log ([`Replicated::member_entry`]), so that a wiped member is recognised when it tries to
//! bootstrap again (see `bootstrap`), and the command format version each member reports
//! ([`Replicated::member_version_entry`]).
//!
//! **Every proposal passes the version gate** in [`Core::propose`] (`versions.rs`): an entry of
//! command format version N is proposed only once every voter and learner is known to know N.
//! The services, liveness, the progress checker and the core's own records all propose through
//! it; nothing reaches `RawNode::propose` another way. Peers' versions arrive with their
//! messages ([`Core::step`]).

use super::conf_context::ConfContext;
use super::error::{Fatal, NodeError};
use super::proposals::{Pending, Waiter};
use super::reads::{self, Reads};
use super::replicated::{MemberChange, MembershipChange, Replicated, SnapshotError};
use super::status::{NodeStatus, Role};
use super::storage::{SledStorage, BOOTSTRAP_INDEX, BOOTSTRAP_TERM};
use super::versions::{self, Gate, Known, View};
use protobuf::Message as _;
use raft::prelude::*;
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::oneshot;

/// Entries applied between two state-machine snapshots in production. Small enough that a
/// restart replays little, large enough that the (whole-state) snapshot cost is amortised.
pub(crate) const SNAPSHOT_EVERY: u64 = 1000;

/// Where the core's outgoing messages go, and how it learns peers' addresses.
pub(crate) trait Network {
    /// Sends raft messages to their peers; never blocks.
    fn send(&mut self, msgs: Vec<Message>);
    /// A member is known at `address` (from a conf change or the replicated membership).
    fn ensure_peer(&mut self, id: u64, address: &str);
    /// A member was removed.
    fn remove_peer(&mut self, id: u64);
    /// The address member `id` advertises, when known (this node's own included).
    fn address_of(&self, id: u64) -> Option<String>;
}

/// How a core is set up.
pub(crate) struct CoreConfig {
    pub id: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// raft's randomized election timeout is drawn from `[min, max)` ticks.
    pub min_election_ticks: usize,
    pub max_election_ticks: usize,
    pub snapshot_every: u64,
    /// Ticks after which an unanswered ReadIndex request fails.
    pub read_expiry_ticks: u64,
    /// The newest command format version this node knows: what it applies, advertises and
    /// lets through the gate.
    pub known_version: u32,
    pub logger: slog::Logger,
}

impl CoreConfig {
    /// The production timing: election timeouts in `[e, 1.5e + 1)`, reads expire after two
    /// election timeouts.
    pub(crate) fn new(
        id: u64,
        election_ticks: usize,
        heartbeat_ticks: usize,
        known_version: u32,
    ) -> Self {
        Self {
            id,
            known_version,
            election_ticks,
            heartbeat_ticks,
            // A narrower randomisation than raft's default [e, 2e) keeps failover well under
            // 3 s with the default 100 ms tick, while still separating candidates.
            min_election_ticks: election_ticks,
            max_election_ticks: election_ticks * 3 / 2 + 1,
            snapshot_every: SNAPSHOT_EVERY,
            read_expiry_ticks: 2 * election_ticks as u64,
            logger: super::logger::raft_logger(),
        }
    }
}

/// A change of this node's role or of the leader it knows, seen after a Ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoleChange {
    pub from: StateRole,
    pub to: StateRole,
    pub leader: u64,
    pub term: u64,
}

/// A Ready whose `messages` are sent ([`Core::send_ready`]); next, [`Core::persist_ready`].
#[must_use = "a Ready must be persisted and finished"]
pub(crate) struct Sent {
    rd: Ready,
    sent_before_sync: bool,
}

impl Sent {
    /// Whether messages went out and the next stage blocks in a sync (new entries, a term or
    /// vote, a snapshot): the point where the production node yields, so that its peer streams
    /// put them on the wire first.
    pub(crate) fn sent_before_sync(&self) -> bool {
        self.sent_before_sync
    }
}

/// A Ready persisted, its `persisted_messages` sent ([`Core::persist_ready`]); next,
/// [`Core::finish_ready`].
#[must_use = "a Ready must be finished"]
pub(crate) struct Persisted {
    rd: Ready,
    answered: bool,
}

impl Persisted {
    /// Whether `persisted_messages` went out (votes, append responses: what the leader waits
    /// for).
    pub(crate) fn answered(&self) -> bool {
        self.answered
    }
}

pub(crate) struct Core<S: Replicated> {
    id: u64,
    raw: RawNode<SledStorage>,
    storage: SledStorage,
    state: Arc<RwLock<S>>,
    /// The index of the last entry applied to `state` (empty entries included).
    applied: u64,
    /// The index of the latest stored state-machine snapshot.
    snapshot_index: u64,
    snapshot_every: u64,
    pending: Pending<S::Answer>,
    reads: Reads,
    /// Ticks since start, for read expiry.
    ticks: u64,
    /// The role and leader seen after the last Ready.
    role: StateRole,
    leader: u64,
    /// Leader only: members whose recording entry is in flight.
    recording: BTreeSet<u64>,
    /// The newest command format version this node knows.
    known_version: u32,
    /// The command format version each peer's latest message came with.
    reported: BTreeMap<u64, u32>,
    /// Leader only: member versions whose recording entry is in flight.
    recording_versions: BTreeMap<u64, u32>,
    /// The tick count when each peer was last heard from.
    heard: BTreeMap<u64, u64>,
    /// A peer heard from within this many ticks counts as reachable.
    reachable_ticks: u64,
    /// raft's election timeout range, `[min, max)` ticks.
    #[cfg(test)]
    election_range: (usize, usize),
    /// Every entry applied since the last [`Core::take_applied_log`]: (index, term, hash of
    /// its type and data), for the simulator's check that replicas apply the same log.
    #[cfg(test)]
    applied_log: Vec<(u64, u64, u64)>,
}

impl<S: Replicated> Core<S> {
    /// Builds the core from storage: restores the state machine from the latest snapshot and
    /// sets raft's `applied` to it, so raft replays only what comes after.
    pub(crate) fn new(cfg: CoreConfig, storage: SledStorage) -> Result<Self, anyhow::Error> {
        let mut applied = 0;
        let mut state = S::default();
        if let Some(snap) = storage
            .latest_snapshot()
            .map_err(|e| anyhow::anyhow!("cannot read the stored snapshot: {e}"))?
        {
            applied = snap.get_metadata().index;
            state = restore::<S>(&snap, cfg.known_version).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let config = Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            min_election_tick: cfg.min_election_ticks,
            max_election_tick: cfg.max_election_ticks,
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
        let raw = RawNode::new(&config, storage.clone(), &cfg.logger)
            .map_err(|e| anyhow::anyhow!("cannot start raft: {e}"))?;
        Ok(Self {
            id: cfg.id,
            raw,
            storage,
            state: Arc::new(RwLock::new(state)),
            applied,
            snapshot_index: applied,
            snapshot_every: cfg.snapshot_every.max(1),
            pending: Pending::default(),
            reads: Reads::new(cfg.read_expiry_ticks),
            ticks: 0,
            role: StateRole::Follower,
            leader: 0,
            recording: BTreeSet::new(),
            known_version: cfg.known_version,
            reported: BTreeMap::new(),
            recording_versions: BTreeMap::new(),
            heard: BTreeMap::new(),
            reachable_ticks: cfg.election_ticks as u64,
            #[cfg(test)]
            election_range: (cfg.min_election_ticks, cfg.max_election_ticks),
            #[cfg(test)]
            applied_log: Vec::new(),
        })
    }

    /// The state machine, shared with readers. Only the core writes it.
    pub(crate) fn state(&self) -> Arc<RwLock<S>> {
        self.state.clone()
    }

    /// The index of the last applied entry.
    pub(crate) fn applied(&self) -> u64 {
        self.applied
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this node knows (0 when none).
    pub(crate) fn leader(&self) -> u64 {
        self.raw.raft.leader_id
    }

    #[cfg(test)]
    pub(crate) fn term(&self) -> u64 {
        self.raw.raft.term
    }

    #[cfg(test)]
    pub(crate) fn commit(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// Whether the log's committed entry is of the current term (a new leader has committed
    /// its first entry).
    #[cfg(test)]
    pub(crate) fn has_committed_in_term(&self) -> bool {
        self.raw.raft.commit_to_current_term()
    }

    // ---- inputs ----

    /// Proposes a normal entry that needs `gate.needs`; `reply` is answered when it is applied
    /// (or fails). The one door to the log: the version gate is here.
    pub(crate) fn propose(
        &mut self,
        data: Vec<u8>,
        gate: Gate,
        reply: oneshot::Sender<Result<S::Answer, NodeError>>,
    ) {
        if !self.is_leader() {
            let _ = reply.send(Err(NodeError::NotLeader {
                leader: self.leader(),
            }));
            return;
        }
        if let Err(refused) = self.check_gate(gate) {
            let _ = reply.send(Err(refused));
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

    /// Proposes a membership change. raft takes one at a time: while one is being applied, the
    /// next is answered at once with [`NodeError::MembershipChangeInProgress`] (raft itself
    /// would turn it into an empty entry and say nothing).
    pub(crate) fn propose_conf_change(
        &mut self,
        cc: ConfChangeV2,
        reply: oneshot::Sender<Result<(), NodeError>>,
    ) {
        if !self.is_leader() {
            let _ = reply.send(Err(NodeError::NotLeader {
                leader: self.leader(),
            }));
            return;
        }
        if self.raw.raft.has_pending_conf() {
            let _ = reply.send(Err(NodeError::MembershipChangeInProgress));
            return;
        }
        let before = self.raw.raft.raft_log.last_index();
        match self.raw.propose_conf_change(vec![], cc) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                // Accepted iff raft now tracks it as the pending change; otherwise raft appended
                // an empty entry in its place.
                if index > before && self.raw.raft.pending_conf_index == index {
                    self.pending
                        .insert(index, self.raw.raft.term, Waiter::ConfChange(reply));
                } else {
                    let _ = reply.send(Err(NodeError::MembershipChangeInProgress));
                }
            }
            Err(e) => drop(reply.send(Err(NodeError::Dropped(e.to_string())))),
        }
    }

    /// Asks for a ReadIndex: `reply` gets the index to wait for before reading the state.
    pub(crate) fn read_index(&mut self, reply: oneshot::Sender<Result<u64, NodeError>>) {
        let ctx = self.reads.add(reply, self.ticks);
        self.hand_over_read(ctx);
    }

    /// Gives read `ctx` to raft and records whether raft took it up.
    fn hand_over_read(&mut self, ctx: u64) {
        let bytes = reads::context(ctx);
        let answered_before = self.raw.raft.read_states.len();
        self.raw.read_index(bytes.clone());
        let raft = &self.raw.raft;
        let taken = match raft.state {
            StateRole::Leader => {
                raft.read_only.pending_read_index.contains_key(&bytes)
                    || raft.read_states.len() > answered_before
            }
            // A follower forwards it to the leader it knows; without one raft drops it.
            _ => raft.leader_id != 0,
        };
        self.reads.set_taken(ctx, taken);
    }

    /// A message from a peer, which came with its sender's command format version (0 from a
    /// coordinator that reports none).
    pub(crate) fn step(&mut self, m: Message, version: u32) {
        self.heard.insert(m.from, self.ticks);
        self.reported.insert(m.from, versions::reported(version));
        if let Err(e) = self.raw.step(m) {
            tracing::debug!("raft step: {e}");
        }
    }

    /// One tick of the raft clock; also expires and re-issues pending reads.
    pub(crate) fn tick(&mut self) {
        self.raw.tick();
        self.ticks += 1;
        for ctx in self.reads.on_tick(self.ticks) {
            self.hand_over_read(ctx);
        }
    }

    pub(crate) fn report_unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }

    pub(crate) fn report_snapshot(&mut self, id: u64, status: SnapshotStatus) {
        self.raw.report_snapshot(id, status);
    }

    /// Replaces raft's own random draw of the election timeout (from a thread-local generator)
    /// with `pick(min, max)`, whenever raft has just reset its election timer: the simulator's
    /// seeded draw, so that a run depends on its seed alone.
    #[cfg(test)]
    pub(crate) fn redraw_election_timeout(&mut self, pick: impl FnOnce(usize, usize) -> usize) {
        if self.raw.raft.election_elapsed == 0 {
            let (min, max) = self.election_range;
            let t = pick(min, max).clamp(min, max - 1);
            self.raw.raft.set_randomized_election_timeout(t);
        }
    }

    /// Hands leadership to `to` (tests and the simulator).
    #[cfg(test)]
    pub(crate) fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to);
    }

    // ---- the Ready loop ----

    /// Handles a `Ready` if raft has one (DESIGN §2's order, its three stages back to back),
    /// then looks at the role. `now_ms` stamps the leader's own entries. The simulator's turn;
    /// the production node runs the same stages itself, yielding between them (see `node`).
    #[cfg(test)]
    pub(crate) fn handle_ready(
        &mut self,
        net: &mut impl Network,
        now_ms: u64,
    ) -> Result<Option<RoleChange>, Fatal> {
        if let Some(sent) = self.send_ready(net, now_ms)? {
            let persisted = self.persist_ready(sent, net)?;
            self.finish_ready(persisted, net)?;
        }
        Ok(self.observe_role())
    }

    /// Stage 1 (see the module docs): as leader, proposes the recording of members and of
    /// their command format versions (through the version gate); then, if
    /// raft has a Ready, takes it and sends its `messages` (the leader's appends and heartbeats,
    /// which need no persistence first). `None`: no Ready; the turn ends with
    /// [`Core::observe_role`].
    pub(crate) fn send_ready(
        &mut self,
        net: &mut impl Network,
        now_ms: u64,
    ) -> Result<Option<Sent>, Fatal> {
        self.record_members(net, now_ms)?;
        self.record_versions(now_ms)?;
        if !self.raw.has_ready() {
            return Ok(None);
        }
        let mut rd = self.raw.ready();
        let messages = rd.take_messages();
        let sent = !messages.is_empty();
        net.send(messages);
        let syncs = rd.must_sync() || !rd.entries().is_empty() || !rd.snapshot().is_empty();
        Ok(Some(Sent {
            rd,
            sent_before_sync: sent && syncs,
        }))
    }

    /// Stage 2: the snapshot from the leader (storage first, then the state machine), the
    /// committed entries, the new entries and hard state made durable (when raft says they must
    /// be), and only then the `persisted_messages` (votes, append responses).
    pub(crate) fn persist_ready(
        &mut self,
        sent: Sent,
        net: &mut impl Network,
    ) -> Result<Persisted, Fatal> {
        let mut rd = sent.rd;
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.storage
                .apply_snapshot(&snap)
                .map_err(Fatal::storage("apply snapshot"))?;
            self.install_snapshot(&snap, net)?;
        }
        self.apply_entries(rd.take_committed_entries(), net)?;
        let hs = rd.hs().cloned();
        self.storage
            .persist_ready(rd.entries(), hs.as_ref(), rd.must_sync())
            .map_err(Fatal::storage("append entries"))?;
        let persisted = rd.take_persisted_messages();
        let answered = !persisted.is_empty();
        net.send(persisted);
        Ok(Persisted { rd, answered })
    }

    /// Stage 3: answers ReadIndex requests, advances raft, and handles the light ready (the
    /// commit index, its messages and committed entries); stores a state snapshot when due.
    pub(crate) fn finish_ready(
        &mut self,
        persisted: Persisted,
        net: &mut impl Network,
    ) -> Result<(), Fatal> {
        let mut rd = persisted.rd;
        for rs in rd.take_read_states() {
            self.reads.answer(&rs.request_ctx, rs.index);
        }
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.storage
                .set_commit(commit)
                .map_err(Fatal::storage("persist commit"))?;
        }
        net.send(light.take_messages());
        self.apply_entries(light.take_committed_entries(), net)?;
        self.raw.advance_apply();
        self.maybe_snapshot()
    }

    /// The one place where role changes are handled, at the end of every turn. Losing
    /// leadership fails every pending proposal (the entries may still commit; clients retry with
    /// the same write id); any change of role or leader fails the pending reads, which were
    /// addressed to the old leader.
    pub(crate) fn observe_role(&mut self) -> Option<RoleChange> {
        let (to, leader) = (self.raw.raft.state, self.raw.raft.leader_id);
        if to == self.role && leader == self.leader {
            return None;
        }
        let change = RoleChange {
            from: self.role,
            to,
            leader,
            term: self.raw.raft.term,
        };
        if self.role == StateRole::Leader && to != StateRole::Leader {
            self.pending.fail_all(NodeError::LeadershipLost);
        }
        self.reads.fail_all(NodeError::LeadershipLost);
        self.recording.clear();
        self.recording_versions.clear();
        self.role = to;
        self.leader = leader;
        Some(change)
    }

    fn install_snapshot(&mut self, snap: &Snapshot, net: &mut impl Network) -> Result<(), Fatal> {
        let index = snap.get_metadata().index;
        let restored = restore::<S>(snap, self.known_version)?;
        let members = restored.members();
        *self.write_state()? = restored;
        for (id, addr) in members {
            net.ensure_peer(id, &addr);
        }
        self.applied = index;
        self.snapshot_index = index;
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, net: &mut impl Network) -> Result<(), Fatal> {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(&e)?,
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf(&e, net)?
                }
            }
            self.applied = e.index;
            #[cfg(test)]
            {
                use std::hash::{Hash, Hasher};
                let mut h = std::hash::DefaultHasher::new();
                (e.get_entry_type() as i32, &e.data[..]).hash(&mut h);
                self.applied_log.push((e.index, e.term, h.finish()));
            }
        }
        Ok(())
    }

    fn apply_normal(&mut self, e: &Entry) -> Result<(), Fatal> {
        let waiter = self.pending.take(e.index, e.term);
        if e.data.is_empty() {
            // A new leader's empty entry, or a conf change raft refused.
            self.write_state()?.skip(e.index);
            match waiter {
                Some(w @ Waiter::ConfChange(_)) => w.fail(NodeError::MembershipChangeInProgress),
                Some(w) => w.fail(NodeError::Dropped("raft replaced the entry".into())),
                None => {}
            }
            return Ok(());
        }
        let answer = self
            .write_state()?
            .apply(e.index, &e.data, self.known_version)
            .map_err(|source| Fatal::Entry {
                index: e.index,
                term: e.term,
                source,
            })?;
        match waiter {
            Some(Waiter::Command(tx)) => drop(tx.send(Ok(answer))),
            Some(w @ Waiter::ConfChange(_)) => w.fail(NodeError::MembershipChangeInProgress),
            None => {}
        }
        Ok(())
    }

    fn apply_conf(&mut self, e: &Entry, net: &mut impl Network) -> Result<(), Fatal> {
        let waiter = self.pending.take(e.index, e.term);
        let cc = decode_conf_change(e).map_err(|detail| Fatal::ConfChange {
            index: e.index,
            term: e.term,
            detail,
        })?;
        let cs = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(err) => {
                // Refused the same way on every replica: nothing changes.
                self.write_state()?.skip(e.index);
                if let Some(w) = waiter {
                    w.fail(NodeError::Dropped(format!("conf change refused: {err}")));
                }
                return Ok(());
            }
        };
        let context = ConfContext::decode(&cc.context);
        let mut change = MembershipChange {
            changes: Vec::new(),
            actor: context.actor.clone(),
            at_ms: context.at_ms,
        };
        for single in cc.get_changes() {
            let id = single.node_id;
            match single.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    if !context.address.is_empty() {
                        net.ensure_peer(id, &context.address);
                    }
                    change.changes.push(MemberChange::Added {
                        id,
                        address: context.address.clone(),
                    });
                }
                ConfChangeType::RemoveNode => {
                    if id != self.id {
                        net.remove_peer(id);
                    }
                    change.changes.push(MemberChange::Removed { id });
                }
            }
        }
        self.write_state()?.apply_membership(e.index, &change);
        // Persist the new configuration as a snapshot at this index (not as a bare conf state):
        // a restart must not re-apply this change on top of its own result, and a member added
        // now must be sendable a snapshot that includes it.
        let data = self.snapshot_data(e.index)?;
        self.storage
            .create_snapshot(e.index, &cs, data)
            .map_err(Fatal::storage("snapshot after membership change"))?;
        self.snapshot_index = e.index;
        tracing::info!(index = e.index, voters = ?cs.voters, learners = ?cs.learners, actor = %context.actor, "membership changed");
        if let Some(Waiter::ConfChange(tx)) = waiter {
            let _ = tx.send(Ok(()));
        } else if let Some(w) = waiter {
            w.fail(NodeError::LeadershipLost);
        }
        Ok(())
    }

    fn maybe_snapshot(&mut self) -> Result<(), Fatal> {
        if self.applied < self.snapshot_index + self.snapshot_every {
            return Ok(());
        }
        let data = self.snapshot_data(self.applied)?;
        let cs = self.raw.raft.prs().conf().to_conf_state();
        self.storage
            .create_snapshot(self.applied, &cs, data)
            .map_err(Fatal::storage("create snapshot"))?;
        tracing::debug!(index = self.applied, "state snapshot stored, log compacted");
        self.snapshot_index = self.applied;
        Ok(())
    }

    /// The serialized state at `index`. A failure is fatal: an empty snapshot would be stored,
    /// the log compacted behind it, and the state gone after a restart.
    fn snapshot_data(&self, index: u64) -> Result<Vec<u8>, Fatal> {
        let state = self.state.read().map_err(|_| Fatal::Poisoned)?;
        state
            .snapshot()
            .map_err(|source| Fatal::Snapshot { index, source })
    }

    /// Leader only: proposes the recording of every member that has acknowledged the log and
    /// is not recorded yet, one entry per member in flight.
    fn record_members(&mut self, net: &impl Network, now_ms: u64) -> Result<(), Fatal> {
        if !self.is_leader() {
            return Ok(());
        }
        let mut acked: Vec<u64> = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(_, pr)| pr.matched > 0)
            .map(|(id, _)| *id)
            .collect();
        acked.sort_unstable();
        let known = self.read_state()?.members();
        self.recording.retain(|id| !known.contains_key(id));
        for id in acked {
            if known.contains_key(&id) || self.recording.contains(&id) {
                continue;
            }
            let Some(address) = net.address_of(id) else {
                continue;
            };
            let entry = S::member_entry(id, &address, now_ms);
            if self.propose_internal(entry, Gate::base("SetMember")) {
                self.recording.insert(id);
            }
        }
        Ok(())
    }

    /// Proposes one of the leader's own entries (no one waits for its answer), through the
    /// gate like every other. Whether raft took it.
    fn propose_internal(&mut self, data: Vec<u8>, gate: Gate) -> bool {
        self.check_gate(gate).is_ok() && self.raw.propose(vec![], data).is_ok()
    }

    // ---- the version gate ----

    /// Voters and learners of the current configuration (both sides of a joint one).
    fn conf_members(&self) -> Vec<u64> {
        let conf = self.raw.raft.prs().conf();
        let mut ids: Vec<u64> = conf.voters().ids().iter().collect();
        ids.extend(conf.learners().iter().copied());
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Whether peer `id` was heard from within an election timeout.
    fn heard_lately(&self, id: u64) -> bool {
        self.heard
            .get(&id)
            .is_some_and(|t| self.ticks.saturating_sub(*t) <= self.reachable_ticks)
    }

    /// The latest report of every peer, and whether it is recent.
    fn reports(&self) -> BTreeMap<u64, (u32, bool)> {
        self.reported
            .iter()
            .map(|(id, v)| (*id, (*v, self.heard_lately(*id))))
            .collect()
    }

    /// Runs `f` over the gate's view of the members.
    fn with_view<T>(&self, f: impl FnOnce(&View<'_>) -> T) -> Result<T, Fatal> {
        let members = self.conf_members();
        let reported = self.reports();
        let recorded = self.read_state()?.member_versions();
        Ok(f(&View {
            me: self.id,
            own: self.known_version,
            members: &members,
            reported: &reported,
            recorded: &recorded,
            conf_pending: self.raw.raft.has_pending_conf(),
        }))
    }

    /// The version gate (`versions.rs`). Entries every binary knows pass without a look.
    fn check_gate(&self, gate: Gate) -> Result<(), NodeError> {
        if gate.needs <= versions::BASE_VERSION {
            return Ok(());
        }
        match self.with_view(|view| versions::check(gate, view)) {
            Ok(verdict) => verdict,
            // A poisoned state stops the node at its next Ready; refuse meanwhile.
            Err(_) => Err(NodeError::Stopped),
        }
    }

    /// Leader only: records, for every member heard from lately (and itself), the version it
    /// reports, when the record differs; one entry per member in flight, and only through the
    /// gate (the record is itself a newer kind: it waits until every member knows it).
    fn record_versions(&mut self, now_ms: u64) -> Result<(), Fatal> {
        if !self.is_leader() {
            return Ok(());
        }
        let recorded = self.read_state()?.member_versions();
        self.recording_versions
            .retain(|id, v| recorded.get(id) != Some(v));
        let reports = self.reports();
        for id in self.conf_members() {
            let version = if id == self.id {
                self.known_version
            } else {
                match reports.get(&id) {
                    Some((v, true)) => *v,
                    _ => continue,
                }
            };
            if recorded.get(&id) == Some(&version)
                || self.recording_versions.get(&id) == Some(&version)
            {
                continue;
            }
            let (data, needs) = S::member_version_entry(id, version, now_ms);
            let gate = Gate {
                needs,
                kind: "SetMemberVersion",
            };
            if self.check_gate(gate).is_err() {
                // Some member does not know the record yet: nobody is recorded.
                return Ok(());
            }
            if self.propose_internal(data, gate) {
                self.recording_versions.insert(id, version);
            }
        }
        Ok(())
    }

    fn read_state(&self) -> Result<RwLockReadGuard<'_, S>, Fatal> {
        self.state.read().map_err(|_| Fatal::Poisoned)
    }

    fn write_state(&self) -> Result<RwLockWriteGuard<'_, S>, Fatal> {
        self.state.write().map_err(|_| Fatal::Poisoned)
    }

    // ---- status ----

    /// This node's raft status, as published to the services.
    pub(crate) fn status(&self) -> NodeStatus {
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
        let conf = raft.prs().conf();
        let voters: Vec<u64> = conf.voters().ids().iter().collect();
        let learners: Vec<u64> = conf.learners().iter().copied().collect();
        let mut matched = BTreeMap::new();
        let mut active = BTreeMap::new();
        let versions = self
            .with_view(|view| {
                view.members
                    .iter()
                    .map(|id| (*id, view.known(*id)))
                    .collect::<BTreeMap<u64, Known>>()
            })
            .unwrap_or_default();
        if raft.state == StateRole::Leader {
            for (id, pr) in raft.prs().iter() {
                matched.insert(*id, pr.matched);
                // Heard from within an election timeout (raft's own `recent_active` is reset
                // every election timeout, so it reads false for a moment even for a live peer).
                let heard = self
                    .heard
                    .get(id)
                    .is_some_and(|t| self.ticks.saturating_sub(*t) <= self.reachable_ticks);
                active.insert(*id, heard || *id == self.id);
            }
        }
        NodeStatus {
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
            versions,
        }
    }

    /// The entries applied since the last call (see `applied_log`).
    #[cfg(test)]
    pub(crate) fn take_applied_log(&mut self) -> Vec<(u64, u64, u64)> {
        std::mem::take(&mut self.applied_log)
    }

    /// Pending proposals and reads (for tests).
    #[cfg(test)]
    pub(crate) fn pending_counts(&self) -> (usize, usize) {
        (self.pending.len(), self.reads.len())
    }
}

/// The state a snapshot holds. Empty data is the empty state machine only for the bootstrap
/// snapshot of clusters made by earlier versions; anywhere else it is refused, never read as
/// an empty state.
fn restore<S: Replicated>(snap: &Snapshot, known: u32) -> Result<S, Fatal> {
    let meta = snap.get_metadata();
    if snap.data.is_empty() {
        if meta.index == BOOTSTRAP_INDEX && meta.term == BOOTSTRAP_TERM {
            return Ok(S::default());
        }
        return Err(Fatal::Restore {
            index: meta.index,
            source: SnapshotError("the snapshot holds no state".into()),
        });
    }
    S::restore(&snap.data, known).map_err(|source| Fatal::Restore {
        index: meta.index,
        source,
    })
}

/// A committed conf change as a `ConfChangeV2` (a v1 change becomes one single change).
fn decode_conf_change(e: &Entry) -> Result<ConfChangeV2, String> {
    if e.get_entry_type() == EntryType::EntryConfChangeV2 {
        return ConfChangeV2::parse_from_bytes(&e.data).map_err(|err| err.to_string());
    }
    let c = ConfChange::parse_from_bytes(&e.data).map_err(|err| err.to_string())?;
    let mut single = ConfChangeSingle::default();
    single.set_change_type(c.get_change_type());
    single.node_id = c.node_id;
    let mut v2 = ConfChangeV2::default();
    v2.mut_changes().push(single);
    v2.context = c.context;
    Ok(v2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::bootstrap;
    use crate::raft::storage::SyncCounts;
    use crate::state::StateMachine;

    /// A network that keeps every message sent, with the sender's sync counts at that moment.
    struct Recorder {
        storage: SledStorage,
        sent: Vec<(Message, SyncCounts)>,
    }

    impl Recorder {
        fn new(storage: &SledStorage) -> Self {
            Self {
                storage: storage.clone(),
                sent: Vec::new(),
            }
        }

        fn sent_of(&self, kind: MessageType) -> Vec<&(Message, SyncCounts)> {
            self.sent
                .iter()
                .filter(|(m, _)| m.get_msg_type() == kind)
                .collect()
        }
    }

    impl Network for Recorder {
        fn send(&mut self, msgs: Vec<Message>) {
            for m in msgs {
                self.sent.push((m, self.storage.sync_counts()));
            }
        }
        fn ensure_peer(&mut self, _id: u64, _address: &str) {}
        fn remove_peer(&mut self, _id: u64) {}
        fn address_of(&self, _id: u64) -> Option<String> {
            None
        }
    }

    /// Node `id` of the voters 1 and 2, on real sled files in `dir`.
    fn core_on_disk(dir: &std::path::Path, id: u64) -> (Core<StateMachine>, SledStorage) {
        let storage = SledStorage::open(dir).unwrap();
        bootstrap::initialize::<StateMachine>(&storage, &[1, 2]).unwrap();
        let cfg = CoreConfig {
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            ..CoreConfig::new(id, 10, 2, crate::state::FORMAT_VERSION)
        };
        (Core::new(cfg, storage.clone()).unwrap(), storage)
    }

    fn message(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = from;
        m.to = to;
        m.term = term;
        m
    }

    /// A follower's append response vouches that the entries are on disk: it leaves only in the
    /// persist stage, after the `fdatasync` of sled's log that made them durable, and nothing
    /// leaves before.
    #[test]
    fn a_follower_acknowledges_entries_only_after_their_fdatasync() {
        let dir = tempfile::tempdir().unwrap();
        let (mut core, storage) = core_on_disk(dir.path(), 2);
        let mut append = message(MessageType::MsgAppend, 1, 2, 2);
        append.index = BOOTSTRAP_INDEX;
        append.log_term = BOOTSTRAP_TERM;
        append.commit = BOOTSTRAP_INDEX;
        append.set_entries(
            vec![Entry {
                index: BOOTSTRAP_INDEX + 1,
                term: 2,
                ..Default::default()
            }]
            .into(),
        );
        core.step(append, crate::state::FORMAT_VERSION);

        let mut net = Recorder::new(&storage);
        let before = storage.sync_counts();
        let sent = core.send_ready(&mut net, 0).unwrap().expect("a Ready");
        assert!(net.sent.is_empty(), "a follower sent before persisting");
        assert!(!sent.sent_before_sync());
        let persisted = core.persist_ready(sent, &mut net).unwrap();
        assert!(persisted.answered());
        let responses = net.sent_of(MessageType::MsgAppendResponse);
        assert_eq!(responses.len(), 1, "{:?}", net.sent);
        let (response, at) = responses[0];
        assert!(!response.reject);
        assert_eq!(response.index, BOOTSTRAP_INDEX + 1);
        assert!(
            at.log_fdatasyncs > before.log_fdatasyncs,
            "the append response left before sled's log was fdatasynced: {before:?} -> {at:?}"
        );
        core.finish_ready(persisted, &mut net).unwrap();
        assert_eq!(
            raft::Storage::last_index(&storage).unwrap(),
            BOOTSTRAP_INDEX + 1
        );
    }

    /// A candidate's vote request vouches for its own durable vote: it leaves after the
    /// `fdatasync` of the new term and vote. Once it leads, its first append leaves in the send
    /// stage, before its own sync of the entry (Raft allows that), and the stage says so: that
    /// is where the production node yields.
    #[test]
    fn a_candidate_asks_for_votes_only_after_its_vote_is_fdatasynced() {
        let dir = tempfile::tempdir().unwrap();
        let (mut core, storage) = core_on_disk(dir.path(), 1);
        let mut net = Recorder::new(&storage);
        for _ in 0..100 {
            core.tick();
            core.handle_ready(&mut net, 0).unwrap();
            if !net.sent_of(MessageType::MsgRequestPreVote).is_empty() {
                break;
            }
        }
        let pre_vote = net.sent_of(MessageType::MsgRequestPreVote)[0].0.clone();
        let mut granted = message(MessageType::MsgRequestPreVoteResponse, 2, 1, pre_vote.term);
        granted.reject = false;
        core.step(granted, crate::state::FORMAT_VERSION);

        net.sent.clear();
        let before = storage.sync_counts();
        let sent = core.send_ready(&mut net, 0).unwrap().expect("a Ready");
        assert!(net.sent.is_empty(), "a candidate sent before persisting");
        let persisted = core.persist_ready(sent, &mut net).unwrap();
        let votes = net.sent_of(MessageType::MsgRequestVote);
        assert_eq!(votes.len(), 1, "{:?}", net.sent);
        let (vote, at) = (votes[0].0.clone(), votes[0].1);
        assert_eq!(storage.hard_state().vote, 1);
        assert_eq!(storage.hard_state().term, vote.term);
        assert!(
            at.log_fdatasyncs > before.log_fdatasyncs,
            "the vote request left before the vote was fdatasynced: {before:?} -> {at:?}"
        );
        core.finish_ready(persisted, &mut net).unwrap();

        core.step(
            message(MessageType::MsgRequestVoteResponse, 2, 1, vote.term),
            crate::state::FORMAT_VERSION,
        );
        net.sent.clear();
        let before = storage.sync_counts();
        let sent = core.send_ready(&mut net, 0).unwrap().expect("a Ready");
        assert!(core.is_leader());
        let appends = net.sent_of(MessageType::MsgAppend);
        assert_eq!(appends.len(), 1, "{:?}", net.sent);
        assert_eq!(
            appends[0].1, before,
            "the leader's append waits for nothing"
        );
        assert!(
            sent.sent_before_sync(),
            "the leader's own entry is still to sync"
        );
        let persisted = core.persist_ready(sent, &mut net).unwrap();
        assert!(storage.sync_counts().log_fdatasyncs > before.log_fdatasyncs);
        core.finish_ready(persisted, &mut net).unwrap();
    }

    fn snapshot(index: u64, term: u64, data: Vec<u8>) -> Snapshot {
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap
    }

    /// An empty payload is the empty state only for an earlier version's bootstrap snapshot;
    /// anywhere else it is refused, never read as an empty state machine.
    #[test]
    fn an_empty_snapshot_is_refused_except_at_bootstrap() {
        let known = crate::state::FORMAT_VERSION;
        let err = restore::<StateMachine>(&snapshot(57, 3, vec![]), known).unwrap_err();
        assert!(matches!(err, Fatal::Restore { index: 57, .. }), "{err}");
        assert!(err.to_string().contains("holds no state"), "{err}");
        let empty =
            restore::<StateMachine>(&snapshot(BOOTSTRAP_INDEX, BOOTSTRAP_TERM, vec![]), known);
        assert_eq!(empty.unwrap(), StateMachine::default());
        let garbage = restore::<StateMachine>(&snapshot(57, 3, b"{}".to_vec()), known).unwrap_err();
        assert!(
            matches!(garbage, Fatal::Restore { index: 57, .. }),
            "{garbage}"
        );
    }
}
