//! Memory and CPU of a process, read from `/proc/<pid>/status` and `/proc/<pid>/stat`.
//!
//! `VmRSS` is the resident set now and `VmHWM` its peak since the process started (both in
//! kB in `status`). CPU time is `utime + stime` (fields 14 and 15 of `stat`), in clock ticks
//! (`USER_HZ`, 100 on Linux).

use std::time::Duration;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    /// `VmRSS`, bytes.
    pub rss: u64,
    /// `VmHWM`, bytes.
    pub hwm: u64,
    /// `Threads`.
    pub threads: u64,
    /// `utime + stime`.
    pub cpu: Duration,
}

/// Reads `pid` now; `None` if it is gone or unreadable.
pub fn read(pid: u32) -> Option<Reading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(Reading {
        rss: field("VmRSS:")? * 1024,
        hwm: field("VmHWM:")? * 1024,
        threads: field("Threads:").unwrap_or(0),
        cpu: cpu_time(pid)?,
    })
}

/// `utime + stime` of `pid`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its `)` are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / clock_ticks(),
    ))
}

/// Clock ticks per second in `/proc`: Linux reports these in `USER_HZ`, which is 100 on every
/// architecture we run on (what `sysconf(_SC_CLK_TCK)` returns).
pub fn clock_ticks() -> f64 {
    100.0
}

/// `cutime + cstime` of this process: the CPU time of its waited-for children.
pub fn children_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // cutime is field 16, cstime field 17.
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (cutime + cstime) as f64 / clock_ticks(),
    ))
}
