//! The agent's `/metrics` on `metrics_listen`, scraped from outside while a real deploy runs
//! (issue 11 §1, the agent half; DESIGN §8).
//!
//! A 3-node coordinator cluster holds group `web` (budget 1, `allow_zero_available` so that a
//! one-host group can deploy); a real agent, `web-1`, runs `sample-app` in `exec` mode with
//! `metrics_listen`. It installs v1, then deploys v2 under a slot while the test scrapes
//! `/metrics` every 50 ms. Every scrape is parsed strictly (`prom_text`). The test checks:
//!
//! - before: every key series is present (deploy step histograms, deploys by outcome, errors
//!   by kind, phase, health, rotation, slot, probe counters);
//! - during: some scrape saw the host out of rotation, holding a slot (with its token and an
//!   age), in a deploy phase other than `idle`;
//! - after: each step of a deploy under a slot was timed once more (drain and undrain each at
//!   least their 1 s grace), one more `succeeded` deploy, no error, back in rotation on v2 with
//!   no slot, and the probe rounds keep counting;
//! - the agent's log has one line per transition with its fields (`ended`, `ended_ms`, ...).
//!
//! And a bad or busy `metrics_listen` stops the agent's start with an error naming the key.

mod agent_support;

use agent_support::*;
use hotdeploy_integration_tests::agents::AgentProc;
use hotdeploy_integration_tests::prom_text::Scrape;
use hotdeploy_integration_tests::{bins, net, proc};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The steps a deploy under a slot goes through (a rollback is not one of them).
const DEPLOY_STEPS: [&str; 7] = [
    "stage",
    "slot_wait",
    "drain",
    "swap",
    "restart",
    "verify",
    "undrain",
];

fn step_count(s: &Scrape, step: &str) -> f64 {
    s.value_or_zero(&format!(
        "hotdeploy_agent_deploy_phase_duration_seconds_count{{phase=\"{step}\"}}"
    ))
}

fn step_sum(s: &Scrape, step: &str) -> f64 {
    s.value_or_zero(&format!(
        "hotdeploy_agent_deploy_phase_duration_seconds_sum{{phase=\"{step}\"}}"
    ))
}

fn errors(s: &Scrape) -> f64 {
    s.series_of("hotdeploy_agent_errors_total")
        .map(|(_, v)| v)
        .sum()
}

const SUCCEEDED: &str = "hotdeploy_agent_deploys_total{kind=\"deploy\",outcome=\"succeeded\"}";

/// Panics unless `series` is in the scrape.
fn present(s: &Scrape, series: &str) -> f64 {
    s.get(series)
        .unwrap_or_else(|| panic!("{series} missing from /metrics: {:#?}", s.samples))
}

/// The log without ANSI colour codes and quotes, so fields read `key=value`.
fn plain_log(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if c != '"' {
            out.push(c);
        }
    }
    out
}

