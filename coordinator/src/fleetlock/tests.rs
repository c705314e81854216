//! The FleetLock handler on a one-node cluster (a real raft node and sled, in process): the
//! requests Zincati sends, and every way a request is refused.

use super::*;
use crate::raft::test_node;
use crate::state::{Command, Health, Proposal, Report, Rotation, FLEETLOCK};
use hotdeploy_common::config::MaxUnavailable;
use hotdeploy_common::time::now_ms;
use http_body_util::Full;
use std::time::Duration;

/// What Zincati sends: its pretty-printed body, no content type.
fn zincati_body(id: &str, group: &str) -> String {
    format!(
        "{{\n  \"client_params\": {{\n    \"id\": \"{id}\",\n    \"group\": \"{group}\"\n  }}\n}}"
    )
}

fn request(op: Op, header: bool, body: impl Into<Bytes>) -> http::Request<Full<Bytes>> {
    let path = match op {
        Op::PreReboot => "/v1/pre-reboot",
        Op::SteadyState => "/v1/steady-state",
    };
    let mut b = http::Request::post(path);
    if header {
        b = b.header(PROTOCOL_HEADER, "true");
    }
    b.body(Full::new(body.into())).unwrap()
}

fn kind(reply: &Reply) -> String {
    let v: serde_json::Value = serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", reply.body));
    assert!(
        v["value"].as_str().is_some_and(|s| !s.is_empty()),
        "{}",
        reply.body
    );
    v["kind"].as_str().unwrap_or_default().to_string()
}

struct World {
    _dir: tempfile::TempDir,
    node: RaftNode,
    metrics: Arc<Metrics>,
    fleetlock: FleetLock,
}

const ALLOWED: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 7));

impl World {
    /// One node, group `web` (budget 1) with two healthy agent hosts, FleetLock for
    /// 127.0.0.0/29.
    async fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_node::config(dir.path(), "127.0.0.1:1");
        let node = test_node::start(&cfg).await;
        let metrics = Arc::new(Metrics::new(&node));
        let fleetlock = FleetLock::new(
            node.clone(),
            vec!["127.0.0.0/29".parse().unwrap()],
            metrics.clone(),
        );
        let w = World {
            _dir: dir,
            node,
            metrics,
            fleetlock,
        };
        w.write(Command::SetGroupPolicy {
            group: "web".into(),
            max_unavailable: Some(MaxUnavailable::parse("1").unwrap()),
            allow_zero_available: None,
        })
        .await
        .unwrap();
        for h in ["web-1", "web-2"] {
            w.write(Command::Register {
                host: h.into(),
                groups: vec!["web".into()],
                address: String::new(),
                report: Report {
                    health: Health::Healthy,
                    rotation: Rotation::InRotation,
                    release: "v1".into(),
                    phase: String::new(),
                },
            })
            .await
            .unwrap();
        }
        w
    }

    async fn write(&self, command: Command) -> crate::state::Response {
        self.node
            .propose(
                Proposal::new(None, now_ms(), "operator/test", command),
                Duration::from_secs(10),
            )
            .await
            .expect("the node commits")
    }

    async fn send(&self, op: Op, id: &str, group: &str) -> Reply {
        let req = request(op, true, zincati_body(id, group));
        self.fleetlock.handle(op, ALLOWED, req).await
    }

    fn slot_of(&self, host: &str) -> Option<(u64, String)> {
        let st = self.node.state();
        let token = st.host(host)?.slot?;
        st.slots()
            .into_iter()
            .find(|s| s.token == token)
            .map(|s| (s.token, s.purpose.clone()))
    }
}

