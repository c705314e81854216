//! The outbound half of the peer transport: one long-lived gRPC client stream per peer.
//!
//! Raft messages travel as opaque bytes (raft-rs's protobuf encoding) inside our own
//! [`PeerFrame`], which also carries the cluster id, the sender's advertised address and the
//! newest command format version the sender knows (for the leader's version gate). Each
//! peer has a bounded queue drained by its own task; the node task never blocks on the network:
//! when a queue is full, the message is dropped and raft is told the peer is unreachable, which
//! makes the leader probe it gently instead of piling up appends. Raft retransmits what matters.
//!
//! Addresses come from three places, in order of precedence: the config's `[peers]` (fixed for
//! this node, so a test harness can put a fault-injecting proxy in between), the replicated
//! membership (`members add`), and the address a peer advertises in its frames (so that a new,
//! blank node can answer a leader it has never heard of).
//!
//! Left out: TLS identity checks of the receiver (the server side checks the sender; clients
//! verify the server's certificate against the CA).

use super::node::Msg;
use hotdeploy_common::proto::raft_peer_client::RaftPeerClient;
use hotdeploy_common::proto::PeerFrame;
use hotdeploy_common::tls::ClientTls;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use raft::SnapshotStatus;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;

/// Messages queued per peer before new ones are dropped. Enough for a burst of appends while a
/// stream reconnects; a peer further behind is caught up by raft's probing, not by the queue.
const PEER_QUEUE: usize = 1024;

/// Frames buffered between a peer task and its gRPC stream.
const STREAM_BUFFER: usize = 256;

/// The most a single peer frame (a raft message, possibly a snapshot) may weigh. Snapshots of
/// 10,000 hosts are a few MB; this leaves ample room while bounding a hostile sender.
pub(crate) const MAX_FRAME_BYTES: usize = 64 << 20;

#[derive(Clone)]
pub(crate) struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    my_address: String,
    /// The newest command format version this node knows, sent in every frame.
    format_version: u32,
    cluster_id: Arc<AtomicU64>,
    tls: ClientTls,
    /// `[peers]` from the config: never overridden.
    pinned: HashMap<u64, String>,
    peers: Mutex<HashMap<u64, Peer>>,
    /// Each peer's own listen address, as it advertises it (for leader hints).
    advertised: Mutex<BTreeMap<u64, String>>,
    node: mpsc::Sender<Msg>,
    /// The main runtime: peer streams run there, not on the node's own thread, which blocks
    /// in fsync.
    rt: tokio::runtime::Handle,
}

struct Peer {
    address: String,
    queue: mpsc::Sender<Message>,
    task: JoinHandle<()>,
}

impl Transport {
    pub(crate) fn new(
        id: u64,
        my_address: String,
        format_version: u32,
        cluster_id: Arc<AtomicU64>,
        tls: ClientTls,
        pinned: HashMap<u64, String>,
        node: mpsc::Sender<Msg>,
    ) -> Self {
        let t = Self {
            inner: Arc::new(Inner {
                id,
                my_address: my_address.clone(),
                format_version,
                cluster_id,
                tls,
                pinned: pinned.clone(),
                peers: Mutex::new(HashMap::new()),
                advertised: Mutex::new(BTreeMap::from([(id, my_address)])),
                node,
                rt: tokio::runtime::Handle::current(),
            }),
        };
        for (pid, addr) in pinned {
            t.ensure_peer(pid, &addr);
        }
        t
    }

