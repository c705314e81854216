//! The maintenance command as a process: found, started, waited for, killed.
//!
//! - The program is resolved before anything is disrupted ([`resolve`]): a command that does not
//!   exist, or is not executable, is refused while the host is still in rotation.
//! - It runs in a process group of its own, with stdin from `/dev/null` and stdout and stderr
//!   appended to a log file under the agent's data_dir (not a pipe: a pipe would break, and
//!   kill the command with SIGPIPE, when the agent dies; the file outlives the agent).
//! - **Its pid is known before it runs.** [`spawn`] starts `/bin/sh` at a *gate*: a pipe from the
//!   agent on its stdin, read before it `exec`s the command (so the pid, its start time and
//!   process group are the command's own). The caller journals the pid, then [`Gated::open`]
//!   writes `go`. If the agent dies before that, its end of the pipe closes with it, the shell
//!   reads end-of-file, notes in the log that the command was not started, and exits 125
//!   without running it; [`Gated::close`] does the same on purpose (the pid could not be
//!   journaled). So a journal with no pid for the command means that the command never ran,
//!   and a restarted agent can say so instead of guessing. (The agent's end of the pipe is
//!   close-on-exec: no other child of the agent keeps the gate open.)
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

/// The shell run at the gate: `$0` is the program, `"$@"` its arguments; stdin is the gate.
const GATE_SCRIPT: &str = "IFS= read -r gate && [ \"$gate\" = go ] || { echo \"hotdeploy-agent: \
    the maintenance command was not started: the agent ended before it journaled the command's \
    pid\" >&2; exit 125; }; exec \"$0\" \"$@\" </dev/null";

/// What `go` is written as.
const GATE_OPEN: &[u8] = b"go\n";

/// The command's process, started by this agent and waiting at its gate.
pub(super) struct Gated {
    child: tokio::process::Child,
    gate: tokio::process::ChildStdin,
    pub(super) record: MaintChild,
}

/// The command, started by this agent and let run.
pub(super) struct Running {
    child: tokio::process::Child,
    pub(super) record: MaintChild,
}

/// Starts `argv` (its program already resolved to `program`) with `env` added, in its own
/// process group, its output appended to `log`, held at its gate until [`Gated::open`].
pub(super) fn spawn(
    program: &Path,
    argv: &[String],
    env: &[(&str, String)],
    log: &Path,
) -> Result<Gated, String> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open the command log {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot open the command log {}: {e}", log.display()))?;
    let mut cmd = tokio::process::Command::new(SHELL);
    cmd.arg("-c")
        .arg(GATE_SCRIPT)
        .arg(program)
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start {} (at its gate, {SHELL}): {e}",
            program.display()
        )
    })?;
    let gate = child
        .stdin
        .take()
        .ok_or_else(|| "the command's gate has no pipe".to_owned())?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| "the command exited before its pid could be read".to_owned())?;
    let start_time = proc::read_stat(pid).map(|s| s.start_time).unwrap_or(0);
    Ok(Gated {
        child,
        gate,
        record: MaintChild { pid, start_time },
    })
}

/// The shell that holds the command at its gate.
const SHELL: &str = "/bin/sh";

impl Gated {
    /// Lets the command run. An error means it did not: the gate could not be written (the
    /// shell is gone), and it has been waited for.
    pub(super) async fn open(mut self) -> Result<Running, String> {
        use tokio::io::AsyncWriteExt;
        let written = self.gate.write_all(GATE_OPEN).await;
        drop(self.gate);
        match written {
            Ok(()) => Ok(Running {
                child: self.child,
                record: self.record,
            }),
            Err(e) => {
                let _ = self.child.wait().await;
                Err(format!("its gate could not be opened: {e}"))
            }
        }
    }

    /// Sends the command away unrun: the gate closes, the shell exits without running it.
    pub(super) async fn close(mut self) {
        drop(self.gate);
        let _ = self.child.wait().await;
    }
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

    /// The command does not run before its gate opens, and never runs when the gate closes
    /// unopened (the agent died, or could not journal the pid); the log says why.
    #[tokio::test]
    async fn a_gated_command_runs_only_once_its_gate_opens() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("maint.log");
        let marker = dir.path().join("ran");
        let sh = resolve("sh").unwrap();
        let argv = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("echo $$ > {}", marker.display()),
        ];
        let gated = spawn(&sh, &argv, &[], &log).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!marker.exists(), "the command ran before its gate opened");
        assert!(
            alive(&gated.record, proc::boot_id()),
            "the shell waits at its gate"
        );
        gated.close().await;
        assert!(
            !marker.exists(),
            "the command ran although its gate was closed"
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("was not started"), "{text}");

        // Opened: the command runs under the pid the gate was spawned with.
        let gated = spawn(&sh, &argv, &[], &log).unwrap();
        let pid = gated.record.pid;
        let running = gated.open().await.unwrap();
        assert_eq!(running.wait(None).await, CmdExit::Code(0));
        let ran = std::fs::read_to_string(&marker).unwrap();
        assert_eq!(
            ran.trim(),
            pid.to_string(),
            "the command runs as the gated pid"
        );
    }

    #[tokio::test]
    async fn exit_codes_timeouts_and_foreign_waits() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("maint.log");
        let sh = resolve("sh").unwrap();
        let argv = |s: &str| vec!["sh".to_owned(), "-c".to_owned(), s.to_owned()];
        let run = |script: &str| spawn(&sh, &argv(script), &[], &log).unwrap().open();
        let r = run("echo out; echo err >&2; exit 3").await.unwrap();
        assert_eq!(r.wait(None).await, CmdExit::Code(3));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("out") && text.contains("err"), "{text}");

        let r = run("sleep 30").await.unwrap();
        let at = Instant::now() + Duration::from_millis(200);
        assert_eq!(r.wait(Some(at)).await, CmdExit::TimedOut);

        // A process the waiter is not the parent of: polled until gone.
        let r = run("sleep 0.5").await.unwrap();
        let rec = r.record.clone();
        assert!(alive(&rec, proc::boot_id()));
        let reaper = tokio::spawn(r.wait(None));
        let exit = wait_foreign(&rec, proc::boot_id(), None).await;
        assert!(matches!(exit, CmdExit::Unknown(_)), "{exit:?}");
        assert_eq!(reaper.await.unwrap(), CmdExit::Code(0));
    }
}
