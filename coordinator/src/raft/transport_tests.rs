//! The peer transport against a real `RaftPeer` server on loopback: snapshots larger than a
//! frame arrive whole, and raft hears `Finish` only once the receiving node has the message;
//! the sender's command format version reaches the receiving node with every message, on
//! `Send` and on `SendSnapshot` alike; a blank receiver adopts a cluster id only from a
//! leader's message.

// Test helpers panic on setup failures, like the tests themselves.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::raft::peer_service::PeerService;
use crate::raft::status::NodeStatus;
use crate::raft::storage::SledStorage;
use crate::state::StateMachine;
use hotdeploy_common::config::TlsConfig;
use hotdeploy_common::proto::raft_peer_server::RaftPeerServer;
use raft::prelude::Snapshot;
use sha2::{Digest, Sha256};
use std::sync::RwLock;
use tokio::time::timeout;

const CLUSTER: u64 = 0x7e57;

/// The command format version the sending node reports: not this build's, so that the test
/// sees it is the sender's that arrives.
const SENDER_VERSION: u32 = 7;

/// A receiving node: the `RaftPeer` service of node 2 on a loopback port, whose raft inbox is
/// the returned receiver (with room for `inbox` messages). Cluster 0 is a blank node.
async fn receiver(
    inbox: usize,
    cluster: u64,
) -> (
    String,
    mpsc::Receiver<Msg>,
    Arc<AtomicU64>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let (node_tx, node_rx) = mpsc::channel(inbox);
    let cluster_id = Arc::new(AtomicU64::new(cluster));
    let transport = Transport::new(
        LocalNode {
            id: 2,
            address: "127.0.0.1:1".into(),
            format_version: crate::state::FORMAT_VERSION,
        },
        cluster_id.clone(),
        insecure(),
        HashMap::new(),
        node_tx.clone(),
        tokio::runtime::Handle::current(),
    );
    let (_status_tx, status) = tokio::sync::watch::channel(NodeStatus::default());
    let service = PeerService {
        cluster_id: cluster_id.clone(),
        storage: SledStorage::open(dir.path()).unwrap(),
        node: node_tx,
        transport,
        status,
        state: Arc::new(RwLock::new(StateMachine::new())),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                RaftPeerServer::new(service)
                    .max_decoding_message_size(MAX_FRAME_BYTES)
                    .max_encoding_message_size(MAX_FRAME_BYTES),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, node_rx, cluster_id, dir)
}

fn insecure() -> ClientTls {
    ClientTls::load(&TlsConfig {
        insecure: true,
        ..Default::default()
    })
    .unwrap()
}

/// Node 1's transport to node 2 at `addr`; its raft inbox is the receiver.
fn sender(addr: &str) -> (Transport, mpsc::Receiver<Msg>) {
    let (node_tx, node_rx) = mpsc::channel(64);
    let transport = Transport::new(
        LocalNode {
            id: 1,
            address: "127.0.0.1:2".into(),
            format_version: SENDER_VERSION,
        },
        Arc::new(AtomicU64::new(CLUSTER)),
        insecure(),
        HashMap::from([(2, addr.to_string())]),
        node_tx,
        tokio::runtime::Handle::current(),
    );
    (transport, node_rx)
}

fn snapshot_message(bytes: usize) -> Message {
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 + i / 4096) as u8).collect();
    let mut snap = Snapshot {
        data: data.into(),
        ..Default::default()
    };
    snap.mut_metadata().index = 1234;
    snap.mut_metadata().term = 3;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.from = 1;
    m.to = 2;
    m.term = 3;
    m.set_snapshot(snap);
    m
}

