//! `hotdeployctl locks list | acquire HOST --reason TEXT [--wait DUR] | release HOST [--force]`.
//!
//! An operator's `acquire` takes a maintenance slot for a host under the same budget as
//! deploys. `release` without `--force` releases the slot with its current token, as its holder
//! would; `--force` revokes it whoever holds it (the holder's token goes stale, fencing it).

use super::client::Coord;
use super::output::{age, dash, print};
use super::GlobalOpts;
use clap::Subcommand;
use hotdeploy_common::proto::{
    AcquireSlotRequest, ForceReleaseRequest, ListSlotsRequest, ReleaseSlotRequest, Slot,
};
use hotdeploy_common::time::now_ms;
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum LocksCmd {
    /// Every slot held, with its age.
    List,
    /// Take a maintenance slot for HOST.
    Acquire {
        host: String,
        #[arg(long)]
        reason: String,
        /// Wait up to this long for budget ("30s", "5m").
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<Duration>,
    },
    /// Release HOST's slot.
    Release {
        host: String,
        /// Revoke the slot whoever holds it.
        #[arg(long)]
        force: bool,
    },
}

pub(crate) fn slot_json(s: &Slot) -> Value {
    json!({
        "host": s.host,
        "groups": s.groups,
        "token": s.token,
        "purpose": s.purpose,
        "reason": s.reason,
        "rollout": if s.rollout.is_empty() { Value::Null } else { json!(s.rollout) },
        "granted_at_ms": s.granted_at_ms,
        "age_ms": now_ms().saturating_sub(s.granted_at_ms),
        "phase": s.phase,
    })
}

const HEADERS: [&str; 8] = [
    "host", "groups", "token", "purpose", "reason", "rollout", "phase", "age",
];

fn row(s: &Slot) -> Vec<String> {
    vec![
        s.host.clone(),
        s.groups.join(","),
        s.token.to_string(),
        s.purpose.clone(),
        dash(&s.reason),
        dash(&s.rollout),
        dash(&s.phase),
        age(now_ms().saturating_sub(s.granted_at_ms)),
    ]
}

async fn slots(coord: &Coord) -> anyhow::Result<Vec<Slot>> {
    let r = coord
        .call("locks list", Duration::ZERO, |mut c| async move {
            c.list_slots(ListSlotsRequest {}).await
        })
        .await?;
    Ok(r.slots)
}

pub async fn run(cmd: LocksCmd, opts: &GlobalOpts) -> anyhow::Result<i32> {
    let coord = Coord::new(opts)?;
    match cmd {
        LocksCmd::List => {
            let s = slots(&coord).await?;
            let j = Value::Array(s.iter().map(slot_json).collect());
            print(opts.output, &j, &HEADERS, s.iter().map(row).collect());
        }
        LocksCmd::Acquire { host, reason, wait } => {
            let w = coord.write_id();
            let wait = wait.unwrap_or_default();
            let r = coord
                .call("locks acquire", wait, |mut c| {
                    let req = AcquireSlotRequest {
                        write: Some(w.clone()),
                        host: host.clone(),
                        purpose: "maintenance".into(),
                        reason: reason.clone(),
                        rollout: String::new(),
                        wait_ms: wait.as_millis() as u64,
                        canary: false,
                        fence_draining: false,
                    };
                    async move { c.acquire_slot(req).await }
                })
                .await?;
            let s = r.slot.unwrap_or_default();
            print(opts.output, &slot_json(&s), &HEADERS, vec![row(&s)]);
        }
        LocksCmd::Release { host, force } => {
            let w = coord.write_id();
            let token = if force {
                let r = coord
                    .call("locks release --force", Duration::ZERO, |mut c| {
                        let req = ForceReleaseRequest {
                            write: Some(w.clone()),
                            host: host.clone(),
                        };
                        async move { c.force_release(req).await }
                    })
                    .await?;
                r.token
            } else {
                let Some(slot) = slots(&coord).await?.into_iter().find(|s| s.host == host) else {
                    anyhow::bail!("{host} holds no slot");
                };
                coord
                    .call("locks release", Duration::ZERO, |mut c| {
                        let req = ReleaseSlotRequest {
                            write: Some(w.clone()),
                            host: host.clone(),
                            token: slot.token,
                        };
                        async move { c.release_slot(req).await }
                    })
                    .await?;
                slot.token
            };
            print(
                opts.output,
                &json!({"host": host, "released_token": token}),
                &["host", "released token"],
                vec![vec![host.clone(), token.to_string()]],
            );
        }
    }
    Ok(0)
}
