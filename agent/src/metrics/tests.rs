//! The metrics as an engine with a metered fake host and lock feeds them, rendered as
//! `/metrics` would serve them.

use super::*;
use crate::deploy::tests::fake::Fake;
use crate::deploy::{ArtifactRef, DeployParams, Engine, EngineParts, Progress, SlotLock, Timing};
use crate::journal::{Journal, Outcome, Phase};
use crate::rotation::RotationControl;
use hotdeploy_common::config::RotationConfig;
use hotdeploy_common::proto::{Health, Rotation};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

fn metered_engine(fake: &Fake, dir: &std::path::Path, stats: &DeployStats) -> Engine {
    let lock = Arc::new(fake.clone()) as Arc<dyn SlotLock>;
    Engine::with_stats(
        EngineParts {
            host_id: "web-1".into(),
            ops: Arc::new(MeteredHost::new(fake.clone(), stats.errors())),
            lock: Some(Arc::new(MeteredLock::new(lock, stats.clone()))),
            journal: Journal::open(dir, "web-1").unwrap(),
            timing: Timing::default(),
            health: fake.fact_or_default(),
            shutdown: CancellationToken::new(),
        },
        stats.clone(),
    )
    .unwrap()
}

fn params(id: &str) -> DeployParams {
    DeployParams {
        release: id.into(),
        artifact: ArtifactRef {
            url: format!("file:///x/{id}.tar.gz"),
            sha256: "aa".into(),
            signature: None,
        },
        rollout: String::new(),
        step: None,
    }
}

fn render(eng: &Engine, stats: &DeployStats, probes: &ProbeCounters) -> String {
    let (_tx, health) = tokio::sync::watch::channel(Health::Healthy);
    let rotation = RotationControl::new(
        &RotationConfig::default(),
        "web-1",
        Rotation::InRotation,
        health.clone(),
    );
    let state = AgentState::new(eng.clone(), health, rotation, stats.clone());
    AgentMetrics::new(stats, probes, state).render().unwrap()
}

/// The value of the sample line `series` (exactly as written), or a panic showing the text.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

#[tokio::test]
async fn a_rolled_back_deploy_moves_its_steps_outcome_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[false, true]);
    let stats = DeployStats::default();
    let eng = metered_engine(&fake, dir.path(), &stats);
    let probes = ProbeCounters::default();
    let before = render(&eng, &stats, &probes);
    for step in Step::ALL {
        let s = format!(
            "hotdeploy_agent_deploy_phase_duration_seconds_count{{phase=\"{}\"}}",
            step.as_str()
        );
        assert_eq!(value(&before, &s), 0.0, "{s}");
    }
    let (outcome, err) = eng
        .deploy(params("v2"), Progress::none())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::RolledBack, "{err}");
    probes.round(false);
    probes.round(true);
    let after = render(&eng, &stats, &probes);
    for (step, n) in [
        ("stage", 1.0),
        ("slot_wait", 1.0),
        ("drain", 1.0),
        ("swap", 1.0),
        ("restart", 1.0),
        ("verify", 1.0),
        ("rollback", 1.0),
        ("undrain", 1.0),
    ] {
        let s = format!("hotdeploy_agent_deploy_phase_duration_seconds_count{{phase=\"{step}\"}}");
        assert_eq!(value(&after, &s), n, "{s}\n{after}");
    }
    let deploys = "hotdeploy_agent_deploys_total{kind=\"deploy\",outcome=\"rolled_back\"}";
    assert_eq!(value(&after, deploys), 1.0);
    let ok = "hotdeploy_agent_deploys_total{kind=\"deploy\",outcome=\"succeeded\"}";
    assert_eq!(value(&after, ok), 0.0);
    assert_eq!(
        value(&after, "hotdeploy_agent_errors_total{kind=\"verify\"}"),
        1.0
    );
    assert_eq!(
        value(&after, "hotdeploy_agent_errors_total{kind=\"stage\"}"),
        0.0
    );
    assert_eq!(
        value(&after, "hotdeploy_agent_health_probe_rounds_total"),
        2.0
    );
    assert_eq!(
        value(&after, "hotdeploy_agent_health_probe_failures_total"),
        1.0
    );
    assert_eq!(
        value(&after, "hotdeploy_agent_deploy_phase{phase=\"idle\"}"),
        1.0
    );
    assert_eq!(
        value(&after, "hotdeploy_agent_health{health=\"healthy\"}"),
        1.0
    );
    assert_eq!(value(&after, "hotdeploy_agent_in_rotation"), 1.0);
    assert_eq!(value(&after, "hotdeploy_agent_slot_held"), 0.0);
    assert_eq!(
        value(&after, "hotdeploy_agent_release{release=\"v1\"}"),
        1.0
    );
    // Every family is declared, and every name is the agent's.
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("hotdeploy_agent_"), "{line}");
    }
    assert!(after.ends_with("# EOF\n"), "{after}");
}

