//! The metric families: what a sample reads from the state, how it is written, and that the
//! edge-fed series move on a running node.

use super::*;
use crate::raft::{test_node, Known, NodeStats, NodeStatus, Role};
use crate::state::{
    Command, Health, Proposal, ReleaseSpec, Report, RolloutSpec, Rotation, StateMachine, FLEETLOCK,
};
use hotdeploy_common::config::MaxUnavailable;
use std::collections::BTreeMap;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;

/// Group `web` (budget 1) with agents web-1..web-3 and a lock-only node-1 holding a FleetLock
/// slot granted at T0 + 10 s; rollout r1 of v2 to `web` started after it.
fn state() -> StateMachine {
    let mut sm = StateMachine::new();
    let mut index = 0;
    let mut apply = |sm: &mut StateMachine, at_ms: u64, command: Command| {
        index += 1;
        sm.apply(index, Proposal::new(None, at_ms, "operator/t", command))
            .unwrap_or_else(|e| panic!("{e}"));
    };
    apply(
        &mut sm,
        T0,
        Command::SetGroupPolicy {
            group: "web".into(),
            max_unavailable: Some(MaxUnavailable::parse("1").unwrap()),
            allow_zero_available: None,
        },
    );
    for h in ["web-1", "web-2", "web-3"] {
        apply(
            &mut sm,
            T0,
            Command::Register {
                host: h.into(),
                groups: vec!["web".into()],
                address: String::new(),
                report: Report {
                    health: Health::Healthy,
                    rotation: Rotation::InRotation,
                    release: "v1".into(),
                    phase: String::new(),
                },
            },
        );
    }
    apply(
        &mut sm,
        T0,
        Command::RegisterLockOnly {
            host: "node-1".into(),
            group: "web".into(),
        },
    );
    apply(
        &mut sm,
        T0 + 10_000,
        Command::Acquire {
            host: "node-1".into(),
            purpose: FLEETLOCK.into(),
            reason: String::new(),
            rollout: String::new(),
            phase: None,
        },
    );
    apply(
        &mut sm,
        T0 + 20_000,
        Command::StartRollout {
            spec: RolloutSpec {
                id: "r1".into(),
                group: "web".into(),
                release: ReleaseSpec {
                    id: "v2".into(),
                    artifact_url: "file:///r/v2.tar.gz".into(),
                    sha256: "ab".repeat(32),
                    signature: String::new(),
                },
                batch: 0,
                canary: 0,
                pause_after_canary: false,
                max_failures: 0,
                auto_rollback: true,
                supersede: false,
                progress_deadline_ms: 0,
            },
        },
    );
    sm
}

fn leader_status() -> NodeStatus {
    NodeStatus {
        id: 1,
        role: Role::Leader,
        leader: 1,
        term: 7,
        commit: 40,
        applied: 39,
        voters: vec![1, 2, 3],
        learners: vec![],
        matched: BTreeMap::from([(1, 40), (2, 40), (3, 31)]),
        active: BTreeMap::from([(1, true), (2, true), (3, false)]),
        versions: BTreeMap::from([
            (1, Known::Own(4)),
            (2, Known::Reported(4)),
            (3, Known::Recorded(2)),
        ]),
    }
}

struct Fixed(RaftSample, FleetSample);

impl Source for Fixed {
    fn sample(&self) -> (RaftSample, FleetSample) {
        (self.0.clone(), self.1.clone())
    }
}

/// The value of the one series `line_start` (the name with its labels), in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_sample_reads_budgets_slots_hosts_and_rollouts_from_the_state() {
    let f = FleetSample::of(&state(), T0 + 70_000);
    assert_eq!(
        f.groups,
        vec![GroupSample {
            name: "web".into(),
            budget: 1,
            unavailable: 1,
            size: 4,
            holders: 1
        }]
    );
    assert_eq!(
        f.slots,
        vec![SlotSample {
            host: "node-1".into(),
            purpose: FLEETLOCK.into(),
            age: Duration::from_secs(60),
        }]
    );
    assert_eq!((f.agent_hosts, f.lock_only_hosts), (3, 1));
    assert_eq!((f.unreachable, f.unhealthy, f.out_of_rotation), (0, 0, 0));
    assert!(f.rollouts_by_state.contains(&("running", 1)));
    assert!(f.rollouts_by_state.contains(&("halted", 0)));
    let [r] = f.rollouts.as_slice() else {
        panic!("one rollout: {:?}", f.rollouts)
    };
    assert_eq!((r.id.as_str(), r.group.as_str()), ("r1", "web"));
    assert!(r.hosts.contains(&("pending", 3)), "{:?}", r.hosts);
    assert!(r.hosts.contains(&("succeeded", 0)), "{:?}", r.hosts);
    assert_eq!(r.hosts.len(), 11, "every phase has a series");
    assert_eq!(r.since_progress, Some(Duration::from_secs(50)));

    let raft = RaftSample::of(&leader_status(), Duration::from_millis(30));
    assert_eq!(
        raft.peers,
        vec![
            PeerSample {
                id: 2,
                active: true,
                lag: 0
            },
            PeerSample {
                id: 3,
                active: false,
                lag: 9
            }
        ]
    );
    // A follower reports no peers: it does not know them first-hand.
    let mut follower = leader_status();
    follower.role = Role::Follower;
    assert!(RaftSample::of(&follower, Duration::ZERO).peers.is_empty());
}

