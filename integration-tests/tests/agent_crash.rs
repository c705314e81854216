//! Crash safety of the agent's deploy journal (DESIGN §4, "Recovery on start").
//!
//! The agent is built with `--features hotdeploy-agent/failpoints`, and started with
//! `HOTDEPLOY_FAILPOINTS=<point>` so that it kills itself with SIGKILL in the middle of a deploy of v2 over v1:
//! `after_staged`, `after_drain`, `after_swap` or `during_verify`. The test then checks that it
//! really died (and that the CLI's deploy failed), restarts it without the failpoint, and
//! asserts, within a deadline, what recovery promises:
//!
//! - the host is healthy and in rotation (`/ready` 200, HAProxy `UP`, the app answers), on v1
//!   or v2 — on v1 when the crash came before the swap, on v2 when it came after;
//! - `current` resolves to a complete release directory under `releases/` (never dangling, never
//!   a staging dir, `VERSION` present and matching), and the app serves that release;
//! - the journal is consistent: `agent status -o json` shows phase `idle`;
//! - exactly one app process runs;
//! - with a 3-node coordinator cluster configured, the deploy slot is released after recovery
//!   (`hotdeployctl locks list` is empty) and the coordinator sees the host healthy and in
//!   rotation on the same release.
//!
//! Without the `failpoints` feature the agent would not crash and the test fails, saying how to
//! build it.

mod agent_support;

use agent_support::*;
use hotdeploy_integration_tests::agents::AgentProc;
use hotdeploy_integration_tests::cluster::Cluster;
use std::time::Duration;

