//! A coordinator client for the CLI: tries each endpoint in turn and follows leader hints.
//!
//! Writes carry a `(client_id, seq)` made once per command, so a retry at another node after a
//! leader change is applied at most once. UNAVAILABLE is retried (no leader, not the leader,
//! connection refused), and so is ABORTED (another membership change is in progress: raft takes
//! one at a time), after a short pause; every other status is the answer.

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
/// Pause before retrying an ABORTED call (a membership change still being applied).
const ABORTED_PAUSE: Duration = Duration::from_millis(200);

pub struct Coord {
    endpoints: Vec<String>,
    opts: GlobalOpts,
    client_id: String,
    seq: AtomicU64,
}

/// How a refused client certificate looks from the client. Under TLS 1.3 the server judges the
/// client certificate after the client considers the handshake done, so the client sees either
/// the server's alert or, if the connection closes first, only the closing.
const HANDSHAKE_REFUSAL_SIGNS: &[&str] = &[
    "fatal alert",
    "connection closed",
    "broken pipe",
    "tls handshake eof",
];

/// A failed call: the last status seen, with the causes of a transport error (a refused TLS
/// handshake says why only down there: "received fatal alert: CertificateRevoked").
pub fn status_error(what: &str, s: &Status) -> anyhow::Error {
    let mut text = s.message().to_string();
    let mut next = std::error::Error::source(s);
    while let Some(e) = next {
        let cause = e.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        next = e.source();
    }
    if HANDSHAKE_REFUSAL_SIGNS
        .iter()
        .any(|sign| text.contains(sign))
    {
        text.push_str(
            "; if this persists, the server may be refusing this client's certificate \
             (expired, revoked, from another CA, or none): its log names the reason",
        );
    }
    anyhow!("{what}: {text} ({:?})", s.code())
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
                Ok(Err(s)) if s.code() == Code::Aborted => {
                    tracing::debug!("{what}: {}; retrying", s.message());
                    hint = Some(addr);
                    last = Some(s);
                    tokio::time::sleep(ABORTED_PAUSE).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn opts() -> GlobalOpts {
        GlobalOpts {
            endpoints: vec!["127.0.0.1:1".into()],
            ca: None,
            cert: None,
            key: None,
            insecure: true,
            output: Default::default(),
        }
    }

    /// "another membership change is in progress" (ABORTED) is retried until it goes through;
    /// a deterministic refusal is not.
    #[tokio::test]
    async fn aborted_calls_are_retried() {
        let coord = Coord::new(&opts()).unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let answer = coord
            .call("members add", Duration::ZERO, |_client| {
                let calls = calls.clone();
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                        Err(Status::aborted(
                            "another membership change is in progress; retry once it has applied",
                        ))
                    } else {
                        Ok(Response::new(7u32))
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(answer, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        let refused = coord
            .call("members remove", Duration::ZERO, |_client| async {
                Err::<Response<u32>, _>(Status::failed_precondition("no quorum left"))
            })
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("no quorum left"), "{refused}");
    }
}
