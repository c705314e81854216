//! A fake coordinator for one host, served on loopback.

use hotdeploy_common::proto::coordinator_server::{Coordinator, CoordinatorServer};
use hotdeploy_common::proto::*;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

/// What the fake holds and what it saw.
pub(crate) struct CoordState {
    /// The host's slot, as the state machine would hold it.
    pub held: Option<Slot>,
    /// The next token granted.
    pub next_token: u64,
    /// Every AcquireSlot: purpose and write id.
    pub acquires: Vec<(String, String, u64)>,
    /// Every ReleaseSlot that freed a slot.
    pub released: Vec<u64>,
    /// Every ReleaseSlot received (before any gate).
    pub release_calls: Vec<u64>,
    /// Every ReportPhase committed: token and phase.
    pub reports: Vec<(u64, String)>,
    /// ReportPhase calls received, committed or not.
    pub report_calls: usize,
    pub registered: u32,
    /// The health of every heartbeat received, with when it arrived.
    pub beats: Vec<(tokio::time::Instant, i32)>,
    /// The next ReportPhase calls fail with these codes, one each.
    pub report_faults: VecDeque<tonic::Code>,
    /// When set, each ReleaseSlot takes a permit before it is applied.
    pub release_gate: Option<Arc<Semaphore>>,
    /// Answers of writes already applied, by `(client_id, seq)`.
    answers: HashMap<(String, u64), u64>,
    /// Hears "acquire <token>", "release <token>", "report <token> <phase>", "step <report>"
    /// as they apply.
    pub on_event: Option<Arc<dyn Fn(String) + Send + Sync>>,
    /// The host's rollout step, given in every Register and heartbeat answer.
    pub assignment: Option<Assignment>,
    /// Every ReportStep taken: rollout, attempt, report (lower case, as `StepReport` names it)
    /// and error.
    pub steps: Vec<(String, u32, String, String)>,
    /// The release in the host report of each ReportStep taken.
    pub step_releases: Vec<String>,
    /// The next AcquireSlot calls are refused with these codes, one each.
    pub acquire_faults: VecDeque<tonic::Code>,
    /// Every AcquireSlot's rollout and canary flag.
    pub acquire_rollouts: Vec<(String, bool)>,
    /// Ignores a ReportStep's `release_token`, as a coordinator from before the combined
    /// outcome-and-release entry does (or one whose cluster has a member too old for it).
    pub old_report_step: bool,
    /// The `release_token` of every ReportStep taken.
    pub step_release_tokens: Vec<u64>,
}

impl Default for CoordState {
    fn default() -> Self {
        Self {
            held: None,
            next_token: 41,
            acquires: Vec::new(),
            released: Vec::new(),
            release_calls: Vec::new(),
            reports: Vec::new(),
            report_calls: 0,
            registered: 0,
            beats: Vec::new(),
            report_faults: VecDeque::new(),
            release_gate: None,
            answers: HashMap::new(),
            on_event: None,
            assignment: None,
            steps: Vec::new(),
            step_releases: Vec::new(),
            acquire_faults: VecDeque::new(),
            acquire_rollouts: Vec::new(),
            old_report_step: false,
            step_release_tokens: Vec::new(),
        }
    }
}

impl CoordState {
    fn event(&self, e: String) {
        if let Some(f) = &self.on_event {
            f(e);
        }
    }
}

/// A slot of `purpose`, last phase `phase`, for host web-1.
pub(crate) fn slot(token: u64, purpose: &str, phase: &str) -> Slot {
    Slot {
        host: "web-1".into(),
        groups: vec!["web".into()],
        token,
        purpose: purpose.into(),
        phase: phase.into(),
        ..Default::default()
    }
}

/// The fake: the leader, or a follower pointing at `leader`. Clones share their state.
#[derive(Clone, Default)]
pub(crate) struct FakeCoordinator {
    pub state: Arc<Mutex<CoordState>>,
    pub leader: Option<String>,
}

