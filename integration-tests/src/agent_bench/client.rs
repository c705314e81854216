//! One Deploy over the agent's gRPC API, keeping every progress message.
//!
//! `hotdeployctl agent deploy -o json` prints only the outcome and `out_of_rotation_ms`. The
//! agent streams more: a `DeployProgress` when each phase is entered (`staging`, `staged`,
//! `draining`, `swapped`, `restarted`, `verifying`, `undraining`, `released`) and notes within
//! phases (`out of rotation (drain took N ms)`, probe results, `back in rotation (took N ms)`),
//! each stamped with the agent's wall clock `at_ms`. [`deploy`] calls
//! `hotdeploy_common::proto::agent_client::AgentClient::deploy` directly and returns them all,
//! so the benches compute per-phase durations from the agent's own timestamps.

use hotdeploy_common::proto::agent_client::AgentClient;
use hotdeploy_common::proto::{DeployProgress, DeployRequest, Release};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;

/// A finished deploy as the stream told it.
#[derive(Debug, Clone)]
pub struct DeployTrace {
    /// Every message, in order.
    pub messages: Vec<DeployProgress>,
    /// The last (`done`) message.
    pub done: DeployProgress,
    /// Wall time of the call, as the client saw it.
    pub elapsed: Duration,
}

impl DeployTrace {
    /// `at_ms` of the first message of `phase` (the phase entry; notes come after it).
    pub fn entered(&self, phase: &str) -> Option<u64> {
        self.messages
            .iter()
            .find(|m| m.phase == phase && !m.done)
            .map(|m| m.at_ms)
    }

    /// `at_ms` of the first message of `phase` whose text contains `needle`.
    pub fn note_at(&self, phase: &str, needle: &str) -> Option<u64> {
        self.note(phase, needle).map(|m| m.at_ms)
    }

    /// The first message of `phase` whose text contains `needle`.
    pub fn note(&self, phase: &str, needle: &str) -> Option<&DeployProgress> {
        self.messages
            .iter()
            .find(|m| m.phase == phase && m.message.contains(needle))
    }

    /// The number after `took ` in a note such as `drain took 12 ms` / `(took 3 ms)`.
    pub fn took_ms(&self, phase: &str) -> Option<f64> {
        let m = self.note(phase, "took ")?;
        let after = &m.message[m.message.find("took ")? + 5..];
        after.split_whitespace().next()?.parse().ok()
    }

    /// Messages of `phase` whose text contains `needle`.
    pub fn count(&self, phase: &str, needle: &str) -> usize {
        self.messages
            .iter()
            .filter(|m| m.phase == phase && m.message.contains(needle))
            .count()
    }

    /// Milliseconds from entering `a` to entering `b`.
    pub fn between(&self, a: &str, b: &str) -> Option<f64> {
        Some(self.entered(b)?.checked_sub(self.entered(a)?)? as f64)
    }

    /// Whether the deploy succeeded.
    pub fn succeeded(&self) -> bool {
        self.done.outcome == hotdeploy_common::proto::Outcome::Succeeded as i32
    }

    /// One line per message, for error reports.
    pub fn describe(&self) -> String {
        self.messages
            .iter()
            .map(|m| format!("  {} {} {}", m.at_ms, m.phase, m.message))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Deploys release `id` from `url` (sha256 `sha`) on the agent at `addr`, waiting at most
/// `timeout` for the stream to end.
pub fn deploy(
    addr: SocketAddr,
    id: &str,
    url: &str,
    sha: &str,
    timeout: Duration,
) -> anyhow::Result<DeployTrace> {
    let request = DeployRequest {
        release: Some(Release {
            id: id.to_string(),
            artifact_url: url.to_string(),
            sha256: sha.to_string(),
            signature: String::new(),
        }),
        rollout_id: String::new(),
    };
    let started = Instant::now();
    let run = async move {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await?;
        let mut client = AgentClient::new(channel);
        let mut stream = client.deploy(request).await?.into_inner();
        let mut messages = Vec::new();
        while let Some(msg) = stream.message().await? {
            let done = msg.done;
            messages.push(msg);
            if done {
                break;
            }
        }
        anyhow::Ok(messages)
    };
    let messages = crate::background::handle()
        .block_on(async { tokio::time::timeout(timeout, run).await })
        .map_err(|_| anyhow::anyhow!("deploy of {id} did not end within {timeout:?}"))??;
    let done =
        messages.last().filter(|m| m.done).cloned().ok_or_else(|| {
            anyhow::anyhow!("deploy of {id}: the stream ended without an outcome")
        })?;
    Ok(DeployTrace {
        messages,
        done,
        elapsed: started.elapsed(),
    })
}

/// Like [`deploy`], failing unless the outcome is `succeeded`.
pub fn deploy_ok(
    addr: SocketAddr,
    id: &str,
    url: &str,
    sha: &str,
    timeout: Duration,
) -> anyhow::Result<DeployTrace> {
    let trace = deploy(addr, id, url, sha, timeout)?;
    if !trace.succeeded() {
        anyhow::bail!(
            "deploy of {id} did not succeed: {}\n{}",
            trace.done.error,
            trace.describe()
        );
    }
    Ok(trace)
}
