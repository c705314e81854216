//! Targets, and the human-readable tables of each benchmark.
//!
//! A [`Target`] is one goal from DESIGN/the issue with the measured value beside it and a
//! verdict (`met`, and `stretch_met` where a stretch goal exists). A value that could not be
//! measured (etcd skipped, a node's RSS unreadable) has no verdict rather than a wrong one.
//!
//! The `print_*` functions write plain fixed-width tables: they are meant to be pasted into
//! BENCHMARKS.md as they are. The JSON output is the serde form of the report structs and is
//! printed by the binary, not here.

use super::failover::FailoverReport;
use super::lock::{LockReport, SystemRun};
use super::memory::MemoryReport;
use super::stats::Summary;
use super::syscalls::SyscallWindow;
use serde::Serialize;
use std::fmt::Write as _;

/// One goal and its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured.
    pub name: String,
    /// The measured value, if any.
    pub value: Option<f64>,
    /// The goal, in words (`<= 1.00`).
    pub goal: String,
    /// Whether the goal was met.
    pub met: Option<bool>,
    /// Whether the stretch goal was met, when there is one.
    pub stretch_met: Option<bool>,
}

impl Target {
    /// A goal of `value <= limit` (stretch `value <= stretch`).
    pub fn at_most(name: &str, value: Option<f64>, limit: f64, stretch: Option<f64>) -> Target {
        Target {
            name: name.into(),
            value,
            goal: match stretch {
                Some(s) => format!("<= {limit} (stretch <= {s})"),
                None => format!("<= {limit}"),
            },
            met: value.map(|v| v <= limit),
            stretch_met: stretch.and_then(|s| value.map(|v| v <= s)),
        }
    }

    /// A goal of `value >= limit` (stretch `value >= stretch`).
    pub fn at_least(name: &str, value: Option<f64>, limit: f64, stretch: Option<f64>) -> Target {
        Target {
            name: name.into(),
            value,
            goal: match stretch {
                Some(s) => format!(">= {limit} (stretch >= {s})"),
                None => format!(">= {limit}"),
            },
            met: value.map(|v| v >= limit),
            stretch_met: stretch.and_then(|s| value.map(|v| v >= s)),
        }
    }

    fn verdict(&self) -> String {
        let met = match self.met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "n/a",
        };
        match self.stretch_met {
            Some(true) => format!("{met}, stretch met"),
            Some(false) => format!("{met}, stretch missed"),
            None => met.to_string(),
        }
    }
}

fn targets_table(out: &mut String, targets: &[Target]) {
    let _ = writeln!(
        out,
        "\n{:<40} {:>10}  {:<28} verdict",
        "target", "value", "goal"
    );
    for t in targets {
        let value = t.value.map_or("n/a".to_string(), |v| format!("{v:.2}"));
        let _ = writeln!(
            out,
            "{:<40} {:>10}  {:<28} {}",
            t.name,
            value,
            t.goal,
            t.verdict()
        );
    }
}

fn summary_header(out: &mut String, first: &str) {
    let _ = writeln!(
        out,
        "{first:<24} {:>6} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "ops", "err", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms", "pairs/s"
    );
}

fn summary_row(out: &mut String, first: &str, s: &Summary) {
    let _ = writeln!(
        out,
        "{first:<24} {:>6} {:>4} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.1}",
        s.ops, s.errors, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms, s.mean_ms, s.per_s
    );
}

fn system_rows(out: &mut String, run: &SystemRun) {
    summary_row(out, &format!("{} 1 client", run.system), &run.one_client);
    summary_row(
        out,
        &format!("{} {} clients", run.system, run.clients),
        &run.many_clients,
    );
    if let Some(diag) = &run.register_pairs {
        summary_row(
            out,
            &format!("{} {}c 2xRegister", run.system, run.clients),
            diag,
        );
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// The lock benchmark's table.
pub fn lock_table(r: &LockReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "machine: {}", r.machine.line());
    let _ = writeln!(
        out,
        "one operation = acquire + release (etcd: Lock + Unlock); warm-up {} per client\n",
        r.opts.warmup
    );
    summary_header(&mut out, "system / clients");
    system_rows(&mut out, &r.hotdeploy);
    if let Some(etcd) = &r.etcd {
        system_rows(&mut out, etcd);
    }
    let fmt = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.2}"));
    let _ = writeln!(
        out,
        "\nratio ours/etcd: p50 (1 client) {}, throughput ({} clients) {}",
        fmt(r.p50_ratio_one_client),
        r.opts.clients,
        fmt(r.throughput_ratio_many_clients)
    );
    let rss = |run: &SystemRun| {
        run.rss_kib
            .iter()
            .map(|k| mib(*k))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "RSS after the run, MiB: hotdeploy [{}]",
        rss(&r.hotdeploy)
    );
    if let Some(etcd) = &r.etcd {
        let _ = writeln!(out, "RSS after the run, MiB: etcd [{}]", rss(etcd));
    }
    costs_table(
        &mut out,
        std::iter::once(&r.hotdeploy).chain(r.etcd.as_ref()),
    );
    let windows: Vec<_> = std::iter::once(&r.hotdeploy)
        .chain(r.etcd.as_ref())
        .flat_map(|run| &run.syscalls)
        .collect();
    if !windows.is_empty() {
        syscalls_table(&mut out, &windows);
    }
    targets_table(&mut out, &r.targets);
    out
}

