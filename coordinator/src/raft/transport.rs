//! The outbound half of the peer transport: one long-lived gRPC client stream per peer.
//!
//! Raft messages travel as opaque bytes (raft-rs's protobuf encoding) inside our own
//! [`PeerFrame`], which also carries the cluster id, the sender's advertised address and the
//! newest command format version the sender knows (for the leader's version gate). Each
//! peer has a bounded queue drained by its own task; the node task never blocks on the network:
//! when a queue is full, the message is dropped and raft is told the peer is unreachable, which
//! makes the leader probe it gently instead of piling up appends. Raft retransmits what matters.
//!
//! The peer stream tasks, and the HTTP/2 connections under them, run on the node's own runtime
//! (its thread): a message the node sends is framed and written to its socket on that thread,
//! with no hand-off to another thread. The node yields once after sending, before it blocks in
//! `fdatasync`, so the leader's appends leave while it persists (see `node`).
//!
//! **Snapshots** do not travel on the stream: a MsgSnapshot holds the whole state machine and
//! may outweigh any frame ([`MAX_FRAME_BYTES`]). Each one is sent on its own `SendSnapshot` call,
//! in chunks of [`SNAPSHOT_CHUNK_BYTES`], from a task on the main runtime (the encryption of a
//! large state must not stall the node's thread), at most one per peer at a time. The receiver
//! answers only once its raft node holds the whole message; only then is raft told
//! `SnapshotStatus::Finish`. A refused, broken or timed-out call is reported as `Failure` (and
//! the peer as unreachable), and raft sends the snapshot again later.
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
use hotdeploy_common::proto::{PeerFrame, SnapshotChunk};
use hotdeploy_common::tls::ClientTls;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use raft::SnapshotStatus;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

/// Messages queued per peer before new ones are dropped. Enough for a burst of appends while a
/// stream reconnects; a peer further behind is caught up by raft's probing, not by the queue.
const PEER_QUEUE: usize = 1024;

/// Frames buffered between a peer task and its gRPC stream.
const STREAM_BUFFER: usize = 256;

/// The most a single peer frame (a raft message) may weigh: far above a 1 MiB append (raft's
/// `max_size_per_msg`), while bounding a hostile sender. Snapshots travel in chunks instead.
pub(crate) const MAX_FRAME_BYTES: usize = 64 << 20;

/// The size of one chunk of snapshot data.
pub(crate) const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// How long a snapshot send may take: a base, plus this much per MiB of data.
const SNAPSHOT_BASE_TIMEOUT: Duration = Duration::from_secs(30);
const SNAPSHOT_TIMEOUT_PER_MIB: Duration = Duration::from_millis(500);

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
    /// The node's own runtime (its thread): peer streams, and the HTTP/2 connections under
    /// them, run where the messages are made (see the module docs).
    rt: tokio::runtime::Handle,
    /// The main runtime, where snapshots are sent.
    bulk: tokio::runtime::Handle,
    /// Peers a snapshot is being sent to.
    snapshots_in_flight: Mutex<HashSet<u64>>,
}

/// This node as its frames name it: its id, the listen address it advertises, and the newest
/// command format version it knows.
pub(crate) struct LocalNode {
    pub id: u64,
    pub address: String,
    pub format_version: u32,
}

struct Peer {
    address: String,
    queue: mpsc::Sender<Message>,
    task: JoinHandle<()>,
}

