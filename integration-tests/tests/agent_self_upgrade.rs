//! Agents upgraded by a hotdeploy rollout of their own package (DESIGN §8), end to end.
//!
//! The deployment pattern: every host runs a second agent, `<host>.agent` in group
//! `hotdeploy-agents`, with its own data dir, gRPC port and certificate
//! (`hotdeploy://agent/web-1.agent`, from `hotdeployctl certs init --agent`), no rotation front
//! ends (no load balancer watches it), and as its "service" the host's main `hotdeploy-agent`:
//! here in `exec` mode, `{current}/bin/hotdeploy-agent --config main.toml` from the release the
//! second agent unpacked; in production the `systemd` mode on `hotdeploy-agent.service`, whose
//! `ExecStart` points into the second agent's `current` link (docs/operations.md, "Agents").
//! Its verify probe is the main agent's `GET /metrics`, which answers once the new agent has
//! re-adopted its service, and whatever the app's rotation or health (`/ready` would fail an
//! agent upgrade on a drained host).
//!
//! One scenario on real parts: a 3-node coordinator cluster over mTLS, one host `web-1` whose
//! main agent runs `sample-app` in `exec` mode behind a real HAProxy, and `web-1.agent`
//! supervising that main agent.
//!
//! 1. A rollout of `agent-v1` to `hotdeploy-agents` installs the main agent (a first install);
//!    the main agent registers, and `sample-app` v1 is deployed on it.
//! 2. Under load through HAProxy, a rollout of `agent-v2` completes. The main agent was
//!    replaced by the new release's binary (another pid, `/proc/<pid>/exe` under
//!    `releases/agent-v2/`); `sample-app` kept its pid; no request failed and HAProxy never had
//!    web-1 out of rotation (the observer having taken enough samples); the new main agent
//!    reports the same service pid, and the coordinators list web-1 reachable, healthy and in
//!    rotation, and web-1.agent on agent-v2; the new main agent is linked to the coordinators
//!    (it registered again).
//!
//! A missing HAProxy fails this test; it never skips it. Build the binaries first: `cargo build
//! --workspace --bins`.

mod agent_support;
mod pki_support;

use agent_support::*;
use hotdeploy_integration_tests::agents::{AgentOpts, AgentProc};
use hotdeploy_integration_tests::cluster::{Cluster, ClusterOpts};
use hotdeploy_integration_tests::haproxy::{HaProxy, Observer};
use hotdeploy_integration_tests::load::{LoadConfig, LoadGen};
use hotdeploy_integration_tests::net::{self, AGENT_METRICS_PORT, SELF_AGENT_PORT};
use hotdeploy_integration_tests::pack::{self, ArtifactFormat};
use hotdeploy_integration_tests::toml_config;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// How long one `rollout start --watch` may take.
const WATCH: Duration = Duration::from_secs(120);

/// One host (main agent, its app, the self-upgrade agent) behind HAProxy, and the cluster.
/// Fields drop in order: the self-upgrade agent first (so nothing restarts the main agent),
/// then the main agent and its app.
struct Host {
    upgrader: AgentProc,
    main: AgentProc,
    haproxy: HaProxy,
    cluster: Cluster,
    artifacts: tempfile::TempDir,
    _pki: tempfile::TempDir,
}

