//! `hotdeployctl snapshot save FILE`: back up the replicated state (disaster recovery).
//!
//! The leader reads the state at a linearizable point (`SaveSnapshot`); the CLI writes it with
//! a header naming the cluster, index, term and time (`crate::recovery::SnapshotFile`),
//! atomically and with mode 0600. `hotdeploy-coordinator restore --from FILE` rebuilds a
//! one-node cluster from it.

use super::client::Coord;
use super::output::print;
use super::GlobalOpts;
use crate::recovery::{sha256_hex, Header, SnapshotFile, FILE_FORMAT, MAX_FILE_BYTES};
use clap::Subcommand;
use hotdeploy_common::proto::SaveSnapshotRequest;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Save the replicated state to FILE (mode 0600, written atomically), for
    /// `hotdeploy-coordinator restore --from FILE`.
    Save { file: PathBuf },
}

pub async fn run(cmd: SnapshotCmd, opts: &GlobalOpts) -> anyhow::Result<i32> {
    let coord = Coord::new(opts)?;
    match cmd {
        SnapshotCmd::Save { file } => {
            let r = coord
                .call("snapshot save", Duration::ZERO, |c| async move {
                    c.max_decoding_message_size(MAX_FILE_BYTES as usize)
                        .save_snapshot(SaveSnapshotRequest {})
                        .await
                })
                .await?;
            let taken_at = humantime::format_rfc3339_seconds(
                UNIX_EPOCH + Duration::from_millis(r.taken_at_ms),
            )
            .to_string();
            let header = Header {
                format: FILE_FORMAT,
                cluster_id: format!("{:016x}", r.cluster_id),
                index: r.index,
                term: r.term,
                taken_at_ms: r.taken_at_ms,
                taken_at: taken_at.clone(),
                node: r.node,
                state_format: r.state_format,
                command_format: r.command_format,
                length: r.state.len() as u64,
                sha256: sha256_hex(&r.state),
            };
            let snapshot = SnapshotFile {
                header: header.clone(),
                state: r.state,
            };
            snapshot.write(&file)?;
            print(
                opts.output,
                &json!({
                    "file": file.display().to_string(),
                    "cluster_id": header.cluster_id,
                    "index": header.index,
                    "term": header.term,
                    "taken_at_ms": header.taken_at_ms,
                    "node": header.node,
                    "command_format": header.command_format,
                    "bytes": header.length,
                    "sha256": header.sha256,
                }),
                &["file", "cluster", "index", "term", "taken at", "bytes"],
                vec![vec![
                    file.display().to_string(),
                    header.cluster_id.clone(),
                    header.index.to_string(),
                    header.term.to_string(),
                    taken_at,
                    header.length.to_string(),
                ]],
            );
        }
    }
    Ok(0)
}
