//! `hotdeployctl certs init DIR [--coordinator ID@HOST ...] [--agent HOST_ID[@HOST] ...]
//! [--operator NAME]`: a CA and the certificates of a fleet (DESIGN §7).
//!
//! The work is `hotdeploy_common::tls_pki::init_dir`: roles in SAN URIs, the HOST as an IP or
//! DNS SAN, keys created with mode 0600, and no file ever overwritten. A directory that already
//! holds `ca.pem` and `ca-key.pem` keeps its CA, which then issues the new certificates (to add
//! a host later); the operator certificate is then written only if `--operator` is given.
//!
//! `hotdeployctl certs revoke DIR CERT...` adds certificates to `DIR/crl.pem`
//! (`hotdeploy_common::tls_crl`); daemons with `[tls] crl` pointing at it refuse them after a
//! SIGHUP (or a restart).

use super::output::print;
use super::GlobalOpts;
use anyhow::Context;
use clap::{Args, Subcommand};
use hotdeploy_common::tls_crl;
use hotdeploy_common::tls_pki::{self, InitSpec, Subject};
use serde_json::json;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Write a CA (unless DIR has one) and coordinator, agent and operator certificates.
    Init(InitArgs),
    /// Revoke certificates: add them to DIR/crl.pem, signed by DIR's CA.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The PKI directory (holds ca.pem and ca-key.pem; crl.pem is written there).
    pub dir: PathBuf,
    /// Certificate PEM files to revoke.
    #[arg(required = true, value_name = "CERT")]
    pub certs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory for the PEM files (created if needed).
    pub dir: PathBuf,
    /// A coordinator, as ID@HOST (HOST: the IP address or DNS name clients dial). Repeatable.
    #[arg(long = "coordinator", value_name = "ID@HOST")]
    pub coordinators: Vec<String>,
    /// An agent, as HOST_ID or HOST_ID@HOST (HOST: the address hotdeployctl dials). Repeatable.
    #[arg(long = "agent", value_name = "HOST_ID[@HOST]")]
    pub agents: Vec<String>,
    /// The operator's name, in `hotdeploy://operator/NAME` [admin].
    #[arg(long, value_name = "NAME")]
    pub operator: Option<String>,
}

pub fn run(cmd: CertsCmd, opts: &GlobalOpts) -> anyhow::Result<i32> {
    match cmd {
        CertsCmd::Init(args) => init(args, opts),
        CertsCmd::Revoke(args) => revoke(args, opts),
    }
}

fn revoke(args: RevokeArgs, opts: &GlobalOpts) -> anyhow::Result<i32> {
    let done = tls_crl::revoke(&args.dir, &args.certs)
        .with_context(|| format!("certs revoke {}", args.dir.display()))?;
    let j = json!({
        "crl": done.crl.display().to_string(),
        "revoked": done.added,
        "total": done.total,
    });
    let rows = done.added.iter().map(|s| vec![s.clone()]).collect();
    print(opts.output, &j, &["revoked serial"], rows);
    if opts.output != super::connect::Output::Json {
        eprintln!(
            "{} now lists {} certificate(s); send SIGHUP to the daemons to apply it",
            done.crl.display(),
            done.total
        );
    }
    Ok(0)
}

fn init(args: InitArgs, opts: &GlobalOpts) -> anyhow::Result<i32> {
    let mut subjects = Vec::new();
    for c in &args.coordinators {
        subjects.push(Subject::coordinator(c)?);
    }
    for a in &args.agents {
        subjects.push(Subject::agent(a)?);
    }
    let has_ca = args.dir.join(tls_pki::CA_CERT_FILE).exists();
    match (&args.operator, has_ca) {
        (Some(name), _) => subjects.push(Subject::operator(name)?),
        (None, false) => subjects.push(Subject::operator("admin")?),
        (None, true) => {}
    }
    if subjects.is_empty() {
        anyhow::bail!(
            "{} already has a CA and nothing new was asked for: name certificates with \
             --coordinator, --agent or --operator",
            args.dir.display()
        );
    }
    let written = tls_pki::init_dir(&args.dir, &InitSpec { subjects })
        .with_context(|| format!("certs init {}", args.dir.display()))?;
    let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    let j = json!({"dir": args.dir.display().to_string(), "written": files});
    let rows = files.iter().map(|f| vec![f.clone()]).collect();
    print(opts.output, &j, &["written"], rows);
    Ok(0)
}
