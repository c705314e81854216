//! `hotdeployctl audit list`: the replicated trail of operator actions (budget changes, forced
//! releases, host removals, membership changes, maintenance slots), with the certificate
//! identity that asked for each.

use super::client::Coord;
use super::output::{dash, print};
use super::GlobalOpts;
use clap::Subcommand;
use hotdeploy_common::proto::ListAuditRequest;
use serde_json::{json, Value};
use std::time::{Duration, UNIX_EPOCH};

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Every recorded operator action, oldest first.
    List,
}

pub async fn run(cmd: AuditCmd, opts: &GlobalOpts) -> anyhow::Result<i32> {
    let coord = Coord::new(opts)?;
    match cmd {
        AuditCmd::List => {
            let r = coord
                .call("audit list", Duration::ZERO, |mut c| async move {
                    c.list_audit(ListAuditRequest {}).await
                })
                .await?;
            let j = Value::Array(
                r.events
                    .iter()
                    .map(|e| {
                        json!({"index": e.index, "at_ms": e.at_ms, "actor": e.actor,
                               "action": e.action, "detail": e.detail})
                    })
                    .collect(),
            );
            let rows = r
                .events
                .iter()
                .map(|e| {
                    let at = UNIX_EPOCH + Duration::from_millis(e.at_ms);
                    vec![
                        e.index.to_string(),
                        humantime::format_rfc3339_seconds(at).to_string(),
                        e.actor.clone(),
                        e.action.clone(),
                        dash(&e.detail),
                    ]
                })
                .collect();
            print(
                opts.output,
                &j,
                &["index", "at", "actor", "action", "detail"],
                rows,
            );
        }
    }
    Ok(0)
}
