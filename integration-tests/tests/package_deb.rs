//! The Debian package (DESIGN §8; issue 11 §3, §7): what it holds, and that it works under a
//! real systemd.
//!
//! The package is built by `scripts/build-deb`, the README's command, from the workspace's
//! binaries as `scripts/test` built them (`--no-build --fast`: the debug build, staged as the
//! `release/` directory cargo-deb packages, with quick compression; a release build would add
//! minutes to the suite for the same files). It is built once per set of inputs, under a lock,
//! and shared by the tests below.
//!
//! - **Contents** (`dpkg-deb -c`, `--info`): the three binaries, the two units, the example
//!   configs as conffiles, the system user and the state directory; `systemd-analyze verify`
//!   is clean on the units as packaged. The packaged binaries are stripped (no `.symtab`, no
//!   DWARF, read from their ELF section headers), and their debug symbols are in the
//!   `hotdeploy-dbgsym` .ddeb built beside it, under `/usr/lib/debug/.build-id/`.
//! - **Under systemd**: a Debian container booted with `systemd-nspawn`
//!   ([`hotdeploy_integration_tests::nspawn`]) installs the .deb with `dpkg -i`. With
//!   certificates made by `hotdeployctl certs init` and configs in /etc/hotdeploy, a one-node
//!   coordinator and an agent start through `systemctl start` and reach `active` (Type=notify:
//!   `start` returns only after READY=1). The coordinator, frozen with SIGSTOP, is killed and
//!   restarted by the watchdog (a new MainPID, active again). `systemctl reload` rotates
//!   certificates: after new files and a reload, a new TLS connection sees the new certificate,
//!   and the daemon kept its pid. For `systemd` control mode, the shipped agent unit cannot
//!   restart another unit, and with the package's root drop-in it can (still with no
//!   capabilities).
//!
//! Where cargo-deb cannot be installed, or the container cannot run (not root), the test says
//! so plainly and does nothing else; `scripts/test` says so too, and with
//! `HOTDEPLOY_REQUIRE_CARGO_DEB` / `HOTDEPLOY_REQUIRE_NSPAWN` set it fails instead.

mod package_support;
mod pki_support;

use hotdeploy_common::tls_pki::{Subject, Validity};
use hotdeploy_integration_tests::nspawn::{agent_config, describe, Container, ServiceControl};
use hotdeploy_integration_tests::toml_config::{table, CoordinatorConfigFile};
use hotdeploy_integration_tests::{bins, net, proc};
use package_support::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const COORD_UNIT: &str = "hotdeploy-coordinator.service";
const AGENT_UNIT: &str = "hotdeploy-agent.service";

/// The files the package must install, besides directories.
const EXPECTED_FILES: &[&str] = &[
    "./usr/bin/hotdeploy-agent",
    "./usr/bin/hotdeploy-coordinator",
    "./usr/bin/hotdeployctl",
    "./usr/lib/systemd/system/hotdeploy-coordinator.service",
    "./usr/lib/systemd/system/hotdeploy-agent.service",
    "./usr/lib/sysusers.d/hotdeploy.conf",
    "./usr/lib/tmpfiles.d/hotdeploy.conf",
    "./etc/hotdeploy/coordinator.toml",
    "./etc/hotdeploy/agent.toml",
    "./usr/share/doc/hotdeploy/examples/coordinator-1.toml",
    "./usr/share/doc/hotdeploy/examples/agent.toml",
    "./usr/share/doc/hotdeploy/examples/haproxy.cfg",
    "./usr/share/doc/hotdeploy/examples/hotdeploy-agent-root.conf",
];
/// The conffiles: the example configs in /etc/hotdeploy, kept across upgrades once edited.
const CONFFILES: &[&str] = &[
    "/etc/hotdeploy/agent.toml",
    "/etc/hotdeploy/coordinator.toml",
];

