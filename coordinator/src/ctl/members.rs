//! `hotdeployctl members list | add ID HOST:PORT | remove ID`.

use super::client::Coord;
use super::output::print;
use super::GlobalOpts;
use clap::Subcommand;
use hotdeploy_common::proto::{AddMemberRequest, RemoveMemberRequest};
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum MembersCmd {
    /// The coordinator cluster's members.
    List,
    /// Add node ID at HOST:PORT: it joins as a learner and is promoted once caught up. Start it
    /// with initial_cluster_state = "existing".
    Add { id: u64, address: String },
    /// Remove node ID from the cluster.
    Remove { id: u64 },
}

/// Promotion waits for the learner to catch up; give the call time for it.
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(75);

pub async fn run(cmd: MembersCmd, opts: &GlobalOpts) -> anyhow::Result<i32> {
    let coord = Coord::new(opts)?;
    match cmd {
        MembersCmd::List => {
            // The leader's view: reachability and versions first-hand.
            let s = super::status::fetch(&coord).await?;
            let j = Value::Array(s.members.iter().map(super::status::member_json).collect());
            let rows = s
                .members
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        m.address.clone(),
                        m.role.clone(),
                        m.reachable.to_string(),
                        super::status::version_cell(m.format_version),
                    ]
                })
                .collect();
            print(
                opts.output,
                &j,
                &["id", "address", "role", "reachable", "version"],
                rows,
            );
        }
        MembersCmd::Add { id, address } => {
            coord
                .call("members add", MEMBERSHIP_WAIT, |mut c| {
                    let req = AddMemberRequest {
                        id,
                        address: address.clone(),
                    };
                    async move { c.add_member(req).await }
                })
                .await?;
            print(
                opts.output,
                &json!({"added": id, "address": address}),
                &["added", "address"],
                vec![vec![id.to_string(), address.clone()]],
            );
        }
        MembersCmd::Remove { id } => {
            coord
                .call("members remove", Duration::ZERO, |mut c| async move {
                    c.remove_member(RemoveMemberRequest { id }).await
                })
                .await?;
            print(
                opts.output,
                &json!({"removed": id}),
                &["removed"],
                vec![vec![id.to_string()]],
            );
        }
    }
    Ok(0)
}