impl FakeCoordinator {
    pub fn holding(slot: Option<Slot>) -> Self {
        let f = Self::default();
        f.state().held = slot;
        f
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, CoordState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn follower(&self) -> Result<(), Status> {
        match &self.leader {
            Some(l) => {
                let mut s = Status::unavailable("not the leader");
                s.metadata_mut().insert(
                    hotdeploy_common::proto::LEADER_ADDRESS_KEY,
                    l.parse().map_err(|_| Status::internal("bad hint"))?,
                );
                Err(s)
            }
            None => Ok(()),
        }
    }

    /// Serves on a free loopback port until the guard is dropped.
    pub async fn serve(self) -> (String, ServeGuard) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let h = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(CoordinatorServer::new(self))
                .serve_with_incoming(TcpListenerStream::new(l)),
        );
        (addr, ServeGuard(h))
    }
}

/// Stops the fake's server when dropped.
pub(crate) struct ServeGuard(tokio::task::JoinHandle<Result<(), tonic::transport::Error>>);

impl Drop for ServeGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Beats = Pin<Box<dyn futures::Stream<Item = Result<HeartbeatResponse, Status>> + Send>>;

fn stale(token: u64) -> Status {
    Status::failed_precondition(format!("token {token} is not this host's slot"))
}

#[tonic::async_trait]
impl Coordinator for FakeCoordinator {
    async fn register(
        &self,
        _r: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        self.follower()?;
        let mut s = self.state();
        s.registered += 1;
        Ok(Response::new(RegisterResponse {
            slot: s.held.clone(),
            assignment: s.assignment.clone(),
        }))
    }
    type HeartbeatStream = Beats;
    async fn heartbeat(
        &self,
        r: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Beats>, Status> {
        self.follower()?;
        let mut incoming = r.into_inner();
        let state = self.state.clone();
        let out = async_stream::stream! {
            while let Ok(Some(hb)) = incoming.message().await {
                let health = hb.report.map(|r| r.health).unwrap_or_default();
                let (slot, assignment) = {
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    s.beats.push((tokio::time::Instant::now(), health));
                    (s.held.clone(), s.assignment.clone())
                };
                yield Ok(HeartbeatResponse { slot, leader: 1, assignment });
            }
        };
        Ok(Response::new(Box::pin(out)))
    }
    async fn acquire_slot(
        &self,
        r: Request<AcquireSlotRequest>,
    ) -> Result<Response<AcquireSlotResponse>, Status> {
        let r = r.into_inner();
        let w = r.write.clone().unwrap_or_default();
        let mut s = self.state();
        s.acquires
            .push((r.purpose.clone(), w.client_id.clone(), w.seq));
        s.acquire_rollouts.push((r.rollout.clone(), r.canary));
        drop(s);
        self.follower()?;
        let mut s = self.state();
        if let Some(code) = s.acquire_faults.pop_front() {
            return Err(Status::new(code, "injected: not admitted"));
        }
        if let Some(token) = s.answers.get(&(w.client_id.clone(), w.seq)).copied() {
            return Ok(Response::new(AcquireSlotResponse {
                slot: Some(slot(token, &r.purpose, "")),
                draining_fenced: false,
            }));
        }
        let granted = match &s.held {
            Some(h) if h.purpose == r.purpose => h.clone(),
            Some(h) => {
                return Err(Status::failed_precondition(format!(
                    "host web-1 holds slot {} for {}",
                    h.token, h.purpose
                )))
            }
            None => {
                let token = s.next_token;
                s.next_token += 1;
                let g = slot(token, &r.purpose, "");
                s.held = Some(g.clone());
                g
            }
        };
        s.answers.insert((w.client_id, w.seq), granted.token);
        s.event(format!("acquire {}", granted.token));
        Ok(Response::new(AcquireSlotResponse {
            slot: Some(granted),
            draining_fenced: false,
        }))
    }
    async fn release_slot(
        &self,
        r: Request<ReleaseSlotRequest>,
    ) -> Result<Response<ReleaseSlotResponse>, Status> {
        self.follower()?;
        let token = r.get_ref().token;
        let gate = {
            let mut s = self.state();
            s.release_calls.push(token);
            s.release_gate.clone()
        };
        if let Some(g) = gate {
            g.acquire()
                .await
                .map_err(|_| Status::unavailable("gate closed"))?
                .forget();
        }
        let mut s = self.state();
        if s.held.as_ref().map(|h| h.token) != Some(token) {
            return Err(stale(token));
        }
        s.held = None;
        s.released.push(token);
        s.event(format!("release {token}"));
        Ok(Response::new(ReleaseSlotResponse {}))
    }
    async fn report_phase(
        &self,
        r: Request<ReportPhaseRequest>,
    ) -> Result<Response<ReportPhaseResponse>, Status> {
        self.follower()?;
        let r = r.into_inner();
        let mut s = self.state();
        s.report_calls += 1;
        if let Some(code) = s.report_faults.pop_front() {
            return Err(Status::new(code, "injected"));
        }
        match &mut s.held {
            Some(h) if h.token == r.token => h.phase = r.phase.clone(),
            _ => return Err(stale(r.token)),
        }
        s.reports.push((r.token, r.phase.clone()));
        s.event(format!("report {} {}", r.token, r.phase));
        Ok(Response::new(ReportPhaseResponse {}))
    }
    async fn status(&self, _r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_hosts(
        &self,
        _r: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_groups(
        &self,
        _r: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn set_group_policy(
        &self,
        _r: Request<SetGroupPolicyRequest>,
    ) -> Result<Response<SetGroupPolicyResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_slots(
        &self,
        _r: Request<ListSlotsRequest>,
    ) -> Result<Response<ListSlotsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn force_release(
        &self,
        _r: Request<ForceReleaseRequest>,
    ) -> Result<Response<ForceReleaseResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn add_member(
        &self,
        _r: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn remove_member(
        &self,
        _r: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn remove_host(
        &self,
        _r: Request<RemoveHostRequest>,
    ) -> Result<Response<RemoveHostResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_audit(
        &self,
        _r: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn save_snapshot(
        &self,
        _r: Request<SaveSnapshotRequest>,
    ) -> Result<Response<SaveSnapshotResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn report_step(
        &self,
        r: Request<ReportStepRequest>,
    ) -> Result<Response<ReportStepResponse>, Status> {
        self.follower()?;
        let r = r.into_inner();
        let report = StepReport::try_from(r.report)
            .map_err(|_| Status::invalid_argument("unknown report"))?;
        let name = report
            .as_str_name()
            .trim_start_matches("STEP_REPORT_")
            .to_lowercase();
        let mut s = self.state();
        if s.assignment.as_ref().is_some_and(|a| a.attempt > r.attempt) {
            return Err(Status::failed_precondition("stale attempt"));
        }
        // The step moves as the state machine would move it for staging.
        let to = match report {
            StepReport::Staging => Some(StepPhase::Staging),
            StepReport::Staged => Some(StepPhase::Staged),
            _ => None,
        };
        if let (Some(a), Some(to)) = (s.assignment.as_mut(), to) {
            if a.phase < to as i32 {
                a.phase = to as i32;
            }
        }
        s.steps
            .push((r.rollout.clone(), r.attempt, name.clone(), r.error.clone()));
        s.step_releases
            .push(r.host_report.map(|h| h.release).unwrap_or_default());
        s.step_release_tokens.push(r.release_token);
        s.event(format!("step {name}"));
        // After the outcome, in the same write, as the state machine does; a token no longer
        // held releases nothing.
        let token = r.release_token;
        let released =
            token != 0 && !s.old_report_step && s.held.as_ref().map(|h| h.token) == Some(token);
        if released {
            s.held = None;
            s.released.push(token);
            s.event(format!("release {token}"));
        }
        Ok(Response::new(ReportStepResponse { released }))
    }
    async fn start_rollout(
        &self,
        _r: Request<StartRolloutRequest>,
    ) -> Result<Response<StartRolloutResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_rollout(
        &self,
        _r: Request<GetRolloutRequest>,
    ) -> Result<Response<GetRolloutResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_rollouts(
        &self,
        _r: Request<ListRolloutsRequest>,
    ) -> Result<Response<ListRolloutsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    type WatchRolloutStream =
        Pin<Box<dyn futures::Stream<Item = Result<WatchRolloutResponse, Status>> + Send>>;
    async fn watch_rollout(
        &self,
        _r: Request<WatchRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn pause_rollout(
        &self,
        _r: Request<PauseRolloutRequest>,
    ) -> Result<Response<PauseRolloutResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn resume_rollout(
        &self,
        _r: Request<ResumeRolloutRequest>,
    ) -> Result<Response<ResumeRolloutResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn abort_rollout(
        &self,
        _r: Request<AbortRolloutRequest>,
    ) -> Result<Response<AbortRolloutResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}
