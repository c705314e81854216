//! Smoke test of the cluster harness against the real coordinator binaries.
//!
//! Ignored by default while the coordinator is being written; run with
//! `cargo build --workspace --bins && cargo test -p hotdeploy-integration-tests --test cluster_smoke -- --ignored`.

use hotdeploy_integration_tests::cluster::{Cluster, ClusterOpts};
use std::time::Duration;

#[test]
#[ignore = "needs the coordinator binaries: cargo build --workspace --bins"]
fn three_nodes_elect_a_leader_and_reelect_after_a_partition() {
    let cluster = Cluster::start(3, &[("web", "1")], ClusterOpts::with_proxies());
    let leader = cluster.wait_leader(Duration::from_secs(30), None);
    let status = cluster.ctl_json(&["status"]);
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );

    cluster.partition(leader);
    let next = cluster.wait_leader(Duration::from_secs(30), Some(leader));
    assert_ne!(next, leader);
    cluster.heal();
    cluster.wait_leader(Duration::from_secs(30), None);
}

#[test]
#[ignore = "needs the coordinator binaries: cargo build --workspace --bins"]
fn a_killed_leader_is_replaced_and_rejoins_after_restart() {
    let mut cluster = Cluster::start(3, &[("web", "1")], ClusterOpts::default());
    let leader = cluster.wait_leader(Duration::from_secs(30), None);
    cluster.kill(leader);
    let next = cluster.wait_leader(Duration::from_secs(30), Some(leader));
    cluster.restart(leader);
    let status = cluster.status_of(leader).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.get("term").is_some(), "{status}");
    assert_eq!(cluster.wait_leader(Duration::from_secs(30), None), next);
}
