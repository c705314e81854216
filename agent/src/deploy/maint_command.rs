//! The maintenance command as a process: found, started, waited for, killed.
//!
//! - The program is resolved before anything is disrupted ([`resolve`]): a command that does not
//!   exist, or is not executable, is refused while the host is still in rotation.
//! - It runs in a process group of its own, with stdin from `/dev/null` and stdout and stderr
//!   appended to a log file under the agent's data_dir (not a pipe: a pipe would break, and
//!   kill the command with SIGPIPE, when the agent dies; the file outlives the agent).
//! - The agent's own child is waited for with `wait(2)` ([`Running::wait`]), so its exit status
//!   is known. A command the agent did not spawn in this life (it restarted while the command
//!   ran) cannot be waited for: [`wait_foreign`] polls `/proc/<pid>` with its start time, and
//!   its exit status is unknown.
//! - A time limit ends the command with SIGTERM to its group, then SIGKILL after
//!   [`KILL_AFTER`].

use crate::journal::{CmdExit, MaintChild};
use crate::service::proc;
use crate::service::ChildRecord;
use nix::sys::signal::Signal;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::time::Instant;

/// After SIGTERM, how long the command's group has before SIGKILL.
pub(super) const KILL_AFTER: Duration = Duration::from_secs(10);
/// How often a command the agent is not the parent of is looked at.
const POLL: Duration = Duration::from_millis(250);

/// The executable `program` names: a path (with a `/`) as given, else the first match in
/// `PATH`. Refused when it does not exist or is not an executable file.
pub(super) fn resolve(program: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if executable(&p) {
            Ok(p)
        } else if p.exists() {
            Err(format!("{program} is not an executable file"))
        } else {
            Err(format!("{program} does not exist"))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("command {program:?} not found in PATH"))
}

/// The command, started by this agent.
pub(super) struct Running {
    child: tokio::process::Child,
    pub(super) record: MaintChild,
}

/// Starts `argv` (its program already resolved to `program`) with `env` added, in its own
/// process group, its output appended to `log`.
pub(super) fn spawn(
    program: &Path,
    argv: &[String],
    env: &[(&str, String)],
    log: &Path,
) -> Result<Running, String> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open the command log {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot open the command log {}: {e}", log.display()))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| "the command exited before its pid could be read".to_owned())?;
    let start_time = proc::read_stat(pid).map(|s| s.start_time).unwrap_or(0);
    Ok(Running {
        child,
        record: MaintChild { pid, start_time },
    })
}

impl Running {
    /// Waits for the command to end, killing it at `deadline`.
    pub(super) async fn wait(mut self, deadline: Option<Instant>) -> CmdExit {
        let status = match deadline {
            None => self.child.wait().await,
            Some(at) => match tokio::time::timeout_at(at, self.child.wait()).await {
                Ok(s) => s,
                Err(_) => {
                    let rec = child_record(&self.record, proc::boot_id());
                    proc::signal_record(&rec, Signal::SIGTERM);
                    if tokio::time::timeout(KILL_AFTER, self.child.wait())
                        .await
                        .is_err()
                    {
                        proc::signal_record(&rec, Signal::SIGKILL);
                        let _ = self.child.wait().await;
                    }
                    return CmdExit::TimedOut;
                }
            },
        };
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => CmdExit::Code(c),
                (None, Some(sig)) => CmdExit::Signal(sig),
                (None, None) => CmdExit::Unknown("no exit code nor signal".into()),
            },
            Err(e) => CmdExit::Unknown(format!("cannot wait for it: {e}")),
        }
    }
}

fn child_record(c: &MaintChild, boot: Option<&str>) -> ChildRecord {
    ChildRecord {
        pid: c.pid,
        start_time: c.start_time,
        boot_id: boot.map(str::to_owned),
    }
}

/// Whether the command `c`, started in boot `boot`, still runs.
pub(super) fn alive(c: &MaintChild, boot: Option<&str>) -> bool {
    proc::is_alive(&child_record(c, boot))
}

/// Waits for a command this agent is not the parent of (started before it restarted) to end,
/// killing it at `deadline`. Its exit status cannot be known.
pub(super) async fn wait_foreign(
    c: &MaintChild,
    boot: Option<&str>,
    deadline: Option<Instant>,
) -> CmdExit {
    let rec = child_record(c, boot);
    loop {
        if !proc::is_alive(&rec) {
            return CmdExit::Unknown(
                "it ended while the agent was not its parent (the agent restarted while it ran)"
                    .into(),
            );
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            proc::signal_record(&rec, Signal::SIGTERM);
            let kill_at = Instant::now() + KILL_AFTER;
            while proc::is_alive(&rec) && Instant::now() < kill_at {
                tokio::time::sleep(POLL).await;
            }
            proc::signal_record(&rec, Signal::SIGKILL);
            return CmdExit::TimedOut;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_through_path_and_missing_ones_are_named() {
        assert!(resolve("sh").is_ok());
        let e = resolve("no-such-command-hd").unwrap_err();
        assert!(e.contains("not found in PATH"), "{e}");
        let e = resolve("/nonexistent/cmd").unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("plain");
        std::fs::write(&f, "x").unwrap();
        let e = resolve(f.to_str().unwrap()).unwrap_err();
        assert!(e.contains("not an executable"), "{e}");
    }

    #[tokio::test]
    async fn exit_codes_timeouts_and_foreign_waits() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("maint.log");
        let sh = resolve("sh").unwrap();
        let argv = |s: &str| vec!["sh".to_owned(), "-c".to_owned(), s.to_owned()];
        let r = spawn(&sh, &argv("echo out; echo err >&2; exit 3"), &[], &log).unwrap();
        assert_eq!(r.wait(None).await, CmdExit::Code(3));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("out") && text.contains("err"), "{text}");

        let r = spawn(&sh, &argv("sleep 30"), &[], &log).unwrap();
        let at = Instant::now() + Duration::from_millis(200);
        assert_eq!(r.wait(Some(at)).await, CmdExit::TimedOut);

        // A process the waiter is not the parent of: polled until gone.
        let r = spawn(&sh, &argv("sleep 0.5"), &[], &log).unwrap();
        let rec = r.record.clone();
        assert!(alive(&rec, proc::boot_id()));
        let reaper = tokio::spawn(r.wait(None));
        let exit = wait_foreign(&rec, proc::boot_id(), None).await;
        assert!(matches!(exit, CmdExit::Unknown(_)), "{exit:?}");
        assert_eq!(reaper.await.unwrap(), CmdExit::Code(0));
    }
}
