//! The raft node: storage, transport, proposals and the Ready loop, behind one handle.
//!
//! [`RaftNode::start`] opens sled storage, decides how a blank node starts (see `bootstrap`),
//! restores the state machine, and spawns the task that owns raft-rs's `RawNode` (`node`). The
//! services hold a [`RaftNode`] to propose writes, change membership, wait for linearizable
//! reads (ReadIndex), and read the in-memory state machine.
//!
//! Invariants:
//! - only the node task mutates the state machine, and only by applying committed entries;
//! - a proposal is answered only when its own entry (same index and term) is applied;
//! - a read is served only after the node has applied up to the leader's commit index at the
//!   time of the read (ReadIndex, `ReadOnlyOption::Safe`).

mod bootstrap;
mod error;
mod logger;
mod node;
mod peer_service;
mod proposals;
mod sled_files;
mod status;
mod storage;
mod transport;

pub use error::NodeError;
pub use peer_service::PeerService;
pub use status::{NodeStatus, Role};
pub use storage::{SledStorage, StorageError, SyncCounts, SyncError};

use crate::state::{Command, Proposal, Response, StateMachine};
use hotdeploy_common::config::{ClusterState, CoordinatorConfig};
use hotdeploy_common::proto::raft_peer_server::RaftPeerServer;
use node::{Msg, Node, NodeConfig};
use raft::prelude::ConfChangeV2;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// The node task's inbox size. Proposals beyond it wait (backpressure on clients).
const INBOX: usize = 4096;

/// How often the leader looks for members to record once every member is (see
/// `RaftNode::record_members`).
const RECORD_MEMBERS_EVERY: Duration = Duration::from_millis(200);

/// A handle on the local raft node. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    id: u64,
    tx: mpsc::Sender<Msg>,
    status: watch::Receiver<NodeStatus>,
    applied: watch::Receiver<u64>,
    state: Arc<RwLock<StateMachine>>,
    transport: transport::Transport,
}

/// The peer gRPC service to mount next to the public API.
pub type PeerServer = RaftPeerServer<peer_service::PeerService>;

/// Starts the raft thread with its current-thread runtime, and returns that runtime's handle
/// and where to send the node it is to run. The runtime lives and dies on that thread: if the
/// node never comes (start-up failed), the thread ends and drops it there.
fn spawn_raft_thread(
    id: u64,
) -> anyhow::Result<(tokio::runtime::Handle, std::sync::mpsc::SyncSender<Node>)> {
    let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
    let (node_tx, node_rx) = std::sync::mpsc::sync_channel::<Node>(1);
    std::thread::Builder::new()
        .name(format!("raft-{id}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = handle_tx.send(Err(e));
                    return;
                }
            };
            let _ = handle_tx.send(Ok(rt.handle().clone()));
            if let Ok(node) = node_rx.recv() {
                rt.block_on(node.run());
            }
        })
        .map_err(|e| anyhow::anyhow!("cannot start the raft thread: {e}"))?;
    let handle = handle_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the raft thread ended at start"))?
        .map_err(|e| anyhow::anyhow!("cannot build the raft node's runtime: {e}"))?;
    Ok((handle, node_tx))
}

