//! The raft node: storage, transport, proposals and the Ready loop, behind one handle.
//!
//! Start-up is in three steps, so that the binary can serve `ClusterInfo` to its peers while a
//! blank node waits to bootstrap: [`RaftNode::open_storage`], then for a blank node
//! [`bootstrap::bootstrap_new`] (see `bootstrap`), then [`RaftNode::start`], which restores the
//! state machine and spawns the thread that owns raft-rs's `RawNode`. The services hold a
//! [`RaftNode`] to propose writes, change membership, wait for linearizable reads (ReadIndex),
//! and read the in-memory state machine.
//!
//! Files, one job each:
//! - `core`: the Ready loop over `RawNode`, storage and the state machine; shared by the
//!   production node and the deterministic simulator (`sim`, tests only);
//! - `replicated`: the [`Replicated`] trait, all the core knows about the state machine;
//! - `node`: the production loop (a thread with its own runtime, an inbox, a ticker) around
//!   the core;
//! - `proposals`, `reads`: pending proposals and ReadIndex requests;
//! - `conf_context`: what a membership change carries (address, actor, time);
//! - `storage`, `sled_files`: sled, and the `fdatasync`s that make its writes durable;
//! - `transport`, `peer_service`: the peer gRPC streams both ways, and snapshots in chunks;
//! - `versions`: the version gate, which every proposal passes (DESIGN §8, rolling upgrade);
//! - `bootstrap`: how a blank node starts; `progress`: the loop's heartbeat; `status`, `error`;
//! - `stats`: commit latency and failed requests, measured at this handle, for the metrics.
//!
//! Invariants:
//! - only the node thread mutates the state machine, and only by applying committed entries;
//! - a proposal is answered only when its own entry (same index and term) is applied;
//! - a read is served only after the node has applied up to the leader's commit index at the
//!   time of the read (ReadIndex, `ReadOnlyOption::Safe`).

pub mod bootstrap;
mod conf_context;
mod core;
mod error;
mod logger;
mod node;
mod peer_service;
mod progress;
mod proposals;
mod reads;
mod replicated;
#[cfg(test)]
pub(crate) mod sim;
mod sled_files;
mod stats;
mod status;
mod storage;
mod transport;
mod versions;

pub use conf_context::{membership_change, ConfContext};
pub use error::{Fatal, NodeError};
pub use peer_service::{BlankPeerService, PeerService};
pub use progress::Progress;
pub use replicated::{EntryError, MemberChange, MembershipChange, Replicated, SnapshotError};
pub use stats::{error_kind, ErrorLabels, KindLabels, NodeStats, COMMIT_LATENCY_BUCKETS};
pub use status::{NodeStatus, Role};
pub use storage::{SledStorage, StorageError, SyncCounts, SyncError};
pub use versions::Known;

use crate::state::{Proposal, Response, StateMachine, FORMAT_VERSION};
use core::{Core, CoreConfig};
use hotdeploy_common::config::CoordinatorConfig;
use hotdeploy_common::proto::raft_peer_server::RaftPeerServer;
use node::{Msg, Node, Outputs};
use raft::prelude::ConfChangeV2;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// The node task's inbox size. Proposals beyond it wait (backpressure on clients).
const INBOX: usize = 4096;

/// A handle on the local raft node. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    id: u64,
    tx: mpsc::Sender<Msg>,
    status: watch::Receiver<NodeStatus>,
    applied: watch::Receiver<u64>,
    state: Arc<RwLock<StateMachine>>,
    transport: transport::Transport,
    progress: Progress,
    stats: NodeStats,
    cluster_id: Arc<AtomicU64>,
    tls: hotdeploy_common::tls::ClientTls,
}

/// The peer gRPC service to mount next to the public API.
pub type PeerServer = RaftPeerServer<peer_service::PeerService>;

