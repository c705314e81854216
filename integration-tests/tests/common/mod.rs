//! Helpers shared by the coordinator's multi-process tests (`coordinator_*.rs`,
//! `rollout_cluster.rs`).
//!
//! - [`serial`]: the coordinator cluster tests (every `coordinator_*.rs`, and
//!   `rollout_cluster.rs`) run one at a time, under `cargo test` and `cargo nextest` alike. Each
//!   starts a cluster of three or four debug-built coordinators with short raft timeouts, and CI
//!   runs them on two cores beside other multi-process tests; two clusters at once would make
//!   elections and leases compete for the CPU. The lock is a file lock across processes ([`TestLock`]); under nextest the
//!   test group `coordinator-cluster` (`max-threads = 1`) keeps such tests from even starting
//!   together, so nobody waits.
//! - [`Deadline`]: every test has an overall deadline, checked between steps; every step has
//!   its own bound too.
//! - [`runtime`]: a tokio runtime per test for the gRPC pseudo-hosts, while the test thread
//!   blocks on the harness (processes, `hotdeployctl`).
//! - [`fleet_state`]: hosts, groups and locks as `hotdeployctl -o json` shows them, without the
//!   fields that change by themselves (ages), for before/after comparisons.

#![allow(dead_code)]

use hotdeploy_integration_tests::cluster::{Cluster, ClusterOpts};
use hotdeploy_integration_tests::test_lock::TestLock;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Holds the coordinator cluster tests' lock: one such test at a time, across processes.
pub fn serial() -> TestLock {
    TestLock::acquire(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        "coordinator-cluster",
    )
}

/// A multi-threaded tokio runtime for one test's gRPC clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("test-grpc")
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build the test runtime: {e}"))
}

/// Cluster options for tests whose hosts are gRPC pseudo-hosts that send no heartbeats: they
/// must not turn unreachable (and so use up their group's budget) during the test.
pub fn pseudo_host_opts() -> ClusterOpts {
    ClusterOpts {
        unreachable_after: "1h".into(),
        ..ClusterOpts::default()
    }
}

/// A test's overall deadline.
pub struct Deadline {
    start: Instant,
    limit: Duration,
    test: &'static str,
}

impl Deadline {
    pub fn new(test: &'static str, limit: Duration) -> Deadline {
        Deadline {
            start: Instant::now(),
            limit,
            test,
        }
    }

    /// Panics if the deadline has passed, naming the step about to start.
    pub fn check(&self, step: &str) {
        let elapsed = self.start.elapsed();
        assert!(
            elapsed < self.limit,
            "{}: overall deadline of {:?} passed ({elapsed:?}) before: {step}",
            self.test,
            self.limit
        );
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.limit.saturating_sub(self.start.elapsed())
    }

    /// `want`, or what is left if that is less.
    pub fn bound(&self, want: Duration) -> Duration {
        want.min(self.remaining())
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// Removes the fields that change on their own (`last_seen_ms`, `age_ms`) from every object of
/// a JSON value, recursively.
pub fn strip_volatile(mut value: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("last_seen_ms");
                map.remove("age_ms");
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut value);
    value
}

/// `hosts list`, `groups list` and `locks list` (JSON, volatile fields removed), asked through
/// `endpoints` (comma separated) so that a test can choose which nodes answer.
pub fn fleet_state_at(cluster: &Cluster, endpoints: &str) -> Value {
    let mut state = serde_json::Map::new();
    for (key, args) in [
        ("hosts", ["-o", "json", "hosts", "list"]),
        ("groups", ["-o", "json", "groups", "list"]),
        ("locks", ["-o", "json", "locks", "list"]),
    ] {
        let output = cluster.ctl_at(endpoints, &args, Duration::from_secs(40));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "hotdeployctl {} failed ({}): {}\n{}",
            args[2..].join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr),
            cluster.all_logs()
        );
        let parsed: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("hotdeployctl {key} list printed bad JSON ({e}): {stdout}"));
        state.insert(key.to_string(), strip_volatile(parsed));
    }
    Value::Object(state)
}

/// [`fleet_state_at`] through every node.
pub fn fleet_state(cluster: &Cluster) -> Value {
    fleet_state_at(cluster, &cluster.endpoints())
}

/// Asserts that two [`fleet_state`]s are equal, printing both when not.
pub fn assert_same_state(before: &Value, after: &Value, what: &str) {
    assert!(
        before == after,
        "{what}: the fleet state changed\nbefore: {}\nafter:  {}",
        pretty(before),
        pretty(after)
    );
}

pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// The leader id a `status -o json` names (`null` and 0 are none).
pub fn leader_of(status: &Value) -> Option<u64> {
    status["leader"].as_u64().filter(|&l| l != 0)
}

/// The member ids a `status -o json` lists, sorted.
pub fn member_ids(status: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = status["members"]
        .as_array()
        .map(|members| members.iter().filter_map(|m| m["id"].as_u64()).collect())
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// The `locks list` entry of `host`, if it holds a slot.
pub fn lock_of<'a>(locks: &'a Value, host: &str) -> Option<&'a Value> {
    locks
        .as_array()
        .and_then(|all| all.iter().find(|l| l["host"] == host))
}

/// A failed CLI run's output, for messages.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "exit {}; stdout: {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

/// Runs `hotdeployctl ARGS` and panics with its output and the logs unless it succeeds.
pub fn ctl_ok(cluster: &Cluster, args: &[&str]) -> std::process::Output {
    let output = cluster.ctl(args);
    assert!(
        output.status.success(),
        "hotdeployctl {} failed: {}\n{}",
        args.join(" "),
        output_text(&output),
        cluster.all_logs()
    );
    output
}