impl RaftNode {
    /// Opens storage, bootstraps or restarts, and spawns the node task. Returns the handle and
    /// the peer service to serve.
    pub async fn start(
        cfg: &CoordinatorConfig,
        client_tls: hotdeploy_common::tls::ClientTls,
    ) -> anyhow::Result<(Self, PeerServer)> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create data_dir {}: {e}", cfg.data_dir.display())
        })?;
        let storage = SledStorage::open(&cfg.data_dir).map_err(|e| {
            anyhow::anyhow!("cannot open storage in {}: {e}", cfg.data_dir.display())
        })?;
        let peers = cfg.peer_map();
        if storage.is_blank() {
            match cfg.initial_cluster_state {
                ClusterState::New => {
                    bootstrap::check_peers_before_bootstrap(cfg.id, &peers, &client_tls).await?;
                    let mut voters: Vec<u64> = peers.keys().copied().collect();
                    if voters.is_empty() {
                        voters.push(cfg.id);
                    }
                    let cid = bootstrap::cluster_id_for(&voters);
                    storage.initialize(&voters, cid)?;
                    tracing::info!(
                        ?voters,
                        cluster_id = format!("{cid:016x}"),
                        "bootstrapped a new cluster"
                    );
                }
                ClusterState::Existing => {
                    tracing::info!(
                        "blank node waiting to be added with `hotdeployctl members add`"
                    );
                }
            }
        }
        let cluster_id = Arc::new(AtomicU64::new(storage.cluster_id().unwrap_or(0)));
        let (tx, rx) = mpsc::channel(INBOX);
        let pinned: HashMap<u64, String> = peers.clone().into_iter().collect();
        // The node task gets a thread and a runtime of its own: it blocks in fdatasync once per
        // Ready that must be durable, which on a small machine would otherwise stall one of the
        // few runtime workers serving gRPC. The outbound peer streams run on that runtime too:
        // a message the node sends reaches its socket on the same thread, without a hand-off to
        // the main runtime's workers (see `transport`).
        let (raft_rt, start_node) = spawn_raft_thread(cfg.id)?;
        let transport = transport::Transport::new(
            cfg.id,
            cfg.listen.clone(),
            cluster_id.clone(),
            client_tls,
            pinned,
            tx.clone(),
            raft_rt,
        );
        let state = Arc::new(RwLock::new(StateMachine::new()));
        let (status_tx, status_rx) = watch::channel(NodeStatus {
            id: cfg.id,
            ..Default::default()
        });
        let (applied_tx, applied_rx) = watch::channel(0);
        let (leadership_tx, leadership_rx) = watch::channel((0, Role::Follower));
        let node_cfg = NodeConfig {
            id: cfg.id,
            tick: Duration::from_millis(cfg.raft.tick_ms),
            election_ticks: cfg.raft.election_ticks,
            heartbeat_ticks: cfg.raft.heartbeat_ticks,
        };
        let node = Node::new(
            &node_cfg,
            storage.clone(),
            transport.clone(),
            rx,
            state.clone(),
            status_tx,
            leadership_tx,
            applied_tx,
        )?;
        for (id, addr) in state
            .read()
            .map(|s| s.members().clone())
            .unwrap_or_default()
        {
            transport.ensure_peer(id, &addr);
        }
        start_node
            .send(node)
            .map_err(|_| anyhow::anyhow!("the raft thread ended before its node started"))?;
        let peer = peer_service::PeerService {
            cluster_id,
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
        };
        tokio::spawn(handle.clone().record_members(leadership_rx));
        Ok((handle, server))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Proposes a command and waits until it is applied (or fails), up to `timeout`.
    pub async fn propose(&self, p: Proposal, timeout: Duration) -> Result<Response, NodeError> {
        let (reply, rx) = oneshot::channel();
        let data = p.encode();
        self.call(Msg::Propose { data, reply }, rx, timeout).await
    }

    /// Proposes a membership change and waits until it is applied.
    pub async fn conf_change(&self, cc: ConfChangeV2, timeout: Duration) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.call(Msg::ConfChange { cc, reply }, rx, timeout).await
    }

    /// Waits until this node has applied everything committed at the time of the call, as
    /// confirmed by the leader (ReadIndex). Reads of the state machine after it are
    /// linearizable.
    pub async fn read_barrier(&self, timeout: Duration) -> Result<(), NodeError> {
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

    /// Notified on every status change (role, leader, term, commit, membership).
    pub fn subscribe_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// Notified whenever entries are applied; the value is the applied index.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
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

    /// Leader only: records in the replicated state every member that has acknowledged the log
    /// (with its advertised address), so that a wiped member is recognised when it tries to
    /// bootstrap again (see `bootstrap`).
    ///
    /// It looks when this node's leadership changes, and while it leads with a member of the
    /// configuration not recorded yet, at every status change, so that a founding member is
    /// recorded right after its first acknowledgement. Otherwise it looks every
    /// [`RECORD_MEMBERS_EVERY`] only: the status changes with every commit, and a task woken
    /// per entry costs the leader's write path a thread wake-up (`hd-bench lock` counts context
    /// switches per entry). A member added later is recorded by its conf change, which carries
    /// its address; the slow look catches one that acknowledges only later. (While a founding
    /// member is down and so unrecorded, the leader looks at every status change, as it always
    /// did before.)
    async fn record_members(self, mut leadership: watch::Receiver<(u64, Role)>) {
        let mut status = self.status.clone();
        loop {
            let st = status.borrow_and_update().clone();
            let unrecorded = st.is_leader() && self.record_acknowledged(&st).await;
            let woken = if unrecorded {
                status.changed().await.is_ok()
            } else {
                tokio::select! {
                    changed = leadership.changed() => changed.is_ok(),
                    _ = tokio::time::sleep(RECORD_MEMBERS_EVERY) => !self.tx.is_closed(),
                }
            };
            if !woken {
                return;
            }
        }
    }

    /// Proposes `SetMember` for every member that acknowledged the log and is not recorded;
    /// returns whether a member of the configuration is still unrecorded afterwards.
    async fn record_acknowledged(&self, st: &NodeStatus) -> bool {
        let known = self.state().members().clone();
        for (id, matched) in &st.matched {
            if *matched == 0 || known.contains_key(id) {
                continue;
            }
            let Some(address) = self.address_of(*id) else {
                continue;
            };
            let p = Proposal::new(
                None,
                hotdeploy_common::time::now_ms(),
                "leader",
                Command::SetMember { id: *id, address },
            );
            if let Err(e) = self.propose(p, Duration::from_secs(5)).await {
                tracing::debug!("recording member {id}: {e}");
            }
        }
        let known = self.state().members().clone();
        st.voters
            .iter()
            .chain(&st.learners)
            .any(|id| !known.contains_key(id))
    }
}