/// Lock and unlock as Zincati asks: an unknown id becomes a lock-only host, its lock is
/// re-entrant (same token), steady-state frees it, and a second steady-state is a no-op 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_unlock_as_zincati_asks() {
    let w = World::start().await;
    let id = "c988d2509fdf4cdcbed39037c56406fb";
    let first = w.send(Op::PreReboot, id, "web").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let v: serde_json::Value = serde_json::from_str(&first.body).unwrap();
    let token = v["token"].as_u64().expect("a token");
    assert_eq!(w.slot_of(id), Some((token, FLEETLOCK.to_string())));
    assert!(w.node.state().host(id).unwrap().is_lock_only());

    let again = w.send(Op::PreReboot, id, "web").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    let v: serde_json::Value = serde_json::from_str(&again.body).unwrap();
    assert_eq!(
        v["token"].as_u64(),
        Some(token),
        "re-entrant: the same slot"
    );

    let unlock = w.send(Op::SteadyState, id, "web").await;
    assert_eq!(unlock.status, StatusCode::OK, "{}", unlock.body);
    let v: serde_json::Value = serde_json::from_str(&unlock.body).unwrap();
    assert_eq!(v["released"].as_u64(), Some(token));
    assert_eq!(w.slot_of(id), None);
    let noop = w.send(Op::SteadyState, id, "web").await;
    assert_eq!(noop.status, StatusCode::OK, "{}", noop.body);
    assert!(noop.body.contains("\"released\":null"), "{}", noop.body);

    let text = w.metrics.render().unwrap();
    for series in [
        "hotdeploy_fleetlock_requests_total{op=\"pre_reboot\",result=\"ok\"} 2",
        "hotdeploy_fleetlock_requests_total{op=\"steady_state\",result=\"ok\"} 2",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
}

/// The budget is shared: a FleetLock holder keeps a deploy slot from being granted when the
/// budget is 1, a deploy keeps FleetLock out (at once, with no log entry), and steady-state
/// never frees a slot it did not take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleetlock_holder_and_a_deploy_share_the_budget() {
    let w = World::start().await;
    let reboot = w.send(Op::PreReboot, "node-1", "web").await;
    assert_eq!(reboot.status, StatusCode::OK, "{}", reboot.body);
    let deploy = Command::Acquire {
        host: "web-1".into(),
        purpose: "deploy".into(),
        reason: String::new(),
        rollout: String::new(),
        phase: None,
    };
    let refused = w.write(deploy.clone()).await;
    assert!(
        matches!(refused, Err(crate::state::StateError::OverBudget { ref unavailable, .. }) if unavailable == &["node-1"]),
        "{refused:?}"
    );
    assert_eq!(
        w.send(Op::SteadyState, "node-1", "web").await.status,
        StatusCode::OK
    );
    w.write(deploy).await.unwrap();

    let before = w.node.state().applied_index();
    let full = w.send(Op::PreReboot, "node-1", "web").await;
    assert_eq!(full.status, StatusCode::CONFLICT, "{}", full.body);
    assert_eq!(kind(&full), "failed_lock_semaphore_full");
    assert!(full.retry);
    assert!(
        full.body.contains("web-1"),
        "names the holder: {}",
        full.body
    );
    assert_eq!(
        w.node.state().applied_index(),
        before,
        "a refusal the state already gives takes no log entry"
    );

    // web-1's deploy slot is not FleetLock's: steady-state leaves it alone.
    let unlock = w.send(Op::SteadyState, "web-1", "web").await;
    assert_eq!(unlock.status, StatusCode::OK, "{}", unlock.body);
    assert_eq!(w.slot_of("web-1").map(|s| s.1), Some("deploy".to_string()));
    let other = w.send(Op::PreReboot, "web-1", "web").await;
    assert_eq!(kind(&other), "failed_lock_held_for_other_purpose");
}