impl Transport {
    pub(crate) fn new(
        me: LocalNode,
        cluster_id: Arc<AtomicU64>,
        tls: ClientTls,
        pinned: HashMap<u64, String>,
        node: mpsc::Sender<Msg>,
        rt: tokio::runtime::Handle,
    ) -> Self {
        let LocalNode {
            id,
            address: my_address,
            format_version,
        } = me;
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
                rt,
                bulk: tokio::runtime::Handle::current(),
                snapshots_in_flight: Mutex::new(HashSet::new()),
            }),
        };
        for (pid, addr) in pinned {
            t.ensure_peer(pid, &addr);
        }
        t
    }

    /// Queues messages for their peers (a snapshot: starts its send); never blocks.
    pub(crate) fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let Ok(peers) = self.inner.peers.lock() else {
            return;
        };
        for m in msgs {
            let to = m.to;
            let Some(peer) = peers.get(&to) else {
                tracing::debug!(to, "no address for peer; message dropped");
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    report_snapshot(&self.inner, to, SnapshotStatus::Failure);
                }
                continue;
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(peer.address.clone(), m);
                continue;
            }
            if peer.queue.try_send(m).is_err() {
                let _ = self.inner.node.try_send(Msg::Unreachable(to));
            }
        }
    }

    /// Starts sending snapshot message `m` to its peer at `address`, unless one is on its way
    /// there already (raft does not need two; the first one's outcome is reported).
    fn send_snapshot(&self, address: String, m: Message) {
        let to = m.to;
        let fresh = self
            .inner
            .snapshots_in_flight
            .lock()
            .map(|mut s| s.insert(to))
            .unwrap_or(false);
        if !fresh {
            tracing::debug!(to, "a snapshot is already on its way to this peer");
            return;
        }
        let inner = self.inner.clone();
        self.inner.bulk.spawn(async move {
            let index = m.get_snapshot().get_metadata().index;
            let bytes = m.get_snapshot().data.len();
            let started = std::time::Instant::now();
            let status = match send_snapshot(&inner, &address, m).await {
                Ok(()) => {
                    tracing::info!(to, index, bytes, took = ?started.elapsed(), "snapshot delivered");
                    SnapshotStatus::Finish
                }
                Err(e) => {
                    tracing::warn!(to, index, bytes, "snapshot not delivered: {e}");
                    let _ = inner.node.try_send(Msg::Unreachable(to));
                    SnapshotStatus::Failure
                }
            };
            if let Ok(mut s) = inner.snapshots_in_flight.lock() {
                s.remove(&to);
            }
            // Waits for room in the inbox: a lost report could leave raft waiting for this
            // snapshot for good.
            if inner.node.send(Msg::Snapshot(to, status)).await.is_err() {
                tracing::debug!(to, "the node stopped before the snapshot's outcome");
            }
        });
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

fn report_snapshot(inner: &Inner, to: u64, status: SnapshotStatus) {
    if inner.node.try_send(Msg::Snapshot(to, status)).is_err() {
        tracing::warn!(to, ?status, "could not report a snapshot's outcome to raft");
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

/// Why a connection to a peer could not be made.
enum ConnectError {
    /// The address or the TLS settings are unusable: retrying will not help.
    Config(String),
    /// The peer did not answer (yet).
    Unreachable(String),
}

/// Opens a channel to `address` with the TLS settings current now (so that a reload on SIGHUP
/// applies to new connections).
async fn connect(inner: &Inner, address: &str) -> Result<Channel, ConnectError> {
    let scheme = inner.tls.scheme();
    let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| ConnectError::Config(format!("bad peer address {address:?}: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    let endpoint = match inner.tls.current() {
        Some(tls) => endpoint
            .tls_config(tls)
            .map_err(|e| ConnectError::Config(format!("peer TLS settings: {e}")))?,
        None => endpoint,
    };
    endpoint
        .connect()
        .await
        .map_err(|e| ConnectError::Unreachable(format!("cannot connect to {address}: {e}")))
}

/// Sends one snapshot message on a `SendSnapshot` call of its own: its data in chunks after a
/// head that carries the message without it. `Ok` once the receiver answered, which it does
/// only after its raft node has the whole message.
async fn send_snapshot(inner: &Inner, address: &str, mut m: Message) -> Result<(), String> {
    let data = std::mem::take(&mut m.mut_snapshot().data);
    let head = frame(inner, &m).ok_or("cannot encode the snapshot message")?;
    let timeout =
        SNAPSHOT_BASE_TIMEOUT + SNAPSHOT_TIMEOUT_PER_MIB * (data.len() / (1 << 20)) as u32;
    let call = async {
        let channel = connect(inner, address).await.map_err(|e| match e {
            ConnectError::Config(e) | ConnectError::Unreachable(e) => e,
        })?;
        let mut client = RaftPeerClient::new(channel)
            .max_encoding_message_size(MAX_FRAME_BYTES)
            .max_decoding_message_size(MAX_FRAME_BYTES);
        let data_len = data.len() as u64;
        let pieces = data.len().div_ceil(SNAPSHOT_CHUNK_BYTES).max(1);
        let chunks = (0..pieces).map(move |i| {
            let start = i * SNAPSHOT_CHUNK_BYTES;
            let end = (start + SNAPSHOT_CHUNK_BYTES).min(data.len());
            SnapshotChunk {
                head: (i == 0).then(|| head.clone()),
                data_len: if i == 0 { data_len } else { 0 },
                data: data[start..end].to_vec(),
            }
        });
        client
            .send_snapshot(tokio_stream::iter(chunks))
            .await
            .map(drop)
            .map_err(|s| format!("{} ({:?})", s.message(), s.code()))
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Drains one peer's queue into a client stream, reconnecting with backoff.
async fn peer_stream(inner: Arc<Inner>, to: u64, address: String, mut rx: mpsc::Receiver<Message>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(first) = rx.recv().await else { return };
        let channel = match connect(&inner, &address).await {
            Ok(c) => c,
            Err(ConnectError::Config(e)) => {
                tracing::error!(to, "{e}");
                return;
            }
            Err(ConnectError::Unreachable(e)) => {
                tracing::debug!(to, "peer connect failed: {e}");
                unreachable_now(&inner, to, &mut rx);
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
            let Some(f) = frame(&inner, &m) else { continue };
            if ftx.send(f).await.is_err() {
                break;
            }
        }
        let _ = inner.node.try_send(Msg::Unreachable(to));
        tokio::time::sleep(backoff).await;
    }
}

/// The peer cannot be reached: tell raft, and drop what is queued (raft will resend).
fn unreachable_now(inner: &Inner, to: u64, rx: &mut mpsc::Receiver<Message>) {
    let _ = inner.node.try_send(Msg::Unreachable(to));
    while rx.try_recv().is_ok() {}
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
