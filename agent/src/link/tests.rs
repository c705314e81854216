//! The link against fake coordinators on loopback: leader following with the same write id,
//! fencing and its retries, the slot view the heartbeat publishes, a heartbeat that never
//! stalls on its own sends, and a changed report sent at once.

use super::*;
use crate::testing::coordinator::{slot, FakeCoordinator};
use hotdeploy_common::proto::{Health, HeartbeatResponse, HostReport};
use tokio::sync::mpsc;

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

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn follows_the_leader_with_the_same_write_id() {
    let dir = tempfile::tempdir().unwrap();
    let leader = FakeCoordinator::default();
    let (leader_addr, _l) = leader.clone().serve().await;
    let follower = FakeCoordinator {
        leader: Some(leader_addr.clone()),
        ..leader.clone()
    };
    let (follower_addr, _f) = follower.serve().await;
    let (link, journal) = link(dir.path(), vec![follower_addr]);
    let write = journal.next_write_id().unwrap();
    let req = SlotRequest {
        purpose: Purpose::Deploy,
        reason: "test".into(),
        rollout: String::new(),
        canary: false,
        wait: Duration::from_secs(10),
        fence_draining: false,
    };
    let grant = link.acquire(&req, write.clone()).await.unwrap();
    assert_eq!(grant.token, 41);
    let writes = leader.state().acquires.clone();
    assert_eq!(writes.len(), 2, "follower, then leader: {writes:?}");
    assert!(writes
        .iter()
        .all(|w| *w == ("deploy".into(), write.client_id.clone(), write.seq)));
    // Fencing: a stale token is told apart from other failures.
    assert!(matches!(
        link.report_phase(13, Phase::Draining).await,
        Err(LinkError::Stale(_))
    ));
    link.report_phase(41, Phase::Draining).await.unwrap();
    link.release(41).await.unwrap();
    assert_eq!(leader.state().released, vec![41]);
}

/// A leader that is busy or slow (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) or briefly gone
/// (UNAVAILABLE) does not fail a fenced write: it is retried, with the same write id.
#[tokio::test]
async fn a_phase_report_is_retried_through_transient_errors() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeCoordinator::holding(Some(slot(7, "deploy", "")));
    fake.state().report_faults = [
        tonic::Code::ResourceExhausted,
        tonic::Code::DeadlineExceeded,
        tonic::Code::Unavailable,
    ]
    .into_iter()
    .collect();
    let (addr, _g) = fake.clone().serve().await;
    let (link, _j) = link(dir.path(), vec![addr]);
    link.report_phase(7, Phase::Draining).await.unwrap();
    let s = fake.state();
    assert_eq!(
        s.report_calls, 4,
        "three transient answers, then the commit"
    );
    assert_eq!(s.reports, vec![(7, "draining".to_string())]);
}

/// The heartbeat publishes the coordinators' view of the host's slot, typed: the agent's own
/// purposes, or someone else's (an operator's `maintenance`), and the last committed phase.
#[tokio::test]
async fn the_heartbeat_publishes_the_slot_view() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeCoordinator::holding(Some(slot(77, "deploy", "swapped")));
    let (addr, _g) = fake.clone().serve().await;
    let (l, _j) = link(dir.path(), vec![addr]);
    let mut view = l.subscribe_slot();
    assert_eq!(*view.borrow(), SlotView::Unknown);
    let shutdown = CancellationToken::new();
    let task = l.start(shutdown.clone());
    let want = SlotView::Held(HeldSlot {
        token: 77,
        owner: SlotOwner::Agent(Purpose::Deploy),
        phase: Some(Phase::Swapped),
    });
    tokio::time::timeout(Duration::from_secs(10), view.wait_for(|v| *v == want))
        .await
        .unwrap()
        .unwrap();
    fake.state().held = Some(slot(90, "maintenance", ""));
    let want = SlotView::Held(HeldSlot {
        token: 90,
        owner: SlotOwner::Other("maintenance".into()),
        phase: None,
    });
    tokio::time::timeout(Duration::from_secs(10), view.wait_for(|v| *v == want))
        .await
        .unwrap()
        .unwrap();
    fake.state().held = None;
    tokio::time::timeout(
        Duration::from_secs(10),
        view.wait_for(|v| *v == SlotView::Free),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(l.connected());
    // The link itself never releases anything.
    assert!(fake.state().release_calls.is_empty());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the link did not stop on shutdown")
        .unwrap();
}

/// A stream whose sending side is stalled (the queue to the coordinator full) still has its
/// answers read: the loop never waits on its own sends.
#[tokio::test]
async fn a_full_send_queue_does_not_stall_reading_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _j) = link(dir.path(), vec!["127.0.0.1:1".into()]);
    let (tx, _stuck) = mpsc::channel(1);
    tx.try_send(heartbeat_request()).unwrap(); // full, and nobody reads it
    let (answers_tx, answers_rx) = mpsc::channel(4);
    let inner = l.inner.clone();
    let beat = tokio::spawn(async move {
        heartbeat::beat(
            &inner,
            "fake",
            &tx,
            tokio_stream::wrappers::ReceiverStream::new(answers_rx),
        )
        .await
    });
    // Let a tick (and a report change) try to send into the full queue first.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    answers_tx
        .send(Ok(HeartbeatResponse {
            slot: Some(slot(5, "drain", "")),
            leader: 1,
            ..Default::default()
        }))
        .await
        .unwrap();
    wait_for(
        "the answer to be read",
        || matches!(&*l.subscribe_slot().borrow(), SlotView::Held(h) if h.token == 5),
    )
    .await;
    assert!(l.connected());
    beat.abort();
}

fn heartbeat_request() -> hotdeploy_common::proto::HeartbeatRequest {
    hotdeploy_common::proto::HeartbeatRequest {
        host: "web-1".into(),
        report: None,
    }
}

/// A change of the host report (here, health) goes up the heartbeat stream at once, not with
/// the next timed beat.
#[tokio::test]
async fn a_change_of_health_goes_up_at_once_not_at_the_next_beat() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeCoordinator::default();
    let (addr, _g) = fake.clone().serve().await;
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
    let shutdown = CancellationToken::new();
    let task = link.start(shutdown.clone());
    let beats = || fake.state().beats.len();
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
        let got = fake
            .state()
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
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the link did not stop on shutdown")
        .unwrap();
}