fn crash_and_recover(failpoint: &str, with_cluster: bool) {
    let name = format!(
        "crash at {failpoint}{}",
        if with_cluster { " (coordinators)" } else { "" }
    );
    let deadline = Deadline::new(&name, Duration::from_secs(60));
    let artifacts = tempfile::Builder::new()
        .prefix("hd-crash-rel-")
        .tempdir()
        .unwrap_or_else(|e| panic!("temp dir: {e}"));
    let v1 = release(artifacts.path(), "v1", false);
    let v2 = release(artifacts.path(), "v2", false);
    // A group of one host can be deployed only with allow_zero_available.
    let cluster: Option<Cluster> = with_cluster.then(|| {
        start_cluster(
            &deadline,
            "5s",
            "[groups.web]\nallow_zero_available = true\n",
        )
    });
    let coordinators = cluster
        .as_ref()
        .map(Cluster::coordinator_addrs)
        .unwrap_or_default();
    let ips = hotdeploy_integration_tests::net::alloc_ips(2);
    let haproxy = start_haproxy(&[ha_server("web-1", ips[0])], ips[1]);
    // v1 is a first deploy, with no drain and no slot: the agent starts without the failpoint,
    // and gets it for the deploy of v2 over v1.
    let mut agent = AgentProc::start(fast_opts("web-1", ips[0], coordinators));
    let logs = |agent: &AgentProc| {
        let mut text = format!(
            "---- agent ----\n{}\n---- haproxy ----\n{}",
            agent.log_tail(),
            haproxy.log_tail()
        );
        if let Some(c) = &cluster {
            text.push('\n');
            text.push_str(&c.all_logs());
        }
        text
    };
    deploy_ok(&agent, &v1);
    assert!(
        haproxy.wait_all_up(1, deadline.bound(Duration::from_secs(10))),
        "web-1 not UP after v1: {:?}\n{}",
        haproxy.stat(),
        logs(&agent)
    );
    let v1_pid = one_app_pid(&agent);

    agent.opts_mut().env = vec![("HOTDEPLOY_FAILPOINTS".into(), failpoint.into())];
    agent.restart();
    wait_settled(&deadline, &agent, Some("v1"), Duration::from_secs(10));
    assert_eq!(
        one_app_pid(&agent),
        v1_pid,
        "an agent restart restarted the app"
    );

    let out = deploy(&agent, &v2);
    assert!(
        !out.status.success(),
        "the deploy succeeded although the agent was to die at {failpoint}: {}\n\
         (was the agent built with --features hotdeploy-agent/failpoints?)",
        show(&out)
    );
    let exit = agent.wait_exit(deadline.bound(Duration::from_secs(10)));
    assert!(
        exit.is_some(),
        "the agent is still running after failpoint {failpoint}: built without \
         `--features hotdeploy-agent/failpoints`?\n{}",
        logs(&agent)
    );
    assert!(
        agent.log_tail().contains(&format!("failpoint {failpoint}")),
        "the agent died, but not at {failpoint}:\n{}",
        logs(&agent)
    );

    // Crashed: `current` already names a complete release (the swap is atomic), and with
    // coordinators a crash after the slot was granted leaves it held until recovery.
    let at_crash = assert_current_link_complete(&agent);
    let swapped = matches!(failpoint, "after_swap" | "during_verify");
    assert_eq!(
        at_crash,
        if swapped { "v2" } else { "v1" },
        "current at the crash"
    );
    if let (Some(cluster), true) = (&cluster, failpoint != "after_staged") {
        let held = locks(cluster).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            held.iter()
                .any(|l| l["host"] == "web-1" && l["purpose"] == "deploy"),
            "crashed at {failpoint}, web-1 should still hold its deploy slot: {held:?}"
        );
    }

    agent.opts_mut().env.clear();
    agent.restart();

    let s = wait_settled(&deadline, &agent, None, Duration::from_secs(20));
    let expected = if swapped { "v2" } else { "v1" };
    assert_eq!(
        s["current"],
        expected,
        "after a crash at {failpoint} the host should be on {expected}: {s}\n{}",
        logs(&agent)
    );
    assert_eq!(s["phase"], "idle", "{s}");
    assert!(
        s["slot_token"].is_null(),
        "the agent still claims a slot: {s}"
    );
    let id = assert_current_is_complete(&agent);
    assert_eq!(id, expected);
    one_app_pid(&agent);
    assert!(
        haproxy.wait_all_up(1, deadline.bound(Duration::from_secs(10))),
        "web-1 not UP in HAProxy after recovery: {:?}\n{}",
        haproxy.stat(),
        logs(&agent)
    );
    // Stays healthy: no late restart loop, no second app.
    std::thread::sleep(Duration::from_millis(1000));
    wait_settled(&deadline, &agent, Some(expected), Duration::from_secs(5));
    one_app_pid(&agent);

    if let Some(cluster) = &cluster {
        wait_for(
            &deadline,
            Duration::from_secs(15),
            "the slot to be released and the coordinator to see web-1 back",
            || {
                let held = locks(cluster)?;
                if !held.is_empty() {
                    return Err(format!("locks list: {held:?}"));
                }
                let h = host_entry(cluster, "web-1")?;
                if h["health"] == "healthy"
                    && h["state"] == "in_rotation"
                    && h["release"] == expected
                    && h["reachability"] == "reachable"
                {
                    Ok(())
                } else {
                    Err(format!("hosts list: {h}"))
                }
            },
            || logs(&agent),
        );
    }
    deadline.finish();
}

#[test]
fn crash_after_staged_recovers_on_v1() {
    crash_and_recover("after_staged", false);
}

#[test]
fn crash_after_drain_recovers_on_v1() {
    crash_and_recover("after_drain", false);
}

#[test]
fn crash_after_swap_recovers_on_v2() {
    crash_and_recover("after_swap", false);
}

#[test]
fn crash_during_verify_recovers_on_v2() {
    crash_and_recover("during_verify", false);
}

#[test]
fn crash_after_staged_with_coordinators_releases_the_slot() {
    crash_and_recover("after_staged", true);
}

#[test]
fn crash_after_drain_with_coordinators_releases_the_slot() {
    crash_and_recover("after_drain", true);
}

#[test]
fn crash_after_swap_with_coordinators_releases_the_slot() {
    crash_and_recover("after_swap", true);
}

#[test]
fn crash_during_verify_with_coordinators_releases_the_slot() {
    crash_and_recover("during_verify", true);
}
