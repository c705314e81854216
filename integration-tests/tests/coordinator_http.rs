//! The coordinator's HTTP listener from the outside (DESIGN §8, issue 11 items 1 and 4): a real
//! three-node cluster of `hotdeploy-coordinator` processes, asked over real sockets the way
//! Zincati and Prometheus ask.
//!
//! - FleetLock as Zincati speaks it: hosts report `steady-state` at boot (and so count in the
//!   group), `pre-reboot` takes a slot of the group's budget, is re-entrant, refuses a second
//!   host over budget with 409 and `{kind, value}`; `steady-state` frees it; a follower answers
//!   503 `not_leader` naming the leader; a FleetLock holder blocks a deploy or maintenance slot
//!   of the same group (one budget), and `steady-state` never frees a slot of another purpose;
//! - bad requests (no header, a bad body, a bad id, an unknown group, a huge body, a client
//!   outside `allow`, the wrong method or path) each get their own clear error and change
//!   nothing;
//! - `/metrics` parses on every node, names the leader, and its series move when a lock is
//!   taken (slots, budget use, commit latency, FleetLock and `AcquireSlot` counters), on the
//!   leader and, replicated, on a follower, and when a rollout starts (by state, by phase);
//! - a FleetLock slot survives `kill -9` of the leader: the new leader gives the same client the
//!   same slot, still refuses a second host, and frees it on `steady-state`;
//! - with the project's TLS, the same listener speaks HTTPS only.
//!
//! The test's client binds its socket to chosen loopback addresses: one in `[fleetlock] allow`,
//! one outside it. Build the binaries first: `cargo build --workspace --bins`.

mod common;
mod pki_support;

use common::{lock_of, output_text, pretty, pseudo_host_opts, runtime, serial, Deadline};
use hotdeploy_integration_tests::cluster::{Cluster, ClusterOpts};
use hotdeploy_integration_tests::coord_client::CoordClient;
use hotdeploy_integration_tests::http_request::{Reply, Request};
use hotdeploy_integration_tests::net;
use hotdeploy_integration_tests::prom_text::{self, Scrape};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

const ELECTION: Duration = Duration::from_secs(30);

/// A cluster with FleetLock on, open to `allowed` only, and its clients' addresses.
struct World {
    cluster: Cluster,
    leader: u64,
    /// In `[fleetlock] allow`.
    allowed: Ipv4Addr,
    /// Outside it.
    outsider: Ipv4Addr,
    /// `ca.pem` when the cluster speaks TLS.
    ca: Option<PathBuf>,
}

impl World {
    fn start(groups: &[(&str, &str)], tls: Option<(PathBuf, Vec<Ipv4Addr>)>) -> World {
        let clients = net::alloc_ips(2);
        let (allowed, outsider) = (clients[0], clients[1]);
        let mut fleetlock = toml::Table::new();
        fleetlock.insert("enabled".into(), true.into());
        fleetlock.insert(
            "allow".into(),
            toml::Value::Array(vec![format!("{allowed}/32").into()]),
        );
        let mut opts = pseudo_host_opts();
        opts.extra.insert("fleetlock".into(), fleetlock.into());
        let ca = tls.as_ref().map(|(dir, _)| dir.join("ca.pem"));
        if let Some((dir, ips)) = tls {
            opts = ClusterOpts {
                tls: Some(dir),
                ips: Some(ips),
                ..opts
            };
        }
        let cluster = Cluster::start(3, groups, opts);
        let leader = cluster.wait_leader(ELECTION, None);
        World {
            cluster,
            leader,
            allowed,
            outsider,
            ca,
        }
    }

    fn followers(&self) -> Vec<u64> {
        self.cluster
            .ids()
            .into_iter()
            .filter(|id| *id != self.leader)
            .collect()
    }

    fn with_tls(&self, r: Request) -> Request {
        match &self.ca {
            Some(ca) => r.tls(ca),
            None => r,
        }
    }

    /// Sends `req` to node `id`'s `http_listen`.
    fn send(&self, id: u64, req: Request) -> Reply {
        let req = self.with_tls(req);
        let addr = self.cluster.http_addr(id);
        req.send(addr).unwrap_or_else(|e| {
            panic!(
                "{} {} to node {id}: {e}\n{}",
                req.method,
                req.path,
                self.cluster.all_logs()
            )
        })
    }

    /// A FleetLock request as Zincati sends it, from the allowed address, to node `id`.
    fn fleetlock(&self, id: u64, op: &str, client: &str, group: &str) -> Reply {
        self.send(id, zincati(op, client, group).from(self.allowed))
    }

