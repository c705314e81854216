//! The inbound half of the peer transport: the `RaftPeer` gRPC service.
//!
//! Each frame is checked before raft sees it: the cluster id must match ours, the embedded
//! message's `from` must match the frame's sender, and, under mTLS, the sender must hold the
//! certificate of that coordinator id. Raft payloads are decoded only after the sender's
//! certificate is checked: raft 0.7's protobuf 2.x decoder is not meant for untrusted input.
//!
//! A blank node (no cluster id yet) adopts the cluster id of the first *leader's* message it
//! gets (an append, a heartbeat or a snapshot: the leader that is adding it), and drops anything
//! else: a leaderless survivor of an old cluster asking for votes must not make a node meant for
//! a restored cluster (`hotdeploy-coordinator restore`) join the old one by accident.
//!
//! Every frame's command format version goes to the node with its message, for the leader's
//! version gate (`versions.rs`).
//!
//! Snapshots arrive on `SendSnapshot` in chunks (see `transport`): the first chunk's head is
//! checked like any frame, the data is collected up to the length it announced (at most
//! [`MAX_SNAPSHOT_BYTES`]), and the whole MsgSnapshot is handed to the raft node before the
//! call is answered. The sender reports the snapshot delivered only on that answer.
//!
//! `ClusterInfo` (what a blank node asks before it bootstraps) answers coordinators only: the
//! member list and commit index are the cluster's business. [`BlankPeerService`] is what a blank
//! node serves while it waits to bootstrap: `ClusterInfo` says "no cluster yet", and raft
//! traffic is refused as unavailable.

use super::node::Msg;
use super::status::NodeStatus;
use super::transport::Transport;
use crate::state::{StateMachine, FORMAT_VERSION};
use hotdeploy_common::proto::raft_peer_server::RaftPeer;
use hotdeploy_common::proto::{
    ClusterInfoRequest, ClusterInfoResponse, PeerAck, PeerFrame, SnapshotChunk,
};
use hotdeploy_common::tls::{caller_role, Role};
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::storage::SledStorage;

/// The largest snapshot (its data, all chunks together) a node accepts: far above any real
/// state (a few MB for 10,000 hosts), while bounding what a sender can make it allocate.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

pub struct PeerService {
    pub(crate) cluster_id: Arc<AtomicU64>,
    pub(crate) storage: SledStorage,
    pub(crate) node: mpsc::Sender<Msg>,
    pub(crate) transport: Transport,
    pub(crate) status: watch::Receiver<NodeStatus>,
    pub(crate) state: Arc<RwLock<StateMachine>>,
}

/// What to do with one frame, by its cluster id.
enum Verdict {
    Accept,
    /// A blank node's answer to a message that is not a leader's: drop it, adopt nothing.
    Drop,
}

impl PeerService {
    /// Checks (and, for a blank node, adopts from a leader's message) the sender's cluster id.
    fn check_cluster(&self, theirs: u64, msg: &Message) -> Result<Verdict, Status> {
        let ours = self.cluster_id.load(Ordering::Acquire);
        if ours == theirs && ours != 0 {
            return Ok(Verdict::Accept);
        }
        if ours == 0 && theirs != 0 {
            if !from_a_leader(msg) {
                tracing::debug!(
                    from = msg.from,
                    kind = ?msg.get_msg_type(),
                    "blank node: dropping a message that is not a leader's (cluster id not adopted)"
                );
                return Ok(Verdict::Drop);
            }
            if let Err(e) = self.storage.set_cluster_id(theirs) {
                tracing::error!("fatal storage error persisting the cluster id: {e}");
                std::process::exit(1);
            }
            self.cluster_id.store(theirs, Ordering::Release);
            tracing::info!(
                cluster_id = format!("{theirs:016x}"),
                leader = msg.from,
                "joined cluster"
            );
            return Ok(Verdict::Accept);
        }
        Err(Status::failed_precondition(format!(
            "cluster id mismatch: this node is in cluster {ours:016x}, the sender in {theirs:016x}"
        )))
    }

    /// Checks one frame of a stream whose caller has `role` and whose earlier frames came from
    /// `sender`, and decodes its raft message (see the module docs). `None`: a blank node drops
    /// the frame, for it is not a leader's.
    fn check_frame(
        &self,
        role: &Option<Role>,
        sender: &mut Option<u64>,
        frame: &PeerFrame,
    ) -> Result<Option<Checked>, Status> {
        match role {
            Some(Role::Insecure) => {}
            Some(Role::Coordinator(id)) if *id == frame.from => {}
            r => {
                let who = r
                    .as_ref()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "no role".into());
                tracing::warn!(audit = true, caller = %who, claimed = frame.from, "peer frame refused: sender id differs from its certificate");
                return Err(Status::permission_denied(format!(
                    "peer {who} may not send raft messages as coordinator {}",
                    frame.from
                )));
            }
        }
        if sender.is_some_and(|s| s != frame.from) {
            return Err(Status::invalid_argument(
                "sender id changed within one stream",
            ));
        }
        *sender = Some(frame.from);
        let msg = Message::parse_from_bytes(&frame.message)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
        if msg.from != frame.from {
            return Err(Status::invalid_argument(format!(
                "raft message from {} inside a frame from {}",
                msg.from, frame.from
            )));
        }
        if let Verdict::Drop = self.check_cluster(frame.cluster_id, &msg)? {
            return Ok(None);
        }
        self.transport.learn(frame.from, &frame.from_address);
        Ok(Some(Checked {
            msg,
            version: frame.format_version,
        }))
    }

    /// Hands a checked message, with its sender's command format version, to the raft node.
    async fn step(&self, msg: Message, version: u32) -> Result<(), Status> {
        self.node
            .send(Msg::Step(Box::new(msg), version))
            .await
            .map_err(|_| Status::unavailable("raft node stopped"))
    }
}