/// Context switches and CPU per committed entry, per node and phase.
fn costs_table<'a>(out: &mut String, runs: impl Iterator<Item = &'a SystemRun>) {
    let _ = writeln!(
        out,
        "\nper committed entry, from /proc (warm-up included; ctx = context switches)"
    );
    let _ = writeln!(
        out,
        "{:<10} {:>7} {:<18} {:>8} {:>8}",
        "system", "clients", "node", "ctx", "cpu µs"
    );
    for run in runs {
        for (clients, costs) in [
            (1, &run.costs_one_client),
            (run.clients, &run.costs_many_clients),
        ] {
            for c in costs {
                let _ = writeln!(
                    out,
                    "{:<10} {:>7} {:<18} {:>8.1} {:>8.0}",
                    run.system,
                    clients,
                    format!("{} ({})", c.node, c.role),
                    c.ctx_switches_per_entry,
                    c.cpu_us_per_entry
                );
            }
        }
    }
}

/// `--syscalls`: sync calls per committed entry, per node.
fn syscalls_table(out: &mut String, windows: &[&SyscallWindow]) {
    let _ = writeln!(
        out,
        "\nsync syscalls under strace -f -c (per node; entries = raft entries the leader committed)"
    );
    let _ = writeln!(
        out,
        "{:<10} {:>7} {:>6} {:>7} {:<18} {:>9} {:>6} {:>15} {:>7} {:>11}",
        "system",
        "clients",
        "pairs",
        "entries",
        "node",
        "fdatasync",
        "fsync",
        "sync_file_range",
        "writes",
        "syncs/entry"
    );
    for w in windows {
        for n in &w.nodes {
            let _ = writeln!(
                out,
                "{:<10} {:>7} {:>6} {:>7} {:<18} {:>9} {:>6} {:>15} {:>7} {:>11}",
                w.system,
                w.clients,
                w.pairs,
                w.entries,
                format!("{} ({})", n.node, n.role),
                n.fdatasync,
                n.fsync,
                n.sync_file_range,
                n.writes,
                n.syncs_per_entry
                    .map_or("n/a".into(), |v| format!("{v:.2}"))
            );
        }
    }
}

/// The failover benchmark's table.
pub fn failover_table(r: &FailoverReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "machine: {}", r.machine.line());
    let _ = writeln!(
        out,
        "\n{:>5} {:>7} {:<22} {:>11} {:>9} {:>8}",
        "round", "killed", "new leader", "elected ms", "ms", "attempts"
    );
    for (i, round) in r.rounds.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:>5} {:>7} {:<22} {:>11} {:>9.0} {:>8}",
            i + 1,
            round.killed,
            round.answered_by,
            round
                .elected_ms
                .map_or("n/a".into(), |ms| format!("{ms:.0}")),
            round.ms,
            round.attempts
        );
    }
    let s = &r.summary;
    let _ = writeln!(
        out,
        "\nkill to acquire, {} kills: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms, mean {:.0} ms",
        s.ops, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms, s.mean_ms
    );
    let e = &r.election;
    let _ = writeln!(
        out,
        "kill to new leader named, {} kills ({} unseen): p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        e.ops, e.errors, e.p50_ms, e.p90_ms, e.p99_ms, e.max_ms
    );
    targets_table(&mut out, &r.targets);
    out
}

/// The memory benchmark's table.
pub fn memory_table(r: &MemoryReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "machine: {}", r.machine.line());
    let _ = writeln!(
        out,
        "{} hosts in {} groups, registered in {:.1} s ({:.0}/s with {} clients)\n",
        r.hosts_registered, r.opts.groups, r.register_s, r.register_per_s, r.opts.clients
    );
    let _ = writeln!(
        out,
        "{:>4} {:<9} {:>15} {:>8} {:>13} {:>13} {:>13}",
        "node", "role", "RSS before MiB", "RSS MiB", "peak RSS MiB", "data dir MiB", "on disk MiB"
    );
    for n in &r.nodes {
        let _ = writeln!(
            out,
            "{:>4} {:<9} {:>15} {:>8} {:>13} {:>13.1} {:>13.1}",
            n.id,
            n.role,
            mib(n.rss_kib_before),
            mib(n.rss_kib),
            mib(n.hwm_kib),
            n.data_dir_bytes as f64 / (1024.0 * 1024.0),
            n.data_dir_allocated_bytes as f64 / (1024.0 * 1024.0)
        );
    }
    targets_table(&mut out, &r.targets);
    out
}

