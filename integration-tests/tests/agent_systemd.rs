//! The agent in `systemd` control mode, against a real systemd (DESIGN §4; issue 8 §1).
//!
//! A Debian container boots under `systemd-nspawn` ([`hotdeploy_integration_tests::nspawn`]).
//! Inside it, the agent runs as a `Type=notify` unit and controls `hd-app.service`, a real unit
//! whose `ExecStart` runs `sample-app` through the `current` symlink. The container shares the
//! host's network, so the agent reaches a 3-node coordinator cluster on 127.x addresses, and
//! `hotdeployctl` on the host reaches the agent. A second host, `web-2`, is an ordinary agent on
//! the host, in the same budget-1 group.
//!
//! - The unit *hangs* (`systemctl kill --signal=SIGSTOP`): the unit stays `active`, only a probe
//!   with a timeout can tell. `hosts list` must show web-1 `unhealthy` within the bound; web-2
//!   cannot take a slot while web-1 can; after SIGCONT web-1 is `healthy` and web-2 can.
//! - The unit *stops* (`systemctl stop`): `unhealthy`; started again: `healthy`.
//!
//! Where the container cannot run (not root, no network to build its root file system) the test
//! says so plainly and does nothing else; `scripts/test` says so too.

mod agent_support;

use agent_support::*;
use hotdeploy_integration_tests::agents::AgentProc;
use hotdeploy_integration_tests::cluster::Cluster;
use hotdeploy_integration_tests::nspawn::{agent_config, describe, Container, ServiceControl};
use hotdeploy_integration_tests::toml_config::{merge, table};
use hotdeploy_integration_tests::{bins, net, proc};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const APP_UNIT: &str = "hd-app.service";
const AGENT_UNIT: &str = "hotdeploy-agent.service";
const INTERVAL_MS: u64 = 300;
const UNHEALTHY_AFTER: u32 = 3;
const HEALTHY_AFTER: u32 = 2;

/// The configured detection bound ((n + 1) rounds of interval + probe timeout), plus a
/// generous allowance for the report to commit through raft on a loaded machine.
fn report_bound(rounds: u32) -> Duration {
    Duration::from_millis(2 * INTERVAL_MS) * (rounds + 1) + Duration::from_secs(10)
}

/// web-1: the agent inside the container.
struct Inside {
    container: Container,
    ip: Ipv4Addr,
}

impl Inside {
    /// Installs the agent and the app unit, and starts the agent; the agent registers.
    fn start(container: Container, ip: Ipv4Addr, cluster: &Cluster) -> Inside {
        let c = &container;
        let agent_bin = c.share_file(&bins::agent(), "bin/hotdeploy-agent");
        let app = net::addr(ip, net::APP_PORT);
        c.write_file(
            &format!("/etc/systemd/system/{APP_UNIT}"),
            format!(
                "[Unit]\nDescription=sample app deployed by hotdeploy\n\n[Service]\n\
                 ExecStart=/srv/app/current/bin/sample-app --dir /srv/app/current --listen {app}\n"
            )
            .as_bytes(),
            0o644,
        );
        c.write_file(
            &format!("/etc/systemd/system/{AGENT_UNIT}"),
            format!(
                "[Unit]\nDescription=hotdeploy agent\n\n[Service]\nType=notify\n\
                 ExecStart={agent_bin} --config /etc/hotdeploy/agent.toml\n\
                 Environment=RUST_LOG=info\nTimeoutStartSec=60\n"
            )
            .as_bytes(),
            0o644,
        );
        let mut file = agent_config(
            ip,
            cluster.coordinator_addrs(),
            "/var/lib/hotdeploy",
            toml::Table::new(),
            ServiceControl::Systemd {
                unit: APP_UNIT.into(),
            },
        );
        merge(
            &mut file.extra,
            &table(&format!(
                "[health]\ninterval = \"{INTERVAL_MS}ms\"\nprobe_timeout = \"{INTERVAL_MS}ms\"\n\
                 unhealthy_after = {UNHEALTHY_AFTER}\nhealthy_after = {HEALTHY_AFTER}\n"
            )),
        );
        c.write_file("/etc/hotdeploy/agent.toml", file.render().as_bytes(), 0o644);
        c.systemctl_ok(&["daemon-reload"]);
        // Type=notify: `start` returns once the agent has said READY=1.
        let out = c.systemctl(&["start", AGENT_UNIT]);
        assert!(
            out.status.success(),
            "starting the agent unit: {}\n{}",
            describe(&out),
            c.journal(AGENT_UNIT, 80)
        );
        Inside { container, ip }
    }

    fn logs(&self) -> String {
        format!(
            "{}\n{}",
            self.container.journal(AGENT_UNIT, 120),
            self.container.journal(APP_UNIT, 40)
        )
    }

    fn ctl(&self, json: bool, args: &[&str], timeout: Duration) -> Output {
        let mut command = Command::new(bins::ctl());
        command.arg("--insecure");
        if json {
            command.args(["-o", "json"]);
        }
        command
            .arg("agent")
            .arg("--address")
            .arg(net::addr(self.ip, net::AGENT_PORT).to_string())
            .args(args);
        proc::run_with_timeout(command, timeout)
    }