/// A frame that passed [`PeerService::check_frame`]: its raft message, and the command format
/// version its sender reported (for the version gate).
struct Checked {
    msg: Message,
    version: u32,
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn send(
        &self,
        request: Request<Streaming<PeerFrame>>,
    ) -> Result<Response<PeerAck>, Status> {
        let role = caller_role(&request);
        let mut stream = request.into_inner();
        let mut sender: Option<u64> = None;
        while let Some(frame) = stream.message().await? {
            // A whole snapshot in one frame (a sender of an earlier version) is still accepted.
            if let Some(Checked { msg, version }) = self.check_frame(&role, &mut sender, &frame)? {
                self.step(msg, version).await?;
            }
        }
        Ok(Response::new(PeerAck {}))
    }

    async fn send_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<PeerAck>, Status> {
        let role = caller_role(&request);
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("snapshot stream without a chunk"))?;
        let head = first
            .head
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("the first snapshot chunk has no head"))?;
        // A blank node drops only what is not a leader's, and a snapshot is: a dropped head is
        // not a snapshot.
        let Some(Checked { mut msg, version }) = self.check_frame(&role, &mut None, head)? else {
            return Err(Status::invalid_argument(
                "SendSnapshot's head is not a snapshot",
            ));
        };
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(format!(
                "SendSnapshot carries {:?}, not a snapshot",
                msg.get_msg_type()
            )));
        }
        if first.data_len > MAX_SNAPSHOT_BYTES {
            return Err(Status::resource_exhausted(format!(
                "a snapshot of {} bytes exceeds this node's limit of {MAX_SNAPSHOT_BYTES} bytes",
                first.data_len
            )));
        }
        let index = msg.get_snapshot().get_metadata().index;
        let expected = first.data_len as usize;
        let mut data = Vec::with_capacity(expected);
        let mut chunk = Some(first);
        let mut chunks = 0u64;
        while let Some(c) = chunk {
            if chunks > 0 && c.head.is_some() {
                return Err(Status::invalid_argument(
                    "a later snapshot chunk has a head",
                ));
            }
            chunks += 1;
            if data.len() + c.data.len() > expected {
                return Err(Status::invalid_argument(format!(
                    "snapshot at index {index}: more than the {expected} bytes announced"
                )));
            }
            data.extend_from_slice(&c.data);
            chunk = stream.message().await?;
        }
        if data.len() != expected {
            return Err(Status::invalid_argument(format!(
                "snapshot at index {index}: {} of the {expected} bytes announced arrived",
                data.len()
            )));
        }
        msg.mut_snapshot().data = data.into();
        tracing::info!(
            index,
            bytes = expected,
            from = msg.from,
            "snapshot received; handing it to raft"
        );
        self.step(msg, version).await?;
        Ok(Response::new(PeerAck {}))
    }

    async fn cluster_info(
        &self,
        request: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoResponse>, Status> {
        check_coordinator(&request)?;
        let st = self.status.borrow().clone();
        let members = self
            .state
            .read()
            .map(|s| s.members().keys().copied().collect())
            .unwrap_or_default();
        Ok(Response::new(ClusterInfoResponse {
            cluster_id: self.cluster_id.load(Ordering::Acquire),
            commit_index: st.commit,
            node: st.id,
            members,
            format_version: FORMAT_VERSION,
        }))
    }
}

/// Only coordinators (or anyone on a plaintext listener) may ask about the cluster.
fn check_coordinator<T>(request: &Request<T>) -> Result<(), Status> {
    match caller_role(request) {
        Some(Role::Insecure) | Some(Role::Coordinator(_)) => Ok(()),
        other => {
            let who = other
                .map(|r| r.to_string())
                .unwrap_or_else(|| "no role".into());
            tracing::warn!(audit = true, caller = %who, call = "ClusterInfo", "permission denied");
            Err(Status::permission_denied(format!(
                "ClusterInfo needs a coordinator certificate; caller is {who}"
            )))
        }
    }
}

/// Why a blank node refuses raft traffic.
const BLANK: &str = "this node is blank and waiting for a quorum of its peers before it bootstraps";

/// The peer service of a blank node waiting to bootstrap: it has no cluster yet.
pub struct BlankPeerService {
    pub id: u64,
}

impl BlankPeerService {
    pub fn server(id: u64) -> hotdeploy_common::proto::raft_peer_server::RaftPeerServer<Self> {
        hotdeploy_common::proto::raft_peer_server::RaftPeerServer::new(Self { id })
    }
}

#[tonic::async_trait]
impl RaftPeer for BlankPeerService {
    async fn send(
        &self,
        _request: Request<Streaming<PeerFrame>>,
    ) -> Result<Response<PeerAck>, Status> {
        Err(Status::unavailable(BLANK))
    }

    async fn send_snapshot(
        &self,
        _request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<PeerAck>, Status> {
        Err(Status::unavailable(BLANK))
    }

    async fn cluster_info(
        &self,
        request: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoResponse>, Status> {
        check_coordinator(&request)?;
        Ok(Response::new(ClusterInfoResponse {
            cluster_id: 0,
            commit_index: 0,
            node: self.id,
            members: Vec::new(),
            format_version: FORMAT_VERSION,
        }))
    }
}

/// Whether only a leader sends `msg`: what a blank node may adopt a cluster id from.
fn from_a_leader(msg: &Message) -> bool {
    matches!(
        msg.get_msg_type(),
        MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
    )
}