/// Every family is `hotdeploy_*`, and the key series carry the sample's numbers.
#[test]
fn every_metric_is_named_hotdeploy_and_carries_the_sample() {
    let stats = NodeStats::default();
    stats.commit_latency.observe(0.003);
    stats.commit_latency.observe(0.2);
    let m = Metrics::with_source(
        Fixed(
            RaftSample::of(&leader_status(), Duration::from_millis(30)),
            FleetSample::of(&state(), T0 + 70_000),
        ),
        &stats,
    );
    m.fleetlock_request("pre_reboot", "ok");
    grpc::count(
        &m.grpc_errors(),
        "Coordinator/AcquireSlot".into(),
        tonic::Code::PermissionDenied,
    );
    let text = m.render().unwrap();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap_or_default())
        .collect();
    assert!(families.len() >= 28, "{families:?}");
    for f in &families {
        assert!(f.starts_with("hotdeploy_"), "{f}");
    }
    let expect = [
        ("hotdeploy_raft_role{role=\"leader\"}", 1.0),
        ("hotdeploy_raft_role{role=\"follower\"}", 0.0),
        ("hotdeploy_raft_term", 7.0),
        ("hotdeploy_raft_commit_index", 40.0),
        ("hotdeploy_raft_applied_index", 39.0),
        ("hotdeploy_raft_peer_active{peer=\"3\"}", 0.0),
        ("hotdeploy_raft_peer_lag_entries{peer=\"3\"}", 9.0),
        ("hotdeploy_raft_member_format_version{member=\"1\"}", 4.0),
        ("hotdeploy_raft_member_format_version{member=\"3\"}", 2.0),
        ("hotdeploy_raft_commit_latency_seconds_count", 2.0),
        ("hotdeploy_raft_commit_latency_seconds_bucket{le=\"0.005\"}", 1.0),
        ("hotdeploy_group_budget{group=\"web\"}", 1.0),
        ("hotdeploy_group_unavailable{group=\"web\"}", 1.0),
        ("hotdeploy_group_size{group=\"web\"}", 4.0),
        ("hotdeploy_group_holders{group=\"web\"}", 1.0),
        ("hotdeploy_slots_held{purpose=\"fleetlock\"}", 1.0),
        (
            "hotdeploy_slot_age_seconds{host=\"node-1\",purpose=\"fleetlock\"}",
            60.0,
        ),
        ("hotdeploy_slot_oldest_age_seconds", 60.0),
        ("hotdeploy_hosts{kind=\"lock_only\"}", 1.0),
        ("hotdeploy_hosts{kind=\"agent\"}", 3.0),
        ("hotdeploy_hosts_health{health=\"healthy\"}", 4.0),
        ("hotdeploy_hosts_health{health=\"unhealthy\"}", 0.0),
        ("hotdeploy_lock_waiters", 0.0),
        ("hotdeploy_rollouts{state=\"running\"}", 1.0),
        (
            "hotdeploy_rollout_state{rollout=\"r1\",group=\"web\",state=\"running\"}",
            1.0,
        ),
        (
            "hotdeploy_rollout_state{rollout=\"r1\",group=\"web\",state=\"halted\"}",
            0.0,
        ),
        (
            "hotdeploy_rollout_hosts{rollout=\"r1\",group=\"web\",phase=\"pending\"}",
            3.0,
        ),
        (
            "hotdeploy_rollout_since_progress_seconds{rollout=\"r1\",group=\"web\"}",
            50.0,
        ),
        (
            "hotdeploy_fleetlock_requests_total{op=\"pre_reboot\",result=\"ok\"}",
            1.0,
        ),
        (
            "hotdeploy_grpc_errors_total{call=\"Coordinator/AcquireSlot\",code=\"PERMISSION_DENIED\"}",
            1.0,
        ),
    ];
    for (series, want) in expect {
        assert_eq!(value(&text, series), Some(want), "{series} in:\n{text}");
    }
    let build = format!(
        "hotdeploy_build_info{{version=\"{}\",command_format_version=\"{FORMAT_VERSION}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&text, &build), Some(1.0), "{build} in:\n{text}");
    assert!(text.ends_with("# EOF\n"));
}