#[test]
fn the_package_holds_the_binaries_units_configs_and_conffiles() {
    let Some(deb) = package_or_skip("the_package_holds_the_binaries_units_configs_and_conffiles")
    else {
        return;
    };
    // The file list: every expected file, with the modes an operator relies on.
    let mut c = Command::new("dpkg-deb");
    c.arg("-c").arg(&deb);
    let listing = run_ok(c, "dpkg-deb -c");
    let entries: BTreeMap<String, String> = listing
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(5)?.to_string(), f.first()?.to_string()))
        })
        .collect();
    for file in EXPECTED_FILES {
        assert!(
            entries.contains_key(*file),
            "{file} missing from the package:\n{listing}"
        );
    }
    for bin in ["hotdeploy-agent", "hotdeploy-coordinator", "hotdeployctl"] {
        assert_eq!(
            entries[&format!("./usr/bin/{bin}")],
            "-rwxr-xr-x",
            "{listing}"
        );
    }
    // The configs name key files: not world-readable.
    for conf in CONFFILES {
        assert_eq!(entries[&format!(".{conf}")], "-rw-r-----", "{listing}");
    }

    // The conffiles list, and the maintainer scripts that create the user and directories.
    let mut c = Command::new("dpkg-deb");
    c.arg("--info").arg(&deb).arg("conffiles");
    let conffiles = run_ok(c, "dpkg-deb --info conffiles");
    let mut listed: Vec<&str> = conffiles.lines().map(str::trim).collect();
    listed.sort_unstable();
    assert_eq!(listed, CONFFILES, "conffiles:\n{conffiles}");
    let mut c = Command::new("dpkg-deb");
    c.arg("--info").arg(&deb).arg("postinst");
    let postinst = run_ok(c, "dpkg-deb --info postinst");
    assert!(
        postinst.contains("systemd-sysusers hotdeploy.conf"),
        "{postinst}"
    );
    assert!(
        postinst.contains("systemd-tmpfiles --create hotdeploy.conf"),
        "{postinst}"
    );
    let mut c = Command::new("dpkg-deb");
    c.arg("--field").arg(&deb).arg("Package").arg("Depends");
    let fields = run_ok(c, "dpkg-deb --field");
    assert!(fields.contains("Package: hotdeploy"), "{fields}");
    assert!(fields.contains("systemd"), "{fields}");

    verify_units_on_the_host(&deb);
    binaries_are_stripped_with_symbols_beside(&deb);
}

/// The packaged binaries carry no symbol table and no DWARF; the `hotdeploy-dbgsym` package
/// that cargo-deb writes next to the .deb holds one `.debug` file per binary, by build id.
fn binaries_are_stripped_with_symbols_beside(deb: &Path) {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = tmp.path().join("root");
    let mut c = Command::new("dpkg-deb");
    c.arg("-x").arg(deb).arg(&root);
    run_ok(c, "dpkg-deb -x");
    for bin in ["hotdeploy-agent", "hotdeploy-coordinator", "hotdeployctl"] {
        let path = root.join("usr/bin").join(bin);
        let names = elf_section_names(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            names.iter().any(|n| n == ".text"),
            "{bin}: no .text among {names:?}: the section reader is wrong"
        );
        let left = unstripped_sections(&names);
        assert!(
            left.is_empty(),
            "{bin} is not stripped in the package: {left:?}"
        );
    }
    let dir = deb.parent().unwrap_or_else(|| Path::new("."));
    let ddeb = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "ddeb"))
        .unwrap_or_else(|| panic!("no hotdeploy-dbgsym .ddeb next to {}", deb.display()));
    let mut c = Command::new("dpkg-deb");
    c.arg("-c").arg(&ddeb);
    let listing = run_ok(c, "dpkg-deb -c (dbgsym)");
    let debug_files = listing
        .lines()
        .filter(|l| l.contains("./usr/lib/debug/.build-id/") && l.ends_with(".debug"))
        .count();
    assert_eq!(
        debug_files, 3,
        "debug symbols of the three binaries:\n{listing}"
    );
}

