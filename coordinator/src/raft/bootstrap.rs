//! How a node with an empty data_dir starts (DESIGN §6, `initial_cluster_state`).
//!
//! - `"new"`: bootstrap a cluster from `[peers]`, but first ask the peers (`ClusterInfo`). If
//!   any of them already has a cluster that lists this node's id among its members, this node
//!   was wiped: bootstrapping would let it vote with an empty log and elect a leader that lacks
//!   committed entries. It refuses, and says how to rejoin.
//!
//!   Peers that do not answer prove nothing: after a power loss they may simply be down, and be
//!   exactly the ones that remember this node. So a quorum of the configured voters (this node
//!   included) must answer before it bootstraps; until then it waits, asks again, and logs why.
//!   Blank peers answer too (the binary serves `ClusterInfo` while it waits, see
//!   [`super::BlankPeerService`]), so a brand-new cluster whose nodes start together forms as
//!   soon as a quorum of them is up.
//! - `"existing"`: start blank and wait to be added with `hotdeployctl members add`; the cluster
//!   id is adopted from the leader's first frame.
//!
//! The decision is a pure function of the answers ([`decide`]), so the deterministic simulator
//! drives the same rule as the network code ([`bootstrap_new`]).
//!
//! The cluster id of a new cluster is derived from its initial member ids, so that every node
//! of one bootstrap computes the same id without talking. It keeps nodes of different clusters
//! apart; the peer check above keeps a wiped node out of its own.
//!
//! Left out: a wiped node whose every answering peer has not applied the entry that recorded it
//! (the leader records a member once it has acknowledged the log) is not recognised; a majority
//! of members wiped at once loses what only they held, whatever this check does.

use super::replicated::Replicated;
use super::storage::SledStorage;
use hotdeploy_common::config::CoordinatorConfig;
use hotdeploy_common::proto::raft_peer_client::RaftPeerClient;
use hotdeploy_common::proto::ClusterInfoRequest;
use hotdeploy_common::tls::ClientTls;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;

/// How often a waiting node asks its peers again.
const ASK_EVERY: Duration = Duration::from_secs(1);
/// How often the reason for waiting is logged again when it has not changed.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The cluster id of a cluster bootstrapped with these voters (never 0).
pub fn cluster_id_for(voters: &[u64]) -> u64 {
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

/// The voters a blank `"new"` node bootstraps with: `[peers]`' ids, or itself alone.
pub fn founding_voters(cfg: &CoordinatorConfig) -> Vec<u64> {
    let mut voters: Vec<u64> = cfg.peer_map().keys().copied().collect();
    if voters.is_empty() {
        voters.push(cfg.id);
    }
    voters
}

/// Writes the bootstrap state of a new cluster with `voters` into blank `storage`: the empty
/// state machine, serialized (never an empty payload). Returns the cluster id.
pub fn initialize<S: Replicated>(storage: &SledStorage, voters: &[u64]) -> anyhow::Result<u64> {
    let data = S::default()
        .snapshot()
        .map_err(|e| anyhow::anyhow!("cannot serialize the empty state machine: {e}"))?;
    let cid = cluster_id_for(voters);
    storage.initialize_with_data(voters, cid, data)?;
    Ok(cid)
}

/// What a peer says about its cluster (`ClusterInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAnswer {
    /// 0 when the peer is blank.
    pub cluster_id: u64,
    pub commit_index: u64,
    /// The members its cluster has seen acknowledge the log.
    pub members: Vec<u64>,
    /// The newest command format version it knows (0 from a coordinator that predates it).
    pub format_version: u32,
}

/// What a blank `"new"` node does after asking its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Bootstrap with the founding voters.
    Bootstrap,
    /// Ask again later; the reason says who did not answer.
    Wait(String),
    /// Never bootstrap: this node was a member and has lost its log.
    Refuse(String),
}

/// The rule. `answers` has one item per other configured voter: its answer, or why there is
/// none.
pub fn decide(
    my_id: u64,
    voters: &[u64],
    answers: &BTreeMap<u64, Result<PeerAnswer, String>>,
) -> Decision {
    for (peer, answer) in answers {
        let Ok(a) = answer else { continue };
        if a.cluster_id != 0 && a.members.contains(&my_id) {
            return Decision::Refuse(format!(
                "refusing to bootstrap: this node's data_dir is empty, but peer {peer} already \
                 runs cluster {:016x} (commit index {}) that lists node {my_id} as a member. This \
                 node was probably wiped, and must not vote with an empty log. To rejoin: \
                 `hotdeployctl members remove {my_id}`, then `hotdeployctl members add {my_id} \
                 HOST:PORT`, and start it with initial_cluster_state = \"existing\"",
                a.cluster_id, a.commit_index
            ));
        }
        let ours = cluster_id_for(voters);
        if a.cluster_id != 0 && a.cluster_id != ours {
            return Decision::Refuse(format!(
                "refusing to bootstrap: peer {peer} runs cluster {:016x}, but [peers] here would \
                 make cluster {ours:016x}; the nodes' [peers] tables must list the same ids",
                a.cluster_id
            ));
        }
    }
    let answered = 1 + answers.values().filter(|a| a.is_ok()).count();
    let need = voters.len() / 2 + 1;
    if answered >= need {
        return Decision::Bootstrap;
    }
    let silent: Vec<String> = answers
        .iter()
        .filter_map(|(id, a)| a.as_ref().err().map(|e| format!("{id} ({e})")))
        .collect();
    Decision::Wait(format!(
        "{answered} of {} configured nodes answered (this one included), and a quorum of {need} \
         must answer before a blank node bootstraps a new cluster, so that a wiped member is \
         recognised by a peer that remembers it; no answer from {}",
        voters.len(),
        silent.join(", ")
    ))
}

