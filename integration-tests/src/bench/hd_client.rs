//! A benchmark client for our coordinator's public gRPC API.
//!
//! [`HdClient`] is what one benchmark client is: one channel (one HTTP/2 connection) to one
//! node, a `client_id` of its own, and a `seq` counter, so every write carries a fresh
//! `WriteId{client_id, seq}` exactly as an agent's would. It registers pseudo-hosts (healthy,
//! in rotation, a release installed, so they count as provisioned and available) and performs
//! the measured operation: `AcquireSlot` (waiting up to `wait_ms` for its turn, as an agent's
//! does) then `ReleaseSlot` with the granted token.
//!
//! [`RetryingClient`] is the failover benchmark's client: it knows every endpoint, follows the
//! `x-hotdeploy-leader` hint a follower returns with UNAVAILABLE, and otherwise walks the
//! endpoints in turn. One logical write keeps its `WriteId` across retries, so a retry that
//! lands after the first attempt committed is answered from the state machine's dedup table.
//!
//! Every call has a deadline; nothing here loops without a bound.

use anyhow::{anyhow, Context, Result};
use hotdeploy_common::proto::coordinator_client::CoordinatorClient;
use hotdeploy_common::proto::{
    AcquireSlotRequest, Health, HostReport, RegisterRequest, ReleaseSlotRequest, Rotation,
    StatusRequest, StatusResponse, WriteId, LEADER_ADDRESS_KEY,
};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::{timeout, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// The deadline of one call in the steady-state benchmarks.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A lazily connecting plaintext channel to `addr` (the bench clusters run `insecure`).
pub fn channel(addr: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("bad address {addr:?}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// The report a healthy, in-rotation pseudo-host registers with.
pub fn healthy_report() -> HostReport {
    HostReport {
        health: Health::Healthy as i32,
        rotation: Rotation::InRotation as i32,
        release: "bench-r1".into(),
        phase: "idle".into(),
    }
}

/// `what: message (code)` for a failed call.
pub fn status_error(what: &str, s: &Status) -> anyhow::Error {
    anyhow!("{what}: {} ({:?})", s.message(), s.code())
}

/// One benchmark client bound to one node.
pub struct HdClient {
    client: CoordinatorClient<Channel>,
    client_id: String,
    seq: u64,
    acquire_wait_ms: u64,
}

impl HdClient {
    /// A client talking to `addr` as `client_id`.
    pub fn new(addr: SocketAddr, client_id: &str) -> Result<Self> {
        Ok(HdClient {
            client: CoordinatorClient::new(channel(&addr.to_string())?),
            client_id: client_id.to_string(),
            seq: 0,
            acquire_wait_ms: 0,
        })
    }

    /// Lets each `AcquireSlot` wait on the leader up to `ms` (its `wait_ms`), as an agent's
    /// does. The leader serves acquires first come, first served, so with concurrent clients
    /// a call that may not wait is refused while an earlier grant is still being committed.
    pub fn with_acquire_wait(mut self, ms: u64) -> Self {
        self.acquire_wait_ms = ms;
        self
    }

    fn next_write(&mut self) -> Option<WriteId> {
        self.seq += 1;
        Some(WriteId {
            client_id: self.client_id.clone(),
            seq: self.seq,
        })
    }

    /// Registers `host` in `groups`, healthy and in rotation.
    pub async fn register(&mut self, host: &str, groups: &[String]) -> Result<()> {
        let req = RegisterRequest {
            write: self.next_write(),
            host: host.to_string(),
            groups: groups.to_vec(),
            report: Some(healthy_report()),
            address: String::new(),
        };
        let what = format!("register {host}");
        call(&what, self.client.register(req)).await.map(drop)
    }

    /// `AcquireSlot` for `host` (purpose `maintenance`, no waiting); returns the token.
    pub async fn acquire(&mut self, host: &str) -> Result<u64> {
        let req = acquire_request(self.next_write(), host, self.acquire_wait_ms);
        let what = format!("acquire {host}");
        let slot = call(&what, self.client.acquire_slot(req)).await?.slot;
        slot.map(|s| s.token)
            .ok_or_else(|| anyhow!("{what}: the answer carries no slot"))
    }

    /// `ReleaseSlot` of `host`'s slot `token`.
    pub async fn release(&mut self, host: &str, token: u64) -> Result<()> {
        let req = ReleaseSlotRequest {
            write: self.next_write(),
            host: host.to_string(),
            token,
        };
        let what = format!("release {host}");
        call(&what, self.client.release_slot(req)).await.map(drop)
    }

    /// One measured operation: acquire, then release.
    pub async fn pair(&mut self, host: &str) -> Result<()> {
        let token = self.acquire(host).await?;
        self.release(host, token).await
    }

    /// `Status` as this node answers it.
    pub async fn status(&mut self) -> Result<StatusResponse> {
        call("status", self.client.status(StatusRequest {})).await
    }
}

fn acquire_request(write: Option<WriteId>, host: &str, wait_ms: u64) -> AcquireSlotRequest {
    AcquireSlotRequest {
        write,
        host: host.to_string(),
        purpose: "maintenance".into(),
        reason: "hd-bench".into(),
        rollout: String::new(),
        wait_ms,
        canary: false,
        fence_draining: false,
    }
}

async fn call<T>(
    what: &str,
    fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T> {
    match timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(s)) => Err(status_error(what, &s)),
        Err(_) => Err(anyhow!("{what}: no answer within {CALL_TIMEOUT:?}")),
    }
}

/// What one retried write went through.
#[derive(Debug, Clone)]
pub struct RetryOutcome<T> {
    /// The answer.
    pub value: T,
    /// The endpoint that answered.
    pub answered_by: String,
    /// How many attempts it took (1 = first try).
    pub attempts: u32,
}

/// A client that finds the leader by itself: every endpoint, leader hints, retries.
pub struct RetryingClient {
    endpoints: Vec<String>,
    channels: HashMap<String, Channel>,
    client_id: String,
    seq: u64,
    attempt_timeout: Duration,
}

impl RetryingClient {
    /// A client for `endpoints`; each attempt may take up to `attempt_timeout`.
    pub fn new(endpoints: &[SocketAddr], client_id: &str, attempt_timeout: Duration) -> Self {
        RetryingClient {
            endpoints: endpoints.iter().map(ToString::to_string).collect(),
            channels: HashMap::new(),
            client_id: client_id.to_string(),
            seq: 0,
            attempt_timeout,
        }
    }

    fn next_write(&mut self) -> WriteId {
        self.seq += 1;
        WriteId {
            client_id: self.client_id.clone(),
            seq: self.seq,
        }
    }

    fn client(&mut self, addr: &str) -> Result<CoordinatorClient<Channel>> {
        if let Some(ch) = self.channels.get(addr) {
            return Ok(CoordinatorClient::new(ch.clone()));
        }
        let ch = channel(addr)?;
        self.channels.insert(addr.to_string(), ch.clone());
        Ok(CoordinatorClient::new(ch))
    }

    /// Forgets the cached channel to `addr` (after its process died), so the next attempt
    /// dials afresh instead of waiting out a reconnect backoff.
    pub fn forget(&mut self, addr: &str) {
        self.channels.remove(addr);
    }

    /// Registers `host` in `groups`, retrying until `deadline`.
    pub async fn register(
        &mut self,
        host: &str,
        groups: &[String],
        deadline: Instant,
    ) -> Result<()> {
        let write = self.next_write();
        let host = host.to_string();
        let groups = groups.to_vec();
        self.retry("register", deadline, move |mut c| {
            let req = RegisterRequest {
                write: Some(write.clone()),
                host: host.clone(),
                groups: groups.clone(),
                report: Some(healthy_report()),
                address: String::new(),
            };
            async move { c.register(req).await.map(drop) }
        })
        .await
        .map(drop)
    }

    /// Acquires `host`'s slot, retrying until `deadline`; returns the token.
    pub async fn acquire(&mut self, host: &str, deadline: Instant) -> Result<RetryOutcome<u64>> {
        let write = self.next_write();
        let host = host.to_string();
        let out = self
            .retry("acquire", deadline, move |mut c| {
                let req = acquire_request(Some(write.clone()), &host, 0);
                async move {
                    let resp = c.acquire_slot(req).await?.into_inner();
                    resp.slot
                        .map(|s| s.token)
                        .ok_or_else(|| Status::internal("the answer carries no slot"))
                }
            })
            .await?;
        Ok(out)
    }

    /// Releases `host`'s slot `token`, retrying until `deadline`.
    pub async fn release(&mut self, host: &str, token: u64, deadline: Instant) -> Result<()> {
        let write = self.next_write();
        let host = host.to_string();
        self.retry("release", deadline, move |mut c| {
            let req = ReleaseSlotRequest {
                write: Some(write.clone()),
                host: host.clone(),
                token,
            };
            async move { c.release_slot(req).await.map(drop) }
        })
        .await
        .map(drop)
    }

    /// Calls `f` until it answers, following leader hints; every status other than OK is
    /// retried (a dying leader can answer with odd codes), and the last one is reported at the
    /// deadline.
    async fn retry<T, F, Fut>(
        &mut self,
        what: &str,
        deadline: Instant,
        f: F,
    ) -> Result<RetryOutcome<T>>
    where
        F: Fn(CoordinatorClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut next = 0usize;
        let mut hint: Option<String> = None;
        let mut last = String::from("no attempt made");
        let mut attempts = 0u32;
        while Instant::now() < deadline {
            let addr = match hint.take() {
                Some(h) => h,
                None => {
                    let a = self.endpoints[next % self.endpoints.len()].clone();
                    next += 1;
                    a
                }
            };
            attempts += 1;
            let client = self.client(&addr)?;
            match timeout(self.attempt_timeout, f(client)).await {
                Ok(Ok(value)) => {
                    return Ok(RetryOutcome {
                        value,
                        answered_by: addr,
                        attempts,
                    })
                }
                Ok(Err(s)) => {
                    hint = s
                        .metadata()
                        .get(LEADER_ADDRESS_KEY)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                        .filter(|h| *h != addr);
                    if s.code() == Code::Unavailable
                        && s.metadata().get(LEADER_ADDRESS_KEY).is_none()
                    {
                        // A dead node or one that knows no leader yet: dial afresh next time
                        // (no reconnect backoff on a stale channel), and do not spin.
                        self.forget(&addr);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    last = format!("{addr}: {} ({:?})", s.message(), s.code());
                }
                Err(_) => {
                    last = format!("{addr}: no answer within {:?}", self.attempt_timeout);
                }
            }
        }
        Err(anyhow!(
            "{what}: gave up after {attempts} attempts; last: {last}"
        ))
    }
}