/// `systemd-analyze verify` on the units as packaged, where the host has it. The units name
/// /usr/bin/..., which the host has not installed: the copies verified here point at the
/// package's extracted binaries instead, and nothing else is changed.
fn verify_units_on_the_host(deb: &Path) {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!("NOT RUN: systemd-analyze verify on the host (no systemd-analyze here)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = tmp.path().join("root");
    let mut c = Command::new("dpkg-deb");
    c.arg("-x").arg(deb).arg(&root);
    run_ok(c, "dpkg-deb -x");
    let mut units = Vec::new();
    for unit in [COORD_UNIT, AGENT_UNIT] {
        let text = std::fs::read_to_string(root.join("usr/lib/systemd/system").join(unit))
            .unwrap_or_else(|e| panic!("{unit}: {e}"));
        let bin_dir = format!("{}/usr/bin/", root.display());
        let to = tmp.path().join(unit);
        std::fs::write(&to, text.replace("/usr/bin/", &bin_dir)).unwrap_or_else(|e| panic!("{e}"));
        units.push(to);
    }
    let mut c = Command::new("systemd-analyze");
    c.args(["verify", "--man=no"]).args(&units);
    let out = proc::run_with_timeout(c, Duration::from_secs(60));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !said.contains("hotdeploy"),
        "systemd-analyze verify on the packaged units: {}",
        describe(&out)
    );
    eprintln!("systemd-analyze verify: clean on {COORD_UNIT} and {AGENT_UNIT}");
}

/// The package, installed in a booted container, configured for a one-node coordinator and an
/// agent on `ip`, with certificates from `hotdeployctl certs init` in `pki`.
struct Installed {
    c: Container,
    /// Holds `pki`; removed with it.
    _tmp: tempfile::TempDir,
    pki: PathBuf,
    coordinator: SocketAddr,
    agent: SocketAddr,
}

impl Installed {
    fn logs(&self) -> String {
        format!(
            "{}\n{}\n---- nspawn ----\n{}",
            self.c.journal(COORD_UNIT, 80),
            self.c.journal(AGENT_UNIT, 80),
            self.c.log_tail()
        )
    }

    /// Installs `pki/NAME` as /etc/hotdeploy/tls/NAME, root:hotdeploy 0640 (as an operator
    /// would: replaced whole, never half-written).
    fn install_tls(&self, name: &str) {
        let inside = self
            .c
            .share_file(&self.pki.join(name), &format!("tls/{name}"));
        let out = self.c.sh(&format!(
            "install -m 0640 -o root -g hotdeploy {inside} /etc/hotdeploy/tls/{name}.new && \
             mv /etc/hotdeploy/tls/{name}.new /etc/hotdeploy/tls/{name}"
        ));
        assert!(
            out.status.success(),
            "installing {name}: {}",
            describe(&out)
        );
    }

    /// Starts `unit` and waits for `active`: with Type=notify, systemd holds the unit in
    /// `activating` until the daemon sends READY=1 (and fails it after TimeoutStartSec=90).
    fn start(&self, unit: &str) {
        let out = self.c.systemctl(&["start", "--no-block", unit]);
        assert!(
            out.status.success(),
            "systemctl start {unit}: {}",
            describe(&out)
        );
        wait_for(
            &format!("{unit} active/running (READY=1)"),
            Duration::from_secs(100),
            || match self.c.unit_state(unit) {
                (a, s) if a == "active" && s == "running" => Ok(()),
                (a, s) if a == "failed" => Err(format!("{a}/{s}: the unit failed")),
                (a, s) => Err(format!("still {a}/{s}: no READY=1 yet")),
            },
            || self.logs(),
        );
    }

    /// `hotdeployctl -o json ARGS` from the host against the coordinator, as the operator.
    fn ctl(&self, args: &[&str]) -> Output {
        let mut command = Command::new(bins::ctl());
        command
            .arg("--endpoints")
            .arg(self.coordinator.to_string())
            .arg("--ca")
            .arg(self.pki.join("ca.pem"))
            .arg("--cert")
            .arg(self.pki.join("operator.pem"))
            .arg("--key")
            .arg(self.pki.join("operator-key.pem"))
            .args(["-o", "json"])
            .args(args);
        proc::run_with_timeout(command, Duration::from_secs(20))
    }
}

