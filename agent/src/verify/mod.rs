//! Verify: deciding whether a freshly restarted release is healthy (DESIGN §4).
//!
//! Two stages, both probing every `interval`, where one *round* runs every configured probe
//! (`http`, `tcp`, `exec`) and succeeds only if all of them pass:
//!
//! 1. **Rise.** Failures are tolerated — the service may still be starting — but each one resets
//!    the count. Verify moves on once `success_threshold` consecutive rounds pass. If `timeout`
//!    (counted from the start of verify) expires first, verify fails with the last probe error.
//!    A round that failed because the connection was *refused* (nothing listens yet: the
//!    service is still starting, [`FailureKind::NotListening`]) is retried after
//!    `min(interval, 10ms)` instead of a whole `interval`, so the streak starts within 10 ms of
//!    the service listening rather than up to an `interval` later. Refused connects cost the
//!    service nothing. Every other failure waits the full `interval`, and successes are always
//!    `interval` apart: `success_threshold` still means that many passing rounds spanning
//!    `(success_threshold − 1) × interval`.
//! 2. **Settle.** The service must then stay healthy for `settle`: any failed round during it
//!    fails verify at once. This catches a release that answers its first checks and then
//!    crashes (a bad config read lazily, a leak, a panic on the first real request).
//!
//! Each probe attempt has its own timeout, `min(interval × 4, 5s)`, so a hung service cannot
//! stall a round for long; the rise stage's rounds are also cut off at the overall deadline.
//! `progress` hears a line per failed attempt and per stage change, for the deploy's event log.

mod probe;

pub use probe::{FailureKind, ProbeError};

use hotdeploy_common::config::VerifyConfig;
use probe::HttpProbe;
use std::time::Duration;
use tokio::time::Instant;

/// The ceiling of one probe attempt's timeout.
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after a rise-stage round whose connection was refused (capped at `interval`).
pub const NOT_LISTENING_RETRY: Duration = Duration::from_millis(10);

/// How a successful verify went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Probe rounds run, in both stages.
    pub rounds: u32,
    /// Failed rounds tolerated before the threshold was reached.
    pub failures: u32,
    /// From the start of verify until `success_threshold` was reached.
    pub time_to_healthy: Duration,
    /// The whole verify, settle included.
    pub total: Duration,
}

/// Why verify failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("no probe configured (set verify.http, verify.tcp or verify.exec)")]
    NoProbes,
    #[error("verify.http {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "not healthy within {timeout:?}: best run {best} of {threshold} consecutive successes; last failure: {}",
        last.as_ref().map_or_else(|| "none".to_string(), |e| e.to_string())
    )]
    Timeout {
        timeout: Duration,
        threshold: u32,
        best: u32,
        last: Option<ProbeError>,
    },
    #[error("became unhealthy {after:?} into the {settle:?} settle period: {error}")]
    Settle {
        settle: Duration,
        after: Duration,
        error: ProbeError,
    },
}

/// Runs the configured probes.
pub struct Verifier {
    cfg: VerifyConfig,
    probe_timeout: Duration,
    http: Result<Option<HttpProbe>, VerifyError>,
}

impl Verifier {
    pub fn new(cfg: &VerifyConfig) -> Self {
        Self::with_probe_timeout(cfg, (cfg.interval * 4).min(MAX_PROBE_TIMEOUT))
    }

    /// A verifier whose every probe attempt is bounded by `probe_timeout` (the health monitor
    /// runs [`Verifier::probe_once`] with `[health] probe_timeout`).
    pub fn with_probe_timeout(cfg: &VerifyConfig, probe_timeout: Duration) -> Self {
        let http = match &cfg.http {
            None => Ok(None),
            Some(url) => HttpProbe::new(
                url,
                cfg.expect_status,
                cfg.body_contains.clone(),
                probe_timeout,
            )
            .map(Some)
            .map_err(|reason| VerifyError::BadUrl {
                url: url.clone(),
                reason,
            }),
        };
        Self {
            cfg: cfg.clone(),
            probe_timeout,
            http,
        }
    }

