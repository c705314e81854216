//! Scripted agents: gRPC clients that play `hotdeploy-agent` toward the coordinators, following
//! the rollout protocol of docs/architecture.md ("The agent protocol") to the letter.
//!
//! A [`ScriptedAgent`] registers, keeps a heartbeat stream to the leader (following leader
//! hints, reconnecting after a leader dies), and drives its rollout assignment: it stages at
//! once (reporting `STAGING`, then `STAGED` or `FAILED`), and once `may_deploy` it deploys:
//! a provisioned host takes a slot (`AcquireSlot` with the rollout and `canary`), commits the
//! fenced phases with `ReportPhase`, reports the outcome with its new report, then releases; a
//! first install takes no slot. Every write goes through [`CoordClient::call`] with one write
//! id per write, retried as is. What it does is scripted per release ([`Script`]): how long
//! staging and the deploy take, and which releases fail staging or fail verify.
//!
//! Nothing here is a real host: there is no service and no load balancer. These agents exist to
//! test the coordinator side of rollouts against a real cluster of coordinator processes; the
//! real agent follows the same protocol in phase 2. Every agent records what it did in a shared
//! [`Journal`] (slots held at once, the order of grants), which the tests judge.

use crate::coord_client::{leader_hint, CoordClient};
use hotdeploy_common::proto::{
    AcquireSlotRequest, Assignment, Health, HeartbeatRequest, HostReport, RegisterRequest,
    ReleaseSlotRequest, ReportPhaseRequest, ReportStepRequest, Rotation, StepPhase, StepReport,
};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// How long one write keeps retrying through elections and dead nodes.
const WRITE_BUDGET: Duration = Duration::from_secs(30);
/// The heartbeat period (the real agent beats every second).
const BEAT: Duration = Duration::from_millis(300);
/// How long an AcquireSlot may wait on the leader per call.
const ACQUIRE_WAIT: Duration = Duration::from_secs(10);

/// What an agent does, per release.
#[derive(Debug, Clone)]
pub struct Script {
    /// How long staging takes.
    pub stage: Duration,
    /// How long each deploy phase (drain, swap, verify) takes.
    pub phase: Duration,
    /// Releases whose staging fails (a bad checksum, say).
    pub staging_fails: BTreeSet<String>,
    /// Releases that fail verify (and are rolled back).
    pub verify_fails: BTreeSet<String>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            stage: Duration::from_millis(100),
            phase: Duration::from_millis(150),
            staging_fails: BTreeSet::new(),
            verify_fails: BTreeSet::new(),
        }
    }
}

impl Script {
    /// The default script with a slower deploy.
    pub fn slow(phase: Duration) -> Script {
        Script {
            phase,
            ..Script::default()
        }
    }
}

/// One thing an agent did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Did {
    Staged { rollout: String },
    StagingFailed { rollout: String },
    Granted { rollout: String, token: u64 },
    Released { rollout: String, token: u64 },
    FirstInstall { rollout: String },
    Outcome { rollout: String, report: String },
    Refused { rollout: String, message: String },
}

/// What every agent did, in order, with the slots held at once.
#[derive(Default)]
pub struct Journal {
    events: Vec<(Instant, String, Did)>,
    holding: BTreeSet<String>,
    max_holding: usize,
}

impl Journal {
    fn record(&mut self, host: &str, did: Did) {
        match &did {
            Did::Granted { .. } => {
                self.holding.insert(host.to_string());
                self.max_holding = self.max_holding.max(self.holding.len());
            }
            Did::Released { .. } => {
                self.holding.remove(host);
            }
            _ => {}
        }
        self.events.push((Instant::now(), host.to_string(), did));
    }

    /// Everything, in order.
    pub fn events(&self) -> Vec<(String, Did)> {
        self.events
            .iter()
            .map(|(_, h, d)| (h.clone(), d.clone()))
            .collect()
    }

    /// The most agents that held a slot at the same time.
    pub fn max_holding(&self) -> usize {
        self.max_holding
    }

    /// The hosts granted a slot for `rollout`, in grant order.
    pub fn grants(&self, rollout: &str) -> Vec<String> {
        self.events
            .iter()
            .filter(|(_, _, d)| matches!(d, Did::Granted { rollout: r, .. } if r == rollout))
            .map(|(_, h, _)| h.clone())
            .collect()
    }

    /// The host's events.
    pub fn of(&self, host: &str) -> Vec<Did> {
        self.events
            .iter()
            .filter(|(_, h, _)| h == host)
            .map(|(_, _, d)| d.clone())
            .collect()
    }
}

/// The host's own facts, as its heartbeats report them.
#[derive(Debug, Clone)]
struct Facts {
    release: String,
    rotation: Rotation,
    phase: String,
}