#[test]
fn metrics_are_scraped_during_and_after_a_deploy() {
    let deadline = Deadline::new("agent metrics during a deploy", Duration::from_secs(240));
    let OneHostGroup {
        artifacts,
        v1,
        cluster,
    } = OneHostGroup::start(&deadline, "hd-metrics-rel-");
    let v2 = release(artifacts.path(), "v2", false);
    let ip = net::alloc_ips(1)[0];
    let agent =
        AgentProc::start(fast_opts("web-1", ip, cluster.coordinator_addrs()).with_metrics());
    wait_for(
        &deadline,
        Duration::from_secs(30),
        "web-1 registered",
        || host_entry(&cluster, "web-1"),
        || agent.log_tail(),
    );
    deploy_ok(&agent, &v1);
    wait_settled(&deadline, &agent, Some("v1"), Duration::from_secs(20));

    let before = wait_for(
        &deadline,
        Duration::from_secs(10),
        "a /metrics scrape",
        || agent.scrape(),
        || agent.log_tail(),
    );
    for step in DEPLOY_STEPS.iter().chain(&["rollback"]) {
        present(
            &before,
            &format!("hotdeploy_agent_deploy_phase_duration_seconds_count{{phase=\"{step}\"}}"),
        );
    }
    for series in [
        SUCCEEDED,
        "hotdeploy_agent_deploys_total{kind=\"deploy\",outcome=\"rolled_back\"}",
        "hotdeploy_agent_errors_total{kind=\"verify\"}",
        "hotdeploy_agent_errors_total{kind=\"fenced\"}",
        "hotdeploy_agent_deploy_phase{phase=\"idle\"}",
        "hotdeploy_agent_deploy_phase{phase=\"draining\"}",
        "hotdeploy_agent_health{health=\"healthy\"}",
        "hotdeploy_agent_rotation{state=\"in_rotation\"}",
        "hotdeploy_agent_in_rotation",
        "hotdeploy_agent_ready",
        "hotdeploy_agent_slot_held",
        "hotdeploy_agent_slot_token",
        "hotdeploy_agent_slot_age_seconds",
        "hotdeploy_agent_health_probe_rounds_total",
        "hotdeploy_agent_health_probe_failures_total",
        "hotdeploy_agent_start_time_seconds",
    ] {
        present(&before, series);
    }
    assert_eq!(
        before.get("hotdeploy_agent_release{release=\"v1\"}"),
        Some(1.0)
    );
    assert_eq!(before.get("hotdeploy_agent_in_rotation"), Some(1.0));
    assert_eq!(before.get("hotdeploy_agent_slot_held"), Some(0.0));
    // The first install needed no slot: no slot wait, no drain.
    assert_eq!(step_count(&before, "slot_wait"), 0.0);
    assert_eq!(step_count(&before, "drain"), 0.0);
    assert_eq!(before.get(SUCCEEDED), Some(1.0));

    // Deploy v2 under a slot, scraping every 50 ms until it ends.
    let during: Mutex<Vec<Scrape>> = Mutex::new(Vec::new());
    let bad_scrapes: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let done = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|s| {
        let _stop = RaiseOnDrop(&done);
        let poller = s.spawn(|| {
            let until = Instant::now() + Duration::from_secs(120);
            while keep_polling(&done, until) {
                match agent.scrape() {
                    Ok(sc) => during.lock().unwrap_or_else(|p| p.into_inner()).push(sc),
                    Err(e) => bad_scrapes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(e),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        deploy_ok(&agent, &v2);
        done.store(true, Ordering::SeqCst);
        let _ = poller.join();
    });
    let took = started.elapsed();
    let during = during.into_inner().unwrap_or_else(|p| p.into_inner());
    let bad = bad_scrapes.into_inner().unwrap_or_else(|p| p.into_inner());
    assert!(bad.is_empty(), "scrapes failed during the deploy: {bad:#?}");
    // The deploy takes at least the two 1 s graces: at one scrape per 50 ms plus the request,
    // ten scrapes is a floor any working poller clears.
    assert!(
        during.len() >= 10,
        "only {} scrapes in the {took:?} of the deploy: the observer proves nothing",
        during.len()
    );
    let held: Vec<&Scrape> = during
        .iter()
        .filter(|s| s.get("hotdeploy_agent_slot_held") == Some(1.0))
        .collect();
    assert!(
        !held.is_empty(),
        "no scrape saw the slot held during the deploy"
    );
    for s in &held {
        assert!(
            s.value_or_zero("hotdeploy_agent_slot_token") > 0.0,
            "{:?}",
            s.samples
        );
        assert!(s.value_or_zero("hotdeploy_agent_slot_age_seconds") >= 0.0);
    }
    assert!(
        during
            .iter()
            .any(|s| s.get("hotdeploy_agent_in_rotation") == Some(0.0)
                && s.get("hotdeploy_agent_rotation{state=\"in_rotation\"}") == Some(0.0)),
        "no scrape saw the host out of rotation during the deploy"
    );
    assert!(
        during.iter().any(
            |s| s.get("hotdeploy_agent_deploy_phase{phase=\"idle\"}") == Some(0.0)
                && s.series_of("hotdeploy_agent_deploy_phase")
                    .any(|(_, v)| v == 1.0)
        ),
        "no scrape saw a deploy phase other than idle"
    );
    // The age of the slot grows while it is held.
    let ages: Vec<f64> = held
        .iter()
        .map(|s| s.value_or_zero("hotdeploy_agent_slot_age_seconds"))
        .collect();
    assert!(
        ages.windows(2).all(|w| w[1] >= w[0]) && ages.last() > ages.first(),
        "the slot's age does not grow while held: {ages:?}"
    );

    wait_settled(&deadline, &agent, Some("v2"), Duration::from_secs(20));
    let after = agent
        .scrape()
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail()));
    for step in DEPLOY_STEPS {
        assert_eq!(
            step_count(&after, step),
            step_count(&before, step) + 1.0,
            "step {step} was not timed once for the deploy of v2"
        );
    }
    assert_eq!(
        step_count(&after, "rollback"),
        step_count(&before, "rollback")
    );
    // The drain waits drain_grace (1 s) and the undrain undrain_grace (1 s) by construction.
    for step in ["drain", "undrain"] {
        let took = step_sum(&after, step) - step_sum(&before, step);
        assert!(
            took >= 1.0,
            "step {step} took {took} s, less than its 1 s grace"
        );
    }
    assert_eq!(after.get(SUCCEEDED), Some(2.0));
    assert_eq!(
        errors(&after),
        errors(&before),
        "errors counted: {:#?}",
        after.samples
    );
    assert_eq!(
        after.get("hotdeploy_agent_release{release=\"v2\"}"),
        Some(1.0)
    );
    assert_eq!(after.get("hotdeploy_agent_slot_held"), Some(0.0));
    assert_eq!(after.get("hotdeploy_agent_slot_age_seconds"), Some(0.0));
    assert_eq!(after.get("hotdeploy_agent_in_rotation"), Some(1.0));
    assert_eq!(
        after.get("hotdeploy_agent_deploy_phase{phase=\"idle\"}"),
        Some(1.0)
    );
    assert_eq!(
        after.get("hotdeploy_agent_health{health=\"healthy\"}"),
        Some(1.0)
    );
    // The monitor probes between deploys, and each round is counted.
    let rounds = after.value_or_zero("hotdeploy_agent_health_probe_rounds_total");
    wait_for(
        &deadline,
        Duration::from_secs(15),
        "the probe rounds to keep counting",
        || {
            let now = agent.scrape()?;
            let n = now.value_or_zero("hotdeploy_agent_health_probe_rounds_total");
            (n > rounds)
                .then_some(())
                .ok_or(format!("{n} rounds, was {rounds}"))
        },
        || agent.log_tail(),
    );

    // One log line per transition, with the phase that ended and how long it took.
    let log =
        plain_log(&std::fs::read_to_string(agent.dir().join("agent.log")).unwrap_or_default());
    let line = log
        .lines()
        .find(|l| l.contains("leaving rotation") && l.contains("release=v2"))
        .unwrap_or_else(|| panic!("no transition line for the drain of v2:\n{log}"));
    for field in [
        "host=web-1",
        "phase=draining",
        "ended=slot_held",
        "ended_ms=",
        "token=",
    ] {
        assert!(line.contains(field), "{field} missing from {line:?}");
    }
    assert!(
        log.lines().any(|l| l.contains("deploy succeeded")
            && l.contains("release=v2")
            && l.contains("outcome=succeeded")
            && l.contains("ended=released")),
        "no concluding line for v2:\n{log}"
    );
    deadline.finish();
}

#[test]
fn a_bad_or_busy_metrics_listen_stops_the_start_naming_the_key() {
    let ip = net::alloc_ips(1)[0];
    let mut agent = AgentProc::start(fast_opts("web-1", ip, Vec::new()));
    let grpc = agent.grpc_addr().to_string();
    agent.kill();
    for (value, want) in [
        ("nope", "metrics_listen"),
        (grpc.as_str(), "metrics_listen"),
    ] {
        // A busy address: the agent's own gRPC port, held here while the agent starts.
        let _busy = std::net::TcpListener::bind(agent.grpc_addr());
        agent
            .opts_mut()
            .extra
            .insert("metrics_listen".into(), toml::Value::String(value.into()));
        agent.write_config();
        let mut command = Command::new(bins::agent());
        command.arg("--config").arg(agent.dir().join("agent.toml"));
        let out = proc::run_with_timeout(command, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(want),
            "metrics_listen = {value:?} must stop the start naming the key: {}",
            show(&out)
        );
        eprintln!(
            "metrics_listen = {value:?}: refused as expected: {}",
            stderr.trim()
        );
    }
}