/// The next snapshot outcome reported to the sender's raft, if one comes within `wait`.
async fn reported(rx: &mut mpsc::Receiver<Msg>, wait: Duration) -> Option<SnapshotStatus> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Msg::Snapshot(2, status))) => return Some(status),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// A state bigger than the 64 MiB frame limit (70 MiB) reaches the follower's raft whole, and
/// the leader's raft hears `Finish` only after that: while the follower's node has not taken
/// the message (its inbox is full), nothing is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_larger_than_a_frame_arrives_whole_and_is_reported_on_delivery() {
    let (addr, mut follower, _, _dir) = receiver(1, CLUSTER).await;
    let (transport, mut leader) = sender(&addr);
    let m = snapshot_message(70 << 20);
    let want = Sha256::digest(&m.get_snapshot().data);
    assert!(m.get_snapshot().data.len() > MAX_FRAME_BYTES);
    // The follower's node is busy: a heartbeat fills its one-message inbox, so that handing
    // over the snapshot waits until the test reads the inbox.
    let mut filler = Message::default();
    filler.set_msg_type(MessageType::MsgHeartbeat);
    filler.from = 1;
    filler.to = 2;
    transport.send(vec![filler]);
    let first = timeout(Duration::from_secs(30), async {
        loop {
            // The heartbeat travels on the stream; wait until it sits in the inbox.
            if !follower.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(first.is_ok(), "the heartbeat never reached the follower");

    transport.send(vec![m]);
    assert_eq!(
        reported(&mut leader, Duration::from_secs(3)).await,
        None,
        "a snapshot was reported before the follower's raft node had it"
    );

    // The node takes the heartbeat, then the snapshot.
    let heartbeat = follower.recv().await.unwrap();
    assert!(
        matches!(heartbeat, Msg::Step(ref m, SENDER_VERSION) if m.get_msg_type() == MessageType::MsgHeartbeat),
        "the heartbeat did not arrive with the sender's format version"
    );
    let got = timeout(Duration::from_secs(60), follower.recv())
        .await
        .expect("the snapshot never reached the follower's raft node")
        .unwrap();
    let Msg::Step(got, version) = got else {
        panic!("expected a raft message");
    };
    assert_eq!(
        version, SENDER_VERSION,
        "the snapshot did not arrive with the sender's format version"
    );
    assert_eq!(got.get_msg_type(), MessageType::MsgSnapshot);
    assert_eq!(got.get_snapshot().get_metadata().index, 1234);
    assert_eq!(got.get_snapshot().data.len(), 70 << 20);
    assert_eq!(Sha256::digest(&got.get_snapshot().data), want);
    assert_eq!(
        reported(&mut leader, Duration::from_secs(30)).await,
        Some(SnapshotStatus::Finish)
    );
}

/// A follower that refuses the snapshot (another cluster) makes raft hear `Failure`, never
/// `Finish`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_snapshot_is_reported_as_a_failure() {
    let (addr, mut follower, _, _dir) = receiver(16, CLUSTER + 1).await;
    let (transport, mut leader) = sender(&addr);
    transport.send(vec![snapshot_message(3 << 20)]);
    assert_eq!(
        reported(&mut leader, Duration::from_secs(30)).await,
        Some(SnapshotStatus::Failure)
    );
    assert!(
        follower.try_recv().is_err(),
        "the follower's raft got a message"
    );
}

/// The next raft message the receiving node gets within `wait`, with its format version.
async fn stepped(rx: &mut mpsc::Receiver<Msg>, wait: Duration) -> Option<(Message, u32)> {
    match timeout(wait, rx.recv()).await {
        Ok(Some(Msg::Step(m, version))) => Some((*m, version)),
        _ => None,
    }
}

/// A blank node (no cluster id yet) drops a vote request, which is not a leader's, and adopts
/// nothing from it; a leader's snapshot on `SendSnapshot` makes it adopt the cluster id, and
/// reaches its raft node with the sender's format version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blank_node_adopts_a_cluster_id_only_from_a_leaders_snapshot() {
    let (addr, mut follower, cluster_id, _dir) = receiver(16, 0).await;
    let (transport, mut leader) = sender(&addr);
    let mut vote = Message::default();
    vote.set_msg_type(MessageType::MsgRequestVote);
    vote.from = 1;
    vote.to = 2;
    vote.term = 3;
    transport.send(vec![vote]);
    assert!(
        stepped(&mut follower, Duration::from_secs(3))
            .await
            .is_none(),
        "the blank node's raft got a vote request"
    );
    assert_eq!(
        cluster_id.load(Ordering::Acquire),
        0,
        "a vote request made the blank node adopt a cluster id"
    );

    transport.send(vec![snapshot_message(1 << 20)]);
    let (got, version) = stepped(&mut follower, Duration::from_secs(30))
        .await
        .expect("the leader's snapshot never reached the blank node's raft");
    assert_eq!(got.get_msg_type(), MessageType::MsgSnapshot);
    assert_eq!(version, SENDER_VERSION);
    assert_eq!(cluster_id.load(Ordering::Acquire), CLUSTER);
    assert_eq!(
        reported(&mut leader, Duration::from_secs(30)).await,
        Some(SnapshotStatus::Finish)
    );
}
