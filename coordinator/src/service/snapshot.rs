//! `SaveSnapshot`: the whole replicated state, for `hotdeployctl snapshot save` (disaster
//! recovery, `crate::recovery`).
//!
//! Served by the leader after a ReadIndex barrier, so the state includes every write
//! acknowledged before the call: a linearizable point. The state is serialized under the state
//! machine's read lock, in one piece, so it is the state at exactly one applied index (named in
//! the answer). It is a read: nothing goes into the log, and the call is logged as an audit line
//! on the leader.

use super::leader::read_barrier;
use crate::raft::RaftNode;
use crate::state::SNAPSHOT_FORMAT;
use hotdeploy_common::proto::SaveSnapshotResponse;
use hotdeploy_common::time::now_ms;
use tonic::Status;

pub(crate) async fn save(node: &RaftNode, actor: &str) -> Result<SaveSnapshotResponse, Status> {
    read_barrier(node).await?;
    let st = node.status();
    let (index, command_format, state) = {
        let s = node.state();
        let bytes = s
            .snapshot()
            .map_err(|e| Status::internal(format!("cannot serialize the state: {e}")))?;
        (s.applied_index(), s.format_version(), bytes)
    };
    tracing::info!(
        audit = true,
        %actor,
        index,
        term = st.term,
        bytes = state.len(),
        "state snapshot saved by an operator"
    );
    Ok(SaveSnapshotResponse {
        cluster_id: node.cluster_id(),
        index,
        term: st.term,
        node: st.id,
        taken_at_ms: now_ms(),
        state_format: SNAPSHOT_FORMAT,
        command_format,
        state,
    })
}
