//! Process identity and signalling through `/proc` and `kill(2)`.
//!
//! A pid alone does not name a process: pids are reused. The agent journals a child as
//! `(pid, start_time)`, where `start_time` is field 22 of `/proc/<pid>/stat` (clock ticks since
//! boot). A process is "the same" only while both match, so a restarted agent never adopts, or
//! signals, a stranger that happens to have inherited the pid.
//!
//! Parsing `stat` needs care: field 2 is the command name in parentheses and may itself contain
//! spaces and parentheses, so we split after the *last* `)`.
//!
//! A zombie (`Z`) or dead (`X`) process counts as gone: it runs no code and holds no sockets,
//! and an adopted child that is not ours to reap may stay a zombie for a moment.

use super::ChildRecord;
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub state: char,
    pub pgrp: i32,
    pub start_time: u64,
}

/// Parses the text of `/proc/<pid>/stat`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field N is fields[N - 3].
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(5 - 3)?.parse().ok()?,
        start_time: fields.get(22 - 3)?.parse().ok()?,
    })
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist.
pub(crate) fn read_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Whether the process named by `rec` still runs (same pid, same start time, not a zombie).
pub(crate) fn is_alive(rec: &ChildRecord) -> bool {
    match read_stat(rec.pid) {
        Some(st) => st.start_time == rec.start_time && !matches!(st.state, 'Z' | 'X'),
        None => false,
    }
}

/// The record of a live process, read from `/proc`.
pub(crate) fn record_of(pid: i32) -> Option<ChildRecord> {
    read_stat(pid).map(|st| ChildRecord {
        pid,
        start_time: st.start_time,
    })
}

/// Whether any live (non-zombie) process is left in process group `pgid`.
///
/// `kill(-pgid, 0)` answers cheaply when the group is empty; when it is not, zombies would count
/// too (under a PID 1 that does not reap), so we confirm by scanning `/proc`.
pub(crate) fn group_exists(pgid: i32) -> bool {
    if matches!(killpg(Pid::from_raw(pgid), None), Err(Errno::ESRCH)) {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_stat)
        .any(|st| st.pgrp == pgid && !matches!(st.state, 'Z' | 'X'))
}

/// Sends `sig` to the process group led by `rec` when it leads one (our children do: they are
/// spawned with `process_group(0)`), else to the process alone. Does nothing when `rec` is no
/// longer alive, so a reused pid is never signalled.
pub(crate) fn signal_record(rec: &ChildRecord, sig: Signal) {
    let Some(st) = read_stat(rec.pid) else { return };
    if st.start_time != rec.start_time {
        return;
    }
    if st.pgrp == rec.pid {
        let _ = killpg(Pid::from_raw(rec.pid), sig);
    } else {
        let _ = kill(Pid::from_raw(rec.pid), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_hostile_comm() {
        let text =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        let st = parse_stat(text).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!(st.pgrp, 1234);
        assert_eq!(st.start_time, 987654);
        assert_eq!(parse_stat("12 (x) S 1"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = record_of(std::process::id() as i32).unwrap();
        assert!(is_alive(&me));
        assert!(!is_alive(&ChildRecord {
            pid: me.pid,
            start_time: me.start_time + 1
        }));
        assert!(!is_alive(&ChildRecord {
            pid: i32::MAX - 1,
            start_time: 0
        }));
    }
}
