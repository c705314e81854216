//! A coordinator gRPC client for tests that act as agents ("pseudo-hosts") or talk to one node.
//!
//! The coordinator's writes go to the leader; a follower answers UNAVAILABLE with the leader's
//! address in the `x-hotdeploy-leader` metadata (DESIGN §2). [`CoordClient::call`] does what a
//! careful agent does with that:
//!
//! - it tries the endpoints in turn, and follows a leader hint at once when one comes back;
//! - it retries on UNAVAILABLE, on a cut connection and on its own per-attempt timeout, until a
//!   time budget runs out, and then returns the last status it saw;
//! - every other status is the answer, returned as is, so tests can check codes and messages.
//!
//! A write is retried with the *same* [`WriteId`]: the caller makes one with
//! [`CoordClient::next_write`] and passes it to every attempt, and the state machine's client
//! sessions answer a repeat with the first answer. That is what makes "retry after a leader
//! change" safe, and what the tests check.
//!
//! [`CoordClient::once`] makes a single attempt at one address, without retries or hints, for
//! tests that must know what one particular node answers (a partitioned old leader, say).
//!
//! Channels are created lazily, one per address, and cached; tonic reconnects them when a node
//! restarts at the same address. A `CoordClient` must be used from inside one tokio runtime (the
//! one its first call ran on).

use hotdeploy_common::proto::coordinator_client::CoordinatorClient;
use hotdeploy_common::proto::{
    AcquireSlotRequest, Health, HostReport, RegisterRequest, RegisterResponse, ReleaseSlotRequest,
    Rotation, Slot, StatusRequest, StatusResponse, WriteId, LEADER_ADDRESS_KEY,
};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

/// The deadline of one attempt (an `AcquireSlot` gets its `wait_ms` on top).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a connection attempt may take on loopback.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The pause after a full round of endpoints that gave no leader hint.
const ROUND_PAUSE: Duration = Duration::from_millis(100);
/// Largest answer accepted (the server's own request limit is 1 MiB).
const MAX_MESSAGE: usize = 16 << 20;

/// A gRPC client of the coordinator cluster with one `client_id` for its writes.
pub struct CoordClient {
    endpoints: Vec<String>,
    client_id: String,
    seq: AtomicU64,
    attempt_timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
    retries: AtomicU64,
}