fn install(test: &str) -> Option<Installed> {
    let deb = package_or_skip(test)?;
    let c = Container::boot_or_skip("deb", test)?;
    let inside = c.share_file(&deb, "hotdeploy.deb");
    let out = c.exec(&["dpkg", "-i", &inside], Duration::from_secs(120));
    assert!(out.status.success(), "dpkg -i: {}", describe(&out));
    // What postinst made: the user, the state directory, the TLS directory.
    let out =
        c.sh("getent passwd hotdeploy && stat -c '%U:%G %a' /var/lib/hotdeploy /etc/hotdeploy/tls");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "after dpkg -i: {}", describe(&out));
    assert!(said.contains("root:root 755\nroot:hotdeploy 750"), "{said}");
    // The real systemd of the container on the installed units.
    let out = c.exec(
        &[
            "systemd-analyze",
            "verify",
            "--man=no",
            &format!("/usr/lib/systemd/system/{COORD_UNIT}"),
            &format!("/usr/lib/systemd/system/{AGENT_UNIT}"),
        ],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify in the container: {}",
        describe(&out)
    );

    let ip = net::alloc_ips(1)[0];
    let tmp = tempfile::Builder::new()
        .prefix("hd-deb-pki-")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    let pki = tmp.path().join("pki");
    pki_support::init_fleet(&pki, &[ip], &[format!("web-1@{ip}")]);
    let installed = Installed {
        c,
        _tmp: tmp,
        pki,
        coordinator: net::addr(ip, net::COORD_PORT),
        agent: net::addr(ip, net::AGENT_PORT),
    };
    for name in [
        "ca.pem",
        "coordinator-1.pem",
        "coordinator-1-key.pem",
        "agent-web-1.pem",
        "agent-web-1-key.pem",
    ] {
        installed.install_tls(name);
    }
    let tls = |cert: &str| {
        table(&format!(
            "ca = \"/etc/hotdeploy/tls/ca.pem\"\ncert = \"/etc/hotdeploy/tls/{cert}.pem\"\n\
             key = \"/etc/hotdeploy/tls/{cert}-key.pem\"\n"
        ))
    };
    let coordinator = CoordinatorConfigFile {
        id: 1,
        listen: installed.coordinator,
        data_dir: PathBuf::from("/var/lib/hotdeploy/coordinator"),
        http_listen: net::addr(ip, net::COORD_HTTP_PORT),
        peers: BTreeMap::from([(1, installed.coordinator)]),
        initial_cluster_state: "new".into(),
        tls: tls("coordinator-1"),
        raft: Default::default(),
        heartbeat_interval: "1s".into(),
        unreachable_after: "5s".into(),
        groups: vec![("web".into(), "1".into())],
        extra: toml::Table::new(),
    };
    let agent = agent_config(
        ip,
        vec![installed.coordinator],
        "/var/lib/hotdeploy/agent",
        tls("agent-web-1"),
        ServiceControl::Exec(vec!["{current}/bin/app".into()]),
    );
    // Over the package's example conffiles, keeping their owner and mode.
    for (path, text) in [
        ("/etc/hotdeploy/coordinator.toml", coordinator.render()),
        ("/etc/hotdeploy/agent.toml", agent.render()),
    ] {
        installed.c.write_file(path, text.as_bytes(), 0o640);
        let out = installed.c.sh(&format!("chgrp hotdeploy {path}"));
        assert!(out.status.success(), "chgrp {path}: {}", describe(&out));
    }
    // The service root: the operator makes it, for the user the agent runs as.
    let out = installed
        .c
        .sh("install -d -o hotdeploy -g hotdeploy -m 0755 /srv/app");
    assert!(out.status.success(), "/srv/app: {}", describe(&out));
    Some(installed)
}

