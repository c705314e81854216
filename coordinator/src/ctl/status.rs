//! `hotdeployctl status`: leader, term, members, groups (budget/used), host counts.

use super::client::Coord;
use super::output::{dash, print};
use super::GlobalOpts;
use hotdeploy_common::proto::{GroupInfo, Member, StatusRequest, StatusResponse};
use serde_json::{json, Value};
use std::time::Duration;

pub(crate) fn member_json(m: &Member) -> Value {
    json!({
        "id": m.id,
        "address": m.address,
        "role": m.role,
        "reachable": m.reachable,
        "format_version": version_json(m.format_version),
    })
}

/// A member's command format version: the number, or `null` when not known (0 on the wire).
fn version_json(v: u32) -> Value {
    if v == 0 {
        Value::Null
    } else {
        json!(v)
    }
}

/// A member's command format version in a table: the number, or `?`.
pub(crate) fn version_cell(v: u32) -> String {
    if v == 0 {
        "?".into()
    } else {
        v.to_string()
    }
}

pub(crate) fn group_json(g: &GroupInfo) -> Value {
    json!({
        "name": g.name,
        "max_unavailable": g.max_unavailable,
        "budget": g.budget,
        "allow_zero_available": g.allow_zero_available,
        "size": g.size,
        "unavailable": g.unavailable,
        "holders": g.holders,
    })
}

/// Asks any node, then the leader it names (whose view of member reachability is first-hand).
pub(crate) async fn fetch(coord: &Coord) -> anyhow::Result<StatusResponse> {
    let first = coord
        .call("status", Duration::ZERO, |mut c| async move {
            c.status(StatusRequest {}).await
        })
        .await?;
    if first.leader == 0 || first.leader == first.node {
        return Ok(first);
    }
    let Some(addr) = first
        .members
        .iter()
        .find(|m| m.id == first.leader)
        .map(|m| m.address.clone())
    else {
        return Ok(first);
    };
    let Ok(mut c) = coord.client(&addr) else {
        return Ok(first);
    };
    match tokio::time::timeout(Duration::from_secs(3), c.status(StatusRequest {})).await {
        Ok(Ok(r)) if r.get_ref().leader == first.leader => Ok(r.into_inner()),
        _ => Ok(first),
    }
}

pub async fn run(opts: &GlobalOpts) -> anyhow::Result<i32> {
    let coord = Coord::new(opts)?;
    let s = fetch(&coord).await?;
    let hosts = s.hosts.unwrap_or_default();
    let j = json!({
        "leader": if s.leader == 0 { Value::Null } else { json!(s.leader) },
        "term": s.term,
        "members": s.members.iter().map(member_json).collect::<Vec<_>>(),
        "groups": s.groups.iter().map(group_json).collect::<Vec<_>>(),
        "hosts": {
            "total": hosts.total,
            "in_rotation": hosts.in_rotation,
            "unreachable": hosts.unreachable,
            "lock_only": hosts.lock_only,
        },
        "commit_index": s.commit_index,
    });
    if opts.output == super::Output::Json {
        print(opts.output, &j, &[], vec![]);
        return Ok(0);
    }
    println!(
        "leader: {}   term: {}   commit: {}",
        if s.leader == 0 {
            "none".to_string()
        } else {
            s.leader.to_string()
        },
        s.term,
        s.commit_index
    );
    println!(
        "hosts: {} total, {} in rotation, {} unreachable, {} lock-only (FleetLock)",
        hosts.total, hosts.in_rotation, hosts.unreachable, hosts.lock_only
    );
    let rows = s
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.address.clone(),
                m.role.clone(),
                if m.reachable { "yes" } else { "no" }.into(),
                version_cell(m.format_version),
            ]
        })
        .collect();
    print(
        opts.output,
        &j,
        &["member", "address", "role", "reachable", "version"],
        rows,
    );
    let rows = s
        .groups
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                format!("{} ({})", g.budget, g.max_unavailable),
                g.allow_zero_available.to_string(),
                g.size.to_string(),
                format!("{}/{}", g.unavailable, g.budget),
                dash(&g.holders.join(",")),
            ]
        })
        .collect();
    print(
        opts.output,
        &j,
        &["group", "budget", "zero ok", "size", "used", "holders"],
        rows,
    );
    Ok(0)
}
