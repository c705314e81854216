//! Process identity and signalling through `/proc` and `kill(2)`.
//!
//! A pid alone does not name a process: pids are reused. The agent journals a child as
//! `(pid, start_time, boot_id)`, where `start_time` is field 22 of `/proc/<pid>/stat` (clock
//! ticks since boot) and `boot_id` is `/proc/sys/kernel/random/boot_id`. A process is "the
//! same" only while all three match, so a restarted agent never adopts, or signals, a stranger
//! that happens to have inherited the pid, not even after a reboot (when start times begin
//! again from zero and an early-boot process may match one of the last boot).
//!
//! A process group id is a pid too, and is reused the same way once the group is empty and its
//! leader reaped. So a group is signalled only while it provably still is ours: while its
//! leader runs (same start time), or, for a child the agent spawned, while the leader is an
//! unreaped zombie (see `exec`). Stragglers of an adopted group whose leader is gone are
//! signalled one by one, and only those started between the leader and the moment it was seen
//! gone ([`kill_stragglers`]).
//!
//! When the journal's record is lost or unreadable, the service is found by where it runs:
//! [`find_in_store`] looks for a process group leader whose working directory is inside the
//! release store (the agent starts every `exec` service in its release directory). A service
//! that changes its working directory is not found this way.
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
use std::path::Path;
use std::sync::OnceLock;

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

/// This boot's id (`/proc/sys/kernel/random/boot_id`), read once.
pub(crate) fn boot_id() -> Option<&'static str> {
    static ID: OnceLock<Option<String>> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// Whether `rec` was recorded during this boot (a record without a boot id, from an older
/// agent, is given the benefit of the doubt).
fn this_boot(rec: &ChildRecord) -> bool {
    match (&rec.boot_id, boot_id()) {
        (Some(recorded), Some(now)) => recorded == now,
        _ => true,
    }
}

/// Whether the process named by `rec` still runs (same pid, start time and boot, not a zombie).
pub(crate) fn is_alive(rec: &ChildRecord) -> bool {
    if !this_boot(rec) {
        return false;
    }
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
        boot_id: boot_id().map(str::to_owned),
    })
}

/// Now, in the clock ticks of `start_time` (since boot).
pub(crate) fn now_ticks() -> Option<u64> {
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()?;
    Some((secs * hz as f64) as u64 + 1)
}

/// Live (non-zombie) processes of `/proc`, with their stat.
fn processes() -> Vec<(i32, ProcStat)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .filter(|(_, st)| !matches!(st.state, 'Z' | 'X'))
        .collect()
}

/// SIGKILLs, one by one, the members of the group that `rec` led and that started between the
/// leader and `gone` (when the leader was seen gone): a group id reused after our group
/// emptied only has members started later, and is left alone.
pub(crate) fn kill_stragglers(rec: &ChildRecord, gone: u64) -> usize {
    let mut killed = 0;
    for (pid, st) in processes() {
        if st.pgrp == rec.pid && st.start_time >= rec.start_time && st.start_time <= gone {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed += 1;
        }
    }
    killed
}

/// Whether any member of the group `rec` led, started between the leader and `gone`, is left.
pub(crate) fn stragglers_left(rec: &ChildRecord, gone: u64) -> bool {
    processes().into_iter().any(|(_, st)| {
        st.pgrp == rec.pid && st.start_time >= rec.start_time && st.start_time <= gone
    })
}

/// The service as found running from the release store under `releases` (see the module docs):
/// the oldest process group leader whose working directory is inside it.
pub(crate) fn find_in_store(releases: &Path) -> Option<ChildRecord> {
    let releases = std::fs::canonicalize(releases).ok()?;
    let me = std::process::id() as i32;
    let mut found: Vec<(i32, ProcStat)> = processes()
        .into_iter()
        .filter(|(pid, st)| *pid != me && st.pgrp == *pid)
        .filter(|(pid, _)| {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| cwd.starts_with(&releases) && cwd != releases)
        })
        .collect();
    found.sort_by_key(|(_, st)| st.start_time);
    if found.len() > 1 {
        tracing::warn!(
            pids = ?found.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            "several service process groups run from the release store; adopting the oldest"
        );
    }
    let (pid, st) = found.into_iter().next()?;
    Some(ChildRecord {
        pid,
        start_time: st.start_time,
        boot_id: boot_id().map(str::to_owned),
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
    if st.start_time != rec.start_time || !this_boot(rec) || matches!(st.state, 'Z' | 'X') {
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
            start_time: me.start_time + 1,
            ..me.clone()
        }));
        assert!(!is_alive(&ChildRecord {
            pid: i32::MAX - 1,
            start_time: 0,
            boot_id: None,
        }));
    }

    /// A record from another boot never names a live process, whatever its pid and start time
    /// (after a reboot, start times begin again from zero).
    #[test]
    fn a_record_of_another_boot_is_not_alive() {
        let me = record_of(std::process::id() as i32).unwrap();
        assert!(me.boot_id.is_some(), "no boot id on this machine");
        assert!(is_alive(&me));
        let other_boot = ChildRecord {
            boot_id: Some("00000000-0000-0000-0000-000000000000".into()),
            ..me.clone()
        };
        assert!(!is_alive(&other_boot));
        // An older agent's record, without a boot id, still names its process.
        assert!(is_alive(&ChildRecord {
            boot_id: None,
            ..me
        }));
    }
}