#[test]
fn the_package_runs_both_daemons_under_systemd_with_watchdog_and_reload() {
    let test = "the_package_runs_both_daemons_under_systemd_with_watchdog_and_reload";
    let Some(h) = install(test) else {
        return;
    };
    let c = &h.c;

    // Start: each reaches active/running through READY=1.
    h.start(COORD_UNIT);
    wait_for(
        "a leader in `hotdeployctl status`",
        Duration::from_secs(60),
        || {
            let out = h.ctl(&["status"]);
            let text = String::from_utf8_lossy(&out.stdout);
            let status: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{e}: {}", describe(&out)))?;
            (status["leader"].as_u64() == Some(1))
                .then_some(())
                .ok_or_else(|| format!("no leader yet: {status}"))
        },
        || h.logs(),
    );
    h.start(AGENT_UNIT);
    wait_for(
        "web-1 registered with the coordinator",
        Duration::from_secs(60),
        || {
            let out = h.ctl(&["hosts", "list"]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.contains("web-1")
                .then_some(())
                .ok_or_else(|| format!("hosts list: {}", describe(&out)))
        },
        || h.logs(),
    );
    // Both units as shipped and running: notify, the watchdog armed, restart on failure.
    for unit in [COORD_UNIT, AGENT_UNIT] {
        assert_eq!(property(c, unit, "Type"), "notify", "{unit}");
        assert_eq!(property(c, unit, "WatchdogUSec"), "30s", "{unit}");
        assert_eq!(property(c, unit, "Restart"), "on-failure", "{unit}");
        assert_eq!(property(c, unit, "User"), "hotdeploy", "{unit}");
    }
    // The state directories the units made, owned by the daemons' user.
    let out = c.sh("stat -c '%U %a' /var/lib/hotdeploy/coordinator /var/lib/hotdeploy/agent");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hotdeploy 750\nhotdeploy 750\n",
        "{}",
        describe(&out)
    );

    // The watchdog: a frozen coordinator stops feeding it; systemd kills and restarts it.
    let frozen_pid = property(c, COORD_UNIT, "MainPID");
    assert_ne!(frozen_pid, "0");
    c.systemctl_ok(&["kill", "--signal=SIGSTOP", COORD_UNIT]);
    let frozen_at = Instant::now();
    // WatchdogSec=30, then the abort signal, the restart delay and a fresh READY=1.
    wait_for(
        "the watchdog to restart the frozen coordinator",
        Duration::from_secs(150),
        || {
            let pid = property(c, COORD_UNIT, "MainPID");
            let (active, sub) = c.unit_state(COORD_UNIT);
            (pid != frozen_pid && pid != "0" && active == "active" && sub == "running")
                .then_some(())
                .ok_or_else(|| format!("MainPID {pid}, {active}/{sub}"))
        },
        || h.logs(),
    );
    let restarted_after = frozen_at.elapsed();
    assert!(
        restarted_after >= Duration::from_secs(25),
        "restarted after {restarted_after:?}, before WatchdogSec=30 could run out: not the watchdog"
    );
    let journal = c.journal(COORD_UNIT, 200);
    assert!(
        journal.contains("Watchdog timeout"),
        "no watchdog timeout in the journal:\n{journal}"
    );
    assert!(
        property(c, COORD_UNIT, "NRestarts")
            .parse::<u32>()
            .unwrap_or(0)
            >= 1
    );
    eprintln!("the watchdog restarted the frozen coordinator after {restarted_after:?}");
    wait_for(
        "a leader again after the restart",
        Duration::from_secs(60),
        || {
            let out = h.ctl(&["status"]);
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| describe(&out))
        },
        || h.logs(),
    );

    // Reload rotates certificates: new files, `systemctl reload`, a new connection sees the
    // new certificate; the daemon keeps its pid.
    let ip = match h.coordinator.ip() {
        std::net::IpAddr::V4(ip) => ip,
        other => panic!("not IPv4: {other}"),
    };
    for (unit, addr, subject) in [
        (
            COORD_UNIT,
            h.coordinator,
            Subject::coordinator(&format!("1@{ip}")),
        ),
        (AGENT_UNIT, h.agent, Subject::agent(&format!("web-1@{ip}"))),
    ] {
        let subject = subject.unwrap_or_else(|e| panic!("{e}"));
        let (cert, key) = subject.file_names();
        let old = der_of(&h.pki.join(&cert));
        assert_eq!(
            served_certificate(addr, &h.pki),
            Ok(old.clone()),
            "{unit} before"
        );
        for f in [&cert, &key] {
            std::fs::remove_file(h.pki.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
        pki_support::issue(&h.pki, &subject, Validity::days(30), &cert, &key);
        let new = der_of(&h.pki.join(&cert));
        assert_ne!(new, old);
        h.install_tls(&key);
        h.install_tls(&cert);
        let pid = property(c, unit, "MainPID");
        // Not yet: the daemon reads its files at start and on reload only.
        assert_eq!(
            served_certificate(addr, &h.pki),
            Ok(old),
            "{unit} before the reload"
        );
        c.systemctl_ok(&["reload", unit]);
        wait_for(
            &format!("{unit} to present its new certificate after `systemctl reload`"),
            Duration::from_secs(20),
            || match served_certificate(addr, &h.pki) {
                Ok(der) if der == new => Ok(()),
                Ok(_) => Err("still the old certificate".into()),
                Err(e) => Err(e),
            },
            || h.logs(),
        );
        assert_eq!(
            property(c, unit, "MainPID"),
            pid,
            "{unit} restarted on reload"
        );
        assert_eq!(c.unit_state(unit).0, "active", "{unit} after reload");
        eprintln!("{unit}: `systemctl reload` rotated the certificate ({addr})");
    }

    // systemd mode: the agent restarts another unit with `systemctl`. The unit as shipped
    // (user hotdeploy) cannot; with the root drop-in from the package's examples it can. The
    // agent is stood in for by a shell that does just that, under the same unit and sandbox.
    c.systemctl_ok(&["stop", AGENT_UNIT]);
    c.write_file(
        "/etc/systemd/system/hd-app.service",
        b"[Service]\nExecStart=/bin/sleep infinity\n",
        0o644,
    );
    c.write_file(
        &format!("/etc/systemd/system/{AGENT_UNIT}.d/zz-stand-in.conf"),
        b"[Service]\nExecStart=\nExecStart=/bin/sh -c 'systemctl restart hd-app.service && \
          systemd-notify --ready && exec sleep infinity'\nNotifyAccess=all\nTimeoutStartSec=30\n",
        0o644,
    );
    c.systemctl_ok(&["daemon-reload"]);
    c.systemctl_ok(&["start", "hd-app.service"]);
    let out = c.systemctl(&["start", AGENT_UNIT]);
    assert!(
        !out.status.success(),
        "the shipped agent unit (user hotdeploy) restarted another unit: {}",
        describe(&out)
    );
    let journal = c.journal(AGENT_UNIT, 20);
    assert!(journal.contains("NOPERMISSION"), "{journal}");
    let out = c.sh(&format!(
        "install -D -m 644 /usr/share/doc/hotdeploy/examples/hotdeploy-agent-root.conf \
         /etc/systemd/system/{AGENT_UNIT}.d/root.conf && systemctl daemon-reload && \
         systemctl reset-failed {AGENT_UNIT}"
    ));
    assert!(
        out.status.success(),
        "installing the root drop-in: {}",
        describe(&out)
    );
    let app_pid = property(c, "hd-app.service", "MainPID");
    let out = c.systemctl(&["start", AGENT_UNIT]);
    assert!(
        out.status.success(),
        "with the root drop-in: {}\n{}",
        describe(&out),
        c.journal(AGENT_UNIT, 20)
    );
    assert_ne!(
        property(c, "hd-app.service", "MainPID"),
        app_pid,
        "hd-app not restarted"
    );
    assert_eq!(
        property(c, AGENT_UNIT, "CapabilityBoundingSet"),
        "",
        "no capabilities"
    );
    eprintln!("the root drop-in lets the agent's unit restart another unit, with no capabilities");
}
