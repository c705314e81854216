//! How a node with an empty data_dir starts (DESIGN §6, `initial_cluster_state`).
//!
//! - `"new"`: bootstrap a cluster from `[peers]`, but first ask the peers. If any of them
//!   already has a cluster that lists this node's id among its members, this node was wiped:
//!   bootstrapping would let it vote with an empty log and elect a leader that lacks committed
//!   entries. It refuses, and says how to rejoin.
//! - `"existing"`: start blank and wait to be added with `hotdeployctl members add`; the cluster
//!   id is adopted from the leader's first frame.
//!
//! The cluster id of a new cluster is derived from its initial member ids, so that every node
//! of one bootstrap computes the same id without talking. It keeps nodes of different clusters
//! apart; the peer check above keeps a wiped node out of its own.

use hotdeploy_common::proto::raft_peer_client::RaftPeerClient;
use hotdeploy_common::proto::ClusterInfoRequest;
use hotdeploy_common::tls::ClientTls;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::transport::Endpoint;

/// The cluster id of a cluster bootstrapped with these voters (never 0).
pub(crate) fn cluster_id_for(voters: &[u64]) -> u64 {
    let mut ids = voters.to_vec();
    ids.sort_unstable();
    let mut h = Sha256::new();
    h.update(b"hotdeploy-cluster-v1");
    for id in ids {
        h.update(id.to_be_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b).max(1)
}

/// Refuses to bootstrap when a peer already runs a cluster that knows this node.
pub(crate) async fn check_peers_before_bootstrap(
    my_id: u64,
    peers: &BTreeMap<u64, String>,
    tls: &ClientTls,
) -> anyhow::Result<()> {
    let scheme = tls.scheme();
    for (id, addr) in peers {
        if *id == my_id {
            continue;
        }
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))?
            .connect_timeout(Duration::from_millis(800))
            .timeout(Duration::from_secs(2));
        if let Some(t) = tls.current() {
            ep = ep.tls_config(t)?;
        }
        let Ok(channel) = ep.connect().await else {
            tracing::info!(peer = id, %addr, "peer not reachable before bootstrap; assuming it is starting too");
            continue;
        };
        let info = match RaftPeerClient::new(channel)
            .cluster_info(ClusterInfoRequest { from: my_id })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::info!(
                    peer = id,
                    "peer cannot say whether it has a cluster: {}",
                    e.message()
                );
                continue;
            }
        };
        if info.cluster_id != 0 && info.commit_index > 0 && info.members.contains(&my_id) {
            anyhow::bail!(
                "refusing to bootstrap: this node's data_dir is empty, but peer {id} at {addr} already \
                 runs cluster {:016x} (commit index {}) that lists node {my_id} as a member. This node \
                 was probably wiped, and must not vote with an empty log. To rejoin: \
                 `hotdeployctl members remove {my_id}`, then `hotdeployctl members add {my_id} HOST:PORT`, \
                 and start it with initial_cluster_state = \"existing\"",
                info.cluster_id,
                info.commit_index
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_is_order_free_and_distinct() {
        assert_eq!(cluster_id_for(&[3, 1, 2]), cluster_id_for(&[1, 2, 3]));
        assert_ne!(cluster_id_for(&[1, 2, 3]), cluster_id_for(&[1, 2, 4]));
        assert_ne!(cluster_id_for(&[1]), 0);
    }
}
