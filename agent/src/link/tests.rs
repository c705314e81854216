//! The link against fake coordinators on loopback: leader following with the same write id,
//! fencing, and the release of a slot the agent has no use for.

use super::*;
use hotdeploy_common::proto::coordinator_server::{Coordinator, CoordinatorServer};
use hotdeploy_common::proto::*;
use std::pin::Pin;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

#[derive(Default)]
struct Seen {
    acquire_writes: Vec<(String, u64)>,
    released: Vec<u64>,
    registered: u32,
    /// The health of every heartbeat received, with when it arrived.
    beats: Vec<(Instant, i32)>,
}

/// A fake coordinator: a follower pointing at `leader`, or the leader itself.
#[derive(Clone)]
struct Fake {
    leader: Option<String>,
    seen: Arc<Mutex<Seen>>,
    /// The slot heartbeats report.
    slot_token: u64,
    /// Its purpose.
    slot_purpose: &'static str,
    stale_tokens: Vec<u64>,
}

impl Fake {
    fn follower(&self) -> Result<(), Status> {
        match &self.leader {
            Some(l) => {
                let mut s = Status::unavailable("not the leader");
                s.metadata_mut().insert(
                    hotdeploy_common::proto::LEADER_ADDRESS_KEY,
                    l.parse().unwrap(),
                );
                Err(s)
            }
            None => Ok(()),
        }
    }
    fn slot(&self) -> Option<Slot> {
        (self.slot_token != 0).then(|| Slot {
            host: "web-1".into(),
            token: self.slot_token,
            purpose: self.slot_purpose.into(),
            ..Default::default()
        })
    }
}

type Beats = Pin<Box<dyn futures::Stream<Item = Result<HeartbeatResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Coordinator for Fake {
    async fn register(
        &self,
        _r: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        self.follower()?;
        self.seen.lock().unwrap().registered += 1;
        Ok(Response::new(RegisterResponse::default()))
    }
    type HeartbeatStream = Beats;
    async fn heartbeat(
        &self,
        r: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Beats>, Status> {
        self.follower()?;
        let mut incoming = r.into_inner();
        let slot = self.slot();
        let seen = self.seen.clone();
        let out = async_stream::stream! {
            while let Ok(Some(hb)) = incoming.message().await {
                let health = hb.report.map(|r| r.health).unwrap_or_default();
                seen.lock().unwrap().beats.push((Instant::now(), health));
                yield Ok(HeartbeatResponse { slot: slot.clone(), leader: 2, ..Default::default() });
            }
        };
        Ok(Response::new(Box::pin(out)))
    }
    async fn acquire_slot(
        &self,
        r: Request<AcquireSlotRequest>,
    ) -> Result<Response<AcquireSlotResponse>, Status> {
        let w = r.get_ref().write.clone().unwrap_or_default();
        self.seen
            .lock()
            .unwrap()
            .acquire_writes
            .push((w.client_id, w.seq));
        self.follower()?;
        Ok(Response::new(AcquireSlotResponse {
            slot: Some(Slot {
                token: 41,
                ..Default::default()
            }),
        }))
    }
    async fn release_slot(
        &self,
        r: Request<ReleaseSlotRequest>,
    ) -> Result<Response<ReleaseSlotResponse>, Status> {
        self.follower()?;
        self.seen.lock().unwrap().released.push(r.get_ref().token);
        Ok(Response::new(ReleaseSlotResponse {}))
    }
    async fn report_phase(
        &self,
        r: Request<ReportPhaseRequest>,
    ) -> Result<Response<ReportPhaseResponse>, Status> {
        self.follower()?;
        if self.stale_tokens.contains(&r.get_ref().token) {
            return Err(Status::failed_precondition("stale token"));
        }
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
        _r: Request<ReportStepRequest>,
    ) -> Result<Response<ReportStepResponse>, Status> {
        Err(Status::unimplemented("fake"))
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

/// Serves `fake` on a free loopback port; the server stops when the handle is dropped.
async fn serve(fake: Fake) -> (String, AbortOnDrop) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CoordinatorServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
    (addr, AbortOnDrop(h))
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<(), tonic::transport::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn link(dir: &std::path::Path, coordinators: Vec<String>) -> (Link, Journal) {
    let journal = Journal::open(dir, "web-1").unwrap();
    let (_tx, rx) = watch::channel(HostReport::default());
    let cfg = LinkConfig {
        host_id: "web-1".into(),
        groups: vec!["web".into()],
        address: "127.0.0.1:1".into(),
        coordinators,
        tls: TlsConfig {
            insecure: true,
            ..Default::default()
        },
    };
    (Link::new(cfg, journal.clone(), rx).unwrap(), journal)
}

fn fakes(slot_token: u64) -> (Arc<Mutex<Seen>>, Fake) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let leader = Fake {
        leader: None,
        seen: seen.clone(),
        slot_token,
        slot_purpose: "deploy",
        stale_tokens: vec![13],
    };
    (seen, leader)
}

#[tokio::test]
async fn follows_the_leader_with_the_same_write_id() {
    let dir = tempfile::tempdir().unwrap();
    let (seen, leader) = fakes(0);
    let (leader_addr, _l) = serve(leader.clone()).await;
    let follower = Fake {
        leader: Some(leader_addr.clone()),
        ..leader
    };
    let (follower_addr, _f) = serve(follower).await;
    let (link, journal) = link(dir.path(), vec![follower_addr]);
    let write = journal.next_write_id().unwrap();
    let token = link
        .acquire("deploy", "test", "", Duration::from_secs(10), write.clone())
        .await
        .unwrap();
    assert_eq!(token, 41);
    let writes = seen.lock().unwrap().acquire_writes.clone();
    assert_eq!(writes.len(), 2, "follower, then leader: {writes:?}");
    assert!(writes
        .iter()
        .all(|w| *w == (write.client_id.clone(), write.seq)));
    // Fencing: a stale token is told apart from other failures.
    assert!(matches!(
        link.report_phase(13, "draining").await,
        Err(LinkError::Stale(_))
    ));
    link.report_phase(41, "draining").await.unwrap();
    link.release(41).await.unwrap();
    assert_eq!(seen.lock().unwrap().released, vec![41]);
}

#[tokio::test]
async fn an_unwanted_slot_is_released_and_a_claimed_one_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (seen, leader) = fakes(77);
    let (addr, _l) = serve(leader.clone()).await;
    let (claimed_seen, claimed_leader) = fakes(78);
    let (addr2, _l2) = serve(claimed_leader).await;

    let (l1, _j1) = link(dir.path(), vec![addr]);
    let _t1 = AbortTask(l1.start());
    let dir2 = tempfile::tempdir().unwrap();
    let (l2, _j2) = link(dir2.path(), vec![addr2]);
    l2.claim(78);
    let _t2 = AbortTask(l2.start());

    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().released.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.lock().unwrap().released.first(), Some(&77));
    assert!(l1.connected());
    assert!(seen.lock().unwrap().registered >= 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(claimed_seen.lock().unwrap().released.is_empty());
    assert!(l2.connected());
}

#[tokio::test]
async fn an_operators_maintenance_slot_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (seen, mut leader) = fakes(90);
    leader.slot_purpose = "maintenance";
    let (addr, _l) = serve(leader).await;
    let (l, _j) = link(dir.path(), vec![addr]);
    let _t = AbortTask(l.start());
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().registered == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.lock().unwrap().registered >= 1);
    // Several heartbeat answers name the slot; none of them makes the agent release it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(seen.lock().unwrap().released.is_empty());
}

