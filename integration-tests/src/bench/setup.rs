//! Our 3-node cluster, set up the way every benchmark wants it.
//!
//! The cluster comes from the harness ([`Cluster::start`]): real release binaries, each node on
//! its own 127.x address with its own data dir, insecure transport on loopback, default raft
//! timings (100 ms tick, 10 election ticks), and sled flushing every Ready. On top of that:
//!
//! - `[liveness] unreachable_after = "1h"`: pseudo-hosts never heartbeat, and must stay
//!   reachable (an unreachable host counts against its group's budget).
//! - Groups are seeded from the config (`[groups.NAME] max_unavailable`, plus
//!   `allow_zero_available = true` where asked: a group whose only host takes the slot would
//!   otherwise be refused by the zero-available rule, DESIGN §3). [`check_groups`] confirms from
//!   the leader's `Status` that the policy is in force before any number is taken.
//!
//! [`wait_caught_up`] waits until every node has applied what the leader had committed (a
//! restarted node must be current before the next kill; followers must be current before their
//! memory is read). [`node_pid`] finds a node's pid from its command line (its config path is unique), for RSS.

use super::hd_client::HdClient;
use crate::cluster::{Cluster, ClusterOpts};
use crate::proc;
use crate::toml_config;
use anyhow::{bail, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// How long a fresh cluster may take to elect its first leader.
pub const ELECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// A group to seed: name, `max_unavailable`, `allow_zero_available`.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// The group's name.
    pub name: String,
    /// `max_unavailable` as written in the config ("1", "10%").
    pub max_unavailable: String,
    /// `allow_zero_available`.
    pub allow_zero_available: bool,
}

/// Starts a 3-node cluster seeded with `groups`; returns it and its leader's id (found with
/// `hotdeployctl status -o json`, confirmed by the leader itself).
pub fn start_cluster(groups: &[GroupSpec]) -> (Cluster, u64) {
    let opts = ClusterOpts {
        unreachable_after: "1h".into(),
        ..ClusterOpts::default()
    };
    let cluster = start_cluster_with(groups, opts);
    let leader = cluster.wait_leader(ELECTION_TIMEOUT, None);
    (cluster, leader)
}

/// Starts a 3-node cluster with `opts`, seeded with `groups` (their budgets, and
/// `allow_zero_available` added to `opts.extra`), and tracked for the bench's cleanup.
pub fn start_cluster_with(groups: &[GroupSpec], mut opts: ClusterOpts) -> Cluster {
    let mut extra = String::new();
    for g in groups.iter().filter(|g| g.allow_zero_available) {
        extra.push_str(&format!(
            "[groups.{}]\nallow_zero_available = true\n",
            g.name
        ));
    }
    opts.extra.extend(toml_config::table(&extra));
    let seeds: Vec<(&str, &str)> = groups
        .iter()
        .map(|g| (g.name.as_str(), g.max_unavailable.as_str()))
        .collect();
    let cluster = Cluster::start(3, &seeds, opts);
    super::cleanup::track(cluster.dir());
    cluster
}

/// Checks, at the leader, that every group in `groups` exists with the asked
/// `allow_zero_available`.
pub async fn check_groups(client: &mut HdClient, groups: &[GroupSpec]) -> Result<()> {
    let status = client.status().await?;
    for g in groups {
        let Some(info) = status.groups.iter().find(|i| i.name == g.name) else {
            bail!("group {} is missing from the leader's status", g.name);
        };
        if info.allow_zero_available != g.allow_zero_available {
            bail!(
                "group {}: allow_zero_available is {}, the config asked for {}",
                g.name,
                info.allow_zero_available,
                g.allow_zero_available
            );
        }
    }
    Ok(())
}

/// The pid of node `id`'s coordinator process, found by its config path on the command line.
pub fn node_pid(cluster: &Cluster, id: u64) -> Option<u32> {
    let config = cluster.config_path(id);
    let pids = proc::pids_matching(&config.to_string_lossy());
    // hotdeployctl never names a config file, so the one match is the daemon.
    (pids.len() == 1).then(|| pids[0])
}

/// Waits until every node in `nodes` has applied everything the leader at `leader` had
/// committed when the wait began, and names that leader.
pub async fn wait_caught_up(
    nodes: &[(u64, SocketAddr)],
    leader: SocketAddr,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut admin = HdClient::new(leader, "bench-catch-up")?;
    let target = admin.status().await?;
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut behind = Vec::new();
        for (id, addr) in nodes {
            match HdClient::new(*addr, "bench-catch-up")?.status().await {
                Ok(s) if s.applied_index >= target.commit_index && s.leader == target.node => {}
                Ok(s) => behind.push(format!(
                    "node {id}: applied {} of {}, leader {}",
                    s.applied_index, target.commit_index, s.leader
                )),
                Err(e) => behind.push(format!("node {id}: {e:#}")),
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        last = behind.join("; ");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nodes did not catch up within {timeout:?}: {last}")
}
