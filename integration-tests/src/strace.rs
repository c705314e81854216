//! Counting a running process's syscalls with `strace -c`: the evidence of durability.
//!
//! [`SyscallCounter::attach`] starts `strace -f -c -p PID` on a process that is already
//! running (every thread, and the threads it starts later), waits until every thread is
//! traced, and [`SyscallCounter::finish`] stops strace with SIGINT, which detaches it and makes
//! it write its summary table, then parses that table into counts per syscall. Only the window
//! between the two calls is counted, so a benchmark or test can leave start-up and warm-up out.
//!
//! What it counts is [`SYNC_SYSCALLS`] (and, for context, `pwrite64` and `write`). strace stops
//! the tracee at every syscall while attached, so the traced process runs several times slower:
//! the counts are exact, timings taken meanwhile are not.
//!
//! strace is a separate process owned by a [`ChildGuard`], so it is killed with the test; a
//! killed tracer detaches its tracees, which keep running. Attaching needs ptrace rights over
//! the process (same user, and Yama's `ptrace_scope` at most 1 for a child of ours, or root):
//! when they are missing, [`SyscallCounter::attach`] fails with strace's own message.

use crate::proc::ChildGuard;
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The syscalls that make data durable.
pub const SYNC_SYSCALLS: &[&str] = &[
    "fsync",
    "fdatasync",
    "sync_file_range",
    "syncfs",
    "sync",
    "msync",
];

/// Also counted, to show how much was written.
const WRITE_SYSCALLS: &[&str] = &["pwrite64", "write", "writev", "pwritev"];

/// How long strace may take to attach to every thread, or to write its summary.
const STRACE_DEADLINE: Duration = Duration::from_secs(20);

/// strace attached to one process.
pub struct SyscallCounter {
    strace: ChildGuard,
    pid: u32,
    out: PathBuf,
}

/// Calls per syscall name.
pub type SyscallCounts = BTreeMap<String, u64>;

impl SyscallCounter {
    /// Attaches `strace -f -c` to `pid` (all its threads), writing into `dir` (`<label>.strace`
    /// for the summary, `<label>.strace.log` for strace's own messages). Returns once every
    /// thread of `pid` is traced.
    pub fn attach(pid: u32, dir: &Path, label: &str) -> Result<SyscallCounter, String> {
        let strace = which("strace").ok_or_else(|| {
            "strace not found in PATH or the sbin directories (apt-get install strace)".to_string()
        })?;
        let out = dir.join(format!("{label}.strace"));
        let log = dir.join(format!("{label}.strace.log"));
        let traced: Vec<&str> = SYNC_SYSCALLS
            .iter()
            .chain(WRITE_SYSCALLS)
            .copied()
            .collect();
        let args = vec![
            "-f".to_string(),
            "-c".into(),
            "-U".into(),
            "name,calls,errors".into(),
            "-e".into(),
            format!("trace={}", traced.join(",")),
            "-o".into(),
            out.to_string_lossy().into_owned(),
            "-p".into(),
            pid.to_string(),
        ];
        let mut guard = ChildGuard::spawn(&format!("strace {label}"), &strace, &args, &log, None);
        let deadline = Instant::now() + STRACE_DEADLINE;
        loop {
            if all_threads_traced(pid) {
                break;
            }
            if !guard.is_running() || Instant::now() >= deadline {
                return Err(format!(
                    "strace could not attach to pid {pid} within {STRACE_DEADLINE:?}: {}",
                    guard.log_tail(2000).trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(SyscallCounter {
            strace: guard,
            pid,
            out,
        })
    }

    /// The traced process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Detaches strace (SIGINT) and returns the counts of the window since [`Self::attach`].
    pub fn finish(mut self) -> Result<SyscallCounts, String> {
        let _ = self.strace.signal(Signal::SIGINT);
        if self.strace.wait_exit(STRACE_DEADLINE).is_none() {
            return Err(format!(
                "strace of pid {} did not exit within {STRACE_DEADLINE:?} of SIGINT",
                self.pid
            ));
        }
        let table = std::fs::read_to_string(&self.out)
            .map_err(|e| format!("cannot read {}: {e}", self.out.display()))?;
        parse_summary(&table)
    }
}

/// Whether every thread of `pid` has a tracer.
fn all_threads_traced(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        any = true;
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let tracer = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .map(str::trim)
            .unwrap_or("0");
        if tracer == "0" {
            return false;
        }
    }
    any
}

/// Parses `strace -c -U name,calls,errors` output: a header line, a dashed rule, one line per
/// syscall (`name calls [errors]`), another rule and a `total` line.
pub fn parse_summary(table: &str) -> Result<SyscallCounts, String> {
    let mut counts = SyscallCounts::new();
    let mut header = false;
    for line in table.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["syscall", "calls", ..] => header = true,
            [rule, ..] if rule.starts_with("---") => {}
            ["total", ..] => {}
            [name, calls, ..] if header => {
                let calls = calls
                    .parse::<u64>()
                    .map_err(|e| format!("bad call count in strace line {line:?}: {e}"))?;
                counts.insert(name.to_string(), calls);
            }
            _ => {}
        }
    }
    if !header {
        return Err(format!("not an strace summary: {table:?}"));
    }
    Ok(counts)
}

/// Looks for a command in PATH and then in the sbin directories (a non-root Debian PATH has no
/// `/usr/sbin`).
pub fn which(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/local/sbin", "/usr/sbin", "/sbin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|dir| dir.join(command))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_strace_summary() {
        let table = "syscall            calls    errors\n\
                     ------------------ --------- ---------\n\
                     fdatasync               412\n\
                     pwrite64                830\n\
                     fsync                     3         1\n\
                     ------------------ --------- ---------\n\
                     total                  1245         1\n";
        let counts = parse_summary(table).unwrap();
        assert_eq!(counts.get("fdatasync"), Some(&412));
        assert_eq!(counts.get("fsync"), Some(&3));
        assert_eq!(counts.get("pwrite64"), Some(&830));
        assert!(!counts.contains_key("total"));
    }

    #[test]
    fn an_empty_window_is_an_empty_table() {
        let table = "syscall            calls    errors\n\
                     ------------------ --------- ---------\n\
                     ------------------ --------- ---------\n\
                     total                     0\n";
        assert!(parse_summary(table).unwrap().is_empty());
        assert!(parse_summary("strace: attach: ptrace(PTRACE_SEIZE): EPERM").is_err());
    }
}
