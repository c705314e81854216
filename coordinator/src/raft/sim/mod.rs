//! A deterministic, in-process cluster: N real raft nodes ([`Core`] over raft-rs's `RawNode`,
//! the real [`StateMachine`] and the real sled storage, each in a temporary database) on a
//! network the test controls. No threads of ours, no wall clock: a run is a function of its
//! seed.
//!
//! The test drives everything, as toydb's cluster scripts do: start three nodes, elect a
//! leader, propose, partition the leader, tick, heal, and look at every replica. [`Sim`] offers:
//!
//! - time: [`Sim::tick`] advances every running node's raft clock by one tick, then delivers
//!   what is due; [`Sim::run`] / [`Sim::run_until`] tick repeatedly;
//! - the network (`net`): per-message delay and loss, cut links, partitions, heal;
//! - nodes: [`Sim::crash`], [`Sim::restart`] (from its storage), [`Sim::wipe`] (a blank
//!   storage), and [`Sim::start_blank`], which runs the real bootstrap rule
//!   ([`bootstrap::decide`]) against the peers this node can reach; [`Sim::set_version`] makes
//!   a node's next start a binary of another command format version (an old one, or an
//!   upgrade in place), which is what it applies and what its messages report;
//! - clients: [`Sim::propose`], [`Sim::conf_change`], [`Sim::read_index`], each answered through
//!   a [`Reply`] the test polls, and [`Sim::wait`] to tick until one is answered.
//!
//! Determinism: raft-rs draws each election timeout from a thread-local random generator; the
//! simulator overwrites every draw with one from the seeded generator, right after raft resets
//! its election timer (every node is handled after every tick and every delivery). Everything
//! else is ordered (ours) or hashed with a fixed hasher (raft-rs).
//!
//! A node whose core returns a [`Fatal`](super::error::Fatal) error stops (as the real process
//! exits), and its error is kept for the test to read ([`Sim::fatal`]).

mod commands;
mod net;
mod random;
mod scenarios;
mod upgrade;

use super::bootstrap::{self, Decision, PeerAnswer};
use super::core::{Core, CoreConfig, Network};
use super::storage::SledStorage;
use super::versions::Gate;
use super::NodeError;
use crate::state::{Proposal, Response, StateMachine, FORMAT_VERSION};
use net::Net;
use raft::prelude::{ConfChangeV2, Message, MessageType};
use raft::SnapshotStatus;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use tokio::sync::oneshot;

/// Simulated milliseconds per tick (the production default).
pub(crate) const TICK_MS: u64 = 100;
/// Base election timeout in ticks; raft draws each timeout from [base, 2 × base).
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 2;
/// Deliveries processed in one call before the simulator declares a livelock.
const MAX_DELIVERIES: usize = 200_000;
/// Trace lines kept for a failure report.
const TRACE: usize = 400;

/// How a simulated cluster behaves.
#[derive(Debug, Clone)]
pub(crate) struct SimConfig {
    pub nodes: u64,
    /// Applied entries between state-machine snapshots (production: 1,000).
    pub snapshot_every: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            snapshot_every: 1000,
        }
    }
}

/// One simulated node.
struct SimNode {
    storage: SledStorage,
    /// `None` while down (crashed, stopped by a fatal error, or blank and not started).
    core: Option<Core<StateMachine>>,
    /// The state of the last run, kept readable after a crash.
    state: Arc<RwLock<StateMachine>>,
    fatal: Option<String>,
    /// Blank and waiting to bootstrap: it answers `ClusterInfo` as blank.
    waiting: bool,
    /// The command format version its binary knows (from its next start).
    version: u32,
}

/// An answer the test waits for.
pub(crate) struct Reply<T> {
    rx: oneshot::Receiver<Result<T, NodeError>>,
}

impl<T> Reply<T> {
    /// The answer, if there is one yet. A node that stopped without answering reads `Stopped`.
    pub(crate) fn try_take(&mut self) -> Option<Result<T, NodeError>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(NodeError::Stopped)),
        }
    }
}

/// The simulated cluster.
pub(crate) struct Sim {
    rng: StdRng,
    cfg: SimConfig,
    nodes: BTreeMap<u64, SimNode>,
    net: Net,
    /// Ticks since the start.
    now: u64,
    trace: VecDeque<String>,
    /// Deliveries are held (see [`Sim::pause`]).
    paused: bool,
}

/// The network as one node's core sees it during a Ready.
struct Outbox<'a> {
    net: &'a mut Net,
    rng: &'a mut StdRng,
    now: u64,
}

