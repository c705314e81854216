//! A fake host and a fake lock, in one value, recording every effect in order.

use super::super::*;
use crate::health::HealthFact;
use crate::journal::Phase;
use futures::future::BoxFuture;
use futures::FutureExt;
use hotdeploy_common::proto::Rotation;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;

/// Called at each drain; what it answers is logged ("drain witness ...").
pub(crate) type Witness = Arc<dyn Fn() -> String + Send + Sync>;

pub(crate) struct State {
    pub(crate) log: Vec<String>,
    pub(crate) current: Option<String>,
    /// `current` cannot be read (why): an unusable link.
    pub(crate) current_error: Option<String>,
    pub(crate) previous: Option<String>,
    pub(crate) verify: VecDeque<bool>,
    pub(crate) stale_at: Option<Phase>,
    /// Phase reports that fail as unconfirmed (coordinators unreachable), one per call.
    pub(crate) unconfirmed: VecDeque<Phase>,
    pub(crate) block_stage: Option<Arc<tokio::sync::Notify>>,
    /// The `verifying` phase report answers only once a verify has begun (a fence that must
    /// overlap the verify, or it never commits).
    pub(crate) verifying_waits_for_verify: bool,
    /// Signalled when a verify begins.
    pub(crate) verify_began: Arc<tokio::sync::Notify>,
    /// The `swapped` phase report answers only once the `restarted` one has been sent (a
    /// restart fence that must be sent behind the swap's, or the swap's never commits).
    pub(crate) swapped_waits_for_restarted: bool,
    /// Signalled when the `restarted` phase report is sent.
    pub(crate) restarted_sent: Arc<tokio::sync::Notify>,
    /// Verifies never end (a health check that hangs).
    pub(crate) hang_verify: bool,
    /// Undrains that fail, one per call.
    pub(crate) undrain_failures: usize,
    /// Releases never answer (a coordinator that hangs).
    pub(crate) hang_release: bool,
    /// Releases that may not go live (no valid signature).
    pub(crate) refused: BTreeSet<String>,
    pub(crate) rotation: RotationView,
    pub(crate) running: Option<bool>,
    pub(crate) claimed: BTreeSet<u64>,
    pub(crate) slot: Arc<watch::Sender<SlotView>>,
    /// Called at each drain.
    pub(crate) witness: Option<Witness>,
    /// The engine's health fact, and what it said at each effect ("effect: Owner health").
    pub(crate) fact: Option<Arc<HealthFact>>,
    pub(crate) seen: Vec<String>,
    /// The coordinators take a grant's ask to commit `draining` with it.
    pub(crate) grant_fences_draining: bool,
    /// The hooks configured (all succeed).
    pub(crate) hooks: Vec<Hook>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            log: Vec::new(),
            current: None,
            current_error: None,
            previous: None,
            verify: VecDeque::new(),
            stale_at: None,
            unconfirmed: VecDeque::new(),
            block_stage: None,
            verifying_waits_for_verify: false,
            verify_began: Arc::new(tokio::sync::Notify::new()),
            swapped_waits_for_restarted: false,
            restarted_sent: Arc::new(tokio::sync::Notify::new()),
            hang_verify: false,
            undrain_failures: 0,
            hang_release: false,
            refused: BTreeSet::new(),
            rotation: RotationView {
                state: Rotation::InRotation,
                settled: true,
            },
            running: None,
            claimed: BTreeSet::new(),
            slot: Arc::new(watch::channel(SlotView::Free).0),
            witness: None,
            fact: None,
            seen: Vec::new(),
            grant_fences_draining: false,
            hooks: Vec::new(),
        }
    }
}

#[derive(Clone, Default)]
pub(crate) struct Fake(pub(crate) Arc<Mutex<State>>);

