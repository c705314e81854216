//! The rotation state an agent reports, against a real HAProxy (DESIGN §4, "Rotation").
//!
//! One standalone agent, `web-1`, supervises `sample-app` behind HAProxy, with
//! `haproxy_socket`, so that it confirms both ways through the runtime API. An undrain whose
//! return cannot be confirmed (the app fails HAProxy's health checks, so HAProxy never has the
//! server `UP`) must never make the agent report `in_rotation`, neither while it waits nor after
//! it gives up: the undrain is reverted (`/ready` 503, HAProxy told `state drain`), the host
//! keeps reporting that it is out, and a later undrain, once the app is healthy again (as the
//! agent's own health probes see it), brings it back.

mod agent_support;

use agent_support::*;
use hotdeploy_integration_tests::agents::AgentProc;
use hotdeploy_integration_tests::haproxy::HaProxy;
use hotdeploy_integration_tests::net;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Issue 8, item 7.
#[test]
fn an_unconfirmed_undrain_is_never_reported_in_rotation_and_is_reverted() {
    let deadline = Deadline::new("unconfirmed undrain", Duration::from_secs(90));
    HaProxy::require().unwrap_or_else(|e| panic!("{e}"));
    let artifacts = tempfile::Builder::new()
        .prefix("hd-rotation-rel-")
        .tempdir()
        .unwrap_or_else(|e| panic!("temp dir: {e}"));
    let v1 = release(artifacts.path(), "v1", false);
    let ips = net::alloc_ips(2);
    let haproxy = start_haproxy(&[ha_server("web-1", ips[0])], ips[1]);
    let mut opts = fast_opts("web-1", ips[0], Vec::new());
    opts.haproxy_socket = Some(haproxy.socket_path().to_path_buf());
    opts.drain_timeout = Some("3s".into());
    let agent = AgentProc::start(opts);
    let logs = || {
        format!(
            "---- agent ----\n{}\n---- haproxy ----\n{}",
            agent.log_tail(),
            haproxy.log_tail()
        )
    };
    deploy_ok(&agent, &v1);
    assert!(
        haproxy.wait_all_up(1, deadline.bound(Duration::from_secs(15))),
        "web-1 not UP: {:?}\n{}",
        haproxy.stat(),
        logs()
    );
    wait_settled(&deadline, &agent, Some("v1"), Duration::from_secs(10));
    let out = agent.ctl(&["drain"]);
    assert!(out.status.success(), "drain: {}\n{}", show(&out), logs());

    // The app starts failing HAProxy's health checks (inter 500 ms, fall 2).
    let fail_health = agent.root().join("releases/v1/FAIL_HEALTH");
    std::fs::write(&fail_health, "1").unwrap_or_else(|e| panic!("FAIL_HEALTH: {e}"));
    std::thread::sleep(Duration::from_millis(1500));

    // Undrain while the agent's own state and HAProxy's are sampled: what the agent reports
    // first, then HAProxy (the agent confirms UP before it reports in rotation, and HAProxy keeps
    // the server down meanwhile, so a sample with the agent in rotation and HAProxy not UP is a
    // violation, never a race of the reads).
    let stop = AtomicBool::new(false);
    let (out, samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Ok(st) = status(&agent) {
                    let state = st["state"].as_str().unwrap_or_default().to_string();
                    samples.push((state, haproxy.server_status("web-1")));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        let out = agent.ctl(&["undrain"]);
        stop.store(true, Ordering::SeqCst);
        let samples = sampler
            .join()
            .unwrap_or_else(|_| panic!("sampler panicked"));
        (out, samples)
    });
    assert!(
        !out.status.success(),
        "the undrain succeeded although HAProxy never had web-1 UP: {}\n{}",
        show(&out),
        logs()
    );
    assert!(
        samples.len() >= 10,
        "too few samples during the undrain ({}): {samples:?}",
        samples.len()
    );
    let early: Vec<_> = samples
        .iter()
        .filter(|(state, ha)| state == "in_rotation" && !ha.starts_with("UP"))
        .collect();
    assert!(
        early.is_empty(),
        "the agent reported in_rotation before HAProxy had web-1 UP: {:?}\n{}",
        early.first(),
        logs()
    );
    // Reverted: reported out, advertised out, and HAProxy holds the server in drain.
    let s = status(&agent).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(s["state"], "in_rotation", "{s}");
    assert_eq!(agent.ready_status(), Some(503), "/ready after the revert");
    let state = haproxy
        .command("show servers state web")
        .unwrap_or_else(|e| panic!("show servers state: {e}"));
    let admin = state
        .lines()
        .find(|l| l.split_whitespace().nth(3) == Some("web-1"))
        .and_then(|l| l.split_whitespace().nth(6))
        .and_then(|a| a.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no web-1 in `show servers state`: {state}"));
    assert!(
        admin & 0x18 != 0,
        "HAProxy was not told to drain web-1 again (srv_admin_state {admin:#x})\n{state}"
    );

    // Healthy again: once the agent's own probes (`[health]`) have seen it so, and so the
    // agent-check answers `up` again, the next undrain brings it back. (While the agent reports
    // its service unhealthy, HAProxy keeps the server DOWN and no undrain can be confirmed.)
    std::fs::remove_file(&fail_health).unwrap_or_else(|e| panic!("FAIL_HEALTH: {e}"));
    wait_for(
        &deadline,
        Duration::from_secs(20),
        "the agent to see its service healthy again",
        || match status(&agent) {
            Ok(s) if s["health"] == "healthy" => Ok(()),
            Ok(s) => Err(format!("status {s}")),
            Err(e) => Err(e),
        },
        logs,
    );
    let out = agent.ctl(&["undrain"]);
    assert!(out.status.success(), "undrain: {}\n{}", show(&out), logs());
    let s = wait_settled(&deadline, &agent, Some("v1"), Duration::from_secs(10));
    assert_eq!(s["state"], "in_rotation", "{s}");
    assert!(
        haproxy.server_status("web-1").starts_with("UP"),
        "{}",
        logs()
    );
    deadline.finish();
}
