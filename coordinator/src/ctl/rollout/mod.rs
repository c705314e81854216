//! `hotdeployctl rollout start|list|status|watch|pause|resume|abort` (DESIGN §6).
//!
//! - `start GROUP --release ID --artifact URL --sha256 HEX ...` starts a rollout and prints its
//!   id (or, with `-o json`, the `rollout status` object). Without `--id` the CLI makes one up
//!   before the first attempt, so a retry after a leader change is the same start.
//!   `--watch` then follows it.
//! - `list`, `status ID`: the rollouts, and one in full with what each host waits on.
//! - `watch ID`: progress bars on a terminal, plain lines otherwise (see `watch`).
//! - `pause ID`, `resume ID`, `abort ID [--rollback]`.
//!
//! Exit codes: 0 success; 1 failure; 2 usage (malformed arguments are caught by the parser:
//! a bad release id, sha256, URL, group or rollout id); `watch` and `start --watch` exit 0
//! only when the rollout completes, and 3 when it halts or is aborted.

mod show;
mod watch;

use super::client::Coord;
use super::output::print;
use super::{GlobalOpts, Output};
use anyhow::Context;
use clap::{Args, Subcommand};
use hotdeploy_common::proto::{
    AbortRolloutRequest, GetRolloutRequest, ListRolloutsRequest, PauseRolloutRequest, Release,
    ResumeRolloutRequest, RolloutInfo, StartRolloutRequest,
};
use serde_json::Value;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Start a rollout of a release to a group; prints its id.
    Start(StartArgs),
    /// Every rollout kept, oldest first.
    List,
    /// One rollout: its state, each host's phase, and what each waiting host waits on.
    Status { id: String },
    /// Follow a rollout until it ends (exit 0: completed; 3: halted or aborted).
    Watch { id: String },
    /// Stop admitting hosts; deploys under way finish.
    Pause { id: String },
    /// Go on with a paused rollout.
    Resume { id: String },
    /// Stop a rollout; with --rollback, also start a rollout of the previous release.
    Abort {
        id: String,
        #[arg(long)]
        rollback: bool,
    },
}

/// `rollout start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The group to upgrade.
    #[arg(value_parser = parse_group)]
    pub group: String,
    /// Release id ([A-Za-z0-9._-]{1,64}).
    #[arg(long, value_parser = parse_release)]
    pub release: String,
    /// file:///path, http:// or https:// URL of the .tar, .tar.gz or .tar.zst artifact.
    #[arg(long, value_parser = parse_url)]
    pub artifact: String,
    /// Hex sha256 of the artifact.
    #[arg(long, value_parser = parse_sha256)]
    pub sha256: String,
    /// A file holding the base64 ed25519 signature.
    #[arg(long)]
    pub signature: Option<PathBuf>,
    /// The rollout id (made up when not given); a start with the same id is the same start.
    #[arg(long, value_parser = parse_id)]
    pub id: Option<String>,
    /// The most hosts deploying at once (default and maximum: the group's budget).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: Option<u64>,
    /// How many hosts go first.
    #[arg(long, default_value_t = 0)]
    pub canary: u64,
    /// Pause after the canary hosts until `rollout resume`.
    #[arg(long)]
    pub pause_after_canary: bool,
    /// Failed hosts that halt the rollout [1].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_failures: Option<u64>,
    /// Leave a host that fails verify as it is (out of rotation, holding its slot).
    #[arg(long)]
    pub no_rollback: bool,
    /// Abort the active rollouts in the way instead of refusing.
    #[arg(long)]
    pub supersede: bool,
    /// Halt the rollout after this long without progress ["10m"].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub progress_deadline: Option<Duration>,
    /// Follow the rollout until it ends (exit 0: completed; 3: halted or aborted).
    #[arg(long)]
    pub watch: bool,
}