/// Whether a status may change by asking again (elsewhere, or later): no leader, not the
/// leader, a node that went away mid-call, a timeout.
pub fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// The leader address a follower put in its refusal, if any.
pub fn leader_hint(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_ADDRESS_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A healthy, in-rotation report on `release`: a host that counts as available.
pub fn healthy_report(release: &str) -> HostReport {
    HostReport {
        health: Health::Healthy as i32,
        rotation: Rotation::InRotation as i32,
        release: release.to_string(),
        phase: "idle".to_string(),
    }
}

impl CoordClient {
    /// A client of the nodes at `endpoints` whose writes carry `client_id`.
    pub fn new(endpoints: &[SocketAddr], client_id: &str) -> CoordClient {
        assert!(
            !endpoints.is_empty(),
            "CoordClient needs at least one endpoint"
        );
        CoordClient {
            endpoints: endpoints.iter().map(ToString::to_string).collect(),
            client_id: client_id.to_string(),
            seq: AtomicU64::new(1),
            attempt_timeout: ATTEMPT_TIMEOUT,
            channels: Mutex::new(HashMap::new()),
            retries: AtomicU64::new(0),
        }
    }

    /// The same client with another per-attempt deadline.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> CoordClient {
        self.attempt_timeout = timeout;
        self
    }

    /// The endpoints this client tries, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    /// This client's id in its writes.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// How many attempts [`CoordClient::call`] has retried so far (after a retryable answer or
    /// a timeout): a measure of how many leader changes and dead nodes the client rode through.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// A fresh write id. Reuse it for every retry of one write.
    pub fn next_write(&self) -> WriteId {
        WriteId {
            client_id: self.client_id.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// A client of the node at `addr`, on a cached, lazily connected channel.
    pub fn client_at(&self, addr: &str) -> Result<CoordinatorClient<Channel>, Status> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| Status::invalid_argument(format!("bad endpoint {addr}: {e}")))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true);
                let channel = endpoint.connect_lazy();
                channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        Ok(CoordinatorClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// One attempt at `addr`, no retries and no hints, within the per-attempt deadline plus
    /// `extra`. A timeout comes back as DEADLINE_EXCEEDED.
    pub async fn once<T, F, Fut>(&self, addr: &str, extra: Duration, f: F) -> Result<T, Status>
    where
        F: FnOnce(CoordinatorClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let client = self.client_at(addr)?;
        let limit = self.attempt_timeout + extra;
        match tokio::time::timeout(limit, f(client)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{addr} did not answer within {limit:?}"
            ))),
        }
    }

    /// Calls `f` at the leader: tries each endpoint in turn, follows leader hints, and retries
    /// [`is_retryable`] answers until `budget` has passed. Each attempt may take the per-attempt
    /// deadline plus `extra`. Returns the first non-retryable answer, or the last status seen.
    pub async fn call<T, F, Fut>(
        &self,
        budget: Duration,
        extra: Duration,
        f: F,
    ) -> Result<T, Status>
    where
        F: Fn(CoordinatorClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + budget;
        let mut next = 0usize;
        let mut hint: Option<String> = None;
        let mut last: Option<Status> = None;
        loop {
            let addr = match hint.take() {
                Some(addr) => addr,
                None => {
                    let addr = self.endpoints[next % self.endpoints.len()].clone();
                    next += 1;
                    if next.is_multiple_of(self.endpoints.len()) && last.is_some() {
                        tokio::time::sleep(ROUND_PAUSE).await;
                    }
                    addr
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(last.unwrap_or_else(|| {
                    Status::unavailable(format!("no coordinator answered within {budget:?}"))
                }));
            }
            match self.once(&addr, extra, &f).await {
                Ok(answer) => return Ok(answer),
                Err(status) if is_retryable(&status) => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    hint = leader_hint(&status).filter(|h| *h != addr);
                    last = Some(status);
                }
                Err(status) => return Err(status),
            }
        }
    }

    /// Registers `host` in `groups`, healthy and in rotation on release `v1`, with a fresh
    /// write id (retried with the same one).
    pub async fn register(
        &self,
        host: &str,
        groups: &[&str],
        budget: Duration,
    ) -> Result<RegisterResponse, Status> {
        let write = self.next_write();
        let groups: Vec<String> = groups.iter().map(ToString::to_string).collect();
        self.call(budget, Duration::ZERO, |mut c| {
            let req = RegisterRequest {
                write: Some(write.clone()),
                host: host.to_string(),
                groups: groups.clone(),
                report: Some(healthy_report("v1")),
                address: String::new(),
            };
            async move { c.register(req).await }
        })
        .await
    }

    /// `AcquireSlot` for `host` with the given write id (pass the same one to every retry of
    /// one acquire), waiting on the leader up to `wait`.
    pub async fn acquire(
        &self,
        write: &WriteId,
        host: &str,
        purpose: &str,
        wait: Duration,
        budget: Duration,
    ) -> Result<Slot, Status> {
        let request = AcquireSlotRequest {
            write: Some(write.clone()),
            host: host.to_string(),
            purpose: purpose.to_string(),
            reason: format!("test {}", self.client_id),
            rollout: String::new(),
            wait_ms: wait.as_millis() as u64,
            canary: false,
            fence_draining: false,
        };
        self.acquire_with(request, budget).await
    }

    /// `AcquireSlot` with a request built by the caller (odd reasons, sizes, ...).
    pub async fn acquire_with(
        &self,
        request: AcquireSlotRequest,
        budget: Duration,
    ) -> Result<Slot, Status> {
        let wait = Duration::from_millis(request.wait_ms);
        let response = self
            .call(budget, wait, |mut c| {
                let req = request.clone();
                async move { c.acquire_slot(req).await }
            })
            .await?;
        response
            .slot
            .ok_or_else(|| Status::internal("AcquireSlot answered without a slot"))
    }

    /// `ReleaseSlot` of `host`'s slot `token` with the given write id.
    pub async fn release(
        &self,
        write: &WriteId,
        host: &str,
        token: u64,
        budget: Duration,
    ) -> Result<(), Status> {
        self.call(budget, Duration::ZERO, |mut c| {
            let req = ReleaseSlotRequest {
                write: Some(write.clone()),
                host: host.to_string(),
                token,
            };
            async move { c.release_slot(req).await }
        })
        .await
        .map(|_| ())
    }

    /// `Status` from the node at `addr` alone (its own view: leader, term, commit index).
    pub async fn status_at(&self, addr: &str) -> Result<StatusResponse, Status> {
        self.once(addr, Duration::ZERO, |mut c| async move {
            c.status(StatusRequest {}).await
        })
        .await
    }
}

/// A small deterministic PRNG (xorshift64*) for jitter in test loops; no dependency needed.
pub struct Jitter(u64);

impl Jitter {
    /// A generator seeded from `seed` (any value; zero is remapped).
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A duration in `[lo, hi]` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next_u64() % (hi - lo + 1))
    }
}