    /// `/metrics` of node `id`, parsed strictly.
    fn scrape(&self, id: u64) -> Scrape {
        let reply = self.send(id, Request::new("GET", "/metrics"));
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            reply
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/openmetrics-text")),
            "{reply:?}"
        );
        prom_text::parse(&reply.body)
            .unwrap_or_else(|e| panic!("node {id}'s /metrics does not parse: {e}\n{}", reply.body))
    }

    fn locks(&self) -> Value {
        self.cluster.ctl_json(&["locks", "list"])
    }
}

/// The request Zincati sends: POST, the protocol header, the pretty-printed body, no
/// Content-Type.
fn zincati(op: &str, client: &str, group: &str) -> Request {
    let body = format!(
        "{{\n  \"client_params\": {{\n    \"id\": \"{client}\",\n    \"group\": \"{group}\"\n  }}\n}}"
    );
    Request::new("POST", &format!("/v1/{op}"))
        .header("fleet-lock-protocol", "true")
        .body(body)
}

/// Asserts a FleetLock error: the status, and a `{kind, value}` body with this kind and a
/// non-empty sentence.
fn assert_refused(reply: &Reply, status: u16, kind: &str) -> String {
    assert_eq!(reply.status, status, "{reply:?}");
    let v = reply.json().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["kind"], kind, "{}", pretty(&v));
    let value = v["value"].as_str().unwrap_or_default().to_string();
    assert!(
        !value.is_empty(),
        "an error names its cause: {}",
        pretty(&v)
    );
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(2),
        "only kind and value: {}",
        pretty(&v)
    );
    value
}

/// The token a 200 pre-reboot answer names.
fn granted_token(reply: &Reply) -> u64 {
    assert_eq!(reply.status, 200, "{reply:?}");
    let v = reply.json().unwrap_or_else(|e| panic!("{e}"));
    v["token"]
        .as_u64()
        .unwrap_or_else(|| panic!("no token in {}", pretty(&v)))
}

/// What a 200 steady-state answer says it freed (`None`: nothing was held through FleetLock).
fn released(reply: &Reply) -> Option<u64> {
    assert_eq!(reply.status, 200, "{reply:?}");
    let v = reply.json().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        v.get("released").is_some(),
        "steady-state says what it freed: {}",
        pretty(&v)
    );
    v["released"].as_u64()
}