    /// Rise, then settle; see the module docs.
    pub async fn verify(
        &self,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<VerifyReport, VerifyError> {
        self.check_config()?;
        let cfg = &self.cfg;
        let threshold = cfg.success_threshold.max(1);
        let start = Instant::now();
        let deadline = start + cfg.timeout;
        let (mut rounds, mut failures, mut streak, mut best) = (0u32, 0u32, 0u32, 0u32);
        let mut last: Option<ProbeError> = None;
        loop {
            rounds += 1;
            let result = match tokio::time::timeout_at(deadline, self.probe_once()).await {
                Ok(r) => r,
                Err(_) => break,
            };
            match result {
                Ok(()) => {
                    streak += 1;
                    best = best.max(streak);
                    if streak >= threshold {
                        let time_to_healthy = start.elapsed();
                        progress(format!(
                            "healthy after {time_to_healthy:?} ({threshold} consecutive successes); settling for {:?}",
                            cfg.settle
                        ));
                        rounds += self.settle(progress).await?;
                        return Ok(VerifyReport {
                            rounds,
                            failures,
                            time_to_healthy,
                            total: start.elapsed(),
                        });
                    }
                }
                Err(e) => {
                    failures += 1;
                    streak = 0;
                    progress(format!("probe failed (tolerated while starting): {e}"));
                    last = Some(e);
                }
            }
            let pause = match &last {
                Some(e) if streak == 0 && e.kind == FailureKind::NotListening => {
                    cfg.interval.min(NOT_LISTENING_RETRY)
                }
                _ => cfg.interval,
            };
            let next = Instant::now() + pause;
            if next >= deadline {
                break;
            }
            tokio::time::sleep_until(next).await;
        }
        Err(VerifyError::Timeout {
            timeout: cfg.timeout,
            threshold,
            best,
            last,
        })
    }

    /// The settle stage: probe every interval until `settle` has passed; any failure fails.
    /// Returns the number of rounds run.
    async fn settle(&self, progress: &(dyn Fn(String) + Send + Sync)) -> Result<u32, VerifyError> {
        let start = Instant::now();
        let end = start + self.cfg.settle;
        let mut rounds = 0;
        while Instant::now() < end {
            // The last round lands exactly at the end of the period.
            tokio::time::sleep_until((Instant::now() + self.cfg.interval).min(end)).await;
            rounds += 1;
            self.settle_probe(start, progress).await?;
        }
        Ok(rounds)
    }

    async fn settle_probe(
        &self,
        start: Instant,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), VerifyError> {
        self.probe_once().await.map_err(|error| {
            progress(format!("probe failed while settling: {error}"));
            VerifyError::Settle {
                settle: self.cfg.settle,
                after: start.elapsed(),
                error,
            }
        })
    }

    /// One round: every configured probe must pass; the first failure is returned.
    pub async fn probe_once(&self) -> Result<(), ProbeError> {
        match &self.http {
            Ok(Some(http)) => http.probe().await?,
            Ok(None) => {}
            Err(e) => {
                return Err(ProbeError {
                    probe: "http",
                    target: self.cfg.http.clone().unwrap_or_default(),
                    reason: e.to_string(),
                    kind: FailureKind::Unhealthy,
                })
            }
        }
        if let Some(addr) = &self.cfg.tcp {
            probe::tcp(addr, self.probe_timeout).await?;
        }
        if !self.cfg.exec.is_empty() {
            probe::exec(&self.cfg.exec, self.probe_timeout).await?;
        }
        Ok(())
    }

    fn check_config(&self) -> Result<(), VerifyError> {
        if let Err(e) = &self.http {
            return Err(VerifyError::BadUrl {
                url: self.cfg.http.clone().unwrap_or_default(),
                reason: e.to_string(),
            });
        }
        if self.cfg.http.is_none() && self.cfg.tcp.is_none() && self.cfg.exec.is_empty() {
            return Err(VerifyError::NoProbes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
