//! `hotdeployctl agent --address HOST:PORT ...`: one agent's local API.
//!
//! `status`, `releases`, `drain`, `undrain`, `rollback`, `deploy` and `maint`. Deploy and rollback print
//! each progress message to stderr as it streams in and wait for the end: the exit code is 0
//! only when the outcome is `succeeded`, and 1 for anything else (a staging error, a refused
//! slot, a verify that was rolled back, a fenced deploy, a lost connection). `maint` streams the
//! same way and exits 0 only for `succeeded` (a failed command, a failed verify, no slot: 1).
//! The CLI only talks
//! to the running daemon; it never opens the agent's data_dir.

use super::{channel_to, GlobalOpts, Output};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hotdeploy_common::maint_progress;
use hotdeploy_common::proto::agent_client::AgentClient;
use hotdeploy_common::proto::{
    AgentStatus, AgentStatusRequest, DeployProgress, DeployRequest, DrainRequest, Health,
    ListReleasesRequest, Outcome, Release, RollbackRequest, Rotation, UndrainRequest,
};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// `hotdeployctl agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent's gRPC address, host:port.
    #[arg(long)]
    pub address: String,
    #[command(subcommand)]
    pub command: AgentCommand,
}

/// What to ask the agent.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Health, rotation, releases, deploy phase and slot of the host.
    Status,
    /// The releases in the host's store.
    Releases,
    /// Take the host out of rotation (under a slot when coordinators are configured).
    Drain,
    /// Return the host to rotation and release its slot.
    Undrain,
    /// Swap the previous release back in; waits for the end.
    Rollback,
    /// Deploy one release to this host; waits for the end.
    Deploy(DeployArgs),
    /// Maintenance without a release: the agent takes a slot, drains, runs CMD on its host,
    /// verifies, undrains and releases; waits for the end.
    Maint(MaintArgs),
}

/// `agent maint`.
#[derive(Debug, Args)]
pub struct MaintArgs {
    /// Why (shown in `locks list`).
    #[arg(long)]
    pub reason: String,
    /// Kill CMD if it runs longer ("30m"); no limit by default.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// The command and its arguments, after `--`, run by the agent on its host.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// `agent deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Release id ([A-Za-z0-9._-]{1,64}).
    #[arg(long)]
    pub release: String,
    /// file:///path, http:// or https:// URL of the .tar, .tar.gz or .tar.zst artifact.
    #[arg(long)]
    pub artifact: String,
    /// Hex sha256 of the artifact.
    #[arg(long)]
    pub sha256: String,
    /// A file holding the base64 ed25519 signature.
    #[arg(long)]
    pub signature: Option<PathBuf>,
}

/// Runs `hotdeployctl agent ...`; returns the exit code.
pub async fn run(args: AgentArgs, global: &GlobalOpts) -> anyhow::Result<i32> {
    let channel = channel_to(&args.address, global)?;
    let mut client = AgentClient::new(channel);
    let addr = args.address.as_str();
    match args.command {
        AgentCommand::Status => {
            let s = client
                .status(AgentStatusRequest {})
                .await
                .map_err(|s| super::client::status_error(&format!("status of agent {addr}"), &s))?
                .into_inner();
            print_status(&s, global.output);
            Ok(0)
        }
        AgentCommand::Releases => {
            let r = client
                .list_releases(ListReleasesRequest {})
                .await
                .map_err(|s| super::client::status_error(&format!("releases of agent {addr}"), &s))?
                .into_inner();
            match global.output {
                Output::Json => {
                    let v: Vec<_> = r
                        .releases
                        .iter()
                        .map(|r| {
                            json!({"id": r.id, "current": r.current, "previous": r.previous,
                                   "staged_at_ms": r.staged_at_ms})
                        })
                        .collect();
                    println!("{}", serde_json::Value::Array(v));
                }
                Output::Table => {
                    let mut t = table(&["RELEASE", "CURRENT", "PREVIOUS", "STAGED_AT_MS"]);
                    for r in &r.releases {
                        t.add_row(vec![
                            r.id.clone(),
                            mark(r.current),
                            mark(r.previous),
                            r.staged_at_ms.to_string(),
                        ]);
                    }
                    println!("{t}");
                }
            }
            Ok(0)
        }
        AgentCommand::Drain => {
            let s = client
                .drain(DrainRequest {})
                .await
                .map_err(|s| super::client::status_error(&format!("drain of agent {addr}"), &s))?
                .into_inner();
            print_status(&s, global.output);
            Ok(0)
        }
        AgentCommand::Undrain => {
            let s = client
                .undrain(UndrainRequest {})
                .await
                .map_err(|s| super::client::status_error(&format!("undrain of agent {addr}"), &s))?
                .into_inner();
            print_status(&s, global.output);
            Ok(0)
        }
        AgentCommand::Rollback => {
            let stream = client
                .rollback(RollbackRequest {})
                .await
                .map_err(|s| super::client::status_error(&format!("rollback on agent {addr}"), &s))?
                .into_inner();
            follow(stream, global.output, "rollback").await
        }
        AgentCommand::Deploy(d) => {
            let signature = match &d.signature {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read signature file {}", path.display()))?
                    .trim()
                    .to_owned(),
                None => String::new(),
            };
            let req = DeployRequest {
                release: Some(Release {
                    id: d.release.clone(),
                    artifact_url: d.artifact.clone(),
                    sha256: d.sha256.trim().to_ascii_lowercase(),
                    signature,
                }),
                rollout_id: String::new(),
            };
            let stream = client
                .deploy(req)
                .await
                .map_err(|s| {
                    super::client::status_error(
                        &format!("deploy of {} on agent {addr}", d.release),
                        &s,
                    )
                })?
                .into_inner();
            follow(stream, global.output, "deploy").await
        }
        AgentCommand::Maint(m) => {
            let req = maint_progress::request(m.reason, m.cmd, m.timeout);
            let mut stream = client
                .run_maintenance(req)
                .await
                .map_err(|s| {
                    super::client::status_error(&format!("maintenance on agent {addr}"), &s)
                })?
                .into_inner();
            let last =
                maint_progress::follow(&mut stream, |p| eprintln!("[{}] {}", p.step, p.message))
                    .await
                    .map_err(anyhow::Error::msg)?;
            match global.output {
                Output::Json => println!("{}", maint_progress::to_json(&last)),
                Output::Table => println!("{}", maint_progress::to_text(&last)),
            }
            Ok(maint_progress::exit_code(&last))
        }
    }
}

