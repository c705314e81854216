//! Which slot tokens this agent uses, and the rule that keeps the release of one from racing the
//! grant of it.
//!
//! The coordinators tell the agent, in every Register and heartbeat answer, which slot they
//! think this host holds. A slot that no operation of the agent uses (a grant that committed
//! after the agent gave up waiting for it, a slot of a journal that was lost) must be released,
//! or it blocks the group's budget for good. A slot that *is* in use must never be released
//! behind its user's back. [`SlotClaims`] is where that is decided, under one mutex:
//!
//! - **Claimed** tokens are in use: by the deploy in progress, by a journaled hold, by a grant
//!   just returned to its caller, or by an orphan the engine adopted to release or rebuild.
//!   Only their user releases them.
//! - **While an acquire is in flight, nothing is adopted.** Its grant may reach the agent in a
//!   heartbeat answer before the call's own answer does; adopting it then would release the
//!   slot the caller is about to use.
//! - **While a release is in flight, no acquire is sent.** Grants are re-entrant: the same
//!   host asking again for the same purpose gets the same slot back. An acquire sent while the
//!   release of that slot is retrying would be answered with the very token about to be freed,
//!   and its caller would drain with no slot. So an acquire first waits for every release of
//!   this host to end (the coordinator then grants a fresh token), and a release is never begun
//!   for an unclaimed token while an acquire is in flight.
//!
//! Together: an acquire and a release of one token are mutually exclusive, and a token is
//! released only by the operation that claimed it. What this type leaves out: it does no I/O
//! and knows no purposes; the engine decides *whether* an unclaimed slot is to be released
//! (only once the host is confirmed back in rotation) or rebuilt into a recovery.

use std::collections::BTreeSet;
use std::sync::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// See the module docs. One per link.
#[derive(Debug, Default)]
pub(crate) struct SlotClaims {
    state: Mutex<ClaimState>,
    /// Woken whenever a release or an acquire ends.
    changed: Notify,
}

#[derive(Debug, Default)]
struct ClaimState {
    /// Tokens some operation of this agent uses: never released by reconciliation.
    claimed: BTreeSet<u64>,
    /// Tokens with a ReleaseSlot in flight: an acquire waits for them, since the coordinator
    /// could answer it with the very token being released (grants are re-entrant).
    releasing: BTreeSet<u64>,
    /// AcquireSlot calls in flight: while there is one, no unclaimed token is adopted, since its
    /// grant may show up in a heartbeat answer before the call's own answer does.
    acquiring: usize,
}

impl SlotClaims {
    fn state(&self) -> std::sync::MutexGuard<'_, ClaimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `token` in use (from the journal at start, or by a caller that owns it).
    pub fn claim(&self, token: u64) {
        if token != 0 {
            self.state().claimed.insert(token);
        }
    }

    /// Marks `token` unused: if the coordinators still list it, the engine will release it.
    pub fn unclaim(&self, token: u64) {
        self.state().claimed.remove(&token);
    }

    /// Whether `token` is in use.
    #[cfg(test)]
    pub fn is_claimed(&self, token: u64) -> bool {
        self.state().claimed.contains(&token)
    }

    /// Claims an unclaimed token for its release (or rebuild), unless an acquire or a release
    /// is in flight. `false`: leave it alone for now.
    pub fn try_adopt(&self, token: u64) -> bool {
        let mut s = self.state();
        if token == 0
            || s.acquiring > 0
            || s.claimed.contains(&token)
            || s.releasing.contains(&token)
        {
            return false;
        }
        s.claimed.insert(token);
        true
    }

    /// Begins an acquire: waits until no release is in flight, then counts the acquire in
    /// flight until the ticket is dropped. `None` if releases are still in flight at `until`.
    pub async fn begin_acquire(&self, until: Instant) -> Option<AcquireTicket<'_>> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a release ending in between still wakes us.
            notified.as_mut().enable();
            {
                let mut s = self.state();
                if s.releasing.is_empty() {
                    s.acquiring += 1;
                    return Some(AcquireTicket { claims: self });
                }
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Begins the release of `token`; acquires wait until the returned ticket is dropped.
    pub fn begin_release(&self, token: u64) -> ReleaseTicket<'_> {
        self.state().releasing.insert(token);
        ReleaseTicket {
            claims: self,
            token,
        }
    }

    /// Whether a release of `token` is in flight.
    #[cfg(test)]
    pub fn is_releasing(&self, token: u64) -> bool {
        self.state().releasing.contains(&token)
    }
}

/// An acquire in flight (see [`SlotClaims::begin_acquire`]).
pub(crate) struct AcquireTicket<'a> {
    claims: &'a SlotClaims,
}

impl AcquireTicket<'_> {
    /// The acquire was granted `token`: claimed before the acquire stops counting as in flight,
    /// so that no heartbeat answer in between can make it look unwanted.
    pub fn granted(self, token: u64) {
        self.claims.claim(token);
    }
}

impl Drop for AcquireTicket<'_> {
    fn drop(&mut self) {
        self.claims.state().acquiring -= 1;
        self.claims.changed.notify_waiters();
    }
}

/// A release in flight (see [`SlotClaims::begin_release`]).
pub(crate) struct ReleaseTicket<'a> {
    claims: &'a SlotClaims,
    token: u64,
}

impl ReleaseTicket<'_> {
    /// The coordinators no longer list the token: it is nobody's any more.
    pub fn released(self) {
        self.claims.unclaim(self.token);
    }
}

impl Drop for ReleaseTicket<'_> {
    fn drop(&mut self) {
        self.claims.state().releasing.remove(&self.token);
        self.claims.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn claimed_tokens_and_acquires_in_flight_block_adoption() {
        let c = SlotClaims::default();
        c.claim(5);
        assert!(!c.try_adopt(5), "a claimed token is never adopted");
        assert!(c.try_adopt(6));
        assert!(!c.try_adopt(6), "adopted once");
        c.unclaim(6);
        let t = c
            .begin_acquire(Instant::now() + Duration::from_secs(1))
            .await
            .unwrap();
        assert!(
            !c.try_adopt(7),
            "nothing is adopted while an acquire is in flight"
        );
        t.granted(7);
        assert!(c.is_claimed(7));
        assert!(
            c.try_adopt(8),
            "after the acquire, unclaimed tokens are adoptable"
        );
    }

    #[tokio::test]
    async fn an_acquire_waits_for_a_release_in_flight() {
        let c = Arc::new(SlotClaims::default());
        let release = c.begin_release(77);
        let c2 = c.clone();
        let acquire = tokio::spawn(async move {
            let t = c2
                .begin_acquire(Instant::now() + Duration::from_secs(5))
                .await;
            t.is_some()
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !acquire.is_finished(),
            "an acquire went out during a release"
        );
        release.released();
        assert!(acquire.await.unwrap());
        assert!(!c.is_releasing(77));

        // A release that outlives the acquire's deadline: the acquire gives up.
        let _r = c.begin_release(78);
        let t = c
            .begin_acquire(Instant::now() + Duration::from_millis(100))
            .await;
        assert!(t.is_none());
    }
}