    fn status(&self) -> Result<Value, String> {
        let out = self.ctl(true, &["status"], Duration::from_secs(30));
        if !out.status.success() {
            return Err(show(&out));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", show(&out)))
    }

    fn ready_status(&self) -> Option<u16> {
        hotdeploy_integration_tests::http_probe::get(
            net::addr(self.ip, net::AGENT_READY_PORT),
            "/ready",
            Duration::from_secs(2),
        )
        .ok()
        .map(|r| r.status)
    }
}

fn wait_host(deadline: &Deadline, cluster: &Cluster, host: &str, health: &str, within: Duration) {
    wait_for(
        deadline,
        within,
        &format!("hosts list: {host} health {health}"),
        || {
            let h = host_entry(cluster, host)?;
            if h["health"] == health && h["reachability"] == "reachable" {
                Ok(())
            } else {
                Err(h.to_string())
            }
        },
        || cluster.all_logs(),
    );
}

fn acquire(cluster: &Cluster, host: &str, wait: &str) -> Result<(), String> {
    let out = cluster.ctl(&[
        "locks",
        "acquire",
        host,
        "--reason",
        "health test",
        "--wait",
        wait,
    ]);
    if out.status.success() {
        Ok(())
    } else {
        Err(show(&out))
    }
}

fn release_slot(cluster: &Cluster, host: &str) {
    let out = cluster.ctl(&["locks", "release", host]);
    assert!(out.status.success(), "locks release {host}: {}", show(&out));
}

#[test]
fn systemd_mode_a_hung_or_stopped_unit_is_unhealthy_and_holds_the_budget() {
    let Some(container) = Container::boot_or_skip(
        "health",
        "systemd_mode_a_hung_or_stopped_unit_is_unhealthy_and_holds_the_budget",
    ) else {
        return;
    };
    let deadline = Deadline::new(
        "systemd mode: health between deploys",
        Duration::from_secs(180),
    );
    let artifacts = tempfile::Builder::new()
        .prefix("hd-systemd-rel-")
        .tempdir()
        .unwrap_or_else(|e| panic!("temp dir: {e}"));
    let v1 = release(artifacts.path(), "v1", false);
    let cluster = start_cluster(&deadline, "5s", "");
    let ips = net::alloc_ips(2);
    let web1 = Inside::start(container, ips[0], &cluster);
    let web2 = AgentProc::start(fast_opts("web-2", ips[1], cluster.coordinator_addrs()));
    wait_host(
        &deadline,
        &cluster,
        "web-1",
        "unprovisioned",
        Duration::from_secs(20),
    );

    // First deploys: web-1 through systemd inside the container, web-2 on the host.
    let artifact = web1.container.share_file(
        std::path::Path::new(v1.url.trim_start_matches("file://")),
        "releases/v1.tar.gz",
    );
    let out = web1.ctl(
        false,
        &[
            "deploy",
            "--release",
            "v1",
            "--artifact",
            &format!("file://{artifact}"),
            "--sha256",
            &v1.sha256,
        ],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "deploy of v1 in the container: {}\n{}",
        show(&out),
        web1.logs()
    );
    deploy_ok(&web2, &v1);
    wait_host(
        &deadline,
        &cluster,
        "web-1",
        "healthy",
        Duration::from_secs(15),
    );
    wait_host(
        &deadline,
        &cluster,
        "web-2",
        "healthy",
        Duration::from_secs(15),
    );
    let (active, sub) = web1.container.unit_state(APP_UNIT);
    assert_eq!((active.as_str(), sub.as_str()), ("active", "running"));

    // The unit hangs: still active as far as systemd knows.
    let hung_at = Instant::now();
    web1.container
        .systemctl_ok(&["kill", "--signal=SIGSTOP", APP_UNIT]);
    let bound = report_bound(UNHEALTHY_AFTER);
    wait_host(&deadline, &cluster, "web-1", "unhealthy", bound);
    eprintln!(
        "systemd: unhealthy {:?} after the unit hung (bound {bound:?})",
        hung_at.elapsed()
    );
    assert_eq!(web1.container.unit_state(APP_UNIT).0, "active");
    let s = web1.status().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s["health"], "unhealthy", "{s}");
    assert_eq!(web1.ready_status(), Some(503));
    assert_eq!(
        agent_check_line(net::addr(web1.ip, net::AGENT_CHECK_PORT)).as_deref(),
        Some("ready down")
    );

    assert!(
        acquire(&cluster, "web-2", "2s").is_err(),
        "web-2 took a slot while web-1 was unhealthy in a budget-1 group"
    );
    acquire(&cluster, "web-1", "5s")
        .unwrap_or_else(|e| panic!("web-1 could not take a slot to repair itself: {e}"));
    release_slot(&cluster, "web-1");

    web1.container
        .systemctl_ok(&["kill", "--signal=SIGCONT", APP_UNIT]);
    wait_host(
        &deadline,
        &cluster,
        "web-1",
        "healthy",
        report_bound(HEALTHY_AFTER),
    );
    acquire(&cluster, "web-2", "5s")
        .unwrap_or_else(|e| panic!("web-2 could not take a slot once web-1 was healthy: {e}"));
    release_slot(&cluster, "web-2");

    // The unit stops, then starts again.
    web1.container.systemctl_ok(&["stop", APP_UNIT]);
    wait_host(
        &deadline,
        &cluster,
        "web-1",
        "unhealthy",
        report_bound(UNHEALTHY_AFTER),
    );
    web1.container.systemctl_ok(&["start", APP_UNIT]);
    web1.container
        .wait_unit(APP_UNIT, "active", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    wait_host(
        &deadline,
        &cluster,
        "web-1",
        "healthy",
        report_bound(HEALTHY_AFTER),
    );
    let s = web1.status().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s["health"], "healthy", "{s}\n{}", web1.logs());
    deadline.finish();
}