impl RaftNode {
    /// Opens (or creates) the raft storage under `data_dir`.
    pub fn open_storage(cfg: &CoordinatorConfig) -> anyhow::Result<SledStorage> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create data_dir {}: {e}", cfg.data_dir.display())
        })?;
        SledStorage::open(&cfg.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot open storage in {}: {e}", cfg.data_dir.display()))
    }

    /// Restores the state machine from `storage` and spawns the node thread. A blank storage
    /// waits to be sent a snapshot by a leader (`initial_cluster_state = "existing"`); a blank
    /// node that is to found a cluster must have been through [`bootstrap::bootstrap_new`].
    /// Returns the handle and the peer service to serve.
    pub async fn start(
        cfg: &CoordinatorConfig,
        storage: SledStorage,
        client_tls: hotdeploy_common::tls::ClientTls,
    ) -> anyhow::Result<(Self, PeerServer)> {
        if storage.is_blank() {
            tracing::info!("blank node waiting to be added with `hotdeployctl members add`");
        }
        let cluster_id = Arc::new(AtomicU64::new(storage.cluster_id().unwrap_or(0)));
        let (tx, rx) = mpsc::channel(INBOX);
        let pinned: HashMap<u64, String> = cfg.peer_map().into_iter().collect();
        // The node's thread and runtime come first: the transport's outbound peer streams run on
        // that runtime (see `node`).
        let (raft_rt, start_node) = node::start_raft_thread(cfg.id)?;
        let transport = transport::Transport::new(
            transport::LocalNode {
                id: cfg.id,
                address: cfg.listen.clone(),
                format_version: FORMAT_VERSION,
            },
            cluster_id.clone(),
            client_tls.clone(),
            pinned,
            tx.clone(),
            raft_rt,
        );
        let core_cfg = CoreConfig::new(
            cfg.id,
            cfg.raft.election_ticks,
            cfg.raft.heartbeat_ticks,
            FORMAT_VERSION,
        );
        let core = Core::<StateMachine>::new(core_cfg, storage.clone())?;
        let state = core.state();
        // Both watches start where the restored node is: the applied index is the snapshot's,
        // not 0, so a read barrier does not wait for entries that are already applied.
        let (status_tx, status_rx) = watch::channel(core.status());
        let (applied_tx, applied_rx) = watch::channel(core.applied());
        let progress = Progress::new();
        let members = state
            .read()
            .map(|s| s.members().clone())
            .unwrap_or_default();
        for (id, addr) in members {
            transport.ensure_peer(id, &addr);
        }
        let node = Node::new(
            core,
            transport.clone(),
            rx,
            Duration::from_millis(cfg.raft.tick_ms),
            Outputs {
                status: status_tx,
                applied: applied_tx,
                progress: progress.clone(),
            },
        );
        start_node
            .send(node)
            .map_err(|_| anyhow::anyhow!("the raft thread ended before its node started"))?;
        let peer = peer_service::PeerService {
            cluster_id: cluster_id.clone(),
            storage,
            node: tx.clone(),
            transport: transport.clone(),
            status: status_rx.clone(),
            state: state.clone(),
        };
        let server = RaftPeerServer::new(peer)
            .max_decoding_message_size(transport::MAX_FRAME_BYTES)
            .max_encoding_message_size(transport::MAX_FRAME_BYTES);
        let handle = Self {
            id: cfg.id,
            tx,
            status: status_rx,
            applied: applied_rx,
            state,
            transport,
            progress,
            stats: NodeStats::default(),
            cluster_id,
            tls: client_tls,
        };
        Ok((handle, server))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Proposes a command and waits until it is applied (or fails), up to `timeout`. The
    /// leader's version gate refuses a command some member does not know
    /// ([`NodeError::MemberTooOld`], [`NodeError::VersionUnknown`]).
    pub async fn propose(&self, p: Proposal, timeout: Duration) -> Result<Response, NodeError> {
        let started = std::time::Instant::now();
        let (reply, rx) = oneshot::channel();
        let kind = p.command.kind();
        let gate = versions::Gate {
            needs: p.version,
            kind,
        };
        let data = p.encode();
        let result = self
            .call(Msg::Propose { data, gate, reply }, rx, timeout)
            .await;
        self.stats.proposal(kind, started, &result);
        result
    }

    /// The cluster id this node belongs to (0 while blank).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Asks the coordinator at `address` about itself (`RaftPeer.ClusterInfo`, with this
    /// node's own client certificate): its cluster, and the command format version it knows.
    pub async fn ask_peer(&self, address: &str) -> Result<bootstrap::PeerAnswer, String> {
        bootstrap::ask(self.id, address, &self.tls).await
    }

    /// Proposes a membership change and waits until it is applied.
    pub async fn conf_change(&self, cc: ConfChangeV2, timeout: Duration) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        let result = self.call(Msg::ConfChange { cc, reply }, rx, timeout).await;
        if let Err(e) = &result {
            self.stats.failed("conf_change", e);
        }
        result
    }

    /// Waits until this node has applied everything committed at the time of the call, as
    /// confirmed by the leader (ReadIndex). Reads of the state machine after it are
    /// linearizable.
    pub async fn read_barrier(&self, timeout: Duration) -> Result<(), NodeError> {
        let result = self.wait_read_index(timeout).await;
        if let Err(e) = &result {
            self.stats.failed("read", e);
        }
        result
    }

    async fn wait_read_index(&self, timeout: Duration) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (reply, rx) = oneshot::channel();
        let index = self.call(Msg::ReadIndex { reply }, rx, timeout).await?;
        let mut applied = self.applied.clone();
        let waited = tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= index)).await;
        match waited.map(|r| r.map(|_| ())) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => Err(NodeError::Timeout(timeout)),
        }
    }

    async fn call<T>(
        &self,
        msg: Msg,
        rx: oneshot::Receiver<Result<T, NodeError>>,
        timeout: Duration,
    ) -> Result<T, NodeError> {
        let fut = async {
            self.tx.send(msg).await.map_err(|_| NodeError::Stopped)?;
            rx.await.map_err(|_| NodeError::Stopped)?
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| NodeError::Timeout(timeout))?
    }

    /// The latest published raft status.
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// Whether this node is the leader, read without copying the status (per heartbeat).
    pub fn is_leader(&self) -> bool {
        self.status.borrow().is_leader()
    }

    /// The leader's id as this node knows it (0: unknown), read without copying the status.
    pub fn leader_id(&self) -> u64 {
        self.status.borrow().leader
    }

    /// Notified on every status change (role, leader, term, commit, membership).
    pub fn subscribe_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// Notified whenever entries are applied; the value is the applied index.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// The raft loop's heartbeat, for health reporting.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Commit latency and failed requests of this node's clients, for the metrics.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// The in-memory state machine. Do not hold the guard across an await.
    pub fn state(&self) -> RwLockReadGuard<'_, StateMachine> {
        match self.state.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The client-facing address of a member, when known.
    pub fn address_of(&self, id: u64) -> Option<String> {
        self.transport
            .advertised(id)
            .or_else(|| self.state().members().get(&id).cloned())
    }

    /// Every member with its address (empty when unknown).
    pub fn members(&self) -> BTreeMap<u64, String> {
        let st = self.status();
        st.voters
            .iter()
            .chain(st.learners.iter())
            .map(|id| (*id, self.address_of(*id).unwrap_or_default()))
            .collect()
    }
}

