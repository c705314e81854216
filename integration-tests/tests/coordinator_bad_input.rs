//! Bad requests to a running coordinator cluster (DESIGN §3, §6, §7): each is refused with the
//! right gRPC code and a message that names what is wrong, and none changes the fleet's state
//! (hosts, groups and locks are compared before and after every one).
//!
//! Also: a repeated `(client_id, seq)` gets the first answer back instead of a second grant,
//! and the CLI refuses to remove a reachable host without `--force`.
//!
//! One cluster serves every check, to keep the suite fast.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

mod common;

use common::{
    assert_same_state, ctl_ok, fleet_state, lock_of, output_text, pretty, pseudo_host_opts,
    runtime, serial, Deadline,
};
use hotdeploy_common::proto::{
    AcquireSlotRequest, RegisterRequest, ReleaseSlotRequest, SetGroupPolicyRequest,
};
use hotdeploy_integration_tests::cluster::Cluster;
use hotdeploy_integration_tests::coord_client::{healthy_report, CoordClient};
use std::fmt::Debug;
use std::time::Duration;
use tonic::{Code, Status};

const BUDGET: Duration = Duration::from_secs(20);

/// Asserts that `result` is the error `code` and that its message contains every one of
/// `needles`; returns the message.
fn expect_refusal<T: Debug>(
    what: &str,
    result: Result<T, Status>,
    code: Code,
    needles: &[&str],
) -> String {
    let status = match result {
        Ok(answer) => panic!("{what}: expected {code:?}, got a success: {answer:?}"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        code,
        "{what}: expected {code:?}, got {:?}: {}",
        status.code(),
        status.message()
    );
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{what}: the message should name {needle:?}: {}",
            status.message()
        );
    }
    eprintln!("{what}: {:?}: {}", status.code(), status.message());
    status.message().to_string()
}

