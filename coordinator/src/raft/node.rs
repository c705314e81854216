//! The production node: a thread that owns the [`Core`] and feeds it from an inbox and a ticker.
//!
//! Everything that touches raft goes through this task's inbox ([`Msg`]): client proposals,
//! conf changes, ReadIndex requests, messages from peers, and transport reports. Between inbox
//! messages the task ticks the raft clock every `tick`. It takes up to [`BATCH`] inbox messages
//! per turn before handling `Ready`, so that a burst of proposals is batched into one append and
//! one sync. After every turn it publishes the node's status and applied index, and beats its
//! [`Progress`].
//!
//! A [`Fatal`](super::error::Fatal) error from the core ends the process with status 1: systemd
//! restarts it (a fatal entry stops it again, until it is upgraded). A panic on this thread ends
//! the process too ([`spawn_raft_thread`]): a node whose raft loop died must not keep serving
//! stale status.
//!
//! Deliberately absent: request deadlines (the service layer owns them) and any wall clock in
//! the state machine (this loop stamps the leader's own entries with the time).

use super::core::{Core, Network};
use super::progress::Progress;
use super::status::NodeStatus;
use super::transport::Transport;
use super::versions::Gate;
use super::NodeError;
use crate::state::{Response, StateMachine};
use raft::prelude::*;
use raft::SnapshotStatus;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Inbox messages processed per loop turn before handling Ready, so that a burst of proposals
/// is batched into one append + fsync.
const BATCH: usize = 256;

/// What the node task is asked to do.
pub(crate) enum Msg {
    Propose {
        data: Vec<u8>,
        gate: Gate,
        reply: oneshot::Sender<Result<Response, NodeError>>,
    },
    ConfChange {
        cc: ConfChangeV2,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<u64, NodeError>>,
    },
    /// A peer's message, with the command format version its frame reported.
    Step(Box<Message>, u32),
    Unreachable(u64),
    Snapshot(u64, SnapshotStatus),
}

/// The channels the node publishes on.
pub(crate) struct Outputs {
    pub status: watch::Sender<NodeStatus>,
    pub applied: watch::Sender<u64>,
    pub progress: Progress,
}

pub(crate) struct Node {
    core: Core<StateMachine>,
    transport: Transport,
    inbox: mpsc::Receiver<Msg>,
    tick: Duration,
    out: Outputs,
}

impl Network for Transport {
    fn send(&mut self, msgs: Vec<Message>) {
        Transport::send(self, msgs)
    }

    fn ensure_peer(&mut self, id: u64, address: &str) {
        Transport::ensure_peer(self, id, address)
    }

    fn remove_peer(&mut self, id: u64) {
        Transport::remove_peer(self, id)
    }

    fn address_of(&self, id: u64) -> Option<String> {
        self.advertised(id)
    }
}

impl Node {
    pub(crate) fn new(
        core: Core<StateMachine>,
        transport: Transport,
        inbox: mpsc::Receiver<Msg>,
        tick: Duration,
        out: Outputs,
    ) -> Self {
        Self {
            core,
            transport,
            inbox,
            tick,
            out,
        }
    }

    /// Runs the loop until every handle is dropped.
    pub(crate) async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.publish();
        loop {
            tokio::select! {
                _ = ticker.tick() => self.core.tick(),
                msg = self.inbox.recv() => {
                    let Some(msg) = msg else { return };
                    self.handle(msg);
                    for _ in 0..BATCH {
                        match self.inbox.try_recv() {
                            Ok(m) => self.handle(m),
                            Err(_) => break,
                        }
                    }
                }
            }
            match self
                .core
                .handle_ready(&mut self.transport, hotdeploy_common::time::now_ms())
            {
                Ok(Some(change)) => tracing::info!(
                    from = ?change.from,
                    to = ?change.to,
                    leader = change.leader,
                    term = change.term,
                    "raft role changed"
                ),
                Ok(None) => {}
                Err(fatal) => {
                    tracing::error!("fatal: {fatal}; exiting so that systemd restarts the node");
                    eprintln!("hotdeploy-coordinator: fatal: {fatal}");
                    std::process::exit(1);
                }
            }
            self.publish();
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Propose { data, gate, reply } => self.core.propose(data, gate, reply),
            Msg::ConfChange { cc, reply } => self.core.propose_conf_change(cc, reply),
            Msg::ReadIndex { reply } => self.core.read_index(reply),
            Msg::Step(m, version) => self.core.step(*m, version),
            Msg::Unreachable(id) => self.core.report_unreachable(id),
            Msg::Snapshot(id, status) => self.core.report_snapshot(id, status),
        }
    }

    /// Publishes status and the applied index (each only when it changed), and beats.
    fn publish(&mut self) {
        let status = self.core.status();
        self.out.status.send_if_modified(|old| {
            if *old != status {
                *old = status;
                true
            } else {
                false
            }
        });
        let applied = self.core.applied();
        self.out.applied.send_if_modified(|old| {
            if *old != applied {
                *old = applied;
                true
            } else {
                false
            }
        });
        self.out.progress.beat();
    }
}

/// Runs `body` on a thread of its own named `name`. A panic on it ends the whole process
/// (abort): raft-rs turns storage read errors into panics, and a process whose raft loop died
/// would otherwise keep serving stale status, with agents attached to a dead leader.
pub(crate) fn spawn_raft_thread(
    name: String,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(move || {
        let _guard = AbortOnPanic;
        body();
    })
}

/// Aborts the process when dropped during a panic.
struct AbortOnPanic;

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let name = std::thread::current().name().unwrap_or("raft").to_string();
            tracing::error!(thread = %name, "the raft thread panicked; aborting the process so that systemd restarts it");
            eprintln!("hotdeploy-coordinator: the raft thread {name} panicked; aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const CHILD: &str = "HOTDEPLOY_TEST_RAFT_PANIC_CHILD";

    /// Runs itself as a child process whose raft thread panics; the child must die at once
    /// (SIGABRT), not carry on with its other threads.
    #[test]
    fn a_panic_on_the_raft_thread_ends_the_process() {
        if std::env::var_os(CHILD).is_some() {
            let _t = spawn_raft_thread("raft-test".into(), || panic!("storage read failed"));
            // The main thread lives on; only the abort can end the process early.
            std::thread::sleep(Duration::from_secs(20));
            std::process::exit(0);
        }
        let exe = std::env::current_exe().expect("test executable");
        let started = std::time::Instant::now();
        let out = Command::new(exe)
            .args([
                "raft::node::tests::a_panic_on_the_raft_thread_ends_the_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        let stderr = String::from_utf8_lossy(&out.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc_sigabrt()),
            "the child must abort, got {:?}\n{stderr}",
            out.status
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the child ran on after the panic"
        );
        assert!(
            stderr.contains("raft thread raft-test panicked"),
            "the child says why it aborted:\n{stderr}"
        );
    }

    fn libc_sigabrt() -> i32 {
        6
    }
}
