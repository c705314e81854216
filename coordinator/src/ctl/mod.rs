//! `hotdeployctl`: the operator's command line (DESIGN §6).
//!
//! Every subcommand but `certs` and `release` (local files only) talks to a running daemon over
//! gRPC; none opens a data_dir. Output is a table for people or, with `-o json`, the stable JSON
//! documented in docs/api.md. Exit codes: 0 success, 1 failure, 2 usage (clap's own), 3 a
//! watched rollout that halted or was aborted.

pub mod agent;
mod audit;
mod certs;
mod client;
mod connect;
mod groups;
mod hosts;
mod locks;
mod members;
mod output;
mod release;
mod rollout;
mod snapshot;
mod status;

pub use connect::{channel_to, GlobalOpts, Output};

use clap::{Parser, Subcommand};

/// The whole command line.
#[derive(Debug, Parser)]
#[command(name = "hotdeployctl", version, about = "Operate a hotdeploy fleet")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Leader, term, members, groups (budget/used), host counts.
    Status,
    /// Coordinator cluster membership.
    #[command(subcommand)]
    Members(members::MembersCmd),
    /// Registered hosts.
    #[command(subcommand)]
    Hosts(hosts::HostsCmd),
    /// Groups and their disruption budgets.
    #[command(subcommand)]
    Groups(groups::GroupsCmd),
    /// Slots of the deploy lock.
    #[command(subcommand)]
    Locks(locks::LocksCmd),
    /// Rollouts: upgrade a whole group to a release, a budget's worth of hosts at a time.
    #[command(subcommand)]
    Rollout(rollout::RolloutCmd),
    /// The replicated audit trail of operator actions.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Back up the replicated state (disaster recovery).
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Talk to one agent's local API.
    Agent(agent::AgentArgs),
    /// The mTLS PKI: a CA and role certificates (no daemon is contacted).
    #[command(subcommand)]
    Certs(certs::CertsCmd),
    /// Release signing keys and signatures (no daemon is contacted).
    #[command(subcommand)]
    Release(release::ReleaseCmd),
}

/// Runs the command line and returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Status => status::run(&cli.global).await,
        Command::Members(c) => members::run(c, &cli.global).await,
        Command::Hosts(c) => hosts::run(c, &cli.global).await,
        Command::Groups(c) => groups::run(c, &cli.global).await,
        Command::Locks(c) => locks::run(c, &cli.global).await,
        Command::Rollout(c) => rollout::run(c, &cli.global).await,
        Command::Audit(c) => audit::run(c, &cli.global).await,
        Command::Snapshot(c) => snapshot::run(c, &cli.global).await,
        Command::Agent(args) => agent::run(args, &cli.global).await,
        Command::Certs(c) => certs::run(c, &cli.global),
        Command::Release(c) => release::run(c, &cli.global),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
