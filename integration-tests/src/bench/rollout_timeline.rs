//! Where a benchmarked rollout's time went, from the rollout's own record.
//!
//! The coordinators stamp every step phase with the proposing leader's clock
//! (`RolloutHost.phases`). From the completed rollout this module derives, per host, how long
//! each stretch of its deploy took (admitted → draining, draining → swapping, swapping →
//! verifying, verifying → succeeded), and for the fleet how full the batch was kept: the
//! hosts' time in flight (admitted → succeeded) over B × the rollout's span. The measured ratio
//! is about (time in flight per host ÷ (T + V)) ÷ that utilization, so the two say whether a
//! rollout loses its time inside each host's deploy (the raft round trips of its fenced
//! phases) or between hosts (a slot left idle while the next host is admitted and acquires).
//!
//! It reads only what the coordinators recorded; a host without the phases it needs (a first
//! install, say) is left out of the stretch it lacks.

use hotdeploy_common::proto::{RolloutInfo, StepPhase};
use serde::Serialize;

/// The stretches of one deploy, in the order they happen.
const STRETCHES: [(StepPhase, StepPhase, &str); 4] = [
    (
        StepPhase::Waiting,
        StepPhase::Draining,
        "admitted → draining",
    ),
    (
        StepPhase::Draining,
        StepPhase::Swapping,
        "draining → swapping",
    ),
    (
        StepPhase::Swapping,
        StepPhase::Verifying,
        "swapping → verifying",
    ),
    (
        StepPhase::Verifying,
        StepPhase::Succeeded,
        "verifying → succeeded",
    ),
];

/// One stretch over every host: its median and 90th percentile.
#[derive(Debug, Clone, Serialize)]
pub struct Stretch {
    pub name: String,
    pub hosts: usize,
    pub p50_ms: u64,
    pub p90_ms: u64,
}

/// The whole breakdown.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub stretches: Vec<Stretch>,
    /// Admitted → succeeded, median over hosts.
    pub in_flight_p50_ms: u64,
    /// Σ hosts' time in flight ÷ (B × (last success − first admission)).
    pub utilization: f64,
}

/// The first time `host` entered `phase`, ms.
fn entered(phases: &[(StepPhase, u64)], phase: StepPhase) -> Option<u64> {
    phases.iter().find(|(p, _)| *p == phase).map(|(_, at)| *at)
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest rank.
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The breakdown of `rollout`, whose batch was `budget`.
pub fn of(rollout: &RolloutInfo, budget: usize) -> Timeline {
    let hosts: Vec<Vec<(StepPhase, u64)>> = rollout
        .hosts
        .iter()
        .map(|h| h.phases.iter().map(|p| (p.phase(), p.at_ms)).collect())
        .collect();
    let stretches = STRETCHES
        .iter()
        .map(|&(from, to, name)| {
            let mut d: Vec<u64> = hosts
                .iter()
                .filter_map(|p| Some(entered(p, to)?.saturating_sub(entered(p, from)?)))
                .collect();
            d.sort_unstable();
            Stretch {
                name: name.to_string(),
                hosts: d.len(),
                p50_ms: percentile(&d, 0.5),
                p90_ms: percentile(&d, 0.9),
            }
        })
        .collect();
    let spans: Vec<(u64, u64)> = hosts
        .iter()
        .filter_map(|p| {
            Some((
                entered(p, StepPhase::Waiting)?,
                entered(p, StepPhase::Succeeded)?,
            ))
        })
        .collect();
    let mut in_flight: Vec<u64> = spans.iter().map(|(a, b)| b.saturating_sub(*a)).collect();
    in_flight.sort_unstable();
    let first = spans.iter().map(|s| s.0).min().unwrap_or(0);
    let last = spans.iter().map(|s| s.1).max().unwrap_or(0);
    let span = last.saturating_sub(first).max(1) as f64;
    let utilization = in_flight.iter().sum::<u64>() as f64 / (budget.max(1) as f64 * span);
    Timeline {
        stretches,
        in_flight_p50_ms: percentile(&in_flight, 0.5),
        utilization,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotdeploy_common::proto::{PhaseTime, RolloutHost};

    fn host(times: &[(StepPhase, u64)]) -> RolloutHost {
        RolloutHost {
            phases: times
                .iter()
                .map(|&(p, at)| PhaseTime {
                    phase: p as i32,
                    at_ms: at,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn two_hosts_one_slot_back_to_back_fill_the_batch() {
        use StepPhase::*;
        let a = host(&[
            (Waiting, 0),
            (Draining, 10),
            (Swapping, 20),
            (Verifying, 120),
            (Succeeded, 220),
        ]);
        let b = host(&[
            (Waiting, 220),
            (Draining, 250),
            (Swapping, 260),
            (Verifying, 360),
            (Succeeded, 440),
        ]);
        let r = RolloutInfo {
            hosts: vec![a, b],
            ..Default::default()
        };
        let t = of(&r, 1);
        assert_eq!(t.stretches[0].hosts, 2);
        assert_eq!(t.stretches[0].p90_ms, 30);
        assert_eq!(t.stretches[3].p50_ms, 80);
        assert!((t.utilization - 1.0).abs() < 1e-9, "{}", t.utilization);
        // With a budget of 2 the same two hosts kept half of it busy.
        assert!((of(&r, 2).utilization - 0.5).abs() < 1e-9);
    }
}
