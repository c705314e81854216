//! Health: what this host says about its service, at every moment (DESIGN §3, §4).
//!
//! The coordinators count a host as unavailable while it reports `unhealthy`, so the budget of
//! the lock is only as true as this report. It is one fact, [`HealthFact`], with three values
//! (`unprovisioned`, `healthy`, `unhealthy`), published through a watch channel to the rotation
//! front ends (agent-check `ready down`, `/ready` 503), to `Status` and, through the host report,
//! to the coordinators: the heartbeat stream sends a changed report at once, not at the next
//! beat.
//!
//! Two parties decide it, never both at once:
//!
//! - **Between deploys, the [`HealthMonitor`]** probes the service every `[health] interval`
//!   with the `[verify]` probes (or `[health]`'s own), in every control mode. A round is one run
//!   of every probe, each bounded by `probe_timeout`: a probe that hangs has failed. After
//!   `unhealthy_after` consecutive failed rounds the host is `unhealthy`; after `healthy_after`
//!   consecutive good ones it is `healthy` again ([`Tracker`]). In `exec` mode a supervised
//!   process that dies is `unhealthy` at once, without waiting for a round, and must then pass
//!   `healthy_after` rounds.
//! - **During a deploy, a rollback or a recovery, the engine** owns the fact. It takes it
//!   ([`HealthFact::claim`]) right before its first disruptive step (the drain, or the swap of a
//!   first deploy); the monitor then pauses, and a probe result that was in flight is thrown
//!   away. While it holds the claim the engine sets only verdicts it has established: `healthy`
//!   when a verify passed, `unhealthy` when neither release verified, `unprovisioned` when a
//!   first deploy failed. When the deploy ends the claim is released, with `unhealthy` if the
//!   service was restarted but never judged (fenced, unconfirmed); the monitor resumes from the
//!   value it is handed, its counts reset. A deploy with no verdict of its own (aborted before
//!   the swap) releases it before it returns to rotation, so the probes decide what the load
//!   balancer sees during the undrain. Each claim and release bumps a *handover* number, so
//!   the monitor notices a whole deploy that happened between two of its looks.
//!
//! Invariants:
//! - A host is `unprovisioned` until a verify has passed on it: the monitor never promotes an
//!   unprovisioned host, and a first deploy keeps the claim (and `unprovisioned`) until its
//!   verify passes. Setting `current` makes nobody healthy.
//! - Every change is written to the journal ([`HealthRecord`]); a restarted agent starts from
//!   it ([`initial`]) rather than from a default, so it neither hides a bad state nor invents a
//!   good one. A service the restarted agent had to start afresh (not adopted) starts
//!   `unhealthy` and must prove itself.
//!
//! What the host *reports* is the fact with two overrides the engine knows of, applied in one
//! place ([`reported`]): an unusable `current` link and a failed verify with nothing verified
//! since are `unhealthy`, whatever the probes say.
//!
//! The monitor is one of the agent's long-lived tasks: it ends when the agent's shutdown token
//! is cancelled, even in the middle of a probe round.
//!
//! Left out on purpose: the monitor never restarts or repairs anything. A broken service is
//! repaired by a deploy (which needs no extra budget: the host is already unavailable) or by
//! whatever supervises it (the `exec` supervisor's backoff, systemd's `Restart=`).

mod fact;
mod initial;
mod journaled;
mod monitor;
mod record;
mod reported;
#[cfg(test)]
mod tests;
mod tracker;

pub use fact::{EngineClaim, HealthFact, Owner, Snapshot};
pub use initial::{initial, StartFacts};
pub use journaled::{journaled_fact, AtStart};
pub use monitor::HealthMonitor;
pub use record::{HealthRecord, HostHealth};
pub use reported::reported;
pub use tracker::Tracker;
