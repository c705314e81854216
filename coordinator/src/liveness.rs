//! Liveness of agents, judged by the leader alone (DESIGN §2, §3).
//!
//! Heartbeats are kept in the leader's memory and are never log entries. The leader proposes a
//! command only when a host's replicated facts change:
//! - `MarkUnreachable` when no heartbeat arrived for `unreachable_after`;
//! - `MarkReachable{report}` when an unreachable host heartbeats again, carrying its latest
//!   report so that reconnecting never hides a bad state;
//! - `UpdateReport` when a reachable host reports different health, rotation or release.
//!
//! FleetLock's lock-only hosts have no agent and send no heartbeats; liveness leaves them alone.
//!
//! A new leader knows no heartbeats yet, so it gives every host a fresh grace period of
//! `unreachable_after` from the moment it took office before marking anything unreachable.
//! At most one proposal per host is in flight at a time.
//!
//! A report the state machine refuses (say, a release id that is not a valid name) changes
//! nothing, so the next heartbeat would find the facts still different and propose it again:
//! one log entry per heartbeat, forever. The refused report is remembered per host (in memory,
//! like the heartbeats) and not proposed again until the agent reports something else; the
//! refusal is logged once.

use crate::raft::RaftNode;
use crate::state::{Command, Host, Proposal, Reachability, Report};
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
    /// The last report the state machine refused, per host.
    refused: Mutex<HashMap<String, Report>>,
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
            refused: Mutex::default(),
            leader_since: Mutex::default(),
        })
    }

    /// Records a heartbeat (or registration) from `host` with its report, and proposes a change
    /// if the replicated facts differ.
    pub fn observe(self: &Arc<Self>, host: &str, report: Report) {
        let change = {
            let st = self.node.state();
            match st.host(host) {
                Some(h) => self.judge(h, report),
                None => None,
            }
        };
        if let Some(command) = change {
            self.propose(host, command);
        }
    }

    /// Records a heartbeat from `host` (as the state, read by the caller, has it) with its
    /// report, and returns the command that brings the replicated facts up to it, if any: for
    /// the caller to [`Liveness::propose`] once its state guard is dropped. A heartbeat stream
    /// reads the state once per beat for this and for its answer.
    ///
    /// Per beat, and so allocation-free when nothing changed: the host's entry in the table is
    /// updated in place.
    pub fn judge(&self, host: &Host, report: Report) -> Option<Command> {
        if !self.node.is_leader() {
            return None;
        }
        let now = Instant::now();
        {
            let mut seen = lock(&self.seen);
            match seen.get_mut(host.id.as_str()) {
                Some(last) => *last = now,
                None => {
                    seen.insert(host.id.clone(), now);
                }
            }
        }
        if lock(&self.refused).get(host.id.as_str()) == Some(&report) {
            return None;
        }
        let same = host.health == report.health
            && host.rotation == report.rotation
            && host.release == report.release
            && host.phase == report.phase;
        match host.reachability {
            Reachability::Unreachable => Some(Command::MarkReachable {
                host: host.id.clone(),
                report,
            }),
            Reachability::Reachable if !same => Some(Command::UpdateReport {
                host: host.id.clone(),
                report,
            }),
            Reachability::Reachable => None,
        }
    }

    /// Age of the last heartbeat this leader saw from `host`, in ms.
    pub fn last_seen_ms(&self, host: &str) -> Option<u64> {
        lock(&self.seen)
            .get(host)
            .map(|t| t.elapsed().as_millis() as u64)
    }

    /// Proposes `command` for `host`, unless one of its proposals is in flight already.
    pub fn propose(self: &Arc<Self>, host: &str, command: Command) {
        if !lock(&self.inflight).insert(host.to_owned()) {
            return;
        }
        let this = self.clone();
        let host = host.to_owned();
        let report = match &command {
            Command::UpdateReport { report, .. } | Command::MarkReachable { report, .. } => {
                Some(report.clone())
            }
            _ => None,
        };
        tokio::spawn(async move {
            let p = Proposal::new(None, now_ms(), "leader", command);
            match this.node.propose(p, PROPOSE_TIMEOUT).await {
                Ok(Ok(_)) => {
                    lock(&this.refused).remove(&host);
                }
                Ok(Err(e)) => {
                    tracing::warn!(%host, "the report of {host} was refused: {e}; it is not proposed again until it changes");
                    if let Some(report) = report {
                        lock(&this.refused).insert(host.clone(), report);
                    }
                }
                Err(e) => tracing::debug!(%host, "liveness proposal failed: {e}"),
            }
            lock(&this.inflight).remove(&host);
        });
    }

    /// Runs the periodic check until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let period = (self.cfg.heartbeat_interval / 2).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => self.check(),
                _ = &mut shutdown => return,
            }
        }
    }

    fn check(self: &Arc<Self>) {
        let leader = self.node.is_leader();
        let since = {
            let mut ls = lock(&self.leader_since);
            match (leader, *ls) {
                (false, _) => {
                    *ls = None;
                    lock(&self.seen).clear();
                    lock(&self.refused).clear();
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
                // FleetLock's lock-only hosts send no heartbeats and are never judged by them.
                .filter(|h| !h.is_lock_only())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::test_node;
    use crate::state::{Health, Rotation};
    use hotdeploy_common::config::MaxUnavailable;

    fn report(release: &str) -> Report {
        Report {
            health: Health::Healthy,
            rotation: Rotation::InRotation,
            release: release.into(),
            phase: String::new(),
        }
    }

    /// A report the state machine refuses is proposed once, not on every heartbeat.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_report_is_not_proposed_again_on_every_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_node::config(dir.path(), "127.0.0.1:1");
        let node = test_node::start(&cfg).await;
        let propose = |command| {
            node.propose(
                Proposal::new(None, now_ms(), "operator/test", command),
                Duration::from_secs(10),
            )
        };
        propose(Command::SetGroupPolicy {
            group: "web".into(),
            max_unavailable: Some(MaxUnavailable::parse("1").unwrap()),
            allow_zero_available: None,
        })
        .await
        .unwrap()
        .unwrap();
        propose(Command::Register {
            host: "web-1".into(),
            groups: vec!["web".into()],
            address: String::new(),
            report: report("v1"),
        })
        .await
        .unwrap()
        .unwrap();
        let liveness = Liveness::new(node.clone(), LivenessConfig::default());
        let before = node.state().applied_index();
        // "bad release!" is not a valid release id: the machine refuses the UpdateReport.
        for _ in 0..30 {
            liveness.observe("web-1", report("bad release!"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let entries = node.state().applied_index() - before;
        assert!(
            (1..=2).contains(&entries),
            "30 heartbeats with a refused report made {entries} log entries"
        );
        assert_eq!(node.state().host("web-1").unwrap().release, "v1");
        // A new, valid report is proposed at once.
        liveness.observe("web-1", report("v2"));
        let mut applied = node.subscribe_applied();
        tokio::time::timeout(
            Duration::from_secs(10),
            applied.wait_for(|_| {
                node.state()
                    .host("web-1")
                    .is_some_and(|h| h.release == "v2")
            }),
        )
        .await
        .expect("the valid report applies")
        .unwrap();
    }

    /// The periodic check ends on the shutdown signal rather than running until it is aborted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_check_ends_on_the_shutdown_signal() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_node::config(dir.path(), "127.0.0.1:1");
        let node = test_node::start(&cfg).await;
        let liveness = Liveness::new(node, LivenessConfig::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(liveness.run(async {
            let _ = stopped.await;
        }));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!running.is_finished(), "the check ended before shutdown");
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the check ends on shutdown")
            .unwrap();
    }
}
