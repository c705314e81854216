//! Latency samples to percentiles and throughput.
//!
//! Percentiles use the nearest-rank method on the sorted samples: p99 of 2,000 samples is the
//! 1,980th smallest. That is the conservative choice (never interpolated downwards) and is
//! exactly reproducible from the raw samples. Throughput is measured operations divided by the
//! wall time of the measured phase, so it includes every client's idle gaps.

use serde::Serialize;
use std::time::Duration;

/// The summary of one measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Successful operations measured.
    pub ops: usize,
    /// Failed operations (not in the percentiles).
    pub errors: usize,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Wall time of the phase, s.
    pub wall_s: f64,
    /// Successful operations per second of wall time.
    pub per_s: f64,
}

/// Summarizes `samples` (one per successful operation) taken over `wall`.
pub fn summarize(mut samples: Vec<Duration>, errors: usize, wall: Duration) -> Summary {
    samples.sort_unstable();
    let n = samples.len();
    let total: Duration = samples.iter().sum();
    let wall_s = wall.as_secs_f64();
    Summary {
        ops: n,
        errors,
        p50_ms: ms(percentile(&samples, 0.50)),
        p90_ms: ms(percentile(&samples, 0.90)),
        p99_ms: ms(percentile(&samples, 0.99)),
        max_ms: ms(samples.last().copied().unwrap_or_default()),
        mean_ms: if n == 0 { 0.0 } else { ms(total) / n as f64 },
        wall_s,
        per_s: if wall_s > 0.0 { n as f64 / wall_s } else { 0.0 },
    }
}

/// The nearest-rank `q` quantile of sorted samples; zero when there are none.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `a / b`, or `None` when `b` is not positive (a missing or broken measurement).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&samples, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        let s = summarize(samples, 2, Duration::from_secs(2));
        assert_eq!(s.ops, 100);
        assert_eq!(s.errors, 2);
        assert!((s.per_s - 50.0).abs() < 1e-9);
        assert!((s.mean_ms - 50.5).abs() < 1e-9);
    }
}
