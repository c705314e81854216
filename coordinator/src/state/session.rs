//! Client sessions: exactly-once answers for retried writes.
//!
//! Every client write carries `(client_id, seq)`. A client that lost its answer (a leader change,
//! a dropped connection) proposes the same write again with the same pair, and may find that the
//! first proposal committed after all. The machine must then answer as it did the first time,
//! Ok or Err, without applying the command twice: a second `Acquire` must not look like a new
//! grant, a second `Release` must not fail as stale.
//!
//! One cached answer is checked against the state before it is given again: a grant (the
//! machine does it, `answer_again`). A retried `AcquireSlot` is handed its slot only while the
//! host still holds it, and is told its token is stale once that slot was released or
//! force-released, because a holder may act on a grant as on a fence (a grant that committed
//! `draining`), and a fence must be true at the entry that answers it.
//!
//! Per client we keep the answers of its last [`WINDOW`] seqs. A seq below that window cannot be
//! told apart from one already applied and forgotten, so it is refused ([`StateError::SeqTooOld`])
//! rather than risk applying it twice. Seqs need not arrive in order inside the window: a client
//! may have a few writes in flight at once.
//!
//! Sessions end in two ways, both judged by the log (the command's `at_ms` and raft index), never
//! by a clock, so every replica evicts the same sessions at the same entry:
//! - idle for more than [`IDLE_MS`] of proposer time: no client retries a write an hour later;
//! - least recently used, past [`MAX_SESSIONS`], so that a flood of client ids cannot grow the
//!   state without bound.
//!
//! An evicted client's next write simply starts a new session. Refusals made here (SeqTooOld)
//! are not recorded: they answer nothing about the write itself. Writes with `write: None`
//! (internal, leader-proposed) never reach this file.
//!
//! Retryable refusals (a budget that is full now, [`StateError::is_retryable`]) are not recorded
//! either. They changed nothing, and the client's point in asking again with the same seq is
//! that the budget may have freed up: an `AcquireSlot` waiting on the leader re-proposes its
//! write when the lock says it fits. Answering it the first refusal from the session would make
//! it propose again at once, one log entry per commit until its deadline.

use super::command::{Response, WriteId};
use super::error::StateError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Answers kept per client. An agent has one or two writes in flight, a CLI one; 16 covers those
/// plus the retries of a leader change with room to spare, and bounds a session's size.
pub const WINDOW: usize = 16;

/// A session unused for this long (proposer time) is dropped. Clients retry for seconds, maybe
/// minutes across an election; an hour is far past any retry and keeps the table small.
pub const IDLE_MS: u64 = 60 * 60 * 1000;

/// At most this many sessions. A fleet has thousands of agents and a few operators; 100,000
/// leaves room for client restarts (each picks a new client id) within the idle hour.
pub const MAX_SESSIONS: usize = 100_000;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub(super) struct Sessions {
    clients: BTreeMap<String, Session>,
    /// Raft index of each session's last use → client id. The first entry is the least recently
    /// used. Indexes are unique (one write per entry), so this is a total order.
    by_use: BTreeMap<u64, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Session {
    last_used_index: u64,
    last_used_ms: u64,
    /// seq → the answer given, for the last [`WINDOW`] seqs.
    answers: BTreeMap<u64, Response>,
}

impl Sessions {
    /// Before applying the write `w` at `index`: evicts idle sessions, then returns the answer
    /// to give without applying, if any: the cached answer of a repeated seq, or SeqTooOld.
    pub fn check(&mut self, index: u64, at_ms: u64, w: &WriteId) -> Option<Response> {
        self.evict_idle(at_ms);
        let session = self.clients.get(&w.client_id)?;
        if let Some(answer) = session.answers.get(&w.seq) {
            let answer = answer.clone();
            self.touch(&w.client_id, index, at_ms);
            return Some(answer);
        }
        let oldest = session.answers.keys().next().copied()?;
        if session.answers.len() >= WINDOW && w.seq < oldest {
            return Some(Err(StateError::SeqTooOld {
                client_id: w.client_id.clone(),
                seq: w.seq,
                oldest,
                window: WINDOW,
            }));
        }
        None
    }

    /// After applying the write `w` at `index`: remembers its answer, unless it is a retryable
    /// refusal (see the module docs).
    pub fn record(&mut self, index: u64, at_ms: u64, w: &WriteId, response: &Response) {
        if matches!(response, Err(e) if e.is_retryable()) {
            return;
        }
        let session = self
            .clients
            .entry(w.client_id.clone())
            .or_insert_with(|| Session {
                last_used_index: index,
                last_used_ms: at_ms,
                answers: BTreeMap::new(),
            });
        session.answers.insert(w.seq, response.clone());
        while session.answers.len() > WINDOW {
            session.answers.pop_first();
        }
        self.touch(&w.client_id, index, at_ms);
        while self.clients.len() > MAX_SESSIONS {
            let Some((_, client)) = self.by_use.pop_first() else {
                break;
            };
            self.clients.remove(&client);
        }
    }

    /// Number of live sessions.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    fn touch(&mut self, client_id: &str, index: u64, at_ms: u64) {
        if let Some(session) = self.clients.get_mut(client_id) {
            self.by_use.remove(&session.last_used_index);
            session.last_used_index = index;
            session.last_used_ms = session.last_used_ms.max(at_ms);
            self.by_use.insert(index, client_id.to_string());
        }
    }

    /// Drops sessions idle for over [`IDLE_MS`], least recently used first, stopping at the
    /// first that is not idle. Proposers' clocks differ a little, so use order and time order
    /// may disagree slightly; a session is then kept a little longer, never dropped early.
    fn evict_idle(&mut self, at_ms: u64) {
        while let Some((&index, client)) = self.by_use.first_key_value() {
            let idle = self
                .clients
                .get(client)
                .is_none_or(|s| at_ms.saturating_sub(s.last_used_ms) > IDLE_MS);
            if !idle {
                break;
            }
            if let Some(client) = self.by_use.remove(&index) {
                self.clients.remove(&client);
            }
        }
    }
}
