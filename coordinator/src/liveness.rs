//! Liveness of agents, judged by the leader alone (DESIGN §2, §3).
//!
//! Heartbeats are kept in the leader's memory and are never log entries. The leader proposes a
//! command only when a host's replicated facts change:
//! - `MarkUnreachable` when no heartbeat arrived for `unreachable_after`;
//! - `MarkReachable{report}` when an unreachable host heartbeats again, carrying its latest
//!   report so that reconnecting never hides a bad state;
//! - `UpdateReport` when a reachable host reports different health, rotation or release.
//!
//! A new leader knows no heartbeats yet, so it gives every host a fresh grace period of
//! `unreachable_after` from the moment it took office before marking anything unreachable.
//! At most one proposal per host is in flight at a time.

use crate::raft::RaftNode;
use crate::state::{Command, Proposal, Reachability, Report};
use hotdeploy_common::config::LivenessConfig;
use hotdeploy_common::time::now_ms;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a liveness proposal may take before it is given up (and retried on the next check).
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The leader's heartbeat table.
pub struct Liveness {
    node: RaftNode,
    cfg: LivenessConfig,
    seen: Mutex<HashMap<String, Instant>>,
    inflight: Mutex<HashSet<String>>,
    /// When this node last became leader; `None` while it is not.
    leader_since: Mutex<Option<Instant>>,
}

impl Liveness {
    pub fn new(node: RaftNode, cfg: LivenessConfig) -> Arc<Self> {
        Arc::new(Self {
            node,
            cfg,
            seen: Mutex::default(),
            inflight: Mutex::default(),
            leader_since: Mutex::default(),
        })
    }

    /// Records a heartbeat (or registration) from `host` with its report, and proposes a change
    /// if the replicated facts differ.
    pub fn observe(self: &Arc<Self>, host: &str, report: Report) {
        if !self.node.status().is_leader() {
            return;
        }
        lock(&self.seen).insert(host.to_owned(), Instant::now());
        let command = {
            let st = self.node.state();
            let Some(h) = st.host(host) else { return };
            let same = h.health == report.health
                && h.rotation == report.rotation
                && h.release == report.release
                && h.phase == report.phase;
            match h.reachability {
                Reachability::Unreachable => Command::MarkReachable {
                    host: host.to_owned(),
                    report,
                },
                Reachability::Reachable if !same => Command::UpdateReport {
                    host: host.to_owned(),
                    report,
                },
                Reachability::Reachable => return,
            }
        };
        self.propose(host, command);
    }

    /// Age of the last heartbeat this leader saw from `host`, in ms.
    pub fn last_seen_ms(&self, host: &str) -> Option<u64> {
        lock(&self.seen)
            .get(host)
            .map(|t| t.elapsed().as_millis() as u64)
    }

    fn propose(self: &Arc<Self>, host: &str, command: Command) {
        if !lock(&self.inflight).insert(host.to_owned()) {
            return;
        }
        let this = self.clone();
        let host = host.to_owned();
        tokio::spawn(async move {
            let p = Proposal::new(None, now_ms(), "leader", command);
            if let Err(e) = this.node.propose(p, PROPOSE_TIMEOUT).await {
                tracing::debug!(%host, "liveness proposal failed: {e}");
            }
            lock(&this.inflight).remove(&host);
        });
    }

    /// Runs the periodic check until the process ends.
    pub async fn run(self: Arc<Self>) {
        let period = (self.cfg.heartbeat_interval / 2).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            self.check();
        }
    }

    fn check(self: &Arc<Self>) {
        let leader = self.node.status().is_leader();
        let since = {
            let mut ls = lock(&self.leader_since);
            match (leader, *ls) {
                (false, _) => {
                    *ls = None;
                    lock(&self.seen).clear();
                    return;
                }
                (true, None) => {
                    tracing::info!(
                        "leader: every host gets a fresh grace period of {:?}",
                        self.cfg.unreachable_after
                    );
                    *ls = Some(Instant::now());
                    return;
                }
                (true, Some(t)) => t,
            }
        };
        let stale: Vec<String> = {
            let st = self.node.state();
            let seen = lock(&self.seen);
            st.hosts()
                .filter(|h| h.reachability == Reachability::Reachable)
                .filter(|h| {
                    let last = seen.get(&h.id).copied().unwrap_or(since).max(since);
                    last.elapsed() > self.cfg.unreachable_after
                })
                .map(|h| h.id.clone())
                .collect()
        };
        for host in stale {
            tracing::warn!(%host, "no heartbeat for {:?}: marking unreachable", self.cfg.unreachable_after);
            self.propose(&host, Command::MarkUnreachable { host: host.clone() });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