impl Network for Outbox<'_> {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            self.net.send(self.rng, self.now, m);
        }
    }

    fn ensure_peer(&mut self, _id: u64, _address: &str) {}

    fn remove_peer(&mut self, _id: u64) {}

    fn address_of(&self, id: u64) -> Option<String> {
        Some(address(id))
    }
}

/// The peer address of simulated node `id`.
pub(crate) fn address(id: u64) -> String {
    format!("n{id}:7400")
}

impl Sim {
    /// A bootstrapped cluster of `cfg.nodes` nodes (ids 1..=n), all running, no leader yet.
    pub(crate) fn new(cfg: SimConfig, seed: u64) -> Self {
        let mut sim = Self {
            rng: StdRng::seed_from_u64(seed),
            cfg: cfg.clone(),
            nodes: BTreeMap::new(),
            net: Net::default(),
            now: 0,
            trace: VecDeque::new(),
            paused: false,
        };
        let voters: Vec<u64> = (1..=cfg.nodes).collect();
        for id in voters.clone() {
            let storage = SledStorage::open_temporary().expect("a temporary sled database");
            bootstrap::initialize::<StateMachine>(&storage, &voters).expect("bootstrap");
            sim.nodes.insert(
                id,
                SimNode {
                    storage,
                    core: None,
                    state: Arc::default(),
                    fatal: None,
                    waiting: false,
                    version: FORMAT_VERSION,
                },
            );
            sim.boot(id);
        }
        sim
    }

    /// Three nodes with the production snapshot interval.
    pub(crate) fn three(seed: u64) -> Self {
        Self::new(SimConfig::default(), seed)
    }