    /// Queues messages for their peers; never blocks.
    pub(crate) fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let Ok(peers) = self.inner.peers.lock() else {
            return;
        };
        for m in msgs {
            let to = m.to;
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let Some(peer) = peers.get(&to) else {
                tracing::debug!(to, "no address for peer; message dropped");
                continue;
            };
            if peer.queue.try_send(m).is_err() {
                let _ = self.inner.node.try_send(Msg::Unreachable(to));
                if is_snapshot {
                    let _ = self
                        .inner
                        .node
                        .try_send(Msg::Snapshot(to, SnapshotStatus::Failure));
                }
            }
        }
    }

    /// Makes sure there is a stream task for `id` at `address` (config addresses win).
    pub(crate) fn ensure_peer(&self, id: u64, address: &str) {
        if id == self.inner.id || address.is_empty() {
            return;
        }
        let address = self
            .inner
            .pinned
            .get(&id)
            .cloned()
            .unwrap_or_else(|| address.to_owned());
        let Ok(mut peers) = self.inner.peers.lock() else {
            return;
        };
        if peers.get(&id).is_some_and(|p| p.address == address) {
            return;
        }
        if let Some(old) = peers.remove(&id) {
            old.task.abort();
        }
        let (queue, rx) = mpsc::channel(PEER_QUEUE);
        let task = self
            .inner
            .rt
            .spawn(peer_stream(self.inner.clone(), id, address.clone(), rx));
        peers.insert(
            id,
            Peer {
                address,
                queue,
                task,
            },
        );
    }

    /// Stops streaming to a removed member.
    pub(crate) fn remove_peer(&self, id: u64) {
        if let Ok(mut peers) = self.inner.peers.lock() {
            if let Some(p) = peers.remove(&id) {
                p.task.abort();
            }
        }
    }

    /// Records the address a peer advertises; also opens a stream to a peer we had no address
    /// for (a new node answering its first leader).
    pub(crate) fn learn(&self, id: u64, advertised: &str) {
        if advertised.is_empty() || id == self.inner.id {
            return;
        }
        if let Ok(mut a) = self.inner.advertised.lock() {
            if a.get(&id).map(String::as_str) != Some(advertised) {
                a.insert(id, advertised.to_owned());
            }
        }
        let known = self
            .inner
            .peers
            .lock()
            .map(|p| p.contains_key(&id))
            .unwrap_or(true);
        if !known {
            self.ensure_peer(id, advertised);
        }
    }

    /// The advertised (client-facing) address of a member, when known.
    pub(crate) fn advertised(&self, id: u64) -> Option<String> {
        let a = self.inner.advertised.lock().ok()?.get(&id).cloned();
        a.or_else(|| self.inner.pinned.get(&id).cloned())
    }
}

fn frame(inner: &Inner, m: &Message) -> Option<PeerFrame> {
    let bytes = m.write_to_bytes().ok()?;
    Some(PeerFrame {
        cluster_id: inner.cluster_id.load(Ordering::Acquire),
        from: inner.id,
        from_address: inner.my_address.clone(),
        message: bytes,
        format_version: inner.format_version,
    })
}

/// Drains one peer's queue into a client stream, reconnecting with backoff.
async fn peer_stream(inner: Arc<Inner>, to: u64, address: String, mut rx: mpsc::Receiver<Message>) {
    let scheme = inner.tls.scheme();
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(first) = rx.recv().await else { return };
        let endpoint = match Endpoint::from_shared(format!("{scheme}://{address}")) {
            Ok(e) => e.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true),
            Err(e) => {
                tracing::error!(to, %address, "bad peer address: {e}");
                return;
            }
        };
        // The settings current at each connect, so a reload on SIGHUP applies to new streams.
        let endpoint = match inner.tls.current() {
            Some(tls) => match endpoint.tls_config(tls) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(to, "peer TLS settings: {e}");
                    return;
                }
            },
            None => endpoint,
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(to, %address, "peer connect failed: {e}");
                unreachable_now(&inner, to, &first, &mut rx);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let mut client = RaftPeerClient::new(channel)
            .max_encoding_message_size(MAX_FRAME_BYTES)
            .max_decoding_message_size(MAX_FRAME_BYTES);
        let (ftx, frx) = mpsc::channel::<PeerFrame>(STREAM_BUFFER);
        let mut pending = Some(first);
        let call = client.send(tokio_stream::wrappers::ReceiverStream::new(frx));
        tokio::pin!(call);
        loop {
            let m = match pending.take() {
                Some(m) => m,
                None => tokio::select! {
                    res = &mut call => {
                        if let Err(e) = res {
                            tracing::debug!(to, "peer stream ended: {}", e.message());
                        }
                        break;
                    }
                    m = rx.recv() => match m {
                        Some(m) => m,
                        None => return,
                    },
                },
            };
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let Some(f) = frame(&inner, &m) else { continue };
            if ftx.send(f).await.is_err() {
                if is_snapshot {
                    let _ = inner
                        .node
                        .try_send(Msg::Snapshot(to, SnapshotStatus::Failure));
                }
                break;
            }
            if is_snapshot {
                let _ = inner
                    .node
                    .try_send(Msg::Snapshot(to, SnapshotStatus::Finish));
            }
        }
        let _ = inner.node.try_send(Msg::Unreachable(to));
        tokio::time::sleep(backoff).await;
    }
}

/// The peer cannot be reached: tell raft, and drop what is queued (raft will resend).
fn unreachable_now(inner: &Inner, to: u64, first: &Message, rx: &mut mpsc::Receiver<Message>) {
    let _ = inner.node.try_send(Msg::Unreachable(to));
    let mut snapshot = first.get_msg_type() == MessageType::MsgSnapshot;
    while let Ok(m) = rx.try_recv() {
        snapshot |= m.get_msg_type() == MessageType::MsgSnapshot;
    }
    if snapshot {
        let _ = inner
            .node
            .try_send(Msg::Snapshot(to, SnapshotStatus::Failure));
    }
}