/// A missing header, a bad body, a client outside `allow`, a wrong method, an unknown group,
/// a bad id and an agent host's foreign group each get their own error, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_own_errors_and_change_nothing() {
    let w = World::start().await;
    let before = w.node.state().applied_index();
    let op = Op::PreReboot;
    let body = zincati_body("node-1", "web");
    type Case = (
        &'static str,
        http::Request<Full<Bytes>>,
        IpAddr,
        StatusCode,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "no header",
            request(op, false, body.clone()),
            ALLOWED,
            StatusCode::BAD_REQUEST,
            "missing_protocol_header",
        ),
        (
            "bad body",
            request(op, true, "{\"client_params\": {\"id\": \"node-1\"}}"),
            ALLOWED,
            StatusCode::BAD_REQUEST,
            "bad_request_body",
        ),
        (
            "not JSON",
            request(op, true, "id=node-1"),
            ALLOWED,
            StatusCode::BAD_REQUEST,
            "bad_request_body",
        ),
        (
            "outside allow",
            request(op, true, body.clone()),
            "127.0.0.9".parse().unwrap(),
            StatusCode::FORBIDDEN,
            "client_not_allowed",
        ),
        (
            "outside allow, IPv6",
            request(op, true, body.clone()),
            "::1".parse().unwrap(),
            StatusCode::FORBIDDEN,
            "client_not_allowed",
        ),
        (
            "too large",
            request(op, true, vec![b' '; MAX_BODY + 1]),
            ALLOWED,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "unknown group",
            request(op, true, zincati_body("node-1", "db")),
            ALLOWED,
            StatusCode::NOT_FOUND,
            "unknown_group",
        ),
        (
            "bad id",
            request(op, true, zincati_body("Node_1", "web")),
            ALLOWED,
            StatusCode::BAD_REQUEST,
            "invalid_client_id",
        ),
        (
            "bad group",
            request(op, true, zincati_body("node-1", "Workers")),
            ALLOWED,
            StatusCode::BAD_REQUEST,
            "invalid_group",
        ),
        (
            "GET",
            http::Request::get("/v1/pre-reboot")
                .header(PROTOCOL_HEADER, "true")
                .body(Full::new(Bytes::new()))
                .unwrap(),
            ALLOWED,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (what, req, from, status, want) in cases {
        let reply = w.fleetlock.handle(op, from, req).await;
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        assert_eq!(kind(&reply), want, "{what}");
    }
    assert_eq!(w.node.state().applied_index(), before, "a refusal wrote");
    assert!(w.node.state().host("node-1").is_none());

    w.write(Command::SetGroupPolicy {
        group: "db".into(),
        max_unavailable: Some(MaxUnavailable::parse("1").unwrap()),
        allow_zero_available: None,
    })
    .await
    .unwrap();
    let foreign = w.send(Op::PreReboot, "web-1", "db").await;
    assert_eq!(foreign.status, StatusCode::CONFLICT, "{}", foreign.body);
    assert_eq!(kind(&foreign), "group_mismatch");
    let text = w.metrics.render().unwrap();
    for k in [
        "missing_protocol_header",
        "client_not_allowed",
        "bad_request_body",
    ] {
        assert!(
            text.contains(&format!(
                "hotdeploy_fleetlock_requests_total{{op=\"pre_reboot\",result=\"{k}\"}}"
            )),
            "{k}:\n{text}"
        );
    }
}

/// The first host of a FleetLock-only group cannot reboot (it is the group's only host), but
/// its steady-state at boot registers it, so the next host can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_at_boot_makes_a_host_count() {
    let w = World::start().await;
    w.write(Command::SetGroupPolicy {
        group: "default".into(),
        max_unavailable: Some(MaxUnavailable::parse("1").unwrap()),
        allow_zero_available: None,
    })
    .await
    .unwrap();
    let lone = w.send(Op::PreReboot, "node-a", "default").await;
    assert_eq!(kind(&lone), "failed_lock_lone_host");
    assert!(lone.body.contains("allow-zero-available"), "{}", lone.body);
    let boot = w.send(Op::SteadyState, "node-b", "default").await;
    assert_eq!(boot.status, StatusCode::OK, "{}", boot.body);
    assert_eq!(w.node.state().group_view("default").unwrap().size, 2);
    let ok = w.send(Op::PreReboot, "node-a", "default").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}
