//! `hd-bench lock --syscalls`: how many `fdatasync`/`fsync` each node makes per committed entry.
//!
//! Durability is a syscall, so it can be counted: an entry acknowledged to a client must have
//! been made durable on a majority, and on Linux only `fsync`/`fdatasync` (or `sync_file_range`
//! followed by one of them) flush a disk's write cache. This phase attaches `strace -f -c`
//! ([`crate::strace::SyscallCounter`]) to every node of a cluster, runs lock pairs, detaches,
//! and divides each node's sync calls by the number of raft entries the leader committed in the
//! window (its commit index before and after: our `Status.commit_index`, etcd's
//! `Maintenance.Status.raftIndex`). Entries include everything the window committed, for etcd
//! its lease and lock bookkeeping too, so the ratio is per log entry, not per client call.
//!
//! strace stops every thread at every syscall, so the latencies of this phase are meaningless
//! and are not reported; it runs after the measured phases, on the same cluster.

use crate::strace::{SyscallCounter, SyscallCounts};
use anyhow::{anyhow, Result};
use serde::Serialize;
use std::path::Path;

/// One node's counts over the window.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSyscalls {
    /// The node's name (`node 1`, `e2`).
    pub node: String,
    /// `leader` or `follower`.
    pub role: String,
    /// `fdatasync` calls.
    pub fdatasync: u64,
    /// `fsync` calls.
    pub fsync: u64,
    /// `sync_file_range` calls (not durable on their own).
    pub sync_file_range: u64,
    /// Write calls (`pwrite64`, `write`, `writev`, `pwritev`), for context: this counts network
    /// writes too.
    pub writes: u64,
    /// (`fdatasync` + `fsync`) per committed entry.
    pub syncs_per_entry: Option<f64>,
}

/// One window: a number of clients doing lock pairs under strace.
#[derive(Debug, Clone, Serialize)]
pub struct SyscallWindow {
    /// `hotdeploy` or `etcd`.
    pub system: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Lock pairs done in the window (all clients).
    pub pairs: usize,
    /// Raft entries the leader committed in the window.
    pub entries: u64,
    /// Per node, leader first.
    pub nodes: Vec<NodeSyscalls>,
}

/// A node to trace: name, role, pid.
pub struct Traced {
    pub node: String,
    pub role: String,
    pub pid: u32,
}

/// strace attached to every node of a cluster.
pub struct Tracing {
    counters: Vec<(String, String, SyscallCounter)>,
}

impl Tracing {
    /// Attaches to every node; the strace files go into `dir`.
    pub fn attach(nodes: Vec<Traced>, dir: &Path) -> Result<Tracing> {
        let mut counters = Vec::with_capacity(nodes.len());
        for n in nodes {
            let label = n.node.replace(' ', "-");
            let c = SyscallCounter::attach(n.pid, dir, &label)
                .map_err(|e| anyhow!("tracing {}: {e}", n.node))?;
            counters.push((n.node, n.role, c));
        }
        Ok(Tracing { counters })
    }

    /// Detaches from every node and returns the window's counts.
    pub fn finish(
        self,
        system: &str,
        clients: usize,
        pairs: usize,
        entries: u64,
    ) -> Result<SyscallWindow> {
        let mut nodes = Vec::with_capacity(self.counters.len());
        for (node, role, counter) in self.counters {
            let counts = counter
                .finish()
                .map_err(|e| anyhow!("tracing {node}: {e}"))?;
            nodes.push(node_syscalls(node, role, &counts, entries));
        }
        nodes.sort_by_key(|n| n.role != "leader");
        Ok(SyscallWindow {
            system: system.into(),
            clients,
            pairs,
            entries,
            nodes,
        })
    }
}

fn node_syscalls(node: String, role: String, c: &SyscallCounts, entries: u64) -> NodeSyscalls {
    let get = |name: &str| c.get(name).copied().unwrap_or(0);
    let (fdatasync, fsync) = (get("fdatasync"), get("fsync"));
    NodeSyscalls {
        node,
        role,
        fdatasync,
        fsync,
        sync_file_range: get("sync_file_range"),
        writes: get("pwrite64") + get("write") + get("writev") + get("pwritev"),
        syncs_per_entry: (entries > 0).then(|| (fdatasync + fsync) as f64 / entries as f64),
    }
}