/// Prints progress to stderr until the last message; 0 only for `succeeded`.
async fn follow(
    mut stream: tonic::Streaming<DeployProgress>,
    output: Output,
    what: &str,
) -> anyhow::Result<i32> {
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => bail!("the agent closed the {what} stream before it ended"),
            Err(s) => bail!(
                "{what} stream broken: {}: {}",
                code_name(s.code()),
                s.message()
            ),
        };
        if !msg.done {
            eprintln!("[{}] {}", msg.phase, msg.message);
            continue;
        }
        let outcome = Outcome::try_from(msg.outcome).unwrap_or(Outcome::Unspecified);
        let label = outcome_label(outcome);
        match output {
            Output::Json => println!(
                "{}",
                json!({"outcome": label, "error": msg.error,
                       "out_of_rotation_ms": msg.out_of_rotation_ms})
            ),
            Output::Table => {
                if msg.error.is_empty() {
                    println!("{what} {label}");
                } else {
                    println!("{what} {label}: {}", msg.error);
                }
                if msg.out_of_rotation_ms > 0 {
                    println!(
                        "out of rotation for {}",
                        humantime::format_duration(Duration::from_millis(msg.out_of_rotation_ms))
                    );
                }
            }
        }
        return Ok(if outcome == Outcome::Succeeded { 0 } else { 1 });
    }
}

fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::RolledBack => "rolled_back",
        Outcome::Fenced => "fenced",
        Outcome::Unspecified => "unknown",
    }
}

fn code_name(c: tonic::Code) -> String {
    format!("{c:?}")
}

fn print_status(s: &AgentStatus, output: Output) {
    let health = Health::try_from(s.health)
        .unwrap_or(Health::Unspecified)
        .label();
    let rotation = Rotation::try_from(s.rotation)
        .unwrap_or(Rotation::Unspecified)
        .label();
    let opt = |v: &str| {
        if v.is_empty() {
            None
        } else {
            Some(v.to_owned())
        }
    };
    match output {
        Output::Json => println!(
            "{}",
            json!({
                "host": s.host,
                "groups": s.groups,
                "health": health,
                "state": rotation,
                "current": opt(&s.current),
                "previous": opt(&s.previous),
                "phase": s.phase,
                "last_outcome": opt(&s.last_outcome),
                "last_error": opt(&s.last_error),
                "slot_token": if s.slot_token == 0 { None } else { Some(s.slot_token) },
                "service_pid": if s.service_pid == 0 { None } else { Some(s.service_pid) },
                "maintenance": s.maintenance,
                "coordinator_connected": s.coordinator_connected,
            })
        ),
        Output::Table => {
            let dash = |v: &str| {
                if v.is_empty() {
                    "-".to_owned()
                } else {
                    v.to_owned()
                }
            };
            let mut t = table(&["FIELD", "VALUE"]);
            for (k, v) in [
                ("host", s.host.clone()),
                ("groups", dash(&s.groups.join(","))),
                ("health", health.to_owned()),
                ("state", rotation.to_owned()),
                ("current", dash(&s.current)),
                ("previous", dash(&s.previous)),
                ("phase", s.phase.clone()),
                ("last_outcome", dash(&s.last_outcome)),
                ("last_error", dash(&s.last_error)),
                (
                    "slot_token",
                    if s.slot_token == 0 {
                        "-".into()
                    } else {
                        s.slot_token.to_string()
                    },
                ),
                (
                    "service_pid",
                    if s.service_pid == 0 {
                        "-".into()
                    } else {
                        s.service_pid.to_string()
                    },
                ),
                ("maintenance", s.maintenance.to_string()),
                ("coordinator_connected", s.coordinator_connected.to_string()),
            ] {
                t.add_row(vec![k.to_owned(), v]);
            }
            println!("{t}");
        }
    }
}

fn mark(b: bool) -> String {
    if b {
        "*".into()
    } else {
        String::new()
    }
}

fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(header.to_vec());
    t
}