#[tokio::test]
async fn a_stale_token_and_a_held_slot_show() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[true]);
    fake.set(|s| s.stale_at = Some(Phase::Swapped));
    let stats = DeployStats::default();
    let eng = metered_engine(&fake, dir.path(), &stats);
    let probes = ProbeCounters::default();
    let (outcome, err) = eng
        .deploy(params("v2"), Progress::none())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Fenced, "{err}");
    let text = render(&eng, &stats, &probes);
    assert_eq!(
        value(&text, "hotdeploy_agent_errors_total{kind=\"fenced\"}"),
        1.0
    );
    let fenced = "hotdeploy_agent_deploys_total{kind=\"deploy\",outcome=\"fenced\"}";
    assert_eq!(value(&text, fenced), 1.0);

    // An operator's drain holds a slot: held, with its token and an age.
    let eng2_dir = tempfile::tempdir().unwrap();
    let fake2 = Fake::with(Some("v1"), None, &[true]);
    let stats2 = DeployStats::default();
    let eng2 = metered_engine(&fake2, eng2_dir.path(), &stats2);
    eng2.drain(crate::journal::Purpose::Drain, "kernel")
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let text = render(&eng2, &stats2, &probes);
    assert_eq!(value(&text, "hotdeploy_agent_slot_held"), 1.0, "{text}");
    assert_eq!(value(&text, "hotdeploy_agent_slot_token"), 7.0, "{text}");
    assert!(
        value(&text, "hotdeploy_agent_slot_age_seconds") > 0.0,
        "{text}"
    );
    assert_eq!(value(&text, "hotdeploy_agent_held_out"), 1.0, "{text}");
}

#[tokio::test]
async fn maintenance_runs_are_counted_by_outcome() {
    use crate::deploy::{MaintParams, MaintProgress};
    use crate::journal::MaintResult;
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[true]);
    let stats = DeployStats::default();
    let eng = metered_engine(&fake, dir.path(), &stats);
    let probes = ProbeCounters::default();
    let series =
        |outcome: &str| format!("hotdeploy_agent_maintenance_runs_total{{outcome=\"{outcome}\"}}");
    let before = render(&eng, &stats, &probes);
    for outcome in ["succeeded", "command_failed", "verify_failed", "failed"] {
        assert_eq!(value(&before, &series(outcome)), 0.0, "{before}");
    }
    let maint = |script: &str| MaintParams {
        reason: "os patch".into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        timeout: None,
    };
    let v = eng
        .maint(maint("true"), MaintProgress::default())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(v.result, MaintResult::Succeeded, "{v:?}");
    let v = eng
        .maint(maint("exit 3"), MaintProgress::default())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(v.result, MaintResult::CommandFailed, "{v:?}");
    let after = render(&eng, &stats, &probes);
    assert_eq!(value(&after, &series("succeeded")), 1.0, "{after}");
    assert_eq!(value(&after, &series("command_failed")), 1.0, "{after}");
    assert_eq!(value(&after, &series("verify_failed")), 0.0, "{after}");
    assert_eq!(value(&after, &series("failed")), 0.0, "{after}");
    // A maintenance run is not a deploy.
    let deploys = "hotdeploy_agent_deploys_total{kind=\"deploy\",outcome=\"succeeded\"}";
    assert_eq!(value(&after, deploys), 0.0);
}
