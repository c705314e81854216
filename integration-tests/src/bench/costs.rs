//! What one committed entry costs each node: context switches and CPU time, from `/proc`.
//!
//! Latency on a shared two-core machine swings with the load; these two counts barely do. A
//! thread hand-off (the raft thread waking a tokio worker, an HTTP/2 connection task waking a
//! handler) shows up as a context switch of the woken thread, so context switches per entry
//! measure the hops of the write path directly, and CPU per entry its work.
//!
//! [`sample`] reads a process's totals: the sum of `voluntary_ctxt_switches` and
//! `nonvoluntary_ctxt_switches` over its live threads (`/proc/<pid>/task/*/status`; a thread
//! that exits during the window takes its count with it, so this is a slight undercount), and
//! `utime + stime` from `/proc/<pid>/stat` (whole process, dead threads included, in clock ticks
//! of 10 ms). [`per_entry`] divides the difference of two samples by the entries committed in
//! between. No tracer is attached, so the measured phase runs at full speed.

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK` on Linux).
const TICKS_PER_S: f64 = 100.0;

/// A process's totals at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// Context switches, voluntary and not, of the live threads.
    pub ctx_switches: u64,
    /// User + system CPU time, clock ticks.
    pub cpu_ticks: u64,
}

/// One node's cost per committed entry over a window.
#[derive(Debug, Clone, Serialize)]
pub struct NodeCost {
    /// The node's name.
    pub node: String,
    /// `leader` or `follower`.
    pub role: String,
    /// Context switches per committed entry.
    pub ctx_switches_per_entry: f64,
    /// CPU time per committed entry, µs.
    pub cpu_us_per_entry: f64,
}

/// Reads `pid`'s totals now (zeros where unreadable).
pub fn sample(pid: u32) -> ProcSample {
    let mut ctx_switches = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            for key in ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"] {
                ctx_switches += status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime
    // are fields 14 and 15.
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    ProcSample {
        ctx_switches,
        cpu_ticks: tick(11) + tick(12),
    }
}

/// The cost per entry between two samples.
pub fn per_entry(
    node: String,
    role: String,
    before: ProcSample,
    after: ProcSample,
    entries: u64,
) -> NodeCost {
    let n = entries.max(1) as f64;
    NodeCost {
        node,
        role,
        ctx_switches_per_entry: after.ctx_switches.saturating_sub(before.ctx_switches) as f64 / n,
        cpu_us_per_entry: after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / TICKS_PER_S
            * 1e6
            / n,
    }
}

/// Samples of several processes taken together at the start of a window.
pub struct Window {
    nodes: Vec<(String, String, u32)>,
    before: Vec<ProcSample>,
}

impl Window {
    /// Starts a window over `nodes` (name, role, pid).
    pub fn start(nodes: Vec<(String, String, u32)>) -> Window {
        let before = nodes.iter().map(|(_, _, pid)| sample(*pid)).collect();
        Window { nodes, before }
    }

    /// Ends it: each node's cost per entry, leader first.
    pub fn finish(self, entries: u64) -> Vec<NodeCost> {
        let mut costs: Vec<NodeCost> = self
            .nodes
            .into_iter()
            .zip(self.before)
            .map(|((node, role, pid), before)| per_entry(node, role, before, sample(pid), entries))
            .collect();
        costs.sort_by_key(|c| c.role != "leader");
        costs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let me = std::process::id();
        let a = sample(me);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = sample(me);
        assert!(b.ctx_switches > a.ctx_switches, "{a:?} {b:?}");
        assert!(b.cpu_ticks >= a.cpu_ticks, "{a:?} {b:?}");
        let c = per_entry("n".into(), "leader".into(), a, b, 10);
        assert!(c.ctx_switches_per_entry > 0.0);
    }
}