#[test]
fn bad_requests_are_refused_clearly_and_change_nothing() {
    let _serial = serial();
    let deadline = Deadline::new("bad input", Duration::from_secs(120));
    let rt = runtime();

    let cluster = Cluster::start(3, &[("web", "2")], pseudo_host_opts());
    cluster.wait_leader(Duration::from_secs(30), None);
    let client = CoordClient::new(&cluster.coordinator_addrs(), "test-bad-input");

    // The fleet: h1, h2, h3 in web; h2 holds a maintenance slot taken by an operator.
    rt.block_on(async {
        for host in ["h1", "h2", "h3"] {
            client
                .register(host, &["web"], BUDGET)
                .await
                .unwrap_or_else(|e| panic!("register {host}: {e:?}"));
        }
    });
    ctl_ok(
        &cluster,
        &["locks", "acquire", "h2", "--reason", "disk swap"],
    );
    let state = fleet_state(&cluster);
    let h2_token = lock_of(&state["locks"], "h2")
        .and_then(|l| l["token"].as_u64())
        .unwrap_or_else(|| panic!("h2 holds a slot: {}", pretty(&state)));

    // Each check runs, then the fleet state must be exactly what it was.
    let check = |what: &str, run: &dyn Fn()| {
        deadline.check(what);
        let before = fleet_state(&cluster);
        run();
        let after = fleet_state(&cluster);
        assert_same_state(&before, &after, what);
    };
    let acquire_req = |host: &str, purpose: &str, reason: String| AcquireSlotRequest {
        write: Some(client.next_write()),
        host: host.into(),
        purpose: purpose.into(),
        reason,
        rollout: String::new(),
        wait_ms: 0,
        canary: false,
        fence_draining: false,
    };

    check("AcquireSlot for an unknown host", &|| {
        let result =
            rt.block_on(client.acquire_with(acquire_req("ghost", "deploy", String::new()), BUDGET));
        expect_refusal("AcquireSlot(ghost)", result, Code::NotFound, &["ghost"]);
    });

    check("Register with no groups", &|| {
        let result = rt.block_on(client.call(BUDGET, Duration::ZERO, |mut c| {
            let req = RegisterRequest {
                write: Some(client.next_write()),
                host: "h9".into(),
                groups: vec![],
                report: Some(healthy_report("v1")),
                address: String::new(),
            };
            async move { c.register(req).await }
        }));
        expect_refusal(
            "Register(h9, no groups)",
            result,
            Code::InvalidArgument,
            &["h9", "group"],
        );
    });

    check("Register with an unknown group", &|| {
        let result = rt.block_on(client.register("h9", &["web", "nosuchgroup"], BUDGET));
        expect_refusal(
            "Register(h9, [web, nosuchgroup])",
            result,
            Code::FailedPrecondition,
            &["nosuchgroup"],
        );
    });

    check("a second slot for another purpose", &|| {
        let result = rt
            .block_on(client.acquire_with(acquire_req("h2", "deploy", "deploy v2".into()), BUDGET));
        expect_refusal(
            "AcquireSlot(h2, deploy) while h2 holds a maintenance slot",
            result,
            Code::FailedPrecondition,
            &["h2", "maintenance"],
        );
    });

    let set_policy = |group: &str, max_unavailable: &str| {
        rt.block_on(client.call(BUDGET, Duration::ZERO, |mut c| {
            let req = SetGroupPolicyRequest {
                write: Some(client.next_write()),
                group: group.into(),
                max_unavailable: max_unavailable.into(),
                allow_zero_available: None,
            };
            async move { c.set_group_policy(req).await }
        }))
    };
    check("SetGroupPolicy with an invalid group name", &|| {
        expect_refusal(
            "SetGroupPolicy(Bad_Group!)",
            set_policy("Bad_Group!", "1"),
            Code::InvalidArgument,
            &["Bad_Group!"],
        );
    });
    check("a budget of 0", &|| {
        expect_refusal(
            "SetGroupPolicy(web, 0)",
            set_policy("web", "0"),
            Code::InvalidArgument,
            &["0"],
        );
    });
    check("a budget of 101%", &|| {
        expect_refusal(
            "SetGroupPolicy(web, 101%)",
            set_policy("web", "101%"),
            Code::InvalidArgument,
            &["101%"],
        );
    });
    check("the CLI's groups set with a budget of 0", &|| {
        let output = cluster.ctl(&["groups", "set", "web", "--max-unavailable", "0"]);
        assert_eq!(output.status.code(), Some(1), "{}", output_text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("InvalidArgument") || stderr.contains("invalid"),
            "{stderr}"
        );
    });

    let release = |host: &str, token: u64| {
        rt.block_on(client.call(BUDGET, Duration::ZERO, |mut c| {
            let req = ReleaseSlotRequest {
                write: Some(client.next_write()),
                host: host.into(),
                token,
            };
            async move { c.release_slot(req).await }
        }))
    };
    check("ReleaseSlot with a stale token", &|| {
        expect_refusal(
            "ReleaseSlot(h2, stale token)",
            release("h2", h2_token - 1),
            Code::FailedPrecondition,
            &["h2", "stale"],
        );
    });
    check("ReleaseSlot for a host that holds no slot", &|| {
        let result = release("h1", h2_token);
        expect_refusal(
            "ReleaseSlot(h1, no slot)",
            result,
            Code::FailedPrecondition,
            &["h1"],
        );
    });

    check("a reason over the 1 KiB field limit", &|| {
        let result =
            rt.block_on(client.acquire_with(acquire_req("h1", "deploy", "r".repeat(1025)), BUDGET));
        expect_refusal(
            "AcquireSlot(h1, 1025-byte reason)",
            result,
            Code::InvalidArgument,
            &["reason"],
        );
    });
    check("a 2 MiB request", &|| {
        let result = rt.block_on(
            client.acquire_with(acquire_req("h1", "deploy", "r".repeat(2 << 20)), BUDGET),
        );
        let status = match result {
            Ok(slot) => panic!("a 2 MiB AcquireSlot was granted: {slot:?}"),
            Err(status) => status,
        };
        eprintln!(
            "2 MiB AcquireSlot: {:?}: {}",
            status.code(),
            status.message()
        );
        assert!(
            matches!(
                status.code(),
                Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument
            ),
            "a 2 MiB request is refused as too large, got {:?}: {}",
            status.code(),
            status.message()
        );
    });

    check(
        "the CLI's hosts remove of a reachable host without --force",
        &|| {
            let output = cluster.ctl(&["hosts", "remove", "h3"]);
            assert_eq!(output.status.code(), Some(1), "{}", output_text(&output));
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("h3") && stderr.contains("reachable") && stderr.contains("--force"),
                "the refusal names the host, says it is reachable and how to override: {stderr}"
            );
        },
    );

    // A repeated (client_id, seq) gets the first answer back and grants nothing new: the same
    // acquire while its slot is held returns the first grant's token; once the slot is
    // released, it is refused as stale, naming that token (a holder may act on a grant as on a
    // fence, so a freed grant is never handed out again).
    check("a repeated write id", &|| {
        let write = client.next_write();
        let first = rt
            .block_on(client.acquire(&write, "h1", "deploy", Duration::ZERO, BUDGET))
            .unwrap_or_else(|e| panic!("acquire h1: {e:?}"));
        let again = rt
            .block_on(client.acquire(&write, "h1", "deploy", Duration::ZERO, BUDGET))
            .unwrap_or_else(|e| panic!("the repeated acquire of h1: {e:?}"));
        assert_eq!(
            again.token, first.token,
            "a repeated (client_id, seq) must get the first answer back, not a new grant"
        );
        let release_write = client.next_write();
        rt.block_on(client.release(&release_write, "h1", first.token, BUDGET))
            .unwrap_or_else(|e| panic!("release h1: {e:?}"));
        let stale = rt
            .block_on(client.acquire(&write, "h1", "deploy", Duration::ZERO, BUDGET))
            .expect_err("a repeated acquire of a released slot");
        assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
        assert!(
            stale.message().contains("stale token")
                && stale.message().contains(&first.token.to_string()),
            "the refusal names the stale token: {stale:?}"
        );
        // The repeated release is answered as the first one was, not refused as stale.
        rt.block_on(client.release(&release_write, "h1", first.token, BUDGET))
            .unwrap_or_else(|e| panic!("the repeated release of h1: {e:?}"));
        let locks = cluster.ctl_json(&["locks", "list"]);
        assert!(
            lock_of(&locks, "h1").is_none(),
            "the repeated acquire granted a new slot: {}",
            pretty(&locks)
        );
    });
}