impl Fake {
    pub(crate) fn with(current: Option<&str>, previous: Option<&str>, verify: &[bool]) -> Self {
        let f = Fake::default();
        {
            let mut s = f.0.lock().unwrap();
            s.current = current.map(str::to_owned);
            s.previous = previous.map(str::to_owned);
            s.verify = verify.iter().copied().collect();
        }
        f
    }
    pub(crate) fn log(&self, e: impl Into<String>) {
        let mut s = self.0.lock().unwrap();
        let e = e.into();
        if let Some(f) = s.fact.clone() {
            let snap = f.snapshot();
            s.seen
                .push(format!("{e}: {:?} {}", snap.owner, snap.health.label()));
        }
        s.log.push(e);
    }
    /// What the health fact said when `effect` happened.
    pub(crate) fn health_at(&self, effect: &str) -> String {
        let s = self.0.lock().unwrap();
        let prefix = format!("{effect}: ");
        s.seen
            .iter()
            .find_map(|x| x.strip_prefix(&prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("{effect} missing from {:?}", s.seen))
    }
    /// The engine's health fact, made at the engine's construction if the test set none.
    pub(crate) fn fact(&self) -> Arc<HealthFact> {
        self.0.lock().unwrap().fact.clone().unwrap()
    }
    /// The health fact to build an engine with: the test's, or one that starts `healthy` on a
    /// provisioned host and `unprovisioned` otherwise.
    pub(crate) fn fact_or_default(&self) -> Arc<HealthFact> {
        let mut s = self.0.lock().unwrap();
        let initial = if s.current.is_some() {
            Health::Healthy
        } else {
            Health::Unprovisioned
        };
        s.fact
            .get_or_insert_with(|| HealthFact::in_memory(initial))
            .clone()
    }
    pub(crate) fn effects(&self) -> Vec<String> {
        self.0.lock().unwrap().log.clone()
    }
    pub(crate) fn current(&self) -> Option<String> {
        self.0.lock().unwrap().current.clone()
    }
    pub(crate) fn previous(&self) -> Option<String> {
        self.0.lock().unwrap().previous.clone()
    }
    pub(crate) fn set(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.0.lock().unwrap());
    }
}

impl HostOps for Fake {
    fn current(&self) -> OpResult<Option<String>> {
        let s = self.0.lock().unwrap();
        match &s.current_error {
            Some(e) => Err(OpError::fatal(e.clone())),
            None => Ok(s.current.clone()),
        }
    }
    fn previous(&self) -> OpResult<Option<String>> {
        Ok(self.0.lock().unwrap().previous.clone())
    }
    fn has_release(&self, _id: &str) -> OpResult<bool> {
        Ok(true)
    }
    fn stage<'a>(
        &'a self,
        id: &'a str,
        spec: &'a ArtifactRef,
        _p: ProgressFn<'a>,
    ) -> BoxFuture<'a, OpResult> {
        async move {
            let block = self.0.lock().unwrap().block_stage.clone();
            if let Some(n) = block {
                n.notified().await;
            }
            self.log(format!("stage {id}"));
            if spec.sha256.starts_with("bad") {
                return Err(OpError::fatal("sha256 mismatch"));
            }
            Ok(())
        }
        .boxed()
    }
    fn set_current(&self, id: &str) -> OpResult {
        self.log(format!("set_current {id}"));
        self.0.lock().unwrap().current = Some(id.to_owned());
        Ok(())
    }
    fn clear_current(&self) -> OpResult {
        self.log("clear_current");
        self.0.lock().unwrap().current = None;
        Ok(())
    }
    fn set_previous(&self, id: &str) -> OpResult {
        self.log(format!("set_previous {id}"));
        self.0.lock().unwrap().previous = Some(id.to_owned());
        Ok(())
    }
    fn gc(&self, _protect: &[&str]) -> OpResult {
        self.log("gc");
        Ok(())
    }
    fn check_release(&self, id: &str) -> OpResult {
        if self.0.lock().unwrap().refused.contains(id) {
            return Err(OpError::fatal(
                "release is not signed, and signatures are required",
            ));
        }
        Ok(())
    }
    fn drain(&self) -> BoxFuture<'_, OpResult<Duration>> {
        self.log("drain");
        let witness = self.0.lock().unwrap().witness.clone();
        if let Some(w) = witness {
            self.log(format!("drain witness {}", w()));
        }
        self.set(|s| {
            s.rotation = RotationView {
                state: Rotation::OutOfRotation,
                settled: true,
            }
        });
        async { Ok(Duration::ZERO) }.boxed()
    }
    fn undrain(&self) -> BoxFuture<'_, OpResult<Duration>> {
        self.log("undrain");
        let fail = {
            let mut s = self.0.lock().unwrap();
            let fail = s.undrain_failures > 0;
            if fail {
                s.undrain_failures -= 1;
            } else {
                s.rotation = RotationView {
                    state: Rotation::InRotation,
                    settled: true,
                };
            }
            fail
        };
        async move {
            if fail {
                Err(OpError::transient("not UP within 1s"))
            } else {
                Ok(Duration::ZERO)
            }
        }
        .boxed()
    }
    fn rotation(&self) -> RotationView {
        self.0.lock().unwrap().rotation
    }
    fn running(&self) -> Option<bool> {
        self.0.lock().unwrap().running
    }
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, OpResult> {
        self.log(format!("start {id}"));
        self.set(|s| s.running = s.running.map(|_| true));
        async { Ok(()) }.boxed()
    }
    fn restart<'a>(&'a self, id: &'a str) -> BoxFuture<'a, OpResult> {
        self.log(format!("restart {id}"));
        self.set(|s| s.running = s.running.map(|_| true));
        async { Ok(()) }.boxed()
    }
    fn stop(&self) -> BoxFuture<'_, OpResult> {
        self.log("stop");
        async { Ok(()) }.boxed()
    }
    fn verify<'a>(&'a self, _p: ProgressFn<'a>) -> BoxFuture<'a, OpResult> {
        let (ok, hang) = {
            let mut s = self.0.lock().unwrap();
            s.verify_began.notify_one();
            (s.verify.pop_front().unwrap_or(true), s.hang_verify)
        };
        self.log(format!("verify {}", if ok { "ok" } else { "fail" }));
        async move {
            if hang {
                futures::future::pending::<()>().await;
            }
            if ok {
                Ok(())
            } else {
                Err(OpError::fatal("health 500"))
            }
        }
        .boxed()
    }
    fn hook<'a>(&'a self, point: Hook, _ctx: &'a HookCtx) -> BoxFuture<'a, OpResult> {
        self.log(format!("hook {point:?}"));
        async { Ok(()) }.boxed()
    }
    fn has_hook(&self, point: Hook) -> bool {
        self.0.lock().unwrap().hooks.contains(&point)
    }
}