struct AbortTask(tokio::task::JoinHandle<()>);

impl Drop for AbortTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test]
async fn a_change_of_health_goes_up_at_once_not_at_the_next_beat() {
    let dir = tempfile::tempdir().unwrap();
    let (seen, leader) = fakes(0);
    let (addr, _l) = serve(leader).await;
    let journal = Journal::open(dir.path(), "web-1").unwrap();
    let healthy = HostReport {
        health: Health::Healthy as i32,
        ..Default::default()
    };
    let (tx, rx) = watch::channel(healthy.clone());
    let cfg = LinkConfig {
        host_id: "web-1".into(),
        groups: vec!["web".into()],
        address: "127.0.0.1:1".into(),
        coordinators: vec![addr],
        tls: TlsConfig {
            insecure: true,
            ..Default::default()
        },
    };
    let link = Link::new(cfg, journal, rx).unwrap();
    let _t = AbortTask(link.start());
    let beats = || seen.lock().unwrap().beats.len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while beats() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(beats() >= 2, "no heartbeats");
    // Right after a beat: the next timed one is a whole second away.
    let n = beats();
    while beats() == n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let changed_at = Instant::now();
    tx.send_replace(HostReport {
        health: Health::Unhealthy as i32,
        ..healthy
    });
    let until = changed_at + Duration::from_secs(3);
    let arrived = loop {
        let got = seen
            .lock()
            .unwrap()
            .beats
            .iter()
            .find(|(_, h)| *h == Health::Unhealthy as i32)
            .map(|(t, _)| *t);
        if let Some(t) = got {
            break t;
        }
        assert!(Instant::now() < until, "the unhealthy report never went up");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let took = arrived.saturating_duration_since(changed_at);
    assert!(
        took < Duration::from_millis(500),
        "the change went up only after {took:?}: with the next beat, not at once"
    );
}