/// The Grafana dashboard in deploy/ asks only for metrics the coordinator serves: every
/// `hotdeploy_*` name in it is a family of a scrape where every family has a series.
#[test]
fn the_grafana_dashboard_uses_only_served_metrics() {
    let stats = NodeStats::default();
    stats.commit_latency.observe(0.003);
    stats
        .errors
        .get_or_create(&crate::raft::ErrorLabels {
            op: "propose",
            kind: "timeout",
        })
        .inc();
    let m = Metrics::with_source(
        Fixed(
            RaftSample::of(&leader_status(), Duration::from_millis(30)),
            FleetSample::of(&state(), T0 + 70_000),
        ),
        &stats,
    );
    m.fleetlock_request("pre_reboot", "ok");
    m.lock()
        .answered("deploy", AcquireResult::Granted, Duration::from_millis(4));
    grpc::count(
        &m.grpc_errors(),
        "Coordinator/AcquireSlot".into(),
        tonic::Code::PermissionDenied,
    );
    let text = m.render().unwrap();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana/hotdeploy-coordinator.json");
    let dashboard =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10));
    let mut used = Vec::new();
    let mut rest = dashboard.as_str();
    while let Some(at) = rest.find("hotdeploy_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        used.push(name);
    }
    assert!(used.len() >= 20, "the dashboard uses the metrics: {used:?}");
    for name in &used {
        let family = ["_bucket", "_count", "_sum", "_total"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            families.contains(&family),
            "the dashboard's {name} is not served; served: {families:?}"
        );
    }
}

/// On a running node, the edge-fed series move: a write adds to the commit latency and to the
/// applied proposals of its kind, a refused gRPC call is counted by call and code, a
/// follower's proposal by kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_latency_and_refusals_move_on_a_running_node() {
    use crate::liveness::Liveness;
    use crate::service::{self, CoordinatorService};
    use hotdeploy_common::proto::coordinator_client::CoordinatorClient;
    use hotdeploy_common::proto::{AcquireSlotRequest, ListHostsRequest};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_node::config(dir.path(), &addr.to_string());
    let (node, peer) = test_node::start_with_peer(&cfg).await;
    let m = Metrics::new(&node);
    let before = value(
        &m.render().unwrap(),
        "hotdeploy_raft_commit_latency_seconds_count",
    )
    .unwrap_or(0.0);
    node.propose(
        Proposal::new(
            None,
            1,
            "operator/t",
            Command::SetGroupPolicy {
                group: "web".into(),
                max_unavailable: Some(MaxUnavailable::parse("1").unwrap()),
                allow_zero_available: None,
            },
        ),
        Duration::from_secs(10),
    )
    .await
    .unwrap()
    .unwrap();
    let text = m.render().unwrap();
    assert_eq!(
        value(&text, "hotdeploy_raft_commit_latency_seconds_count"),
        Some(before + 1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "hotdeploy_group_budget{group=\"web\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "hotdeploy_raft_proposals_applied_total{kind=\"SetGroupPolicy\"}"
        ),
        Some(1.0),
        "{text}"
    );

    let (serving, _) = tokio::sync::oneshot::channel();
    let liveness = Liveness::new(node.clone(), cfg.liveness.clone());
    tokio::spawn(service::serve(
        listener,
        None,
        16,
        CoordinatorService::new(node.clone(), liveness).with_metrics(&m),
        peer,
        tonic_health::server::HealthReporter::new(),
        serving,
        std::future::pending::<()>(),
    ));
    let mut client = loop {
        if let Ok(c) = CoordinatorClient::connect(format!("http://{addr}")).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for _ in 0..2 {
        let err = client
            .list_hosts(ListHostsRequest {
                group: "Not_A_Group".into(),
                host: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
    client
        .list_hosts(ListHostsRequest::default())
        .await
        .unwrap();
    let text = m.render().unwrap();
    assert_eq!(
        value(
            &text,
            "hotdeploy_grpc_errors_total{call=\"Coordinator/ListHosts\",code=\"INVALID_ARGUMENT\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert!(
        !text.contains("code=\"OK\""),
        "successes are not errors:\n{text}"
    );
    // AcquireSlot: one refused (unknown host), one granted; neither is left waiting.
    for (i, host) in ["web-1", "web-2"].into_iter().enumerate() {
        node.propose(
            Proposal::new(
                None,
                2 + i as u64,
                format!("agent/{host}"),
                Command::Register {
                    host: host.into(),
                    groups: vec!["web".into()],
                    address: String::new(),
                    report: Report {
                        health: Health::Healthy,
                        rotation: Rotation::InRotation,
                        release: "v1".into(),
                        phase: String::new(),
                    },
                },
            ),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .unwrap();
    }
    let acquire = |host: &str| AcquireSlotRequest {
        host: host.into(),
        purpose: "deploy".into(),
        reason: "metrics test".into(),
        ..AcquireSlotRequest::default()
    };
    client.acquire_slot(acquire("nobody")).await.unwrap_err();
    client.acquire_slot(acquire("web-1")).await.unwrap();
    let text = m.render().unwrap();
    for (series, want) in [
        (
            "hotdeploy_lock_acquires_total{purpose=\"deploy\",result=\"refused\"}",
            1.0,
        ),
        (
            "hotdeploy_lock_acquires_total{purpose=\"deploy\",result=\"granted\"}",
            1.0,
        ),
        ("hotdeploy_lock_grant_wait_seconds_count", 1.0),
        ("hotdeploy_lock_waiters", 0.0),
        ("hotdeploy_slots_held{purpose=\"deploy\"}", 1.0),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series} in:\n{text}");
    }
}
