//! One unary call to "the leader", whichever node that is: pick an address, follow hints, back
//! off on errors, and stop at the deadline.

use super::error::{classify, Verdict};
use super::{lock, LinkInner};
use hotdeploy_common::proto::coordinator_client::CoordinatorClient;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// Which answers a call retries, besides transport errors and "not the leader".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Only transient failures; a definitive "not now" (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED)
    /// goes back to the caller (AcquireSlot: no budget within the wait, ask again afresh).
    Transient,
    /// "Not now" too: a fenced write (ReportPhase, ReleaseSlot) has nothing else to try, and a
    /// busy or slow leader must not abort a deploy.
    AlsoBusy,
}

/// A call that did not get a usable answer.
#[derive(Debug)]
pub(crate) enum CallError {
    /// A definitive answer the caller must judge (precondition, no budget, refusal).
    Status(tonic::Status),
    /// Only retryable failures until the deadline.
    Timeout { waited_ms: u64, last: String },
}

impl LinkInner {
    /// The address to try: the known leader, else the next configured one.
    pub(crate) fn target(&self) -> String {
        if let Some(l) = lock(&self.leader).clone() {
            return l;
        }
        let n = self.cfg.coordinators.len().max(1);
        let i = self.next.load(Ordering::SeqCst) % n;
        self.cfg.coordinators.get(i).cloned().unwrap_or_default()
    }

    /// Remembers who the leader is (`None`: unknown, try the next address).
    pub(crate) fn set_leader(&self, addr: Option<String>) {
        if addr.is_none() {
            self.next.fetch_add(1, Ordering::SeqCst);
        }
        *lock(&self.leader) = addr;
    }

    /// A lazily connected channel to `addr`, cached.
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, String> {
        if let Some(c) = lock(&self.channels).get(addr) {
            return Ok(c.clone());
        }
        let scheme = self.tls.scheme();
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad coordinator address {addr:?}: {e}"))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = self.tls.current() {
            ep = ep
                .tls_config(tls)
                .map_err(|e| format!("coordinator TLS for {addr}: {e}"))?;
        }
        let ch = ep.connect_lazy();
        lock(&self.channels).insert(addr.to_owned(), ch.clone());
        Ok(ch)
    }
}

/// Calls `f` on the leader until it answers, a definitive status comes back, or `deadline`
/// passes. Each attempt is bounded by `per_call`.
pub(crate) async fn unary<T, F, Fut>(
    inner: &LinkInner,
    what: &str,
    deadline: Instant,
    per_call: Duration,
    retry: Retry,
    mut f: F,
) -> Result<T, CallError>
where
    F: FnMut(CoordinatorClient<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut last = String::from("no attempt");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(CallError::Timeout {
                waited_ms: start.elapsed().as_millis() as u64,
                last,
            });
        }
        let addr = inner.target();
        let outcome = match inner.channel(&addr) {
            Err(e) => Err(tonic::Status::unavailable(e)),
            Ok(ch) => {
                let budget = per_call.min(deadline - now);
                match tokio::time::timeout(budget, f(CoordinatorClient::new(ch))).await {
                    Ok(r) => r,
                    Err(_) => Err(tonic::Status::cancelled(format!(
                        "no answer from {addr} within {} ms",
                        budget.as_millis()
                    ))),
                }
            }
        };
        match outcome {
            Ok(resp) => {
                let mut l = lock(&inner.leader);
                if l.as_deref() != Some(addr.as_str()) {
                    *l = Some(addr);
                }
                return Ok(resp.into_inner());
            }
            Err(s) => {
                last = format!("{what} at {addr}: {:?}: {}", s.code(), s.message());
                match classify(&s) {
                    Verdict::Redirect(Some(hint)) if hint != addr => {
                        tracing::debug!(%addr, leader = %hint, "{what}: following the leader");
                        inner.set_leader(Some(hint));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Verdict::Redirect(_) => {
                        tracing::debug!("{last}; trying the next coordinator");
                        inner.set_leader(None);
                    }
                    Verdict::Retry => {
                        tracing::debug!("{last}; retrying");
                        inner.set_leader(None);
                    }
                    Verdict::NotNow if retry == Retry::AlsoBusy => {
                        // The leader answered, busy: ask it again (same write id).
                        tracing::debug!("{last}; retrying");
                    }
                    Verdict::NotNow | Verdict::Precondition | Verdict::Fatal => {
                        return Err(CallError::Status(s))
                    }
                }
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}