impl Facts {
    fn report(&self) -> HostReport {
        HostReport {
            health: if self.release.is_empty() {
                Health::Unprovisioned
            } else {
                Health::Healthy
            } as i32,
            rotation: self.rotation as i32,
            release: self.release.clone(),
            phase: self.phase.clone(),
        }
    }
}

struct Shared {
    host: String,
    groups: Vec<String>,
    client: CoordClient,
    script: Script,
    journal: Arc<Mutex<Journal>>,
    facts: watch::Sender<Facts>,
    assignment: watch::Sender<Option<Assignment>>,
}

/// A number unique to each agent started by this process.
fn next_instance() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running scripted agent. [`ScriptedAgent::stop`] ends its tasks.
pub struct ScriptedAgent {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ScriptedAgent {
    /// One agent per host of `hosts`, each in `groups` on `release` with the default script,
    /// sharing `journal`. Must run inside a runtime.
    pub fn start_each(
        endpoints: &[SocketAddr],
        hosts: &[&str],
        groups: &[&str],
        release: &str,
        journal: &Arc<Mutex<Journal>>,
    ) -> Vec<ScriptedAgent> {
        hosts
            .iter()
            .map(|h| {
                ScriptedAgent::start(
                    endpoints,
                    h,
                    groups,
                    release,
                    Script::default(),
                    journal.clone(),
                )
            })
            .collect()
    }

    /// Starts agent `host` in `groups`, on `release` (`""`: unprovisioned), against the
    /// coordinators at `endpoints`. Must be called inside a tokio runtime.
    pub fn start(
        endpoints: &[SocketAddr],
        host: &str,
        groups: &[&str],
        release: &str,
        script: Script,
        journal: Arc<Mutex<Journal>>,
    ) -> ScriptedAgent {
        let rotation = if release.is_empty() {
            Rotation::OutOfRotation
        } else {
            Rotation::InRotation
        };
        let (facts, _) = watch::channel(Facts {
            release: release.to_string(),
            rotation,
            phase: "idle".into(),
        });
        let (assignment, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            host: host.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            // A fresh client id per start, as a real agent's journal keeps its seqs: a second
            // agent for the same host must not have its writes answered from the first's.
            client: CoordClient::new(endpoints, &format!("scripted/{host}/{}", next_instance())),
            script,
            journal,
            facts,
            assignment,
        });
        let (stop, stopped) = watch::channel(false);
        let link = tokio::spawn(link(shared.clone(), stopped.clone()));
        let driver = tokio::spawn(drive(shared.clone(), stopped));
        ScriptedAgent {
            shared,
            stop,
            tasks: vec![link, driver],
        }
    }

    pub fn host(&self) -> &str {
        &self.shared.host
    }

    /// The release the agent runs now.
    pub fn release(&self) -> String {
        self.shared.facts.borrow().release.clone()
    }

    /// The latest assignment the coordinators sent.
    pub fn assignment(&self) -> Option<Assignment> {
        self.shared.assignment.borrow().clone()
    }