impl SlotLock for Fake {
    fn acquire(
        &self,
        req: SlotRequest,
        _w: crate::journal::WriteId,
    ) -> BoxFuture<'_, Result<Grant, LinkError>> {
        let draining_fenced = req.fence_draining && self.0.lock().unwrap().grant_fences_draining;
        let fenced = if draining_fenced {
            " (draining fenced)"
        } else {
            ""
        };
        self.log(format!("acquire {}{fenced}", req.purpose));
        self.set(|s| {
            s.claimed.insert(7);
        });
        async move {
            Ok(Grant {
                token: 7,
                draining_fenced,
            })
        }
        .boxed()
    }
    fn release(&self, token: u64) -> BoxFuture<'_, Result<(), LinkError>> {
        self.log(format!("release {token}"));
        let hang = self.0.lock().unwrap().hang_release;
        async move {
            if hang {
                futures::future::pending::<()>().await;
            }
            self.set(|s| {
                s.claimed.remove(&token);
            });
            Ok(())
        }
        .boxed()
    }
    fn report_phase(&self, token: u64, phase: Phase) -> BoxFuture<'_, Result<(), LinkError>> {
        self.log(format!("report {phase}"));
        let (stale, unconfirmed, wait_for) = {
            let mut s = self.0.lock().unwrap();
            let unconfirmed = s.unconfirmed.front() == Some(&phase);
            if unconfirmed {
                s.unconfirmed.pop_front();
            }
            let wait = match phase {
                Phase::Verifying if s.verifying_waits_for_verify => Some(s.verify_began.clone()),
                Phase::Swapped if s.swapped_waits_for_restarted => Some(s.restarted_sent.clone()),
                _ => None,
            };
            if phase == Phase::Restarted {
                // A permit is kept if nobody waits yet.
                s.restarted_sent.notify_one();
            }
            (s.stale_at == Some(phase), unconfirmed, wait)
        };
        async move {
            if let Some(signal) = wait_for {
                signal.notified().await;
            }
            if stale {
                Err(LinkError::Stale(format!("token {token} revoked")))
            } else if unconfirmed {
                Err(LinkError::Timeout {
                    waited_ms: 30_000,
                    last: "no leader".into(),
                })
            } else {
                Ok(())
            }
        }
        .boxed()
    }
    fn claim(&self, token: u64) {
        self.log(format!("claim {token}"));
        self.set(|s| {
            s.claimed.insert(token);
        });
    }
    fn unclaim(&self, token: u64) {
        self.set(|s| {
            s.claimed.remove(&token);
        });
    }
    fn adopt(&self, token: u64) -> bool {
        let mut s = self.0.lock().unwrap();
        s.claimed.insert(token)
    }
    fn slot(&self) -> watch::Receiver<SlotView> {
        self.0.lock().unwrap().slot.subscribe()
    }
    fn report_step(&self, update: StepUpdate) -> BoxFuture<'_, Result<StepSlot, LinkError>> {
        self.log(format!("step {}", update.report));
        let token = update.release_token;
        if token == 0 {
            return async { Ok(StepSlot::NotReleased) }.boxed();
        }
        // Released with the outcome, as a coordinator that knows the combined entry does.
        self.log(format!("release {token} with the outcome"));
        self.set(|s| {
            s.claimed.remove(&token);
        });
        async { Ok(StepSlot::Released) }.boxed()
    }
}