/// The waiters benchmark's table.
pub fn waiters_table(r: &super::waiters::WaitersReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "machine: {}", r.machine.line());
    let g = &r.grants;
    let _ = writeln!(
        out,
        "{} waiters in a group of {} hosts (budget {}), {} connections\n",
        r.opts.waiters, r.opts.hosts, r.opts.budget, r.opts.connections
    );
    let _ = writeln!(
        out,
        "granted {} of {} in {:.2} s ({:.0} grants/s), errors {}",
        g.ops, r.opts.waiters, g.wall_s, g.per_s, g.errors
    );
    let _ = writeln!(
        out,
        "grant latency: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        g.p50_ms, g.p90_ms, g.p99_ms, g.max_ms
    );
    let cpu = |v: Option<f64>, unit: &str| v.map_or("n/a".to_string(), |v| format!("{v:.2}{unit}"));
    let _ = writeln!(
        out,
        "leader CPU: {} over the run ({} of one core)",
        cpu(r.leader_cpu_s, " s"),
        cpu(r.leader_cpu_pct, " %")
    );
    targets_table(&mut out, &r.targets);
    out
}

/// The `hd-bench rollout` table.
pub fn rollout_table(r: &super::rollout::RolloutReport) -> String {
    let mut out = String::new();
    let o = &r.opts;
    let _ = writeln!(out, "machine: {}", r.machine.line());
    let _ = writeln!(out, "load after the rollout: {:.2}", r.load1_after);
    let _ = writeln!(
        out,
        "{} simulated agents registered in {:.1} s; restart T = {} ms, verify = {} ms, \
         rotation free (no HAProxy)\n",
        o.agents, r.register_s, o.restart_ms, o.verify_ms
    );
    let _ = writeln!(
        out,
        "{:>6} {:>6} {:>6} {:>9} {:>9} {:>11} {:>7} {:>13} {:>7}",
        "N", "B", "T ms", "verify ms", "floor s", "measured s", "ratio", "last verify s", "ratio"
    );
    let _ = writeln!(
        out,
        "{:>6} {:>6} {:>6} {:>9} {:>9.2} {:>11.2} {:>7.3} {:>13.2} {:>7.3}",
        o.agents,
        o.budget,
        o.restart_ms,
        o.verify_ms,
        r.floor_s,
        r.measured_s,
        r.ratio,
        r.last_verify_s,
        r.last_verify_ratio
    );
    let t = &r.timeline;
    let _ = writeln!(
        out,
        "\nwhere the time went (the coordinators' phase times): in flight p50 {} ms per host \
         against T + verify = {} ms; batch utilization {:.2}",
        t.in_flight_p50_ms,
        o.restart_ms + o.verify_ms,
        t.utilization
    );
    let _ = writeln!(
        out,
        "{:<24} {:>6} {:>8} {:>8}",
        "stretch", "hosts", "p50 ms", "p90 ms"
    );
    for s in &t.stretches {
        let _ = writeln!(
            out,
            "{:<24} {:>6} {:>8} {:>8}",
            s.name, s.hosts, s.p50_ms, s.p90_ms
        );
    }
    let e = &r.entries;
    let kinds: Vec<String> = e
        .by_kind
        .iter()
        .map(|(kind, n)| format!("{kind} {n:.2}"))
        .collect();
    let _ = writeln!(
        out,
        "\nraft entries per host: {:.2} committed; proposals by kind: {}",
        e.entries,
        kinds.join(", ")
    );
    targets_table(&mut out, &r.targets);
    out
}

pub fn scale_table(r: &super::scale::ScaleReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "machine: {}", r.machine.line());
    let _ = writeln!(
        out,
        "heartbeat every {} ms, {} streams per connection, {} s window per level\n",
        r.opts.interval_ms, r.opts.streams_per_connection, r.opts.window_s
    );
    let _ = writeln!(
        out,
        "{:>7} {:>6} {:>6} {:>9} {:>8} {:>9} {:>6} {:>6} {:>8} {:>8} {:>8} {:>11}",
        "agents",
        "reg s",
        "open",
        "answers/s",
        "CPU %",
        "RSS MiB",
        "unrch",
        "pairs",
        "p50 ms",
        "p99 ms",
        "max ms",
        "load"
    );
    for l in &r.levels {
        let _ = writeln!(
            out,
            "{:>7} {:>6.1} {:>6} {:>9.0} {:>8.0} {:>9.1} {:>6} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>5.1}->{:<5.1}",
            l.agents,
            l.register_s,
            l.streams_open,
            l.answers_per_s,
            l.leader_cpu_pct,
            l.leader_rss_mib.unwrap_or(0.0),
            l.unreachable,
            l.lock.ops,
            l.lock.p50_ms,
            l.lock.p99_ms,
            l.lock.max_ms,
            l.load_before,
            l.load_after
        );
    }
    if let Some(why) = &r.stopped {
        let _ = writeln!(out, "\nramp stopped: {why}");
    }
    let _ = writeln!(
        out,
        "largest held (lock p99 < 50 ms, every stream up, none unreachable): {}",
        r.largest_held
            .map(|n| n.to_string())
            .unwrap_or_else(|| "none".into())
    );
    targets_table(&mut out, &r.targets);
    out
}
