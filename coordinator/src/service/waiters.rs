//! The leader's queue of `AcquireSlot` calls waiting for budget.
//!
//! Waiters are served canary hosts first, then first come, first served: a waiter proposes its
//! grant only when no waiter ahead of it *that shares one of its groups* could be granted right
//! now. Waiters of unrelated groups never hold each other up. A waiter whose grant is being
//! proposed still blocks the ones behind it until its grant applies: letting them race would
//! hand the budget to whoever proposes fastest (often the host that just released), starving
//! the queue. A waiter leaves the queue
//! when its call ends for any reason (granted, refused, deadline, or the client going away: tonic
//! drops the call's future, and with it the [`Ticket`]), so the leader never proposes a grant for
//! a caller that has gone. The queue lives in the leader's memory only; after a leader change,
//! agents ask again with the same `(client_id, seq)`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Queue order: canaries first (false sorts before true, so the key holds `!canary`), then by
/// arrival.
type Key = (bool, u64);

/// One waiting call.
struct Waiting {
    host: String,
    purpose: String,
    groups: Vec<String>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    queue: BTreeMap<Key, Waiting>,
}

/// The queue. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Waiters {
    inner: Arc<Mutex<Inner>>,
    /// Bumped whenever a waiter leaves, so the ones behind it look again.
    changed: watch::Sender<u64>,
}

/// A place in the queue; leaving it (drop) wakes the others.
pub(crate) struct Ticket {
    key: Key,
    waiters: Waiters,
}

impl Waiters {
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::default(),
            changed: watch::channel(0).0,
        }
    }

    pub(crate) fn enqueue(
        &self,
        host: &str,
        purpose: &str,
        groups: &[String],
        canary: bool,
    ) -> Ticket {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.next += 1;
        let key = (!canary, g.next);
        let w = Waiting {
            host: host.to_owned(),
            purpose: purpose.to_owned(),
            groups: groups.to_vec(),
        };
        g.queue.insert(key, w);
        Ticket {
            key,
            waiters: self.clone(),
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether `ticket` may propose now: no waiter ahead of it that shares a group with it
    /// passes `grantable`.
    pub(crate) fn my_turn(&self, ticket: &Ticket, grantable: impl Fn(&str, &str) -> bool) -> bool {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(me) = g.queue.get(&ticket.key) else {
            return true;
        };
        !g.queue.range(..ticket.key).any(|(_, w)| {
            w.groups.iter().any(|x| me.groups.contains(x)) && grantable(&w.host, &w.purpose)
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut g = self.waiters.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.queue.remove(&self.key);
        drop(g);
        self.waiters.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canaries_first_then_fifo() {
        let w = Waiters::new();
        let web = ["web".to_string()];
        let a = w.enqueue("a", "deploy", &web, false);
        let b = w.enqueue("b", "deploy", &web, false);
        let c = w.enqueue("c", "deploy", &web, true);
        let all = |_: &str, _: &str| true;
        assert!(w.my_turn(&c, all));
        assert!(!w.my_turn(&a, all));
        drop(c);
        assert!(w.my_turn(&a, all));
        assert!(!w.my_turn(&b, all));
        // A waiter ahead that cannot be granted does not block the ones behind it.
        assert!(w.my_turn(&b, |h, _| h != "a"));
    }

    #[test]
    fn waiters_of_other_groups_do_not_block() {
        let w = Waiters::new();
        let a = w.enqueue("a", "deploy", &["web".to_string()], false);
        let b = w.enqueue("b", "deploy", &["db".to_string()], false);
        let c = w.enqueue("c", "deploy", &["db".to_string(), "web".to_string()], false);
        let all = |_: &str, _: &str| true;
        assert!(w.my_turn(&a, all));
        assert!(w.my_turn(&b, all));
        assert!(!w.my_turn(&c, all));
    }
}