/// A one-node cluster in a temp dir, for in-process tests of the services.
#[cfg(test)]
pub(crate) mod test_node {
    use super::*;
    use std::path::Path;

    /// The config of node 1, alone, plaintext, listening on `listen`.
    pub(crate) fn config(dir: &Path, listen: &str) -> CoordinatorConfig {
        let text = format!(
            "id = 1\nlisten = \"{listen}\"\ndata_dir = \"{}\"\n[peers]\n1 = \"{listen}\"\n\
             [tls]\ninsecure = true\n[raft]\ntick_ms = 20\n",
            dir.join("data").display()
        );
        CoordinatorConfig::from_toml_str(&text, Path::new("test.toml")).expect("test config")
    }

    /// Bootstraps (if blank) and starts node 1 alone, and waits until it leads.
    pub(crate) async fn start(cfg: &CoordinatorConfig) -> RaftNode {
        start_with_peer(cfg).await.0
    }

    /// [`start`], also returning the peer service to serve.
    pub(crate) async fn start_with_peer(cfg: &CoordinatorConfig) -> (RaftNode, PeerServer) {
        let tls = hotdeploy_common::tls::ClientTls::load(&cfg.tls).expect("plaintext client");
        let storage = RaftNode::open_storage(cfg).expect("storage");
        if storage.is_blank() {
            bootstrap::initialize::<StateMachine>(&storage, &[cfg.id]).expect("bootstrap");
        }
        let (node, peer) = RaftNode::start(cfg, storage, tls).await.expect("start");
        let mut status = node.subscribe_status();
        tokio::time::timeout(
            Duration::from_secs(20),
            status.wait_for(|s| s.is_leader() && s.applied >= s.commit),
        )
        .await
        .expect("a single node leads within 20 s")
        .expect("status");
        (node, peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `applied` watch starts where the restored node is (its snapshot), not at 0: a read
    /// barrier must not wait for entries that are already applied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_applied_watch_starts_at_the_snapshot_index() {
        let dir = tempfile::tempdir().unwrap();
        // Three voters, of which only this node runs: it never leads, so it applies nothing new.
        let text = format!(
            "id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"{}\"\n[peers]\n1 = \"127.0.0.1:1\"\n\
             2 = \"127.0.0.1:2\"\n3 = \"127.0.0.1:3\"\n[tls]\ninsecure = true\n",
            dir.path().join("data").display()
        );
        let cfg = CoordinatorConfig::from_toml_str(&text, std::path::Path::new("t.toml")).unwrap();
        let storage = RaftNode::open_storage(&cfg).unwrap();
        bootstrap::initialize::<StateMachine>(&storage, &[1, 2, 3]).unwrap();
        // A log of 40 entries, snapshotted at 41 (as after 40 applied commands).
        let mut entries = Vec::new();
        for index in 2..=41 {
            entries.push(raft::prelude::Entry {
                index,
                term: 2,
                ..Default::default()
            });
        }
        let mut hs = storage.hard_state();
        hs.term = 2;
        hs.commit = 41;
        storage.append_and_persist(&entries, Some(&hs)).unwrap();
        let mut sm = StateMachine::new();
        sm.skip(41);
        let cs = storage.conf_state();
        storage
            .create_snapshot(41, &cs, sm.snapshot().unwrap())
            .unwrap();
        let tls = hotdeploy_common::tls::ClientTls::load(&cfg.tls).unwrap();
        let (node, _peer) = RaftNode::start(&cfg, storage, tls).await.unwrap();
        assert_eq!(*node.subscribe_applied().borrow(), 41);
        assert_eq!(node.status().applied, 41);
        assert_eq!(node.state().applied_index(), 41);
    }
}
