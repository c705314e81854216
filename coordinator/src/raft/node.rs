//! The production node: a thread that owns the [`Core`] and feeds it from an inbox and a ticker.
//!
//! Everything that touches raft goes through this task's inbox ([`Msg`]): client proposals,
//! conf changes, ReadIndex requests, messages from peers, and transport reports. Between inbox
//! messages the task ticks the raft clock every `tick`. It takes up to [`BATCH`] inbox messages
//! per turn before handling `Ready`, so that a burst of proposals is batched into one append and
//! one sync. After every turn it publishes the node's status and applied index, and beats its
//! [`Progress`].
//!
//! # One thread, one runtime
//!
//! The node runs on a thread of its own with a current-thread tokio runtime
//! ([`start_raft_thread`]): it blocks in `fdatasync` once per Ready that must be durable, which
//! on a small machine would otherwise stall one of the few runtime workers serving gRPC. The
//! outbound peer streams, and the HTTP/2 connections under them, run on that same runtime (the
//! transport is given its handle), so a message the node sends reaches its socket on this thread
//! without a hand-off to another one.
//!
//! That makes the order within a Ready matter: a stream task runs only while the node awaits.
//! So the node runs the core's three Ready stages itself ([`Core::send_ready`],
//! [`Core::persist_ready`], [`Core::finish_ready`]) and yields once between them: after the
//! leader's appends are sent and before it blocks in `fdatasync`, so that they leave while it
//! persists and the followers persist at the same time; and after the `persisted_messages`
//! (votes, append responses) are sent, so that they are on the wire before the light ready's
//! work. The core stays synchronous, and the same for the simulator; nothing reaches it during a
//! yield (the inbox waits for the next turn). A yield never moves a `persisted_message` ahead of
//! the sync: those are sent only by `persist_ready`, after it.
//!
//! A [`Fatal`](super::error::Fatal) error from the core ends the process with status 1: systemd
//! restarts it (a fatal entry stops it again, until it is upgraded). A panic on this thread ends
//! the process too ([`spawn_raft_thread`]): a node whose raft loop died must not keep serving
//! stale status.
//!
//! Deliberately absent: request deadlines (the service layer owns them) and any wall clock in
//! the state machine (this loop stamps the leader's own entries with the time).

use super::core::{Core, Network, RoleChange};
use super::error::Fatal;
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
/// is batched into one append + sync.
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

    /// Runs the loop until every handle is dropped. Runs on the raft thread's runtime
    /// ([`start_raft_thread`]), where the transport's peer streams run too.
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
            match self.handle_ready().await {
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

    /// Handles a Ready (if raft has one) in the core's three stages, yielding between them so
    /// that the peer streams on this thread send what the stage before sent (see the module
    /// docs); then looks at the role.
    async fn handle_ready(&mut self) -> Result<Option<RoleChange>, Fatal> {
        let now_ms = hotdeploy_common::time::now_ms();
        if let Some(sent) = self.core.send_ready(&mut self.transport, now_ms)? {
            if sent.sent_before_sync() {
                tokio::task::yield_now().await;
            }
            let persisted = self.core.persist_ready(sent, &mut self.transport)?;
            if persisted.answered() {
                tokio::task::yield_now().await;
            }
            self.core.finish_ready(persisted, &mut self.transport)?;
        }
        Ok(self.core.observe_role())
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

/// Starts raft thread `raft-<id>` with its current-thread runtime, and returns that runtime's
/// handle (for the transport, whose peer streams run there) and where to send the node it is
/// to run. The runtime lives and dies on that thread: if no node comes (start-up failed after
/// this), the thread ends and drops it there. A panic on the thread ends the process
/// ([`spawn_raft_thread`]).
pub(crate) fn start_raft_thread(
    id: u64,
) -> anyhow::Result<(tokio::runtime::Handle, std::sync::mpsc::SyncSender<Node>)> {
    let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
    let (node_tx, node_rx) = std::sync::mpsc::sync_channel::<Node>(1);
    spawn_raft_thread(format!("raft-{id}"), move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = handle_tx.send(Err(e));
                return;
            }
        };
        let _ = handle_tx.send(Ok(rt.handle().clone()));
        if let Ok(node) = node_rx.recv() {
            rt.block_on(node.run());
        }
    })
    .map_err(|e| anyhow::anyhow!("cannot start the raft thread: {e}"))?;
    let handle = handle_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the raft thread ended at start"))?
        .map_err(|e| anyhow::anyhow!("cannot build the raft node's runtime: {e}"))?;
    Ok((handle, node_tx))
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
