//! Wakes an agent's heartbeat stream only when its own host's answer may have changed.
//!
//! The leader pushes a heartbeat answer unasked when a host's slot or rollout assignment
//! changes (`heartbeat.rs`). Waking every stream on every applied entry to ask costs
//! O(streams) per entry: with 10,000 agents, 10,000 task wake-ups and state read locks per
//! commit. Instead one dispatcher task per node follows the applied index and asks the state
//! machine which hosts the new entries may have changed (`StateMachine::hosts_changed_after`,
//! `state/changes.rs`), then bumps only those hosts' signals. A stream waits on its host's
//! signal alone.
//!
//! Invariants:
//! - a stream subscribes before it reads the state it compares with, so a change applied after
//!   that read is always signalled after it (no change is missed; a signal may find nothing
//!   new);
//! - when the state no longer knows what changed since the dispatcher last looked (a snapshot
//!   was installed, or it fell more than the change log behind), every stream is woken;
//! - when the node stops (its applied watch closes), the dispatcher drops every signal, and
//!   each stream sees its signal close and ends, as it did when it watched the applied index
//!   itself.
//!
//! The dispatcher starts with the first subscription and runs until the node stops or the
//! signals are dropped (the service and all its streams are gone; it holds no strong handle
//! on them, so it keeps neither them nor the node alive). It counts
//! the entries it looked at and the streams it woke ([`SignalStats`]), so that tests and
//! benchmarks can see that a stream is not woken for other hosts' entries.

use crate::raft::RaftNode;
use crate::state::Changed;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::{oneshot, watch};

/// The per-host signals of one node's heartbeat streams. Cheap to clone.
#[derive(Clone)]
pub(crate) struct HostSignals {
    inner: Arc<Inner>,
}

struct Inner {
    node: RaftNode,
    /// Host → its signal; the value is the applied index of the latest change signalled.
    hosts: Mutex<HashMap<String, watch::Sender<u64>>>,
    started: AtomicBool,
    stopped: AtomicBool,
    stats: SignalStats,
    /// Dropped with the signals: tells the dispatcher to end.
    _dropped: oneshot::Sender<()>,
    dropped: Mutex<Option<oneshot::Receiver<()>>>,
}

/// What the dispatcher did: how many applied entries it looked at, and how many stream
/// wake-ups it sent. Cheap to clone; shared with the service's owner.
#[derive(Clone, Default)]
pub struct SignalStats {
    entries: Arc<AtomicU64>,
    wakeups: Arc<AtomicU64>,
}

impl SignalStats {
    /// Applied entries the dispatcher has looked at.
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// Heartbeat stream wake-ups sent (one per stream's host per change).
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }
}

/// One stream's subscription to its host's signal. Dropping it forgets the signal once no
/// stream of that host is left.
pub(crate) struct Subscription {
    host: String,
    rx: watch::Receiver<u64>,
    inner: Arc<Inner>,
}

impl Subscription {
    /// Waits until something may have changed for this host. `false`: the node stopped.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut hosts = self.inner.hosts();
        // This subscription's own receiver still counts.
        if hosts
            .get(&self.host)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            hosts.remove(&self.host);
        }
    }
}

impl HostSignals {
    pub fn new(node: RaftNode) -> Self {
        let (tx, rx) = oneshot::channel();
        Self {
            inner: Arc::new(Inner {
                node,
                hosts: Mutex::new(HashMap::new()),
                started: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                stats: SignalStats::default(),
                _dropped: tx,
                dropped: Mutex::new(Some(rx)),
            }),
        }
    }

    /// The dispatcher's counters.
    pub fn stats(&self) -> SignalStats {
        self.inner.stats.clone()
    }

    /// Subscribes to `host`'s signal (and starts the dispatcher if this is the first). Read
    /// the state only after this returns.
    pub fn subscribe(&self, host: &str) -> Subscription {
        if !self.inner.started.swap(true, Ordering::AcqRel) {
            let dropped = match self.inner.dropped.lock() {
                Ok(mut g) => g.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            };
            if let Some(dropped) = dropped {
                let applied = self.inner.node.subscribe_applied();
                tokio::spawn(dispatch(Arc::downgrade(&self.inner), applied, dropped));
            }
        }
        let rx = {
            let mut hosts = self.inner.hosts();
            if self.inner.stopped.load(Ordering::Acquire) {
                // The node stopped: a signal that is closed already.
                watch::channel(0).1
            } else {
                hosts
                    .entry(host.to_string())
                    .or_insert_with(|| watch::channel(0).0)
                    .subscribe()
            }
        };
        Subscription {
            host: host.to_string(),
            rx,
            inner: self.inner.clone(),
        }
    }
}

impl Inner {
    fn hosts(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        match self.hosts.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// The dispatcher: after each change of the applied index, signals the hosts that the entries
/// since the last look may have changed. Ends when the node stops or the signals are dropped.
async fn dispatch(
    weak: Weak<Inner>,
    mut applied: watch::Receiver<u64>,
    mut dropped: oneshot::Receiver<()>,
) {
    let Some(mut seen) = weak.upgrade().map(|i| i.node.state().applied_index()) else {
        return;
    };
    loop {
        let Some(inner) = weak.upgrade() else { return };
        // Who changed after `seen`, and up to where the state has applied (which may be ahead
        // of the watch). One read guard, dropped before the signals' lock is taken.
        let (changed, now) = {
            let st = inner.node.state();
            let now = st.applied_index();
            let changed = match st.hosts_changed_after(seen) {
                Changed::All => None,
                Changed::Hosts(hosts) => Some(
                    hosts
                        .into_iter()
                        .map(str::to_string)
                        .collect::<BTreeSet<_>>(),
                ),
            };
            (changed, now)
        };
        if now > seen {
            inner.stats.entries.fetch_add(now - seen, Ordering::Relaxed);
            seen = now;
        }
        let woken = {
            let hosts = inner.hosts();
            let mut woken = 0;
            match &changed {
                None => {
                    for tx in hosts.values() {
                        tx.send_replace(now);
                        woken += 1;
                    }
                }
                Some(changed) => {
                    for host in changed {
                        if let Some(tx) = hosts.get(host) {
                            tx.send_replace(now);
                            woken += 1;
                        }
                    }
                }
            }
            woken
        };
        inner.stats.wakeups.fetch_add(woken, Ordering::Relaxed);
        drop(inner);
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { break },
            _ = &mut dropped => return,
        }
    }
    if let Some(inner) = weak.upgrade() {
        inner.stopped.store(true, Ordering::Release);
        // Closing every signal ends every stream still waiting on one.
        inner.hosts().clear();
    }
}
