//! The coordinator benchmarks behind `hd-bench` (DESIGN §9: benchmarks are not timed tests; each
//! has a command in the README and a results table in BENCHMARKS.md).
//!
//! Six questions are asked of a real 3-node cluster on loopback, built in release mode, with
//! every Ready that must be durable `fdatasync`ed (see `coordinator/src/raft/sled_files.rs`):
//!
//! - [`lock`]: how long one acquire + release round trip of the deploy lock takes, from 1 client
//!   and from 32 concurrent clients, and how many pairs per second the cluster sustains. The
//!   same run measures etcd 3.4's lock/unlock (its v3 concurrency API) on an equally shaped
//!   cluster, so the comparison is made on the same machine at the same moment.
//! - [`failover`]: how long after `kill -9` of the leader a client that retries against every
//!   endpoint (following leader hints) gets its next acquire through.
//! - [`memory`]: the resident set of the leader and the followers once 10,000 hosts are
//!   registered.
//! - [`waiters`]: 1,000 `AcquireSlot` calls waiting at once in one 1,000-host group: their
//!   grant latency and the leader's CPU while the queue drains.
//! - [`rollout`]: how close a rollout of N simulated agents (the real agent logic on
//!   [`sim_host`]'s fixed-cost host, wired by [`sim_agent`]) comes to its physical floor
//!   ceil(N/B) × (restart + verify).
//! - [`scale`]: N agents registered and holding heartbeat streams: the leader's CPU and RSS
//!   and the lock's p99 under that load, ramped to the largest N held with p99 < 50 ms.
//!
//! The pieces, one job each:
//!
//! - [`stats`] turns latency samples into percentiles and throughput.
//! - [`hd_client`] talks to our coordinator over gRPC: pseudo-host registration, one lock pair,
//!   and a retrying client that follows leader hints.
//! - [`etcd_proto`] hand-writes the handful of etcd messages we need as prost structs, so no
//!   system `protoc` and no etcd client crate are needed; [`etcd_client`] calls them with
//!   `tonic::client::Grpc`.
//! - [`etcd_cluster`] runs 3 `etcd` members on their own loopback IPs and temp dirs.
//! - [`driver`] runs N concurrent clients through warm-up and a measured phase.
//! - [`setup`] starts our cluster the way every benchmark wants it.
//! - [`machine`] describes the machine the numbers came from.
//! - [`report`] prints the human tables; the JSON is the serde form of each report struct.
//! - [`cleanup`] kills every child when the bench is interrupted by a signal.
//! - [`costs`] reads each node's context switches and CPU time per committed entry from
//!   `/proc` (the write path's hand-offs and work, barely moved by the machine's load).
//! - [`log_entries`] reads the members' commit index and applied proposals by kind from
//!   `/metrics`: what a run cost the log, per host (`rollout`).
//! - [`syscalls`] counts each node's `fdatasync`/`fsync` per committed entry under strace
//!   (`lock --syscalls`).
//!
//! Every process is owned by a harness guard ([`crate::proc::ChildGuard`], through
//! [`crate::cluster::Cluster`] or [`etcd_cluster::EtcdCluster`]), so a bench that fails halfway
//! still kills what it started. Every loop is bounded by a count or a deadline.

pub mod cleanup;
pub mod costs;
pub mod driver;
pub mod etcd_client;
pub mod etcd_cluster;
pub mod etcd_proto;
pub mod failover;
pub mod hd_client;
pub mod lock;
pub mod log_entries;
pub mod machine;
pub mod memory;
pub mod report;
pub mod rollout;
pub mod rollout_timeline;
pub mod scale;
pub mod setup;
pub mod sim_agent;
pub mod sim_host;
pub mod stats;
pub mod syscalls;
pub mod waiters;
