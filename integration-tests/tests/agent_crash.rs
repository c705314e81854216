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
    let artifacts = artifacts_dir("hd-crash-rel-");
    let v1 = release(artifacts.path(), "v1", false);
    let v2 = release(artifacts.path(), "v2", false);
    let cluster: Option<Cluster> = with_cluster.then(|| start_one_host_cluster(&deadline));
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

/// What one round of observation saw, in the order it was read: what the agent reports and
/// whether the coordinators list its slot, then HAProxy. The agent confirms HAProxy has the
/// server UP before it reports it in rotation or releases its slot, and HAProxy keeps it UP, so
/// a sample that shows either with HAProxy not UP is a violation, never a race of the reads.
#[derive(Debug)]
struct Sample {
    /// The agent's own rotation state, read first.
    agent_state: String,
    /// Whether the coordinators list a slot for web-1, read next.
    slot_held: bool,
    /// HAProxy's status of web-1, read last.
    haproxy: String,
}

/// Rounds sampled after `done` first holds: the settled state must also stay settled, and the
/// observer has samples to judge however fast (or, under load, however slowly) it got there.
const SETTLED_SAMPLES: usize = 3;

/// Samples the agent, HAProxy and the coordinators until `done` has held for
/// [`SETTLED_SAMPLES`] rounds, bounded by the deadline.
fn observe(
    deadline: &Deadline,
    agent: &AgentProc,
    haproxy: &hotdeploy_integration_tests::haproxy::HaProxy,
    cluster: &Cluster,
    mut done: impl FnMut(&Sample) -> bool,
) -> Vec<Sample> {
    let until = std::time::Instant::now() + deadline.bound(Duration::from_secs(30));
    let mut samples = Vec::new();
    let mut settled = 0;
    loop {
        let Ok(agent_state) =
            status(agent).map(|s| s["state"].as_str().unwrap_or_default().to_string())
        else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let slot_held = match locks(cluster) {
            Ok(held) => held.iter().any(|l| l["host"] == "web-1"),
            Err(_) => continue,
        };
        let haproxy = haproxy.server_status("web-1");
        let s = Sample {
            agent_state,
            slot_held,
            haproxy,
        };
        if settled > 0 || done(&s) {
            settled += 1;
        }
        samples.push(s);
        if settled >= SETTLED_SAMPLES || std::time::Instant::now() >= until {
            return samples;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 8, item 3: the agent dies after draining (HAProxy has web-1 in DRAIN through the
/// runtime socket, the coordinators hold its deploy slot) and its journal is lost. The agent
/// that starts again must rebuild from what HAProxy, the release store and the coordinators
/// say: it never reports web-1 in rotation while HAProxy still holds it out, adopts the app that
/// still runs instead of starting a second one, and releases the slot only once HAProxy has
/// web-1 UP again.
#[test]
fn a_lost_journal_is_rebuilt_and_the_slot_released_only_once_back_up() {
    let deadline = Deadline::new("lost journal after a drain", Duration::from_secs(90));
    let OneHostGroup {
        artifacts,
        v1,
        cluster,
    } = OneHostGroup::start(&deadline, "hd-crash-rel-");
    let v2 = release(artifacts.path(), "v2", false);
    let ips = hotdeploy_integration_tests::net::alloc_ips(2);
    let haproxy = start_haproxy(&[ha_server("web-1", ips[0])], ips[1]);
    let mut opts = fast_opts("web-1", ips[0], cluster.coordinator_addrs());
    opts.haproxy_socket = Some(haproxy.socket_path().to_path_buf());
    opts.drain_timeout = Some("10s".into());
    let mut agent = AgentProc::start(opts);
    let logs = |agent: &AgentProc| {
        format!(
            "---- agent ----\n{}\n---- haproxy ----\n{}\n{}",
            agent.log_tail(),
            haproxy.log_tail(),
            cluster.all_logs()
        )
    };
    deploy_ok(&agent, &v1);
    assert!(
        haproxy.wait_all_up(1, deadline.bound(Duration::from_secs(15))),
        "web-1 not UP after v1: {:?}\n{}",
        haproxy.stat(),
        logs(&agent)
    );
    let app = one_app_pid(&agent);

    agent.opts_mut().env = vec![("HOTDEPLOY_FAILPOINTS".into(), "after_drain".into())];
    agent.restart();
    wait_settled(&deadline, &agent, Some("v1"), Duration::from_secs(15));
    let out = deploy(&agent, &v2);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        agent
            .wait_exit(deadline.bound(Duration::from_secs(10)))
            .is_some(),
        "the agent did not die at after_drain (built without the failpoints feature?)\n{}",
        logs(&agent)
    );
    let at_crash = haproxy.server_status("web-1");
    assert!(
        at_crash.starts_with("DRAIN"),
        "HAProxy at the crash: {at_crash}"
    );
    let held = locks(&cluster).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        held.iter()
            .any(|l| l["host"] == "web-1" && l["purpose"] == "deploy"),
        "{held:?}"
    );

    // The journal is lost. And for a few seconds the app fails HAProxy's health checks, so
    // that the window in which web-1 is not yet back is wide enough to be watched.
    std::fs::remove_dir_all(agent.data_dir().join("journal"))
        .unwrap_or_else(|e| panic!("removing the journal: {e}"));
    let fail_health = agent.root().join("releases/v1/FAIL_HEALTH");
    std::fs::write(&fail_health, "1").unwrap_or_else(|e| panic!("FAIL_HEALTH: {e}"));
    // HAProxy's checks (inter 500 ms, fall 2) see it fail before the agent is back.
    std::thread::sleep(Duration::from_millis(2000));
    agent.opts_mut().env.clear();
    agent.restart();
    let back_at = std::time::Instant::now() + Duration::from_secs(3);
    let samples = observe(&deadline, &agent, &haproxy, &cluster, |s| {
        if std::time::Instant::now() >= back_at && fail_health.exists() {
            let _ = std::fs::remove_file(&fail_health);
        }
        !s.slot_held && s.agent_state == "in_rotation" && s.haproxy == "UP"
    });

    let last = samples.last().map(|s| format!("{s:?}")).unwrap_or_default();
    let up = |s: &Sample| s.haproxy.starts_with("UP");
    let held_out = samples.iter().filter(|s| !up(s)).count();
    assert!(
        held_out >= 5,
        "too few samples ({held_out} of {}) while HAProxy held web-1 out: {last}\n{}",
        samples.len(),
        logs(&agent)
    );
    let reported_early: Vec<_> = samples
        .iter()
        .filter(|s| s.agent_state == "in_rotation" && !up(s))
        .collect();
    assert!(
        reported_early.is_empty(),
        "the agent reported web-1 in rotation while HAProxy held it out: {:?}\n{}",
        reported_early.first(),
        logs(&agent)
    );
    let released_early: Vec<_> = samples.iter().filter(|s| !s.slot_held && !up(s)).collect();
    assert!(
        released_early.is_empty(),
        "the slot was released while HAProxy held web-1 out: {:?}\n{}",
        released_early.first(),
        logs(&agent)
    );
    assert!(
        samples
            .last()
            .is_some_and(|s| !s.slot_held && s.haproxy == "UP" && s.agent_state == "in_rotation"),
        "web-1 never came back: {last}\n{}",
        logs(&agent)
    );
    assert_eq!(
        agent.app_pids(),
        vec![app],
        "the app was restarted or doubled: the running service was not adopted"
    );
    let s = wait_settled(&deadline, &agent, Some("v1"), Duration::from_secs(10));
    assert_eq!(s["phase"], "idle", "{s}");
    deadline.finish();
}

/// Issue 8, item 6: an undrain dies between its return to rotation and its release (kill -9 at
/// `undrain_before_release`). The restarted agent never shows a drained host without a slot:
/// at worst the host is back in rotation with a slot nobody claims, which it then releases.
#[test]
fn a_crash_inside_an_undrain_never_leaves_a_drained_host_without_a_slot() {
    let deadline = Deadline::new("crash inside an undrain", Duration::from_secs(90));
    let OneHostGroup {
        artifacts: _artifacts,
        v1,
        cluster,
    } = OneHostGroup::start(&deadline, "hd-crash-rel-");
    let ips = hotdeploy_integration_tests::net::alloc_ips(2);
    let haproxy = start_haproxy(&[ha_server("web-1", ips[0])], ips[1]);
    let mut agent = AgentProc::start(fast_opts("web-1", ips[0], cluster.coordinator_addrs()));
    let logs = |agent: &AgentProc| {
        format!(
            "---- agent ----\n{}\n---- haproxy ----\n{}\n{}",
            agent.log_tail(),
            haproxy.log_tail(),
            cluster.all_logs()
        )
    };
    deploy_ok(&agent, &v1);
    wait_settled(&deadline, &agent, Some("v1"), Duration::from_secs(15));
    let out = agent.ctl(&["drain"]);
    assert!(
        out.status.success(),
        "drain: {}\n{}",
        show(&out),
        logs(&agent)
    );
    let held = locks(&cluster).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        held.iter()
            .any(|l| l["host"] == "web-1" && l["purpose"] == "drain"),
        "{held:?}"
    );

    agent.opts_mut().env = vec![(
        "HOTDEPLOY_FAILPOINTS".into(),
        "undrain_before_release".into(),
    )];
    agent.restart();
    let out = agent.ctl(&["undrain"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        agent
            .wait_exit(deadline.bound(Duration::from_secs(10)))
            .is_some()
            && agent
                .log_tail()
                .contains("failpoint undrain_before_release"),
        "the agent did not die at undrain_before_release (built without the failpoints \
         feature?)\n{}",
        logs(&agent)
    );

    agent.opts_mut().env.clear();
    agent.restart();
    let samples = observe(&deadline, &agent, &haproxy, &cluster, |s| {
        !s.slot_held && s.agent_state == "in_rotation" && s.haproxy == "UP"
    });
    let last = samples.last().map(|s| format!("{s:?}")).unwrap_or_default();
    assert!(
        samples.len() >= 3,
        "too few samples ({}): {last}\n{}",
        samples.len(),
        logs(&agent)
    );
    let drained_without_slot: Vec<_> = samples
        .iter()
        .filter(|s| s.agent_state != "in_rotation" && !s.slot_held)
        .collect();
    assert!(
        drained_without_slot.is_empty(),
        "web-1 was out of rotation with no slot: {:?}\n{}",
        drained_without_slot.first(),
        logs(&agent)
    );
    assert!(
        samples
            .last()
            .is_some_and(|s| !s.slot_held && s.agent_state == "in_rotation"),
        "the slot was never released, or web-1 never came back: {last}\n{}",
        logs(&agent)
    );
    deadline.finish();
}