fn parse_group(s: &str) -> Result<String, String> {
    hotdeploy_common::names::check_group(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

fn parse_release(s: &str) -> Result<String, String> {
    hotdeploy_common::names::check_release(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

fn parse_id(s: &str) -> Result<String, String> {
    hotdeploy_common::names::check_rollout(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

fn parse_sha256(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "sha256 must be 64 hex digits, got {} characters",
            s.len()
        ))
    }
}

fn parse_url(s: &str) -> Result<String, String> {
    let ok = ["file:///", "http://", "https://"]
        .iter()
        .any(|p| s.len() > p.len() && s.starts_with(p));
    if ok && s.len() <= 4096 {
        Ok(s.to_string())
    } else {
        Err(
            "must be file:///ABSOLUTE/PATH, http://... or https://..., at most 4096 characters"
                .into(),
        )
    }
}

/// A rollout id for a start without `--id`: `<group>-<release>-<6 hex>`, or `r-<16 hex>`.
fn make_id(group: &str, release: &str) -> String {
    let named = format!(
        "{group}-{release}-{:06x}",
        rand::random::<u32>() & 0xff_ffff
    );
    if hotdeploy_common::names::check_rollout(&named).is_ok() {
        named
    } else {
        format!("r-{:016x}", rand::random::<u64>())
    }
}

/// Runs `hotdeployctl rollout ...`; returns the exit code.
pub async fn run(cmd: RolloutCmd, opts: &GlobalOpts) -> anyhow::Result<i32> {
    let coord = Coord::new(opts)?;
    match cmd {
        RolloutCmd::Start(a) => start(&coord, opts, a).await,
        RolloutCmd::List => {
            let r = coord
                .call("rollout list", Duration::ZERO, |mut c| async move {
                    c.list_rollouts(ListRolloutsRequest::default()).await
                })
                .await?;
            let j = Value::Array(r.rollouts.iter().map(show::summary_json).collect());
            let rows = r.rollouts.iter().map(show::summary_row).collect();
            print(opts.output, &j, &show::LIST_HEADERS, rows);
            Ok(0)
        }
        RolloutCmd::Status { id } => {
            let r = get(&coord, &id).await?;
            show_one(opts.output, &r);
            Ok(0)
        }
        RolloutCmd::Watch { id } => watch_and_exit(&coord, opts, &id).await,
        RolloutCmd::Pause { id } => {
            let w = coord.write_id();
            let r = coord
                .call("rollout pause", Duration::ZERO, |mut c| {
                    let req = PauseRolloutRequest {
                        write: Some(w.clone()),
                        id: id.clone(),
                    };
                    async move { c.pause_rollout(req).await }
                })
                .await?;
            show_one(opts.output, &r.rollout.unwrap_or_default());
            Ok(0)
        }
        RolloutCmd::Resume { id } => {
            let w = coord.write_id();
            let r = coord
                .call("rollout resume", Duration::ZERO, |mut c| {
                    let req = ResumeRolloutRequest {
                        write: Some(w.clone()),
                        id: id.clone(),
                    };
                    async move { c.resume_rollout(req).await }
                })
                .await?;
            show_one(opts.output, &r.rollout.unwrap_or_default());
            Ok(0)
        }
        RolloutCmd::Abort { id, rollback } => {
            let w = coord.write_id();
            let r = coord
                .call("rollout abort", Duration::ZERO, |mut c| {
                    let req = AbortRolloutRequest {
                        write: Some(w.clone()),
                        id: id.clone(),
                        rollback,
                    };
                    async move { c.abort_rollout(req).await }
                })
                .await?;
            let aborted = r.rollout.unwrap_or_default();
            match opts.output {
                Output::Json => {
                    let j = serde_json::json!({
                        "aborted": show::status_json(&aborted),
                        "rollback": r.rollback.as_ref().map(show::status_json),
                    });
                    print(opts.output, &j, &[], vec![]);
                }
                Output::Table => {
                    println!("{}", show::status_text(&aborted));
                    if let Some(rb) = &r.rollback {
                        println!("rolling back as rollout {}", rb.id);
                    }
                }
            }
            Ok(0)
        }
    }
}

async fn get(coord: &Coord, id: &str) -> anyhow::Result<RolloutInfo> {
    let r = coord
        .call("rollout status", Duration::ZERO, |mut c| {
            let req = GetRolloutRequest { id: id.to_string() };
            async move { c.get_rollout(req).await }
        })
        .await?;
    r.rollout
        .ok_or_else(|| anyhow::anyhow!("rollout status: the coordinator sent no rollout"))
}

fn show_one(output: Output, r: &RolloutInfo) {
    match output {
        Output::Json => print(output, &show::status_json(r), &[], vec![]),
        Output::Table => println!("{}", show::status_text(r)),
    }
}

async fn start(coord: &Coord, opts: &GlobalOpts, a: StartArgs) -> anyhow::Result<i32> {
    let signature = match &a.signature {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read signature file {}", path.display()))?
            .trim()
            .to_owned(),
        None => String::new(),
    };
    let id =
        a.id.clone()
            .unwrap_or_else(|| make_id(&a.group, &a.release));
    let req = StartRolloutRequest {
        write: Some(coord.write_id()),
        rollout_id: id.clone(),
        group: a.group.clone(),
        release: Some(Release {
            id: a.release.clone(),
            artifact_url: a.artifact.clone(),
            sha256: a.sha256.clone(),
            signature,
        }),
        batch: a.batch.unwrap_or(0),
        canary: a.canary,
        pause_after_canary: a.pause_after_canary,
        max_failures: a.max_failures.unwrap_or(0),
        auto_rollback: Some(!a.no_rollback),
        supersede: a.supersede,
        progress_deadline_ms: a
            .progress_deadline
            .map(|d| (d.as_millis() as u64).max(1))
            .unwrap_or(0),
    };
    let r = coord
        .call("rollout start", Duration::ZERO, |mut c| {
            let req = req.clone();
            async move { c.start_rollout(req).await }
        })
        .await?;
    let started = r.rollout.unwrap_or_default();
    if !a.watch {
        match opts.output {
            Output::Json => print(opts.output, &show::status_json(&started), &[], vec![]),
            Output::Table => println!("{}", started.id),
        }
        return Ok(0);
    }
    if opts.output == Output::Table {
        println!("rollout {} started", started.id);
    }
    watch_and_exit(coord, opts, &started.id).await
}

/// Follows the rollout, then prints the final state (JSON with `-o json`) and returns the
/// exit code.
async fn watch_and_exit(coord: &Coord, opts: &GlobalOpts, id: &str) -> anyhow::Result<i32> {
    let final_state = match opts.output {
        Output::Json => {
            let mut lines = watch::Lines::new(Box::new(std::io::stderr()));
            watch::follow(coord, id, &mut lines).await?
        }
        Output::Table if std::io::stdout().is_terminal() => {
            let mut bars = watch::Bars::new();
            watch::follow(coord, id, &mut bars).await?
        }
        Output::Table => {
            let mut lines = watch::Lines::new(Box::new(std::io::stdout()));
            watch::follow(coord, id, &mut lines).await?
        }
    };
    match opts.output {
        Output::Json => print(opts.output, &show::status_json(&final_state), &[], vec![]),
        Output::Table => {
            let state = show::state_of(final_state.state).label();
            let reason = if final_state.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", final_state.reason)
            };
            println!(
                "rollout {} {state}{reason} ({} succeeded, {} failed, {} pending)",
                final_state.id, final_state.succeeded, final_state.failed, final_state.pending
            );
        }
    }
    Ok(watch::exit_code(&final_state))
}
