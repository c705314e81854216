//! `hotdeployctl hosts list [--group G] | show HOST | remove HOST [--force]`.

use super::client::Coord;
use super::output::{age, dash, print};
use super::GlobalOpts;
use clap::Subcommand;
use hotdeploy_common::proto::{
    Health, HostInfo, HostKind, ListHostsRequest, Reachability, RemoveHostRequest, Rotation,
};
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum HostsCmd {
    /// Every host, or those of one group.
    List {
        #[arg(long)]
        group: Option<String>,
    },
    /// One host in detail.
    Show { host: String },
    /// Decommission a host that is gone for good (frees its slot). An agent host must be
    /// unreachable, unless --force; a lock-only (FleetLock) host needs no --force.
    Remove {
        host: String,
        #[arg(long)]
        force: bool,
    },
}

pub(crate) fn host_json(h: &HostInfo) -> Value {
    json!({
        "host": h.host,
        "groups": h.groups,
        "reachability": Reachability::try_from(h.reachability).unwrap_or_default().label(),
        "health": Health::try_from(h.health).unwrap_or_default().label(),
        "state": Rotation::try_from(h.rotation).unwrap_or_default().label(),
        "release": if h.release.is_empty() { Value::Null } else { json!(h.release) },
        "slot_token": if h.slot_token == 0 { Value::Null } else { json!(h.slot_token) },
        "last_seen_ms": h.last_seen_ms,
        "phase": h.phase,
        "address": h.address,
        "kind": HostKind::try_from(h.kind).unwrap_or_default().label(),
    })
}

fn row(h: &HostInfo) -> Vec<String> {
    vec![
        h.host.clone(),
        h.groups.join(","),
        Reachability::try_from(h.reachability)
            .unwrap_or_default()
            .label()
            .into(),
        Health::try_from(h.health)
            .unwrap_or_default()
            .label()
            .into(),
        Rotation::try_from(h.rotation)
            .unwrap_or_default()
            .label()
            .into(),
        dash(&h.release),
        if h.slot_token == 0 {
            "-".into()
        } else {
            h.slot_token.to_string()
        },
        h.last_seen_ms.map(age).unwrap_or_else(|| "-".into()),
        HostKind::try_from(h.kind)
            .unwrap_or_default()
            .label()
            .into(),
    ]
}

const HEADERS: [&str; 9] = [
    "host",
    "groups",
    "reachability",
    "health",
    "state",
    "release",
    "slot",
    "last seen",
    "kind",
];

async fn list(coord: &Coord, group: String, host: String) -> anyhow::Result<Vec<HostInfo>> {
    let r = coord
        .call("hosts list", Duration::ZERO, |mut c| {
            let req = ListHostsRequest {
                group: group.clone(),
                host: host.clone(),
            };
            async move { c.list_hosts(req).await }
        })
        .await?;
    Ok(r.hosts)
}

pub async fn run(cmd: HostsCmd, opts: &GlobalOpts) -> anyhow::Result<i32> {
    let coord = Coord::new(opts)?;
    match cmd {
        HostsCmd::List { group } => {
            let hosts = list(&coord, group.unwrap_or_default(), String::new()).await?;
            let j = Value::Array(hosts.iter().map(host_json).collect());
            print(opts.output, &j, &HEADERS, hosts.iter().map(row).collect());
        }
        HostsCmd::Show { host } => {
            let hosts = list(&coord, String::new(), host).await?;
            let Some(h) = hosts.first() else {
                anyhow::bail!("no such host")
            };
            print(opts.output, &host_json(h), &HEADERS, vec![row(h)]);
        }
        HostsCmd::Remove { host, force } => {
            let w = coord.write_id();
            coord
                .call("hosts remove", Duration::ZERO, |mut c| {
                    let req = RemoveHostRequest {
                        write: Some(w.clone()),
                        host: host.clone(),
                        force,
                    };
                    async move { c.remove_host(req).await }
                })
                .await?;
            print(
                opts.output,
                &json!({"removed": host}),
                &["removed"],
                vec![vec![host.clone()]],
            );
        }
    }
    Ok(0)
}
