//! Certificates for the security tests: `hotdeployctl certs ...` runs, and certificates that no
//! CLI flag makes (expired ones, extra operators, re-issued coordinators), issued from a
//! directory's CA with the same library the CLI uses.

#![allow(dead_code)] // Each test binary uses its own subset.

use hotdeploy_common::tls_pki::{self, Ca, Subject, Validity};
use hotdeploy_integration_tests::{bins, proc};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// `hotdeployctl ARGS` for the local subcommands (`certs`, `release`), bounded by 30 s.
pub fn ctl_local(args: &[&str]) -> Output {
    let mut command = Command::new(bins::ctl());
    command.args(args);
    proc::run_with_timeout(command, Duration::from_secs(30))
}

/// [`ctl_local`] that must succeed; returns its stdout.
pub fn ctl_local_ok(args: &[&str]) -> String {
    let out = ctl_local(args);
    assert!(
        out.status.success(),
        "hotdeployctl {}: exit {:?}\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `certs init DIR` with coordinator `i + 1` at `coordinators[i]` and the `agents` given as
/// `HOST_ID` or `HOST_ID@IP`.
pub fn init_fleet(dir: &Path, coordinators: &[Ipv4Addr], agents: &[String]) {
    let mut args: Vec<String> = vec!["certs".into(), "init".into(), dir.display().to_string()];
    for (i, ip) in coordinators.iter().enumerate() {
        args.push("--coordinator".into());
        args.push(format!("{}@{ip}", i + 1));
    }
    for a in agents {
        args.push("--agent".into());
        args.push(a.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ctl_local_ok(&args);
}

/// Issues `cert_name` + `key_name` into `dir` from `dir`'s CA, for `subject`, valid
/// `validity`. Files are created new (an existing one fails the test).
pub fn issue(dir: &Path, subject: &Subject, validity: Validity, cert_name: &str, key_name: &str) {
    let ca = Ca::load(&dir.join("ca.pem"), &dir.join("ca-key.pem"))
        .unwrap_or_else(|e| panic!("loading the CA: {e}"));
    let (cert, key) = ca
        .issue(subject, validity)
        .unwrap_or_else(|e| panic!("issuing {cert_name}: {e}"));
    tls_pki::write_new(&dir.join(key_name), &key, 0o600).unwrap_or_else(|e| panic!("{e}"));
    tls_pki::write_new(&dir.join(cert_name), &cert, 0o644).unwrap_or_else(|e| panic!("{e}"));
}