#[test]
fn fleetlock_takes_the_budget_refuses_over_it_and_frees_on_steady_state() {
    let _serial = serial();
    let deadline = Deadline::new("fleetlock lock and unlock", Duration::from_secs(120));
    let w = World::start(&[("web", "1")], None);
    let leader = w.leader;
    let follower = w.followers()[0];

    // At boot every Zincati host reports steady-state: it becomes a lock-only host of its
    // group, and nothing is freed.
    for host in ["node-a", "node-b", "node-c"] {
        let reply = w.fleetlock(leader, "steady-state", host, "web");
        assert_eq!(released(&reply), None, "{host}");
    }
    let hosts = w.cluster.ctl_json(&["hosts", "list"]);
    let kinds: Vec<(String, String)> = hosts
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| {
                    (
                        h["host"].as_str().unwrap_or_default().into(),
                        h["kind"].as_str().unwrap_or_default().into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        kinds,
        ["node-a", "node-b", "node-c"]
            .map(|h| (h.to_string(), "lock_only".to_string()))
            .to_vec(),
        "{}",
        pretty(&hosts)
    );

    // pre-reboot takes the group's one slot; asking again is the same slot.
    let token = granted_token(&w.fleetlock(leader, "pre-reboot", "node-a", "web"));
    assert_eq!(
        granted_token(&w.fleetlock(leader, "pre-reboot", "node-a", "web")),
        token,
        "re-entrant: the same client gets the same slot"
    );
    let locks = w.locks();
    let lock = lock_of(&locks, "node-a").unwrap_or_else(|| panic!("{}", pretty(&locks)));
    assert_eq!(lock["purpose"], "fleetlock", "{}", pretty(&locks));
    assert_eq!(lock["token"], token, "{}", pretty(&locks));
    deadline.check("node-a holds the slot");

    // A second host is over the budget: 409, the protocol's error, and a hint to retry.
    let over = w.fleetlock(leader, "pre-reboot", "node-b", "web");
    let value = assert_refused(&over, 409, "failed_lock_semaphore_full");
    assert!(value.contains("web"), "names the group: {value}");
    assert!(over.header("retry-after").is_some(), "{over:?}");

    // A follower does not answer for the lock: 503 not_leader, naming the leader's address.
    let elsewhere = w.fleetlock(follower, "pre-reboot", "node-b", "web");
    let value = assert_refused(&elsewhere, 503, "not_leader");
    assert!(
        value.contains(&w.cluster.addr(leader).to_string()),
        "names the leader: {value}"
    );
    assert_eq!(w.send(leader, Request::new("GET", "/leader")).status, 200);
    assert_eq!(w.send(follower, Request::new("GET", "/leader")).status, 503);

    // One budget: while node-a holds the FleetLock slot, an agent host of the same group
    // cannot take a maintenance slot.
    let rt = runtime();
    let agent = CoordClient::new(&w.cluster.coordinator_addrs(), "http-test-agent");
    for host in ["web-1", "web-2"] {
        rt.block_on(agent.register(host, &["web"], Duration::from_secs(20)))
            .unwrap_or_else(|e| panic!("register {host}: {e}"));
    }
    let blocked = w
        .cluster
        .ctl(&["locks", "acquire", "web-1", "--reason", "patching"]);
    assert!(
        !blocked.status.success(),
        "the FleetLock holder uses the budget: {}",
        output_text(&blocked)
    );
    assert!(
        output_text(&blocked).contains("node-a"),
        "the refusal names the holder: {}",
        output_text(&blocked)
    );
    // And an agent's deploy slot, as an agent asks for it.
    let deploy = rt.block_on(agent.acquire(
        &agent.next_write(),
        "web-2",
        "deploy",
        Duration::ZERO,
        Duration::from_secs(20),
    ));
    let refused = deploy.expect_err("the FleetLock holder uses the deploy budget too");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("node-a"), "{refused}");
    deadline.check("budget shared");

    // steady-state frees it, and the next host gets the slot.
    assert_eq!(
        released(&w.fleetlock(leader, "steady-state", "node-a", "web")),
        Some(token)
    );
    assert!(lock_of(&w.locks(), "node-a").is_none());
    let token_b = granted_token(&w.fleetlock(leader, "pre-reboot", "node-b", "web"));
    assert!(token_b > token, "tokens increase: {token_b} > {token}");
    assert_eq!(
        released(&w.fleetlock(leader, "steady-state", "node-b", "web")),
        Some(token_b)
    );

    // steady-state frees only a FleetLock slot: a maintenance slot stays, and pre-reboot for
    // its host is refused, naming the other purpose.
    let out = w
        .cluster
        .ctl(&["locks", "acquire", "web-1", "--reason", "patching"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        released(&w.fleetlock(leader, "steady-state", "web-1", "web")),
        None
    );
    let locks = w.locks();
    let held = lock_of(&locks, "web-1").unwrap_or_else(|| panic!("{}", pretty(&locks)));
    assert_eq!(held["purpose"], "maintenance", "{}", pretty(&locks));
    assert_refused(
        &w.fleetlock(leader, "pre-reboot", "web-1", "web"),
        409,
        "failed_lock_held_for_other_purpose",
    );
    deadline.check("done");
}

#[test]
fn bad_fleetlock_requests_get_clear_errors_and_change_nothing() {
    let _serial = serial();
    let deadline = Deadline::new("fleetlock bad requests", Duration::from_secs(90));
    let w = World::start(&[("web", "1")], None);
    let leader = w.leader;
    let good_body = zincati("pre-reboot", "node-a", "web").body;

    let post = |path: &str| Request::new("POST", path).from(w.allowed);
    let cases: Vec<(&str, Request, u16, &str)> = vec![
        (
            "no protocol header",
            post("/v1/pre-reboot").body(good_body.clone()),
            400,
            "missing_protocol_header",
        ),
        (
            "protocol header not true",
            post("/v1/pre-reboot")
                .header("fleet-lock-protocol", "false")
                .body(good_body.clone()),
            400,
            "missing_protocol_header",
        ),
        (
            "body not JSON",
            post("/v1/pre-reboot")
                .header("fleet-lock-protocol", "true")
                .body("reboot me"),
            400,
            "bad_request_body",
        ),
        (
            "no client_params",
            post("/v1/steady-state")
                .header("fleet-lock-protocol", "true")
                .body(r#"{"id":"node-a","group":"web"}"#),
            400,
            "bad_request_body",
        ),
        (
            "empty id",
            zincati("pre-reboot", "", "web").from(w.allowed),
            400,
            "bad_request_body",
        ),
        (
            "id outside the host charset",
            zincati("pre-reboot", "Node_A!", "web").from(w.allowed),
            400,
            "invalid_client_id",
        ),
        (
            "unknown group",
            zincati("pre-reboot", "node-a", "nosuchgroup").from(w.allowed),
            404,
            "unknown_group",
        ),
        (
            "body over 8 KiB",
            post("/v1/pre-reboot")
                .header("fleet-lock-protocol", "true")
                .body(format!(
                    "{{\"client_params\":{{\"id\":\"node-a\",\"group\":\"web\"}},\"pad\":\"{}\"}}",
                    "x".repeat(9000)
                )),
            413,
            "body_too_large",
        ),
        (
            "client outside allow",
            zincati("pre-reboot", "node-a", "web").from(w.outsider),
            403,
            "client_not_allowed",
        ),
        (
            "GET instead of POST",
            Request::new("GET", "/v1/pre-reboot")
                .from(w.allowed)
                .header("fleet-lock-protocol", "true"),
            405,
            "method_not_allowed",
        ),
    ];
    for (what, req, status, kind) in cases {
        let reply = w.send(leader, req);
        let value = assert_refused(&reply, status, kind);
        eprintln!("{what}: {status} {kind}: {value}");
    }
    // Outside FleetLock: plain statuses.
    assert_eq!(w.send(leader, Request::new("GET", "/nope")).status, 404);
    assert_eq!(w.send(leader, Request::new("POST", "/metrics")).status, 405);
    deadline.check("every bad request answered");

    // Nothing was registered or locked by any of them.
    assert_eq!(
        w.cluster.ctl_json(&["hosts", "list"]),
        serde_json::json!([]),
        "no host registered"
    );
    assert_eq!(w.locks(), serde_json::json!([]), "no slot taken");
    // Each refusal was counted by kind.
    let m = w.scrape(leader);
    for kind in [
        "missing_protocol_header",
        "bad_request_body",
        "client_not_allowed",
        "unknown_group",
    ] {
        let series =
            format!("hotdeploy_fleetlock_requests_total{{op=\"pre_reboot\",result=\"{kind}\"}}");
        assert!(
            m.value_or_zero(&series) >= 1.0,
            "{series} counted: {:?}",
            m.series_of("hotdeploy_fleetlock_requests_total")
                .collect::<Vec<_>>()
        );
    }
    // And the listener still serves a good request.
    assert_eq!(
        released(&w.fleetlock(leader, "steady-state", "node-a", "web")),
        None
    );
    deadline.check("done");
}

#[test]
fn metrics_parse_on_every_node_and_move_when_a_lock_is_taken() {
    let _serial = serial();
    let deadline = Deadline::new("metrics move", Duration::from_secs(120));
    let w = World::start(&[("web", "1")], None);
    let leader = w.leader;
    let follower = w.followers()[0];

    // Every node parses, knows the leader, and exactly one says it is the leader.
    for id in w.cluster.ids() {
        let m = w.scrape(id);
        let is_leader = m.get("hotdeploy_raft_role{role=\"leader\"}");
        assert_eq!(is_leader, Some(f64::from(id == leader)), "node {id}");
        assert!(m.get("hotdeploy_raft_term").is_some_and(|t| t >= 1.0));
        assert_eq!(
            m.get("hotdeploy_raft_members{kind=\"voter\"}"),
            Some(3.0),
            "node {id}"
        );
        for family in m.types.keys() {
            assert!(family.starts_with("hotdeploy_"), "{family}");
        }
    }
    let settled = |m: &Scrape| m.get("hotdeploy_raft_leader_id") == Some(leader as f64);
    let mut m = w.scrape(follower);
    while !settled(&m) {
        deadline.check("the follower learns the leader");
        std::thread::sleep(Duration::from_millis(100));
        m = w.scrape(follower);
    }
    let before = w.scrape(leader);
    assert_eq!(
        before.value_or_zero("hotdeploy_slots_held{purpose=\"fleetlock\"}"),
        0.0
    );
    assert_eq!(
        before.get("hotdeploy_group_holders{group=\"web\"}"),
        Some(0.0)
    );
    assert_eq!(
        before.get("hotdeploy_group_budget{group=\"web\"}"),
        Some(1.0)
    );
    let commits = before.value_or_zero("hotdeploy_raft_commit_latency_seconds_count");
    let commit_index = before.get("hotdeploy_raft_commit_index").unwrap_or(0.0);

    // Take a lock through FleetLock (after the hosts' boot-time steady-state).
    for host in ["node-a", "node-b"] {
        released(&w.fleetlock(leader, "steady-state", host, "web"));
    }
    granted_token(&w.fleetlock(leader, "pre-reboot", "node-a", "web"));
    let after = w.scrape(leader);
    for (series, want) in [
        ("hotdeploy_slots_held{purpose=\"fleetlock\"}", 1.0),
        ("hotdeploy_group_holders{group=\"web\"}", 1.0),
        ("hotdeploy_group_unavailable{group=\"web\"}", 1.0),
        ("hotdeploy_group_size{group=\"web\"}", 2.0),
        ("hotdeploy_hosts{kind=\"lock_only\"}", 2.0),
        (
            "hotdeploy_fleetlock_requests_total{op=\"pre_reboot\",result=\"ok\"}",
            1.0,
        ),
        (
            "hotdeploy_fleetlock_requests_total{op=\"steady_state\",result=\"ok\"}",
            2.0,
        ),
    ] {
        assert_eq!(after.get(series), Some(want), "{series}");
    }
    assert!(
        after
            .get("hotdeploy_slot_age_seconds{host=\"node-a\",purpose=\"fleetlock\"}")
            .is_some_and(|age| (0.0..60.0).contains(&age)),
        "the slot's age is listed"
    );
    // Three lock-only registrations and a grant went through raft, measured at the leader.
    assert!(
        after.value_or_zero("hotdeploy_raft_commit_latency_seconds_count") >= commits + 3.0,
        "commit latency observed: {commits} -> {:?}",
        after.get("hotdeploy_raft_commit_latency_seconds_count")
    );
    // The raft status is published at the end of each loop turn, which may come just after the
    // answer: wait a moment for it.
    let mut m = after.clone();
    while m.get("hotdeploy_raft_commit_index").unwrap_or(0.0) < commit_index + 3.0 {
        deadline.check("the commit index moves by the three entries");
        std::thread::sleep(Duration::from_millis(50));
        m = w.scrape(leader);
    }

    // A follower sees the replicated state move too.
    loop {
        deadline.check("the follower sees the slot");
        let m = w.scrape(follower);
        if m.get("hotdeploy_slots_held{purpose=\"fleetlock\"}") == Some(1.0) {
            assert_eq!(m.get("hotdeploy_raft_role{role=\"follower\"}"), Some(1.0));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // AcquireSlot through gRPC is counted by purpose and result on the leader.
    let rt = runtime();
    let agent = CoordClient::new(&w.cluster.coordinator_addrs(), "metrics-test-agent");
    for host in ["web-1", "web-2"] {
        rt.block_on(agent.register(host, &["web"], Duration::from_secs(20)))
            .unwrap_or_else(|e| panic!("register {host}: {e}"));
    }
    let refused = w
        .cluster
        .ctl(&["locks", "acquire", "web-1", "--reason", "patching"]);
    assert!(!refused.status.success(), "{}", output_text(&refused));
    released(&w.fleetlock(leader, "steady-state", "node-a", "web"));
    let granted = w
        .cluster
        .ctl(&["locks", "acquire", "web-1", "--reason", "patching"]);
    assert!(granted.status.success(), "{}", output_text(&granted));
    let m = w.scrape(leader);
    assert_eq!(
        m.get("hotdeploy_lock_acquires_total{purpose=\"maintenance\",result=\"granted\"}"),
        Some(1.0)
    );
    assert_eq!(
        m.get("hotdeploy_lock_acquires_total{purpose=\"maintenance\",result=\"refused\"}"),
        Some(1.0)
    );
    assert_eq!(m.get("hotdeploy_lock_grant_wait_seconds_count"), Some(1.0));
    assert_eq!(m.get("hotdeploy_lock_waiters"), Some(0.0));
    assert_eq!(
        m.get("hotdeploy_slots_held{purpose=\"maintenance\"}"),
        Some(1.0)
    );
    assert_eq!(
        m.value_or_zero("hotdeploy_slots_held{purpose=\"fleetlock\"}"),
        0.0
    );

    // A rollout shows up by state and by phase (its hosts wait to stage: no agent acts here).
    let out = w.cluster.ctl(&["locks", "release", "web-1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let before = w.scrape(leader);
    let sha = "5f3c9d1e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d";
    let out = w.cluster.ctl(&[
        "rollout",
        "start",
        "web",
        "--release",
        "v2",
        "--artifact",
        "file:///releases/v2.tar.gz",
        "--sha256",
        sha,
        "--id",
        "r1",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let m = w.scrape(leader);
    assert_eq!(
        m.get("hotdeploy_rollouts{state=\"running\"}"),
        Some(before.value_or_zero("hotdeploy_rollouts{state=\"running\"}") + 1.0)
    );
    assert_eq!(
        m.get("hotdeploy_rollout_state{rollout=\"r1\",group=\"web\",state=\"running\"}"),
        Some(1.0)
    );
    let hosts: f64 = m
        .series_of("hotdeploy_rollout_hosts")
        .filter(|(s, _)| s.contains("rollout=\"r1\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(hosts, 2.0, "the rollout's two agent hosts, by phase");
    assert!(m
        .get("hotdeploy_rollout_since_progress_seconds{rollout=\"r1\",group=\"web\"}")
        .is_some());
    deadline.check("done");
}

#[test]
fn a_fleetlock_slot_survives_a_leader_kill_and_the_new_leader_frees_it() {
    let _serial = serial();
    let deadline = Deadline::new("fleetlock across a leader kill", Duration::from_secs(120));
    let mut w = World::start(&[("web", "1")], None);
    let old = w.leader;
    for host in ["node-a", "node-b"] {
        released(&w.fleetlock(old, "steady-state", host, "web"));
    }
    let token = granted_token(&w.fleetlock(old, "pre-reboot", "node-a", "web"));

    w.cluster.kill(old);
    let new = w.cluster.wait_leader(ELECTION, Some(old));
    w.leader = new;
    deadline.check("a new leader");
    assert_ne!(new, old);
    // The slot is in the replicated state: the same client gets the same slot back, and the
    // budget is still used.
    assert_eq!(
        granted_token(&w.fleetlock(new, "pre-reboot", "node-a", "web")),
        token
    );
    assert_refused(
        &w.fleetlock(new, "pre-reboot", "node-b", "web"),
        409,
        "failed_lock_semaphore_full",
    );
    assert_eq!(
        released(&w.fleetlock(new, "steady-state", "node-a", "web")),
        Some(token)
    );
    assert!(granted_token(&w.fleetlock(new, "pre-reboot", "node-b", "web")) > token);
    // The killed node's listener is gone with it; a surviving follower still answers.
    let follower = w
        .cluster
        .ids()
        .into_iter()
        .find(|id| *id != old && *id != new)
        .unwrap_or_else(|| panic!("three nodes"));
    assert_refused(
        &w.fleetlock(follower, "pre-reboot", "node-a", "web"),
        503,
        "not_leader",
    );
    deadline.check("done");
}

#[test]
fn with_tls_the_listener_speaks_https_only() {
    let _serial = serial();
    let deadline = Deadline::new("https listener", Duration::from_secs(120));
    let tmp = tempfile::Builder::new()
        .prefix("hd-http-tls-")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    let pki = tmp.path().join("pki");
    let ips = net::alloc_ips(5);
    pki_support::init_fleet(&pki, &ips[..3], &[]);
    let w = World::start(&[("web", "1")], Some((pki.clone(), ips)));
    let leader = w.leader;

    // HTTPS, checked against the project's CA: metrics and FleetLock answer.
    let m = w.scrape(leader);
    assert_eq!(m.get("hotdeploy_raft_role{role=\"leader\"}"), Some(1.0));
    assert_eq!(
        released(&w.fleetlock(leader, "steady-state", "node-a", "web")),
        None
    );
    deadline.check("https answers");

    // Plain HTTP on the same port gets no HTTP answer.
    let plain = Request::new("GET", "/metrics").send(w.cluster.http_addr(leader));
    assert!(
        !plain.as_ref().is_ok_and(|r| r.status == 200),
        "plain HTTP must not be served under TLS: {plain:?}"
    );
    // A CA that did not sign the coordinator's certificate is refused in the handshake.
    let other = tmp.path().join("other-pki");
    pki_support::ctl_local_ok(&["certs", "init", &other.display().to_string()]);
    let wrong = Request::new("GET", "/metrics")
        .tls(other.join("ca.pem"))
        .send(w.cluster.http_addr(leader));
    assert!(
        wrong.as_ref().is_err_and(|e| e.contains("TLS handshake")),
        "{wrong:?}"
    );
    deadline.check("done");
}
