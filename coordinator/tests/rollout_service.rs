//! The rollout RPCs against one real coordinator node in this process: raft over sled in a
//! temp dir, the real gRPC services on a loopback port, the leader's progress clock, and a
//! tonic client. What the multi-process tests cannot see as precisely: each bad field's error,
//! the heartbeat stream pushing an assignment unasked, the slot gate answering at once, and
//! the watch stream's shape.

use hotdeploy_common::config::CoordinatorConfig;
use hotdeploy_common::proto::coordinator_client::CoordinatorClient;
use hotdeploy_common::proto::{
    AcquireSlotRequest, ForceReleaseRequest, GetRolloutRequest, HeartbeatRequest, HostReport,
    ListSlotsRequest, RegisterRequest, Release, ReleaseSlotRequest, ReportStepRequest, RolloutInfo,
    RolloutState, SetGroupPolicyRequest, Slot, StartRolloutRequest, StepPhase, StepReport,
    WatchRolloutRequest, WriteId,
};
use hotdeploy_common::tls::ClientTls;
use hotdeploy_coordinator::liveness::Liveness;
use hotdeploy_coordinator::raft::RaftNode;
use hotdeploy_coordinator::service::{self, CoordinatorService, SignalStats};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

/// One coordinator node serving on loopback; stops serving when dropped.
struct OneNode {
    client: CoordinatorClient<Channel>,
    /// What the heartbeat streams' dispatcher looked at and woke.
    signals: SignalStats,
    _stop: oneshot::Sender<()>,
    _stop_clock: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn one_node() -> OneNode {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let toml = format!(
        "id = 1\nlisten = \"{addr}\"\ndata_dir = \"{}\"\n[tls]\ninsecure = true\n",
        dir.path().join("data").display()
    );
    let cfg = CoordinatorConfig::from_toml_str(&toml, Path::new("test.toml")).expect("config");
    let tls = ClientTls::load(&cfg.tls).expect("client tls");
    let storage = RaftNode::open_storage(&cfg).expect("storage");
    hotdeploy_coordinator::raft::bootstrap::initialize::<hotdeploy_coordinator::state::StateMachine>(
        &storage,
        &[cfg.id],
    )
    .expect("bootstrap");
    let (node, peer) = RaftNode::start(&cfg, storage, tls)
        .await
        .expect("raft node");
    let liveness = Liveness::new(node.clone(), cfg.liveness.clone());
    tokio::spawn(liveness.clone().run(std::future::pending::<()>()));
    let (stop_clock, clock) = watch::channel(false);
    tokio::spawn(hotdeploy_coordinator::progress::run(node.clone(), clock));
    let svc = CoordinatorService::new(node.clone(), liveness);
    let signals = svc.heartbeat_signals();
    let (stop, stopped) = oneshot::channel::<()>();
    let (serving, _is_serving) = oneshot::channel();
    tokio::spawn(service::serve(
        listener,
        None,
        64,
        svc,
        peer,
        tonic_health::server::HealthReporter::new(),
        serving,
        async {
            let _ = stopped.await;
        },
    ));
    let end = Instant::now() + Duration::from_secs(20);
    while !node.status().is_leader() {
        assert!(Instant::now() < end, "the one node never became leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = CoordinatorClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    OneNode {
        client,
        signals,
        _stop: stop,
        _stop_clock: stop_clock,
        _dir: dir,
    }
}

fn write(seq: u64) -> Option<WriteId> {
    Some(WriteId {
        client_id: "test".into(),
        seq,
    })
}

fn release(id: &str) -> Release {
    Release {
        id: id.into(),
        artifact_url: format!("file:///releases/{id}.tar.gz"),
        sha256: "ab".repeat(32),
        signature: String::new(),
    }
}

fn start_req(id: &str, release_id: &str) -> StartRolloutRequest {
    StartRolloutRequest {
        write: None,
        rollout_id: id.into(),
        group: "web".into(),
        release: Some(release(release_id)),
        ..Default::default()
    }
}

fn healthy(release: &str) -> HostReport {
    HostReport {
        health: hotdeploy_common::proto::Health::Healthy as i32,
        rotation: hotdeploy_common::proto::Rotation::InRotation as i32,
        release: release.into(),
        phase: "idle".into(),
    }
}

/// Rollout `id` as `GetRollout` shows it (it must exist).
async fn rollout_info(c: &mut CoordinatorClient<Channel>, id: &str) -> RolloutInfo {
    c.get_rollout(GetRolloutRequest { id: id.into() })
        .await
        .expect("get")
        .into_inner()
        .rollout
        .expect("rollout")
}

/// An `AcquireSlot` of a `deploy` slot for `host` in rollout `rollout`, without waiting.
fn deploy_ask(
    write: Option<WriteId>,
    host: &str,
    rollout: &str,
    fence_draining: bool,
) -> AcquireSlotRequest {
    AcquireSlotRequest {
        write,
        host: host.into(),
        purpose: "deploy".into(),
        reason: "rollout".into(),
        rollout: rollout.into(),
        wait_ms: 0,
        canary: false,
        fence_draining,
    }
}

/// A `deploy` slot for `host` in rollout `rollout`, asked once without waiting.
async fn deploy_slot(
    c: &mut CoordinatorClient<Channel>,
    write: Option<WriteId>,
    host: &str,
    rollout: &str,
) -> Slot {
    c.acquire_slot(deploy_ask(write, host, rollout, false))
        .await
        .expect("slot")
        .into_inner()
        .slot
        .expect("slot")
}

/// Write `seq` of the client named after `host`.
fn host_write(host: &str, seq: u64) -> Option<WriteId> {
    Some(WriteId {
        client_id: host.into(),
        seq,
    })
}

/// `host`'s report `r` on its attempt 1 of rollout `r1`, as write `seq`, releasing
/// `release_token` (0: none) with it.
fn step_report(
    host: &str,
    r: StepReport,
    seq: u64,
    release_token: u64,
    host_report: Option<HostReport>,
) -> ReportStepRequest {
    ReportStepRequest {
        write: host_write(host, seq),
        host: host.into(),
        rollout: "r1".into(),
        attempt: 1,
        report: r as i32,
        error: String::new(),
        host_report,
        release_token,
    }
}

/// Group `web` (budget 1) with hosts `web-1`..`web-n` on v1.
async fn web(c: &mut CoordinatorClient<Channel>, n: usize) {
    c.set_group_policy(SetGroupPolicyRequest {
        write: None,
        group: "web".into(),
        max_unavailable: "1".into(),
        allow_zero_available: None,
    })
    .await
    .expect("group");
    for i in 1..=n {
        c.register(RegisterRequest {
            write: None,
            host: format!("web-{i}"),
            groups: vec!["web".into()],
            report: Some(healthy("v1")),
            address: String::new(),
        })
        .await
        .expect("register");
    }
}

#[tokio::test]
async fn bad_rollout_input_is_refused_naming_what_is_wrong() {
    let mut n = one_node().await;
    web(&mut n.client, 2).await;
    let cases: Vec<(StartRolloutRequest, Code, &str)> = vec![
        (
            StartRolloutRequest {
                release: None,
                ..start_req("r1", "v2")
            },
            Code::InvalidArgument,
            "release is required",
        ),
        (start_req("r1", "v/2"), Code::InvalidArgument, "release"),
        (
            start_req("no spaces", "v2"),
            Code::InvalidArgument,
            "rollout id",
        ),
        (
            StartRolloutRequest {
                group: "Web".into(),
                ..start_req("r1", "v2")
            },
            Code::InvalidArgument,
            "group",
        ),
        (
            StartRolloutRequest {
                release: Some(Release {
                    sha256: "xyz".into(),
                    ..release("v2")
                }),
                ..start_req("r1", "v2")
            },
            Code::InvalidArgument,
            "sha256",
        ),
        (
            StartRolloutRequest {
                release: Some(Release {
                    artifact_url: "/tmp/v2.tar".into(),
                    ..release("v2")
                }),
                ..start_req("r1", "v2")
            },
            Code::InvalidArgument,
            "artifact URL",
        ),
        (
            StartRolloutRequest {
                group: "db".into(),
                ..start_req("r1", "v2")
            },
            Code::NotFound,
            "unknown group \"db\"",
        ),
        (
            StartRolloutRequest {
                batch: 2,
                ..start_req("r1", "v2")
            },
            Code::InvalidArgument,
            "budget of 1",
        ),
    ];
    for (req, code, needle) in cases {
        let e = n.client.start_rollout(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{req:?}: {e:?}");
        assert!(
            e.message().contains(needle),
            "{needle:?} not in {:?}",
            e.message()
        );
    }
    let e = n
        .client
        .report_step(ReportStepRequest {
            host: "web-1".into(),
            rollout: "r1".into(),
            attempt: 1,
            report: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("not a known step report"), "{e:?}");
    let e = n
        .client
        .report_step(ReportStepRequest {
            host: "web-1".into(),
            rollout: "r1".into(),
            attempt: 0,
            report: StepReport::Staged as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("attempt"), "{e:?}");
    let e = n
        .client
        .get_rollout(GetRolloutRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn a_start_without_an_id_gets_one_and_a_retry_is_the_same_rollout() {
    let mut n = one_node().await;
    web(&mut n.client, 2).await;
    let req = StartRolloutRequest {
        write: write(1),
        ..start_req("", "v2")
    };
    let a = n
        .client
        .start_rollout(req.clone())
        .await
        .expect("start")
        .into_inner();
    let b = n
        .client
        .start_rollout(req)
        .await
        .expect("retry")
        .into_inner();
    let (a, b) = (a.rollout.expect("rollout"), b.rollout.expect("rollout"));
    assert!(a.id.starts_with("web-v2-"), "{}", a.id);
    assert_eq!(a.id, b.id, "the same write id is the same start");
    assert_eq!(a.hosts.len(), 2);
    assert_eq!(a.batch, 1, "batch defaults to the budget");
    assert_eq!(a.progress_deadline_ms, 600_000, "10 minutes by default");
    assert!(a.auto_rollback, "rollback on failure by default");
}

#[tokio::test]
async fn the_heartbeat_stream_pushes_an_assignment_the_moment_it_changes() {
    let mut n = one_node().await;
    web(&mut n.client, 2).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(HeartbeatRequest {
        host: "web-1".into(),
        report: Some(healthy("v1")),
    })
    .await
    .expect("send");
    let mut beats = n
        .client
        .clone()
        .heartbeat(ReceiverStream::new(rx))
        .await
        .expect("heartbeat")
        .into_inner();
    let first = beats.message().await.expect("answer").expect("one");
    assert!(first.assignment.is_none(), "{first:?}");
    n.client
        .start_rollout(start_req("r1", "v2"))
        .await
        .expect("start");
    // No further beat is sent: the leader tells the agent on its own.
    let pushed = tokio::time::timeout(Duration::from_secs(3), beats.message())
        .await
        .expect("an answer within 3 s without a beat")
        .expect("stream")
        .expect("answer");
    let a = pushed.assignment.expect("the assignment");
    assert_eq!(a.rollout, "r1");
    assert_eq!(a.release.expect("release").id, "v2");
    assert_eq!((a.attempt, a.may_deploy), (1, false));
    // Staging admits web-1, and that is pushed too.
    for report in [StepReport::Staging, StepReport::Staged] {
        n.client
            .report_step(ReportStepRequest {
                host: "web-1".into(),
                rollout: "r1".into(),
                attempt: 1,
                report: report as i32,
                ..Default::default()
            })
            .await
            .expect("report");
    }
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let m = tokio::time::timeout_at(end.into(), beats.message())
            .await
            .expect("admission pushed within 3 s")
            .expect("stream")
            .expect("answer");
        if m.assignment.as_ref().is_some_and(|a| a.may_deploy) {
            break;
        }
    }
    drop(tx);
}

/// A heartbeat stream of `host`: the sender of its beats (one is sent) and its answers.
async fn open_stream(
    c: &CoordinatorClient<Channel>,
    host: &str,
) -> (
    mpsc::Sender<HeartbeatRequest>,
    tonic::Streaming<hotdeploy_common::proto::HeartbeatResponse>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(HeartbeatRequest {
        host: host.into(),
        report: Some(healthy("v1")),
    })
    .await
    .expect("send");
    let mut answers = c
        .clone()
        .heartbeat(ReceiverStream::new(rx))
        .await
        .expect("heartbeat")
        .into_inner();
    let first = answers.message().await.expect("answer").expect("one");
    assert!(
        first.slot.is_none() && first.assignment.is_none(),
        "{first:?}"
    );
    (tx, answers)
}

/// Waits until the dispatcher has looked at `entries` applied entries in all.
async fn dispatched(signals: &SignalStats, entries: u64) {
    let end = Instant::now() + Duration::from_secs(10);
    while signals.entries() < entries {
        assert!(
            Instant::now() < end,
            "the dispatcher looked at {} entries, not {entries}",
            signals.entries()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next answer pushed on `answers`, within 3 s, unasked (no beat is sent).
async fn pushed(
    answers: &mut tonic::Streaming<hotdeploy_common::proto::HeartbeatResponse>,
    what: &str,
) -> hotdeploy_common::proto::HeartbeatResponse {
    tokio::time::timeout(Duration::from_secs(3), answers.message())
        .await
        .unwrap_or_else(|_| panic!("{what} pushed within 3 s without a beat"))
        .expect("stream")
        .expect("answer")
}

/// Issue 10's heartbeat hot path: a stream is woken for its own host's changes (a slot given,
/// a slot force-released, an assignment), each pushed at once, and not for other hosts'.
#[tokio::test]
async fn a_heartbeat_stream_is_woken_only_by_its_own_hosts_changes() {
    let mut n = one_node().await;
    web(&mut n.client, 3).await;
    let (_tx1, mut one) = open_stream(&n.client, "web-1").await;
    let (_tx2, mut two) = open_stream(&n.client, "web-2").await;
    let acquire = |host: &str, seq: u64| AcquireSlotRequest {
        write: write(seq),
        host: host.into(),
        purpose: "maintenance".into(),
        reason: "test".into(),
        wait_ms: 5000,
        ..Default::default()
    };

    // 40 grants and releases of web-3's slot: 80 entries that are no business of web-1's or
    // web-2's streams.
    let before = (n.signals.entries(), n.signals.wakeups());
    for i in 0..40 {
        let token = n
            .client
            .acquire_slot(acquire("web-3", 100 + 2 * i))
            .await
            .expect("acquire web-3")
            .into_inner()
            .slot
            .expect("slot")
            .token;
        n.client
            .release_slot(ReleaseSlotRequest {
                write: write(101 + 2 * i),
                host: "web-3".into(),
                token,
            })
            .await
            .expect("release web-3");
    }
    dispatched(&n.signals, before.0 + 80).await;
    let woken = n.signals.wakeups() - before.1;
    assert_eq!(
        woken,
        0,
        "{woken} stream wake-ups for {} entries about another host",
        n.signals.entries() - before.0
    );
    for (name, s) in [("web-1", &mut one), ("web-2", &mut two)] {
        let quiet = tokio::time::timeout(Duration::from_millis(300), s.message()).await;
        assert!(
            quiet.is_err(),
            "{name}'s stream was told something: {quiet:?}"
        );
    }

    // web-1 is given a slot, then it is force-released: both reach web-1 at once, and only it.
    let woken_before = n.signals.wakeups();
    let token = n
        .client
        .acquire_slot(acquire("web-1", 200))
        .await
        .expect("acquire web-1")
        .into_inner()
        .slot
        .expect("slot")
        .token;
    let m = pushed(&mut one, "the slot given").await;
    assert_eq!(m.slot.as_ref().map(|s| s.token), Some(token), "{m:?}");
    n.client
        .force_release(ForceReleaseRequest {
            write: write(201),
            host: "web-1".into(),
        })
        .await
        .expect("force release");
    let m = pushed(&mut one, "the slot force-released").await;
    assert!(
        m.slot.is_none(),
        "web-1 was still told it holds a slot: {m:?}"
    );
    assert_eq!(
        n.signals.wakeups() - woken_before,
        2,
        "web-1's stream alone, twice"
    );
    let quiet = tokio::time::timeout(Duration::from_millis(300), two.message()).await;
    assert!(
        quiet.is_err(),
        "web-2's stream was told something: {quiet:?}"
    );

    // A rollout gives both their assignment.
    n.client
        .start_rollout(start_req("r1", "v2"))
        .await
        .expect("start");
    for (name, s) in [("web-1", &mut one), ("web-2", &mut two)] {
        let m = pushed(s, "the assignment").await;
        let rollout = m.assignment.as_ref().map(|a| a.rollout.as_str());
        assert_eq!(rollout, Some("r1"), "{name}: {m:?}");
    }
}

#[tokio::test]
async fn a_host_not_admitted_is_refused_a_slot_at_once() {
    let mut n = one_node().await;
    web(&mut n.client, 3).await;
    n.client
        .start_rollout(start_req("r1", "v2"))
        .await
        .expect("start");
    // The budget is used up, so a caller that got past the rollout's gate would wait for it.
    n.client
        .acquire_slot(AcquireSlotRequest {
            write: write(6),
            host: "web-3".into(),
            purpose: "maintenance".into(),
            reason: "disk".into(),
            rollout: String::new(),
            wait_ms: 0,
            canary: false,
            fence_draining: false,
        })
        .await
        .expect("maintenance slot");
    let t0 = Instant::now();
    let e = n
        .client
        .acquire_slot(AcquireSlotRequest {
            write: write(7),
            host: "web-2".into(),
            purpose: "deploy".into(),
            reason: "rollout".into(),
            rollout: "r1".into(),
            wait_ms: 10_000,
            canary: false,
            fence_draining: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not admitted yet"), "{e:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "waited {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn watch_streams_each_change_and_ends_when_the_rollout_does() {
    let mut n = one_node().await;
    web(&mut n.client, 1).await;
    n.client
        .set_group_policy(SetGroupPolicyRequest {
            write: None,
            group: "web".into(),
            max_unavailable: String::new(),
            allow_zero_available: Some(true),
        })
        .await
        .expect("allow zero");
    n.client
        .start_rollout(start_req("r1", "v2"))
        .await
        .expect("start");
    let mut stream = n
        .client
        .watch_rollout(WatchRolloutRequest { id: "r1".into() })
        .await
        .expect("watch")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("msg")
        .expect("first")
        .rollout
        .expect("rollout");
    assert_eq!(first.hosts.len(), 1);
    let mut c = n.client.clone();
    let report = |r: StepReport, seq: u64| ReportStepRequest {
        write: write(seq),
        host: "web-1".into(),
        rollout: "r1".into(),
        attempt: 1,
        report: r as i32,
        error: "verify failed: 500".into(),
        host_report: Some(healthy("v1")),
        release_token: 0,
    };
    c.report_step(report(StepReport::Staging, 1))
        .await
        .expect("staging");
    c.report_step(report(StepReport::Staged, 2))
        .await
        .expect("staged");
    let slot = deploy_slot(&mut c, write(3), "web-1", "r1").await;
    assert_eq!(slot.rollout, "r1");
    c.report_step(report(StepReport::RolledBack, 4))
        .await
        .expect("outcome");
    let mut phases = Vec::new();
    let mut last = None;
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Some(m) = tokio::time::timeout_at(end, stream.message())
        .await
        .expect("the stream did not end within 20 s of the outcome")
        .expect("stream")
    {
        let r = m.rollout.expect("rollout");
        phases.push(r.hosts[0].phase);
        last = Some(r);
    }
    let last = last.expect("messages after the first");
    assert_eq!(last.state, RolloutState::Halted as i32, "{last:?}");
    assert!(
        last.reason.contains("verify failed: 500"),
        "{}",
        last.reason
    );
    assert!(phases.len() >= 2, "saw only {phases:?}");
}

#[tokio::test]
async fn the_leaders_clock_halts_a_rollout_without_progress() {
    let mut n = one_node().await;
    web(&mut n.client, 2).await;
    n.client
        .start_rollout(StartRolloutRequest {
            progress_deadline_ms: 1000,
            ..start_req("r1", "v2")
        })
        .await
        .expect("start");
    let end = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = rollout_info(&mut n.client, "r1").await;
        if r.state != RolloutState::Running as i32 {
            break r;
        }
        assert!(Instant::now() < end, "still running after 10 s: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(r.state, RolloutState::Halted as i32);
    // How long it went without progress depends on when the leader's once-a-second look
    // came (later on a loaded machine); the deadline it broke does not.
    assert!(r.reason.starts_with("no progress for "), "{}", r.reason);
    assert!(r.reason.contains("(progress_deadline 1s)"), "{}", r.reason);
    assert!(
        r.reason.contains("web-1 waits on staging on the agent"),
        "{}",
        r.reason
    );
}

/// Issue 10's per-beat cuts keep what a beat does: every beat refreshes the host's last-seen
/// age and carries its report to the state, its answer names the slot it holds and the leader,
/// and a stream that names another host is checked again (a bad name is refused, and so is an
/// unregistered host).
#[tokio::test]
async fn every_beat_reports_and_is_answered_and_each_host_a_stream_names_is_checked() {
    let mut n = one_node().await;
    web(&mut n.client, 2).await;
    let (tx, mut answers) = open_stream(&n.client, "web-1").await;
    let slot = n
        .client
        .acquire_slot(AcquireSlotRequest {
            write: write(1),
            host: "web-1".into(),
            purpose: "maintenance".into(),
            reason: "test".into(),
            wait_ms: 5000,
            ..Default::default()
        })
        .await
        .expect("acquire")
        .into_inner()
        .slot
        .expect("a slot");
    let granted = pushed(&mut answers, "the grant").await;
    assert_eq!(granted.slot.map(|s| s.token), Some(slot.token));

    // A beat with a new report: answered with the slot and the leader, and the report lands.
    let host_of = |hosts: Vec<hotdeploy_common::proto::HostInfo>, id: &str| {
        hosts
            .into_iter()
            .find(|h| h.host == id)
            .unwrap_or_else(|| panic!("{id} is listed"))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.send(HeartbeatRequest {
        host: "web-1".into(),
        report: Some(healthy("v7")),
    })
    .await
    .expect("send");
    let answer = pushed(&mut answers, "the beat's answer").await;
    assert_eq!(answer.slot.map(|s| s.token), Some(slot.token));
    assert_eq!(answer.leader, 1);
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let hosts = n
            .client
            .list_hosts(hotdeploy_common::proto::ListHostsRequest::default())
            .await
            .expect("list")
            .into_inner()
            .hosts;
        let web1 = host_of(hosts, "web-1");
        let age = web1.last_seen_ms.expect("a beat was seen");
        if web1.release == "v7" {
            assert!(age < 250, "the last beat is {age} ms old");
            break;
        }
        assert!(
            Instant::now() < end,
            "the beat's report never landed: {web1:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The same stream names another host: checked again, and a bad name ends the stream.
    tx.send(HeartbeatRequest {
        host: "web 2!".into(),
        report: Some(healthy("v1")),
    })
    .await
    .expect("send");
    let refused = tokio::time::timeout(Duration::from_secs(3), answers.message())
        .await
        .expect("an answer within 3 s")
        .expect_err("a bad host name is refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    // A stream of web-2 that names an unregistered host next: refused, not answered.
    let (tx2, mut two) = open_stream(&n.client, "web-2").await;
    tx2.send(HeartbeatRequest {
        host: "web-9".into(),
        report: Some(healthy("v1")),
    })
    .await
    .expect("send");
    let refused = tokio::time::timeout(Duration::from_secs(3), two.message())
        .await
        .expect("an answer within 3 s")
        .expect_err("an unregistered host is refused");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
}

/// An outcome that names its slot's token releases the slot in the same write, and says so; a
/// retry of that write answers the same; a token with a report that is not an outcome is
/// refused naming the field, and nothing moves.
#[tokio::test]
async fn an_outcome_with_its_token_releases_the_slot_and_says_so() {
    let mut n = one_node().await;
    web(&mut n.client, 2).await;
    let mut c = n.client.clone();
    c.start_rollout(StartRolloutRequest {
        batch: 1,
        ..start_req("r1", "v2")
    })
    .await
    .expect("start");
    let step = |host: &str, r: StepReport, seq: u64, token: u64| {
        step_report(host, r, seq, token, Some(healthy("v2")))
    };
    for h in ["web-1", "web-2"] {
        c.report_step(step(h, StepReport::Staged, 1, 0))
            .await
            .expect("staged");
    }
    let info = rollout_info(&mut c, "r1").await;
    let first = info
        .hosts
        .iter()
        .find(|s| s.phase == StepPhase::Waiting as i32)
        .map(|s| s.host.clone())
        .expect("one host admitted");
    let write = Some(WriteId {
        client_id: first.clone(),
        seq: 2,
    });
    let slot = deploy_slot(&mut c, write, &first, "r1").await;

    let e = c
        .report_step(step(&first, StepReport::Verifying, 3, slot.token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("release_token"), "{e:?}");

    let done = step(&first, StepReport::Succeeded, 4, slot.token);
    let answer = c.report_step(done.clone()).await.expect("outcome");
    assert!(answer.into_inner().released, "released with the outcome");
    let slots = c
        .list_slots(ListSlotsRequest::default())
        .await
        .expect("slots")
        .into_inner();
    assert!(
        slots.slots.iter().all(|s| s.host != first),
        "{first} still holds a slot: {slots:?}"
    );
    let again = c.report_step(done).await.expect("retry");
    assert!(again.into_inner().released, "a retry answers the same");
    let info = rollout_info(&mut c, "r1").await;
    let s = info.hosts.iter().find(|s| s.host == first).unwrap();
    assert_eq!(s.phase, StepPhase::Succeeded as i32, "{info:?}");
    let other = info.hosts.iter().find(|s| s.host != first).unwrap();
    assert_eq!(
        other.phase,
        StepPhase::Waiting as i32,
        "the freed budget admits the next host: {info:?}"
    );
}

/// A grant asked to fence the drain commits `draining` in its own entry, and says so: the step
/// shows `draining` and `locks list` the phase, with no `ReportPhase`. A retry of that write
/// answers the same while the slot is held; once the slot is force-released, the retry is
/// refused as stale, so no agent drains on a slot it no longer holds. A grant not asked says
/// its drain is not fenced.
#[tokio::test]
async fn a_grant_asked_to_fence_the_drain_commits_draining_and_a_retry_after_a_forced_release_is_stale(
) {
    let mut n = one_node().await;
    web(&mut n.client, 3).await;
    let mut c = n.client.clone();
    c.start_rollout(StartRolloutRequest {
        batch: 1,
        ..start_req("r1", "v2")
    })
    .await
    .expect("start");
    for h in ["web-1", "web-2", "web-3"] {
        c.report_step(step_report(h, StepReport::Staged, 1, 0, None))
            .await
            .expect("staged");
    }
    let info = rollout_info(&mut c, "r1").await;
    let first = info
        .hosts
        .iter()
        .find(|s| s.phase == StepPhase::Waiting as i32)
        .map(|s| s.host.clone())
        .expect("one host admitted");
    let ask = deploy_ask(host_write(&first, 2), &first, "r1", true);
    let granted = c
        .acquire_slot(ask.clone())
        .await
        .expect("slot")
        .into_inner();
    assert!(granted.draining_fenced, "{granted:?}");
    let token = granted.slot.as_ref().expect("slot").token;
    let info = rollout_info(&mut c, "r1").await;
    let step = info.hosts.iter().find(|s| s.host == first).unwrap();
    assert_eq!(step.phase, StepPhase::Draining as i32, "{info:?}");
    let slots = c
        .list_slots(ListSlotsRequest::default())
        .await
        .expect("slots")
        .into_inner();
    let held = slots.slots.iter().find(|s| s.token == token).expect("held");
    assert_eq!(held.phase, "draining");

    let again = c
        .acquire_slot(ask.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(again, granted, "a retry while held answers the same");

    c.force_release(ForceReleaseRequest {
        write: None,
        host: first.clone(),
    })
    .await
    .expect("force release");
    let e = c.acquire_slot(ask).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&token.to_string()), "{e:?}");
    let slots = c
        .list_slots(ListSlotsRequest::default())
        .await
        .expect("slots")
        .into_inner();
    assert!(
        slots.slots.iter().all(|s| s.host != first),
        "the stale retry took a slot: {slots:?}"
    );

    // Not asked: the grant commits no phase and says the drain is not fenced.
    let info = rollout_info(&mut c, "r1").await;
    let next = info
        .hosts
        .iter()
        .find(|s| s.phase == StepPhase::Waiting as i32)
        .map(|s| s.host.clone())
        .expect("a host admitted after the forced release");
    let plain = c
        .acquire_slot(deploy_ask(host_write(&next, 3), &next, "r1", false))
        .await
        .expect("slot")
        .into_inner();
    assert!(!plain.draining_fenced, "{plain:?}");
    assert_eq!(plain.slot.expect("slot").phase, "");
}
