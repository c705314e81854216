//! `hotdeployctl groups list | set GROUP [--max-unavailable N|P%] [--allow-zero-available B]`.

use super::client::Coord;
use super::output::{dash, print};
use super::status::group_json;
use super::GlobalOpts;
use clap::Subcommand;
use hotdeploy_common::proto::{GroupInfo, ListGroupsRequest, SetGroupPolicyRequest};
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum GroupsCmd {
    /// Every group with its budget and use.
    List,
    /// Create a group or change its policy (replicated; the config's [groups] no longer apply).
    Set {
        group: String,
        /// An integer ("2") or a percentage of the group's provisioned hosts ("25%").
        #[arg(long)]
        max_unavailable: Option<String>,
        /// Allow a grant that leaves the group with zero available hosts.
        #[arg(long, action = clap::ArgAction::Set)]
        allow_zero_available: Option<bool>,
    },
}

const HEADERS: [&str; 6] = [
    "group",
    "max_unavailable",
    "budget",
    "zero ok",
    "size",
    "unavailable / holders",
];

fn row(g: &GroupInfo) -> Vec<String> {
    vec![
        g.name.clone(),
        g.max_unavailable.clone(),
        g.budget.to_string(),
        g.allow_zero_available.to_string(),
        g.size.to_string(),
        format!("{} / {}", g.unavailable, dash(&g.holders.join(","))),
    ]
}

pub async fn run(cmd: GroupsCmd, opts: &GlobalOpts) -> anyhow::Result<i32> {
    let coord = Coord::new(opts)?;
    match cmd {
        GroupsCmd::List => {
            let r = coord
                .call("groups list", Duration::ZERO, |mut c| async move {
                    c.list_groups(ListGroupsRequest {}).await
                })
                .await?;
            let j = Value::Array(r.groups.iter().map(group_json).collect());
            print(
                opts.output,
                &j,
                &HEADERS,
                r.groups.iter().map(row).collect(),
            );
        }
        GroupsCmd::Set {
            group,
            max_unavailable,
            allow_zero_available,
        } => {
            if max_unavailable.is_none() && allow_zero_available.is_none() {
                anyhow::bail!(
                    "nothing to change: give --max-unavailable and/or --allow-zero-available"
                );
            }
            let w = coord.write_id();
            let r = coord
                .call("groups set", Duration::ZERO, |mut c| {
                    let req = SetGroupPolicyRequest {
                        write: Some(w.clone()),
                        group: group.clone(),
                        max_unavailable: max_unavailable.clone().unwrap_or_default(),
                        allow_zero_available,
                    };
                    async move { c.set_group_policy(req).await }
                })
                .await?;
            let g = r.group.unwrap_or_default();
            print(opts.output, &group_json(&g), &HEADERS, vec![row(&g)]);
        }
    }
    Ok(0)
}
