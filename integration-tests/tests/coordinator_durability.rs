//! Durability, counted: every node makes each entry it acknowledges durable with
//! `fdatasync`/`fsync` before acknowledging it (DESIGN §2, issue 9 §1).
//!
//! sled 0.34 flushes its log with `sync_file_range` only, which flushes neither the disk's write
//! cache nor the file size. The coordinator's storage therefore `fdatasync`s sled's files after
//! each flush that must be durable. This test attaches `strace -f -c` to every node of a real
//! cluster while a pseudo-host acquires and releases its slot one write at a time, and counts
//! each node's `fdatasync`s against the entries the leader committed:
//!
//! - the leader proposes one entry at a time and syncs each before counting itself in the
//!   quorum: one `fdatasync` per entry;
//! - a follower syncs before it answers an append, but one that lags (the other follower made
//!   the quorum) may take several entries in one append and sync them once. So a follower is
//!   held to a quarter of the entries, still far above what the old code did.
//!
//! Without the storage's own syncs every node makes none (sled's flusher thread adds an `fsync`
//! every 500 ms, and those are not counted).
//!
//! It needs `strace` (`scripts/ensure-packages strace`) and the right to trace the nodes (a
//! child of the same user, or root); when either is missing it fails and says so.

mod common;

use common::{pseudo_host_opts, runtime, serial, Deadline};
use hotdeploy_integration_tests::cluster::Cluster;
use hotdeploy_integration_tests::coord_client::CoordClient;
use hotdeploy_integration_tests::strace::SyscallCounter;
use std::time::Duration;

const ELECTION: Duration = Duration::from_secs(30);
const WRITE_BUDGET: Duration = Duration::from_secs(20);
/// Acquire/release pairs in the traced window: two entries each.
const PAIRS: usize = 40;

#[test]
fn every_node_fdatasyncs_each_entry_it_acknowledges() {
    let _serial = serial();
    let deadline = Deadline::new("durability count", Duration::from_secs(120));
    let rt = runtime();
    let cluster = Cluster::start(3, &[("web", "1")], pseudo_host_opts());
    let leader = cluster.wait_leader(ELECTION, None);
    let client = CoordClient::new(&cluster.coordinator_addrs(), "test-durability");
    rt.block_on(async {
        client
            .register("h1", &["web"], WRITE_BUDGET)
            .await
            .unwrap_or_else(|e| panic!("register h1: {e:?}"));
        client
            .register("h2", &["web"], WRITE_BUDGET)
            .await
            .unwrap_or_else(|e| panic!("register h2: {e:?}"));
    });
    let leader_addr = cluster.addr(leader).to_string();
    let commit = || {
        rt.block_on(client.status_at(&leader_addr))
            .unwrap_or_else(|e| panic!("status of the leader: {e:?}"))
            .commit_index
    };

    deadline.check("attach strace to every node");
    let counters: Vec<(u64, SyscallCounter)> = cluster
        .ids()
        .into_iter()
        .map(|id| {
            let pid = cluster
                .pid(id)
                .unwrap_or_else(|| panic!("node {id} is not running"));
            let counter = SyscallCounter::attach(pid, cluster.dir(), &format!("node{id}"))
                .unwrap_or_else(|e| panic!("node {id}: {e}"));
            (id, counter)
        })
        .collect();
    let before = commit();
    rt.block_on(async {
        for _ in 0..PAIRS {
            let w = client.next_write();
            let slot = client
                .acquire(&w, "h1", "deploy", Duration::ZERO, WRITE_BUDGET)
                .await
                .unwrap_or_else(|e| panic!("acquire h1: {e:?}"));
            let w = client.next_write();
            client
                .release(&w, "h1", slot.token, WRITE_BUDGET)
                .await
                .unwrap_or_else(|e| panic!("release h1: {e:?}"));
        }
    });
    // Let the followers learn the last commit and persist the last entries' acknowledgements,
    // and the leader publish its commit index (it answers a write when it applies the entry,
    // and updates its status a moment later).
    std::thread::sleep(Duration::from_millis(500));
    let entries = commit() - before;
    deadline.check("detach strace");
    assert!(
        entries >= 2 * PAIRS as u64,
        "the leader committed only {entries} entries for {PAIRS} acquire/release pairs"
    );
    let mut report = Vec::new();
    for (id, counter) in counters {
        let counts = counter
            .finish()
            .unwrap_or_else(|e| panic!("node {id}: {e}"));
        let get = |name: &str| counts.get(name).copied().unwrap_or(0);
        report.push((id, get("fdatasync"), get("fsync"), get("sync_file_range")));
    }
    eprintln!(
        "{entries} entries committed; per node (id, fdatasync, fsync, sync_file_range): {report:?}"
    );
    for (id, fdatasync, _, _) in &report {
        let (role, least) = if *id == leader {
            ("leader", entries * 9 / 10)
        } else {
            ("follower", entries / 4)
        };
        assert!(
            *fdatasync >= least,
            "node {id} ({role}) made {fdatasync} fdatasync calls for {entries} committed \
             entries (at least {least} expected): it acknowledged entries that were not \
             durable. All nodes: {report:?}"
        );
    }
}
