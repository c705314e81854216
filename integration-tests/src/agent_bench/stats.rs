//! Percentiles and number formatting for the agent benchmarks.

use serde::Serialize;

/// p50 and max (and min) of a sample of milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    /// Samples.
    pub n: usize,
    /// Smallest.
    pub min: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// Largest.
    pub max: f64,
}

/// Summarises `values` (any order).
pub fn summary(values: &[f64]) -> Summary {
    if values.is_empty() {
        return Summary::default();
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Summary {
        n: v.len(),
        min: v[0],
        p50: percentile_sorted(&v, 50.0),
        max: v[v.len() - 1],
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A duration string (`"200ms"`, `"1.5s"`, `"0s"`) as milliseconds, for the config knobs.
pub fn parse_ms(s: &str) -> f64 {
    humantime::parse_duration(s)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `yes` / `NO` for a target.
pub fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "NO"
    }
}