    pub(crate) fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Simulated time, Unix-like ms (for proposals' `at_ms`).
    pub(crate) fn now_ms(&self) -> u64 {
        1_700_000_000_000 + self.now * TICK_MS
    }

    pub(crate) fn now(&self) -> u64 {
        self.now
    }

    /// Randomness from the run's seed, for the test's own choices.
    pub(crate) fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Loss and delay for messages sent from now on.
    pub(crate) fn set_network(&mut self, loss: f64, max_delay: u64) {
        self.net.loss = loss;
        self.net.max_delay = max_delay;
    }

    pub(crate) fn log(&mut self, line: String) {
        if self.trace.len() >= TRACE {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("[t{}] {line}", self.now));
    }

    /// The last trace lines, for a failure report.
    pub(crate) fn trace(&self) -> String {
        self.trace.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    // ---- nodes ----

    /// (Re)starts node `id` from its storage. A node whose storage it cannot start from (a
    /// snapshot it cannot restore) stays down with the error, as the real process exits.
    fn boot(&mut self, id: u64) {
        let version = self.nodes[&id].version;
        let cfg = CoreConfig {
            min_election_ticks: ELECTION_TICKS,
            max_election_ticks: 2 * ELECTION_TICKS,
            snapshot_every: self.cfg.snapshot_every,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            ..CoreConfig::new(id, ELECTION_TICKS, HEARTBEAT_TICKS, version)
        };
        let storage = self.nodes[&id].storage.clone();
        let mut core = match Core::new(cfg, storage) {
            Ok(core) => core,
            Err(e) => {
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.core = None;
                    node.fatal = Some(e.to_string());
                    node.waiting = false;
                }
                self.log(format!("node {id} cannot start: {e}"));
                return;
            }
        };
        let rng = &mut self.rng;
        core.redraw_election_timeout(|min, max| rng.gen_range(min..max));
        let node = self.nodes.get_mut(&id).expect("known node");
        node.state = core.state();
        node.core = Some(core);
        node.fatal = None;
        node.waiting = false;
        self.log(format!(
            "node {id} started (command format version {version})"
        ));
    }

    /// Adds node `id`, blank, running a binary that knows command format versions up to
    /// `version`, started with `initial_cluster_state = "existing"`: it waits to be sent a
    /// snapshot by a leader that adds it.
    pub(crate) fn add_blank(&mut self, id: u64, version: u32) {
        let storage = SledStorage::open_temporary().expect("a temporary sled database");
        self.nodes.insert(
            id,
            SimNode {
                storage,
                core: None,
                state: Arc::default(),
                fatal: None,
                waiting: false,
                version,
            },
        );
        self.boot(id);
    }

    /// Node `id` runs a binary that knows command format versions up to `version` from its
    /// next start ([`Sim::restart`]): an old binary, or the same node upgraded in place.
    pub(crate) fn set_version(&mut self, id: u64, version: u32) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.version = version;
        }
    }

    pub(crate) fn is_up(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.core.is_some())
    }

    /// Stops node `id` at once, as `kill -9` would: what it wrote stays in its storage.
    pub(crate) fn crash(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.core = None;
            n.waiting = false;
        }
        self.log(format!("node {id} crashed"));
    }

    /// Restarts a crashed node from its storage.
    pub(crate) fn restart(&mut self, id: u64) {
        self.boot(id);
        self.ready(id);
    }

    /// Crashes node `id` and gives it an empty storage, as a disk lost in a power failure.
    pub(crate) fn wipe(&mut self, id: u64) {
        self.crash(id);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.storage = SledStorage::open_temporary().expect("a temporary sled database");
            n.state = Arc::default();
        }
        self.log(format!("node {id} wiped"));
    }

    /// Starts blank node `id` with `initial_cluster_state = "new"`: it asks the peers it can
    /// reach, and bootstraps only if the real rule says so. Returns the decision.
    pub(crate) fn start_blank(&mut self, id: u64) -> Decision {
        let voters = self.ids();
        let answers: BTreeMap<u64, Result<PeerAnswer, String>> = voters
            .iter()
            .filter(|p| **p != id)
            .map(|p| (*p, self.cluster_info(id, *p)))
            .collect();
        let decision = bootstrap::decide(id, &voters, &answers);
        self.log(format!("node {id} asks to bootstrap: {decision:?}"));
        if let Some(n) = self.nodes.get_mut(&id) {
            n.waiting = matches!(decision, Decision::Wait(_));
        }
        if decision == Decision::Bootstrap {
            let storage = self.nodes[&id].storage.clone();
            bootstrap::initialize::<StateMachine>(&storage, &voters).expect("bootstrap");
            self.boot(id);
        }
        decision
    }

    /// `ClusterInfo` of `peer`, asked by `from`.
    fn cluster_info(&self, from: u64, peer: u64) -> Result<PeerAnswer, String> {
        if !self.net.connected(from, peer) {
            return Err("partitioned".into());
        }
        let node = &self.nodes[&peer];
        let Some(core) = &node.core else {
            if node.waiting {
                return Ok(PeerAnswer {
                    cluster_id: 0,
                    commit_index: 0,
                    members: Vec::new(),
                    format_version: node.version,
                });
            }
            return Err("down".into());
        };
        let members = read(&node.state).members().keys().copied().collect();
        Ok(PeerAnswer {
            cluster_id: node.storage.cluster_id().unwrap_or(0),
            commit_index: core.commit(),
            members,
            format_version: node.version,
        })
    }

    /// Poisons node `id`'s state lock, as a thread that panicked while holding it would.
    pub(crate) fn poison_state(&mut self, id: u64) {
        let state = self.nodes[&id].state.clone();
        let _ = std::thread::spawn(move || {
            let _held = state.write();
            panic!("simulated panic while holding the state lock");
        })
        .join();
        self.log(format!("node {id}: state lock poisoned"));
    }

    /// The fatal error that stopped node `id`, if one did.
    pub(crate) fn fatal(&self, id: u64) -> Option<&str> {
        self.nodes.get(&id).and_then(|n| n.fatal.as_deref())
    }

    /// Node `id`'s state machine (the last one it ran, when it is down).
    pub(crate) fn state(&self, id: u64) -> std::sync::RwLockReadGuard<'_, StateMachine> {
        read(&self.nodes[&id].state)
    }

    pub(crate) fn applied(&self, id: u64) -> u64 {
        self.state(id).applied_index()
    }

    /// The node that leads, if exactly one running node of the highest term does.
    pub(crate) fn leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for (id, n) in &self.nodes {
            let Some(core) = &n.core else { continue };
            if core.is_leader() && best.is_none_or(|(_, term)| core.term() > term) {
                best = Some((*id, core.term()));
            }
        }
        best.map(|(id, _)| id)
    }

    /// Whether `id` thinks it leads.
    pub(crate) fn thinks_it_leads(&self, id: u64) -> bool {
        self.core(id).is_some_and(|c| c.is_leader())
    }

    pub(crate) fn commit(&self, id: u64) -> u64 {
        self.core(id).map(|c| c.commit()).unwrap_or(0)
    }

    /// The entries node `id` applied since the last call: (index, term, hash).
    pub(crate) fn take_applied_log(&mut self, id: u64) -> Vec<(u64, u64, u64)> {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.core.as_mut())
            .map(|c| c.take_applied_log())
            .unwrap_or_default()
    }

    /// Pending proposals and reads at `id`.
    pub(crate) fn pending(&self, id: u64) -> (usize, usize) {
        self.core(id).map(|c| c.pending_counts()).unwrap_or((0, 0))
    }

    fn core(&self, id: u64) -> Option<&Core<StateMachine>> {
        self.nodes.get(&id).and_then(|n| n.core.as_ref())
    }

    // ---- the network ----

    pub(crate) fn partition(&mut self, side: &[u64]) {
        let all = self.ids();
        self.net.partition(side, &all);
        self.log(format!("partition {side:?} from the rest"));
    }

    /// Loses every message from `from` to `to` from now on.
    pub(crate) fn cut(&mut self, from: u64, to: u64) {
        self.net.cut(from, to);
        self.log(format!("cut {from} -> {to}"));
    }

    pub(crate) fn heal(&mut self) {
        self.net.heal();
        self.log("heal".into());
    }

    /// Drops every message in flight.
    pub(crate) fn drop_in_flight(&mut self) {
        self.log(format!("drop {} messages in flight", self.net.in_flight()));
        self.net.clear();
    }

    /// (sent, lost) messages so far.
    pub(crate) fn message_counts(&self) -> (u64, u64) {
        (self.net.sent, self.net.lost)
    }

    // ---- time ----

    /// One tick on every running node (except those in `skip`), then deliveries.
    pub(crate) fn tick_except(&mut self, skip: &[u64]) {
        self.now += 1;
        for id in self.ids() {
            if skip.contains(&id) {
                continue;
            }
            if let Some(core) = self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) {
                core.tick();
                self.ready(id);
            }
        }
        self.deliver();
    }

    pub(crate) fn tick(&mut self) {
        self.tick_except(&[]);
    }

    /// `n` ticks.
    pub(crate) fn run(&mut self, n: u64) {
        for _ in 0..n {
            self.tick();
        }
    }

    /// Ticks until `done` holds, at most `max` ticks. Returns whether it held.
    pub(crate) fn run_until(&mut self, max: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        for _ in 0..max {
            if done(self) {
                return true;
            }
            self.tick();
        }
        done(self)
    }

    /// Ticks until a leader has committed and applied an entry of its term, at most 200 ticks.
    pub(crate) fn elect(&mut self) -> u64 {
        let ok = self.run_until(200, |s| {
            s.leader().is_some_and(|l| {
                s.core(l)
                    .is_some_and(|c| c.has_committed_in_term() && c.applied() >= c.commit())
            })
        });
        let leader = self.leader().filter(|_| ok);
        leader.unwrap_or_else(|| panic!("no leader within 200 ticks\n{}", self.trace()))
    }

    /// Delivers every due message (and what their handling sends with no delay).
    pub(crate) fn deliver(&mut self) {
        if self.paused {
            return;
        }
        for _ in 0..MAX_DELIVERIES {
            let reports = std::mem::take(&mut self.net.reports);
            for r in reports {
                if let Some(core) = self.nodes.get_mut(&r.from).and_then(|n| n.core.as_mut()) {
                    core.report_snapshot(r.to, r.status);
                }
            }
            let Some(env) = self.net.next_due(self.now) else {
                if self.net.reports.is_empty() {
                    return;
                }
                continue;
            };
            let snapshot = env.msg.get_msg_type() == MessageType::MsgSnapshot;
            let version = self.version_of(env.from);
            let Some(core) = self.nodes.get_mut(&env.to).and_then(|n| n.core.as_mut()) else {
                if snapshot {
                    self.report(env.from, env.to, SnapshotStatus::Failure);
                }
                continue;
            };
            core.step(env.msg, version);
            if snapshot {
                self.report(env.from, env.to, SnapshotStatus::Finish);
            }
            self.ready(env.to);
        }
        panic!(
            "more than {MAX_DELIVERIES} deliveries at tick {}: a livelock\n{}",
            self.now,
            self.trace()
        );
    }

    fn report(&mut self, from: u64, to: u64, status: SnapshotStatus) {
        self.net
            .reports
            .push(net::SnapshotReport { from, to, status });
    }

    /// Handles node `id`'s Ready; a fatal error stops it.
    fn ready(&mut self, id: u64) {
        let now_ms = self.now_ms();
        let now = self.now;
        let result = {
            let Some(core) = self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) else {
                return;
            };
            let mut out = Outbox {
                net: &mut self.net,
                rng: &mut self.rng,
                now,
            };
            let result = core.handle_ready(&mut out, now_ms);
            let rng = &mut self.rng;
            core.redraw_election_timeout(|min, max| rng.gen_range(min..max));
            result
        };
        match result {
            Ok(Some(change)) => self.log(format!(
                "node {id}: {:?} -> {:?} (leader {}, term {})",
                change.from, change.to, change.leader, change.term
            )),
            Ok(None) => {}
            Err(fatal) => {
                let text = fatal.to_string();
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.core = None;
                    node.fatal = Some(text.clone());
                }
                self.log(format!("node {id} stopped: {text}"));
            }
        }
    }

    /// Holds every message in flight until [`Sim::resume`] (or [`Sim::deliver_matching`]).
    pub(crate) fn pause(&mut self) {
        self.paused = true;
    }

    pub(crate) fn resume(&mut self) {
        self.paused = false;
        self.deliver();
    }

    /// While paused: delivers the due messages `pick` chooses (and, recursively, those their
    /// handling sends that it also chooses); the others stay in flight.
    pub(crate) fn deliver_matching(&mut self, pick: impl Fn(&Message) -> bool) {
        for _ in 0..MAX_DELIVERIES {
            let Some(env) = self.net.next_due_matching(self.now, &pick) else {
                return;
            };
            let version = self.version_of(env.from);
            if let Some(core) = self.nodes.get_mut(&env.to).and_then(|n| n.core.as_mut()) {
                core.step(env.msg, version);
                self.ready(env.to);
            }
        }
    }

    // ---- clients ----

    /// Proposes raw entry bytes at node `id`, as if every member knew them (past the version
    /// gate: an entry that gets into the log anyway, by a bug or an old leader's mistake).
    pub(crate) fn propose_bytes(&mut self, id: u64, data: Vec<u8>) -> Reply<Response> {
        self.propose_gated(id, data, Gate::base("raw"))
    }

    /// Proposes `p` at node `id`, through the version gate like the services do.
    pub(crate) fn propose(&mut self, id: u64, p: &Proposal) -> Reply<Response> {
        let gate = Gate {
            needs: p.version,
            kind: p.command.kind(),
        };
        self.propose_gated(id, p.encode(), gate)
    }

    fn propose_gated(&mut self, id: u64, data: Vec<u8>, gate: Gate) -> Reply<Response> {
        let (tx, rx) = oneshot::channel();
        match self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) {
            Some(core) => core.propose(data, gate, tx),
            None => drop(tx),
        }
        self.ready(id);
        self.deliver();
        Reply { rx }
    }

    /// The command format version node `id`'s messages report.
    fn version_of(&self, id: u64) -> u32 {
        self.nodes.get(&id).map(|n| n.version).unwrap_or(0)
    }

    /// What node `id` knows of every member's command format version.
    pub(crate) fn versions(&self, id: u64) -> BTreeMap<u64, super::Known> {
        self.core(id)
            .map(|c| c.status().versions)
            .unwrap_or_default()
    }

    pub(crate) fn conf_change(&mut self, id: u64, cc: ConfChangeV2) -> Reply<()> {
        let (tx, rx) = oneshot::channel();
        match self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) {
            Some(core) => core.propose_conf_change(cc, tx),
            None => drop(tx),
        }
        self.ready(id);
        self.deliver();
        Reply { rx }
    }

    pub(crate) fn read_index(&mut self, id: u64) -> Reply<u64> {
        let (tx, rx) = oneshot::channel();
        match self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) {
            Some(core) => core.read_index(tx),
            None => drop(tx),
        }
        self.ready(id);
        self.deliver();
        Reply { rx }
    }

    /// Asks leader `from` to hand leadership to `to`.
    pub(crate) fn transfer_leader(&mut self, from: u64, to: u64) {
        if let Some(core) = self.nodes.get_mut(&from).and_then(|n| n.core.as_mut()) {
            core.transfer_leader(to);
        }
        self.ready(from);
        self.deliver();
    }

    /// Ticks until `reply` is answered, at most `max` ticks.
    pub(crate) fn wait<T>(&mut self, reply: &mut Reply<T>, max: u64) -> Result<T, NodeError> {
        for _ in 0..=max {
            if let Some(r) = reply.try_take() {
                return r;
            }
            self.tick();
        }
        panic!("no answer within {max} ticks\n{}", self.trace())
    }
}

fn read(state: &RwLock<StateMachine>) -> std::sync::RwLockReadGuard<'_, StateMachine> {
    state.read().unwrap_or_else(|p| p.into_inner())
}