    /// Stops the agent's tasks and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Register, then one heartbeat stream to the leader; again after any failure.
async fn link(s: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    loop {
        if *stopped.borrow() {
            return;
        }
        let ended = tokio::select! {
            r = session(&s) => r,
            _ = stopped.changed() => return,
        };
        if std::env::var_os("HD_TEST_VERBOSE").is_some() {
            eprintln!("scripted agent {}: link session ended: {ended}", s.host);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// One session: register, then heartbeats until the stream breaks. Returns why it ended.
async fn session(s: &Shared) -> String {
    let write = s.client.next_write();
    let registered = s
        .client
        .call(WRITE_BUDGET, Duration::ZERO, |mut c| {
            let req = RegisterRequest {
                write: Some(write.clone()),
                host: s.host.clone(),
                groups: s.groups.clone(),
                report: Some(s.facts.borrow().report()),
                address: String::new(),
            };
            async move { c.register(req).await }
        })
        .await;
    match registered {
        Ok(r) => {
            s.assignment.send_replace(r.assignment);
        }
        Err(e) => return format!("register: {e:?}"),
    }
    // Open the stream at the leader, following hints.
    let endpoints: Vec<String> = s.client_endpoints();
    let mut addr = endpoints[0].clone();
    let mut tries = 0;
    let (tx, mut stream) = loop {
        tries += 1;
        if tries > 20 {
            return "no leader accepted the heartbeat stream".into();
        }
        let (tx, rx) = mpsc::channel(16);
        if tx.send(beat(s)).await.is_err() {
            return "heartbeat channel closed".into();
        }
        let mut client = match s.client.client_at(&addr) {
            Ok(c) => c,
            Err(e) => return format!("client: {e}"),
        };
        match tokio::time::timeout(
            Duration::from_secs(3),
            client.heartbeat(ReceiverStream::new(rx)),
        )
        .await
        {
            Ok(Ok(resp)) => break (tx, resp.into_inner()),
            Ok(Err(status)) => {
                addr = leader_hint(&status)
                    .filter(|h| *h != addr)
                    .unwrap_or_else(|| endpoints[tries % endpoints.len()].clone());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => {
                addr = endpoints[tries % endpoints.len()].clone();
            }
        }
    };
    let mut tick = tokio::time::interval(BEAT);
    let mut facts = s.facts.subscribe();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if tx.send(beat(s)).await.is_err() {
                    return "heartbeat send failed".into();
                }
            }
            _ = facts.changed() => {
                if tx.send(beat(s)).await.is_err() {
                    return "heartbeat send failed".into();
                }
            }
            msg = tokio::time::timeout(Duration::from_secs(3), stream.message()) => match msg {
                Ok(Ok(Some(answer))) => {
                    s.assignment.send_replace(answer.assignment);
                }
                Ok(Ok(None)) => return "heartbeat stream ended".into(),
                Ok(Err(status)) => return format!("heartbeat: {status:?}"),
                Err(_) => return "heartbeat stream silent".into(),
            }
        }
    }
}

impl Shared {
    fn client_endpoints(&self) -> Vec<String> {
        self.client.endpoints()
    }
}

fn beat(s: &Shared) -> HeartbeatRequest {
    HeartbeatRequest {
        host: s.host.clone(),
        report: Some(s.facts.borrow().report()),
    }
}

/// Follows the assignment: stage, then deploy once admitted.
async fn drive(s: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut assignments = s.assignment.subscribe();
    // (rollout, attempt) staged, and deployed.
    let mut staged: Option<(String, u32)> = None;
    let mut deployed: Option<(String, u32)> = None;
    loop {
        let a = assignments.borrow_and_update().clone();
        if let Some(a) = a {
            let key = (a.rollout.clone(), a.attempt);
            let phase = StepPhase::try_from(a.phase).unwrap_or_default();
            if staged.as_ref() != Some(&key)
                && matches!(phase, StepPhase::Pending | StepPhase::Staging)
            {
                if stage(&s, &a).await {
                    staged = Some(key.clone());
                } else {
                    // A failed staging is final for this attempt.
                    staged = Some(key.clone());
                    deployed = Some(key.clone());
                }
            } else if phase == StepPhase::Staged && staged.as_ref() != Some(&key) {
                staged = Some(key.clone());
            }
            if a.may_deploy && deployed.as_ref() != Some(&key) && deploy(&s, &a).await {
                deployed = Some(key);
            }
        }
        tokio::select! {
            changed = assignments.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopped.changed() => return,
        }
    }
}

fn release_of(a: &Assignment) -> String {
    a.release.as_ref().map(|r| r.id.clone()).unwrap_or_default()
}

async fn report_step(
    s: &Shared,
    a: &Assignment,
    report: StepReport,
    error: &str,
    with_report: bool,
) -> Result<(), tonic::Status> {
    let write = s.client.next_write();
    let host_report = with_report.then(|| s.facts.borrow().report());
    s.client
        .call(WRITE_BUDGET, Duration::ZERO, |mut c| {
            let req = ReportStepRequest {
                write: Some(write.clone()),
                host: s.host.clone(),
                rollout: a.rollout.clone(),
                attempt: a.attempt,
                report: report as i32,
                error: error.to_string(),
                host_report: host_report.clone(),
                release_token: 0,
            };
            async move { c.report_step(req).await }
        })
        .await
        .map(|_| ())
}

/// Stages; false when staging failed (and was reported).
async fn stage(s: &Shared, a: &Assignment) -> bool {
    let release = release_of(a);
    let _ = report_step(s, a, StepReport::Staging, "", false).await;
    tokio::time::sleep(s.script.stage).await;
    if s.script.staging_fails.contains(&release) {
        let _ = report_step(
            s,
            a,
            StepReport::Failed,
            &format!("sha256 mismatch staging {release}: the artifact is not what was asked for"),
            false,
        )
        .await;
        lock(&s.journal).record(
            &s.host,
            Did::StagingFailed {
                rollout: a.rollout.clone(),
            },
        );
        return false;
    }
    let _ = report_step(s, a, StepReport::Staged, "", false).await;
    lock(&s.journal).record(
        &s.host,
        Did::Staged {
            rollout: a.rollout.clone(),
        },
    );
    true
}

fn set_facts(s: &Shared, f: impl FnOnce(&mut Facts)) {
    s.facts.send_modify(f);
}

/// Deploys; false when the attempt was given up without a deploy (not admitted after all).
async fn deploy(s: &Shared, a: &Assignment) -> bool {
    let release = release_of(a);
    let first_install = s.facts.borrow().release.is_empty();
    if first_install {
        lock(&s.journal).record(
            &s.host,
            Did::FirstInstall {
                rollout: a.rollout.clone(),
            },
        );
        let _ = report_step(s, a, StepReport::Swapping, "", false).await;
        tokio::time::sleep(s.script.phase).await;
        let _ = report_step(s, a, StepReport::Verifying, "", false).await;
        tokio::time::sleep(s.script.phase).await;
        if s.script.verify_fails.contains(&release) {
            let _ = report_step(
                s,
                a,
                StepReport::Failed,
                "verify failed on first install",
                false,
            )
            .await;
            outcome(s, a, "failed");
        } else {
            set_facts(s, |f| {
                f.release = release.clone();
                f.rotation = Rotation::InRotation;
            });
            let _ = report_step(s, a, StepReport::Succeeded, "", true).await;
            outcome(s, a, "succeeded");
        }
        return true;
    }
    // Take a slot, waiting on the leader; budget refusals are asked again with a new seq.
    let token = loop {
        let write = s.client.next_write();
        let req = AcquireSlotRequest {
            write: Some(write),
            host: s.host.clone(),
            purpose: "deploy".into(),
            reason: format!("rollout {}", a.rollout),
            rollout: a.rollout.clone(),
            wait_ms: ACQUIRE_WAIT.as_millis() as u64,
            canary: a.canary,
            fence_draining: false,
        };
        match s.client.acquire_with(req, WRITE_BUDGET).await {
            Ok(slot) => break slot.token,
            Err(st) if st.code() == Code::ResourceExhausted => continue,
            Err(st) => {
                lock(&s.journal).record(
                    &s.host,
                    Did::Refused {
                        rollout: a.rollout.clone(),
                        message: st.message().to_string(),
                    },
                );
                return false;
            }
        }
    };
    lock(&s.journal).record(
        &s.host,
        Did::Granted {
            rollout: a.rollout.clone(),
            token,
        },
    );
    let fails = s.script.verify_fails.contains(&release);
    let mut fenced = false;
    for (phase, rotation) in [
        ("draining", Rotation::Draining),
        ("swapped", Rotation::OutOfRotation),
        ("restarted", Rotation::OutOfRotation),
        ("verifying", Rotation::OutOfRotation),
    ]
    .into_iter()
    .chain(fails.then_some(("rolling_back", Rotation::OutOfRotation)))
    {
        if let Err(st) = fence(s, token, phase).await {
            if matches!(st.code(), Code::FailedPrecondition | Code::NotFound) {
                fenced = true;
                break;
            }
        }
        set_facts(s, |f| {
            f.rotation = rotation;
            f.phase = phase.to_string();
        });
        tokio::time::sleep(s.script.phase).await;
    }
    if fenced {
        let _ = report_step(s, a, StepReport::Fenced, "stale token", false).await;
        set_facts(s, |f| {
            f.rotation = Rotation::InRotation;
            f.phase = "idle".into();
        });
        outcome(s, a, "fenced");
        return true;
    }
    set_facts(s, |f| {
        if !fails {
            f.release = release.clone();
        }
        f.rotation = Rotation::InRotation;
        f.phase = "idle".into();
    });
    if fails {
        let _ = report_step(
            s,
            a,
            StepReport::RolledBack,
            &format!("verify failed: GET /health of {release} answered 500; rolled back"),
            true,
        )
        .await;
        outcome(s, a, "rolled_back");
    } else {
        let _ = report_step(s, a, StepReport::Succeeded, "", true).await;
        outcome(s, a, "succeeded");
    }
    let write = s.client.next_write();
    let released = s
        .client
        .call(WRITE_BUDGET, Duration::ZERO, |mut c| {
            let req = ReleaseSlotRequest {
                write: Some(write.clone()),
                host: s.host.clone(),
                token,
            };
            async move { c.release_slot(req).await }
        })
        .await;
    if let Err(e) = released {
        eprintln!(
            "scripted agent {}: release of slot {token} failed: {e:?}",
            s.host
        );
    }
    lock(&s.journal).record(
        &s.host,
        Did::Released {
            rollout: a.rollout.clone(),
            token,
        },
    );
    true
}

fn outcome(s: &Shared, a: &Assignment, report: &str) {
    lock(&s.journal).record(
        &s.host,
        Did::Outcome {
            rollout: a.rollout.clone(),
            report: report.to_string(),
        },
    );
}

async fn fence(s: &Shared, token: u64, phase: &str) -> Result<(), tonic::Status> {
    let write = s.client.next_write();
    s.client
        .call(WRITE_BUDGET, Duration::ZERO, |mut c| {
            let req = ReportPhaseRequest {
                write: Some(write.clone()),
                host: s.host.clone(),
                token,
                phase: phase.to_string(),
            };
            async move { c.report_phase(req).await }
        })
        .await
        .map(|_| ())
}