impl Host {
    fn start(deadline: &Deadline) -> Host {
        HaProxy::require().unwrap_or_else(|e| panic!("{e}"));
        let artifacts = tempfile::Builder::new()
            .prefix("hd-selfup-rel-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let pki = tempfile::Builder::new()
            .prefix("hd-selfup-pki-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let coord_ips = net::alloc_ips(3);
        let ips = net::alloc_ips(2);
        let (host_ip, haproxy_ip) = (ips[0], ips[1]);
        // Both agents of the host share its IP, each with its own certificate.
        pki_support::init_fleet(
            pki.path(),
            &coord_ips,
            &[format!("web-1@{host_ip}"), format!("web-1.agent@{host_ip}")],
        );
        let cluster = Cluster::start(
            3,
            &[("web", "1"), ("hotdeploy-agents", "1")],
            ClusterOpts {
                tls: Some(pki.path().to_path_buf()),
                ips: Some(coord_ips),
                ..ClusterOpts::default()
            },
        );
        cluster.wait_leader(deadline.bound(Duration::from_secs(40)), None);
        // One host is the whole of `hotdeploy-agents` here: its deploy leaves the group none
        // available, which the coordinators refuse unless told that is acceptable. (Taking
        // the main agent down for a moment takes no host out of traffic.)
        let out = cluster.ctl(&[
            "groups",
            "set",
            "hotdeploy-agents",
            "--allow-zero-available",
            "true",
        ]);
        assert!(out.status.success(), "groups set: {}", show(&out));
        let haproxy = start_haproxy(&[ha_server("web-1", host_ip)], haproxy_ip);

        // The main agent: written, not started; the self-upgrade agent starts it.
        let mut o = fast_opts("web-1", host_ip, cluster.coordinator_addrs()).with_metrics();
        o.tls = Some(pki.path().to_path_buf());
        let main = AgentProc::prepare(o);

        let upgrader = AgentProc::start(upgrader_opts(
            host_ip,
            &cluster,
            pki.path(),
            main.config_path(),
        ));
        Host {
            upgrader,
            main,
            haproxy,
            cluster,
            artifacts,
            _pki: pki,
        }
    }

    fn logs(&self) -> String {
        // The main agent logs where its supervisor does: to the upgrader's log.
        format!(
            "---- haproxy ----\n{}\n---- web-1.agent and web-1 ----\n{}\n{}",
            self.haproxy.log_tail(),
            self.upgrader.log_tail(),
            self.cluster.all_logs()
        )
    }

    /// `rollout start GROUP --release R --artifact URL --sha256 SHA --id ID --watch`.
    fn rollout(&self, group: &str, id: &str, rel: &Rel) -> Output {
        let args = rollout_start_args(group, id, rel, &["--watch"]);
        self.cluster.ctl_at(&self.cluster.endpoints(), &args, WATCH)
    }

    fn rollout_ok(&self, group: &str, id: &str, rel: &Rel) {
        let out = self.rollout(group, id, rel);
        assert_eq!(
            out.status.code(),
            Some(0),
            "rollout {id}: {}\n{}",
            show(&out),
            self.logs()
        );
        let s = self.cluster.ctl_json(&["rollout", "status", id]);
        assert_eq!(s["state"], "completed", "{s}");
        assert_eq!(s["succeeded"], 1, "{s}");
    }

    /// The one main agent process, running from the upgrader's release store.
    fn main_agent_pid(&self) -> u32 {
        let pids = self.upgrader.app_pids();
        assert_eq!(
            pids.len(),
            1,
            "expected one main agent running from web-1.agent's releases, found {pids:?}\n{}",
            self.logs()
        );
        pids[0]
    }

    /// The binary `pid` runs.
    fn exe_of(pid: u32) -> PathBuf {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/exe: {e}"))
    }

    /// The agent binary of release `id` in the upgrader's store, resolved.
    fn release_binary(&self, id: &str) -> PathBuf {
        let releases = std::fs::canonicalize(self.upgrader.root().join("releases"))
            .unwrap_or_else(|e| panic!("releases/ of web-1.agent: {e}"));
        releases.join(id).join("bin/hotdeploy-agent")
    }

    /// Waits until the coordinators list `host` reachable, healthy, in rotation, on `release`.
    fn wait_host(&self, deadline: &Deadline, host: &str, release: &str) -> serde_json::Value {
        wait_for(
            deadline,
            Duration::from_secs(30),
            &format!("{host} reachable, healthy, in rotation, on {release}"),
            || {
                let h = host_entry(&self.cluster, host)?;
                let ok = h["reachability"] == "reachable"
                    && h["health"] == "healthy"
                    && h["state"] == "in_rotation"
                    && h["release"] == release;
                if ok {
                    Ok(h)
                } else {
                    Err(h.to_string())
                }
            },
            || self.logs(),
        )
    }
}

/// `web-1.agent`: group `hotdeploy-agents`, gRPC on [`SELF_AGENT_PORT`] of the host's IP, no
/// rotation front ends and no grace to wait (no load balancer watches it), and as its service
/// the main agent, `{current}/bin/hotdeploy-agent --config MAIN`, verified by the main agent's
/// `/metrics`.
fn upgrader_opts(
    ip: std::net::Ipv4Addr,
    cluster: &Cluster,
    pki: &Path,
    main_config: &Path,
) -> AgentOpts {
    let mut o = fast_opts("web-1.agent", ip, cluster.coordinator_addrs());
    o.groups = vec!["hotdeploy-agents".into()];
    o.grpc_port = SELF_AGENT_PORT;
    o.front_ends = false;
    o.drain_grace = "0s".into();
    o.undrain_grace = "0s".into();
    // The main agent's shutdown is bounded by a few seconds per task group.
    o.stop_timeout = "30s".into();
    o.verify_timeout = "30s".into();
    o.tls = Some(pki.to_path_buf());
    let metrics = net::addr(ip, AGENT_METRICS_PORT);
    let main_config = main_config.display().to_string();
    let mut extra = toml::Table::new();
    let mut service = toml::Table::new();
    service.insert("name".into(), "hotdeploy-agent".into());
    service.insert(
        "exec".into(),
        toml::Value::Array(vec![
            "{current}/bin/hotdeploy-agent".into(),
            "--config".into(),
            main_config.into(),
        ]),
    );
    extra.insert("service".into(), service.into());
    toml_config::merge(
        &mut extra,
        &toml_config::table(&format!(
            "[verify]\nhttp = \"http://{metrics}/metrics\"\nbody_contains = \"hotdeploy_agent_\"\n"
        )),
    );
    o.extra = extra;
    o
}

/// Packs `hotdeploy-agent` as release `id` (tar.gz).
fn agent_release(dir: &Path, id: &str) -> Rel {
    let (path, sha256) = pack::make_agent_release(dir, id, ArtifactFormat::TarGz)
        .unwrap_or_else(|e| panic!("building agent release {id}: {e:#}"));
    Rel {
        id: id.to_string(),
        url: format!("file://{}", path.display()),
        sha256,
    }
}

#[test]
fn a_rollout_of_the_agent_package_replaces_the_main_agent_and_keeps_the_app_serving() {
    let deadline = Deadline::new("agent self-upgrade by rollout", Duration::from_secs(300));
    let host = Host::start(&deadline);
    let agent_v1 = agent_release(host.artifacts.path(), "agent-v1");
    let agent_v2 = agent_release(host.artifacts.path(), "agent-v2");
    let app_v1 = release(host.artifacts.path(), "v1", false);
    wait_registered(&deadline, &host.cluster, 1, || host.logs());

    // 1. First install of the main agent by its rollout, then the app on it.
    host.rollout_ok("hotdeploy-agents", "agent-install", &agent_v1);
    let old_agent = host.main_agent_pid();
    assert_eq!(
        Host::exe_of(old_agent),
        host.release_binary("agent-v1"),
        "the main agent does not run from agent-v1"
    );
    wait_registered(&deadline, &host.cluster, 2, || host.logs());
    host.rollout_ok("web", "app-install", &app_v1);
    assert!(
        host.haproxy
            .wait_all_up(1, deadline.bound(Duration::from_secs(15))),
        "HAProxy does not show web-1 UP: {:?}\n{}",
        host.haproxy.stat(),
        host.logs()
    );
    wait_settled(&deadline, &host.main, Some("v1"), Duration::from_secs(15));
    host.wait_host(&deadline, "web-1", "v1");
    host.wait_host(&deadline, "web-1.agent", "agent-v1");
    let app = one_app_pid(&host.main);

    // 2. The agent upgrade, under load.
    let observer = Observer::start(&host.haproxy);
    let watched = Instant::now();
    let load = LoadGen::start(LoadConfig::new(host.haproxy.frontend_addr(), 150));
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let out = host.rollout("hotdeploy-agents", "agent-upgrade", &agent_v2);
    let took = started.elapsed();
    // Keep the load on while the new main agent answers HAProxy's agent-checks.
    std::thread::sleep(Duration::from_millis(1500));
    let report = load.stop();
    let seen = observer.stop();
    let watched = watched.elapsed();
    eprintln!(
        "agent upgrade rollout took {took:?}; load {} ok / {} failed, p99 {} ms; observer {} \
         samples, changes {:?}",
        report.ok, report.failed, report.latency_p99_ms, seen.samples, seen.changes
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "rollout agent-upgrade: {}\n{}",
        show(&out),
        host.logs()
    );
    let s = host
        .cluster
        .ctl_json(&["rollout", "status", "agent-upgrade"]);
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(s["succeeded"], 1, "{s}");

    // The main agent is the new release's binary, in a new process.
    let new_agent = host.main_agent_pid();
    assert_ne!(new_agent, old_agent, "the main agent was not restarted");
    assert_eq!(
        Host::exe_of(new_agent),
        host.release_binary("agent-v2"),
        "the main agent does not run from agent-v2\n{}",
        host.logs()
    );
    // The app was neither restarted nor doubled, and served throughout.
    assert_eq!(
        host.main.app_pids(),
        vec![app],
        "the agent upgrade restarted or doubled the app\n{}",
        host.logs()
    );
    assert_eq!(
        report.failed,
        0,
        "requests failed: {:?} samples {:?}\n{report:?}\n{}",
        report.errors,
        report.error_samples,
        host.logs()
    );
    assert!(report.ok > 100, "too few requests went through: {report:?}");
    assert_sampled(&seen, watched, "an agent upgrade by rollout");
    assert_eq!(
        seen.max_not_up, 0,
        "web-1 left rotation while only its agent was upgraded: {:?}",
        seen.changes
    );
    // The new main agent adopted the app, and the host is back with the coordinators.
    let st = wait_settled(&deadline, &host.main, Some("v1"), Duration::from_secs(15));
    assert_eq!(
        st["service_pid"], app,
        "the new agent did not adopt the app: {st}"
    );
    // A new process is linked to a leader only once it has registered again.
    wait_for(
        &deadline,
        Duration::from_secs(20),
        "the new main agent linked to the coordinators",
        || match status(&host.main)? {
            s if s["coordinator_connected"] == true => Ok(()),
            s => Err(s.to_string()),
        },
        || host.logs(),
    );
    host.wait_host(&deadline, "web-1", "v1");
    let upgrader = host.wait_host(&deadline, "web-1.agent", "agent-v2");
    eprintln!("web-1.agent after the upgrade: {upgrader}");
    assert_eq!(host.main.app_version().as_deref(), Some("v1"));
    deadline.finish();
}
