//! The agent side of rollouts (DESIGN §4 "Coordinator link", §5; architecture.md "The agent
//! protocol"): one task, the [`RolloutDriver`], follows the host's rollout step as the
//! coordinators assign it, and drives the engine through it.
//!
//! For each assignment `(rollout, attempt)` it has not dealt with:
//!
//! 1. **Pre-stage at once, without the lock.** After a random jitter (so that a fleet given one
//!    assignment at once does not fetch the artifact at one instant), stage through the engine
//!    ([`crate::deploy::Engine::prestage`]: fetch, verify the digest and signature, unpack),
//!    then `ReportStep{STAGED}`. A stage still running after
//!    [`STAGING_REPORT_AFTER`] is reported `STAGING` meanwhile; a quicker one is not,
//!    which spares the log one entry per host. One host stages one release at a time. A staging
//!    failure (a bad checksum, a full disk, an unreachable URL) touches nothing live: it is
//!    reported `FAILED` with its error, and the host stays in rotation on its release.
//! 2. **Deploy once `may_deploy`.** The engine's ordinary deploy, with the rollout id and the
//!    step (attempt, canary, auto-rollback) in its journal record. The engine takes the slot
//!    (with `canary`), commits each phase with the token (`verifying` too), and reports the
//!    outcome (`SUCCEEDED`, `FAILED` with the reason, `ROLLED_BACK`, `FENCED`) *before* it
//!    releases the slot; see `deploy::outcome`.
//! 3. **Not admitted.** A slot the coordinators do not grant for this rollout (paused,
//!    aborted, not admitted yet, no budget within the wait) disrupted nothing and has no
//!    outcome: the driver follows the assignment again, and asks again after a short backoff
//!    while it still says `may_deploy`.
//!
//! What it remembers is the journal's: the last deploy's step says whether an assignment was
//! dealt with (a deploy of that attempt ran, or recovery is finishing it), and whether its
//! outcome still has to be reported ([`crate::deploy::Engine::report_due_outcome`], called at
//! start and at every look, so an agent that died between its outcome and its report reports it
//! when it comes back). Which attempts it staged, or saw fail staging, it keeps in memory only:
//! after a restart it stages again, which the coordinators accept, and which is a no-op for a
//! release already in the store.
//!
//! Invariants: nothing here touches the service or the rotation itself (the engine does, one
//! operation at a time); a deploy, once started, is finished whatever happens to the assignment
//! and reports to the rollout it was for; the task ends on the agent's shutdown token, leaving
//! an engine task under way to the engine's own shutdown.
//!
//! Left out: a local `Deploy` through the agent API is not a rollout's (its `rollout_id` is free
//! text) and reports nothing; an assignment that changes while a deploy runs is looked at when
//! the deploy ends.

mod driver;
#[cfg(test)]
mod tests;

pub use driver::{RolloutDriver, STAGING_REPORT_AFTER};