/// Asks the peers until [`decide`] says to bootstrap (then writes the bootstrap state) or to
/// refuse (an error, and the node does not start). Cancel it to give up.
pub async fn bootstrap_new<S: Replicated>(
    cfg: &CoordinatorConfig,
    storage: &SledStorage,
    tls: &ClientTls,
) -> anyhow::Result<()> {
    let voters = founding_voters(cfg);
    let peers: BTreeMap<u64, String> = cfg
        .peer_map()
        .into_iter()
        .filter(|(id, _)| *id != cfg.id)
        .collect();
    let mut logged: Option<(String, Instant)> = None;
    loop {
        let asks = peers
            .iter()
            .map(|(id, addr)| async move { (*id, ask(cfg.id, addr, tls).await) });
        let answers: BTreeMap<u64, Result<PeerAnswer, String>> =
            futures::future::join_all(asks).await.into_iter().collect();
        match decide(cfg.id, &voters, &answers) {
            Decision::Bootstrap => break,
            Decision::Refuse(why) => anyhow::bail!(why),
            Decision::Wait(why) => {
                let stale = logged
                    .as_ref()
                    .is_none_or(|(last, at)| *last != why || at.elapsed() >= LOG_EVERY);
                if stale {
                    tracing::warn!("waiting to bootstrap: {why}");
                    logged = Some((why, Instant::now()));
                }
                tokio::time::sleep(ASK_EVERY).await;
            }
        }
    }
    let cid = initialize::<S>(storage, &voters)?;
    tracing::info!(
        ?voters,
        cluster_id = format!("{cid:016x}"),
        "bootstrapped a new cluster"
    );
    Ok(())
}

/// One `ClusterInfo` call.
pub(crate) async fn ask(my_id: u64, addr: &str, tls: &ClientTls) -> Result<PeerAnswer, String> {
    let mut ep = Endpoint::from_shared(format!("{}://{addr}", tls.scheme()))
        .map_err(|e| format!("bad address {addr}: {e}"))?
        .connect_timeout(Duration::from_millis(800))
        .timeout(Duration::from_secs(2));
    if let Some(t) = tls.current() {
        ep = ep.tls_config(t).map_err(|e| format!("TLS settings: {e}"))?;
    }
    let channel = ep
        .connect()
        .await
        .map_err(|e| format!("unreachable at {addr}: {e}"))?;
    let info = RaftPeerClient::new(channel)
        .cluster_info(ClusterInfoRequest { from: my_id })
        .await
        .map_err(|e| format!("ClusterInfo failed: {}", e.message()))?
        .into_inner();
    Ok(PeerAnswer {
        cluster_id: info.cluster_id,
        commit_index: info.commit_index,
        members: info.members,
        format_version: info.format_version,
    })
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

    fn blank() -> Result<PeerAnswer, String> {
        Ok(PeerAnswer {
            cluster_id: 0,
            commit_index: 0,
            members: vec![],
            format_version: 3,
        })
    }

    fn down() -> Result<PeerAnswer, String> {
        Err("unreachable".into())
    }

    #[test]
    fn a_blank_node_waits_for_a_quorum_of_answers() {
        let voters = [1, 2, 3];
        let both_down = BTreeMap::from([(2, down()), (3, down())]);
        let Decision::Wait(why) = decide(1, &voters, &both_down) else {
            panic!("must wait while no peer answers");
        };
        assert!(
            why.contains("1 of 3") && why.contains("quorum of 2"),
            "{why}"
        );
        assert!(why.contains("2 (unreachable)"), "{why}");
        let one_up = BTreeMap::from([(2, blank()), (3, down())]);
        assert_eq!(decide(1, &voters, &one_up), Decision::Bootstrap);
        // Alone in its config: its own answer is a quorum.
        assert_eq!(decide(1, &[1], &BTreeMap::new()), Decision::Bootstrap);
        // Five voters need three answers.
        let five = BTreeMap::from([(2, blank()), (3, down()), (4, down()), (5, down())]);
        assert!(matches!(
            decide(1, &[1, 2, 3, 4, 5], &five),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn a_peer_that_remembers_the_node_refuses_it() {
        let cid = cluster_id_for(&[1, 2, 3]);
        let remembers = Ok(PeerAnswer {
            cluster_id: cid,
            commit_index: 9,
            members: vec![1, 2, 3],
            format_version: 3,
        });
        let answers = BTreeMap::from([(2, down()), (3, remembers)]);
        let Decision::Refuse(why) = decide(1, &[1, 2, 3], &answers) else {
            panic!("must refuse");
        };
        assert!(
            why.contains("wiped") && why.contains("members add 1"),
            "{why}"
        );
        // A founding node that never ran: the cluster does not list it yet.
        let forgot = Ok(PeerAnswer {
            cluster_id: cid,
            commit_index: 9,
            members: vec![2, 3],
            format_version: 3,
        });
        let answers = BTreeMap::from([(2, down()), (3, forgot)]);
        assert_eq!(decide(1, &[1, 2, 3], &answers), Decision::Bootstrap);
        // Another cluster's node.
        let other = Ok(PeerAnswer {
            cluster_id: cid ^ 1,
            commit_index: 9,
            members: vec![2, 3],
            format_version: 3,
        });
        let answers = BTreeMap::from([(2, blank()), (3, other)]);
        assert!(matches!(
            decide(1, &[1, 2, 3], &answers),
            Decision::Refuse(_)
        ));
    }
}
