//! A coordinator client for the CLI: tries each endpoint in turn and follows leader hints.
//!
//! Writes carry a `(client_id, seq)` made once per command, so a retry at another node after a
//! leader change is applied at most once. Only UNAVAILABLE is retried (no leader, not the
//! leader, connection refused); every other status is the answer.

use super::GlobalOpts;
use anyhow::anyhow;
use hotdeploy_common::proto::coordinator_client::CoordinatorClient;
use hotdeploy_common::proto::{WriteId, LEADER_ADDRESS_KEY};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

/// How long a command keeps retrying through elections and unreachable endpoints.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// Deadline of one attempt (AcquireSlot with --wait gets its wait on top).
const ATTEMPT: Duration = Duration::from_secs(15);

pub struct Coord {
    endpoints: Vec<String>,
    opts: GlobalOpts,
    client_id: String,
    seq: AtomicU64,
}

/// A failed call: the last status seen.
pub fn status_error(what: &str, s: &Status) -> anyhow::Error {
    anyhow!("{what}: {} ({:?})", s.message(), s.code())
}

impl Coord {
    pub fn new(opts: &GlobalOpts) -> anyhow::Result<Self> {
        let endpoints: Vec<String> = opts
            .endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            anyhow::bail!(
                "no coordinator endpoints: use --endpoints HOST:PORT,... or HOTDEPLOY_ENDPOINTS"
            );
        }
        let client_id = format!("ctl-{:016x}", rand::random::<u64>());
        Ok(Self {
            endpoints,
            opts: opts.clone(),
            client_id,
            seq: AtomicU64::new(1),
        })
    }

    /// A fresh write id; reuse it for every retry of one write.
    pub fn write_id(&self) -> WriteId {
        WriteId {
            client_id: self.client_id.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn client(&self, addr: &str) -> anyhow::Result<CoordinatorClient<Channel>> {
        Ok(CoordinatorClient::new(super::channel_to(addr, &self.opts)?))
    }

    /// Calls `f` at the leader, following hints and trying each endpoint, until an answer
    /// other than UNAVAILABLE comes back or [`RETRY_FOR`] passes.
    pub async fn call<T, F, Fut>(&self, what: &str, extra: Duration, f: F) -> anyhow::Result<T>
    where
        F: Fn(CoordinatorClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + RETRY_FOR + extra;
        let mut next = 0usize;
        let mut hint: Option<String> = None;
        let mut last: Option<Status> = None;
        loop {
            let addr = match hint.take() {
                Some(h) => h,
                None => {
                    let a = self.endpoints[next % self.endpoints.len()].clone();
                    next += 1;
                    if next.is_multiple_of(self.endpoints.len()) && last.is_some() {
                        tokio::time::sleep(Duration::from_millis(150)).await;
                    }
                    a
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(match last {
                    Some(s) => status_error(what, &s),
                    None => anyhow!("{what}: no coordinator answered"),
                });
            }
            let client = self.client(&addr)?;
            match tokio::time::timeout(ATTEMPT + extra, f(client)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) if s.code() == Code::Unavailable => {
                    hint = s
                        .metadata()
                        .get(LEADER_ADDRESS_KEY)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                        .filter(|h| *h != addr);
                    last = Some(s);
                }
                Ok(Err(s)) => return Err(status_error(what, &s)),
                Err(_) => {
                    last = Some(Status::unavailable(format!(
                        "{addr} did not answer in time"
                    )))
                }
            }
        }
    }
}
