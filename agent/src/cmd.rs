//! Running a short-lived command: an argv, an environment, a deadline, and the tail of what it
//! said.
//!
//! Every external program the agent runs for a bounded time goes through here: `command`-mode
//! stop/start scripts, `systemctl`, rotation drain/undrain hooks, lifecycle hooks and `exec`
//! verify probes. They share three rules:
//!
//! - The program runs in its own process group, with stdin from `/dev/null`. When the deadline
//!   passes the whole group gets SIGKILL, and so does the program itself (it may have left its
//!   group), so a hook that forked a helper cannot outlive its timeout. After the SIGKILL we
//!   wait at most [`KILL_WAIT`] for it to go: a process stuck in the kernel (a hung mount)
//!   cannot hold the caller past its deadline; tokio reaps it whenever it does go.
//! - stdout and stderr are read concurrently into small ring buffers: only the last
//!   [`TAIL_BYTES`] are kept, so a chatty program cannot grow the agent's memory, and a full
//!   pipe never blocks it.
//! - We wait for the *process* to exit, not for its pipes to close. A start script that
//!   daemonizes (leaving a grandchild holding stderr) still finishes; we give the readers a short
//!   grace to collect what is buffered and move on.
//!
//! Errors are plain strings at the edges of the crate (each caller wraps them with its own
//! context: which hook, which unit), so this module's error type stays crate-private.

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How much of stdout/stderr we keep (the end of it).
pub(crate) const TAIL_BYTES: usize = 4096;

/// How long to wait for the pipes after the process has exited.
const PIPE_GRACE: Duration = Duration::from_millis(200);

/// The most we wait for a program to go after SIGKILL.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(5);

/// What a finished command left behind.
#[derive(Debug)]
pub(crate) struct CmdOutput {
    pub status: ExitStatus,
    pub stdout_tail: String,
    pub stderr_tail: String,
}

impl CmdOutput {
    /// `status 1: <stderr tail>` — the usual way to report a failed command.
    pub fn describe_failure(&self) -> String {
        if self.stderr_tail.is_empty() {
            format!("{}", self.status)
        } else {
            format!("{}; stderr: {}", self.status, self.stderr_tail)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CmdError {
    #[error("empty command")]
    Empty,
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{program}` did not finish within {after:?} and was killed")]
    Timeout { program: String, after: Duration },
    #[error("waiting for `{program}`: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

/// Runs `argv` with `env` added to the agent's environment, optionally in `cwd`, for at most
/// `timeout`.
pub(crate) async fn run(
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&Path>,
    timeout: Duration,
) -> Result<CmdOutput, CmdError> {
    let (program, args) = argv.split_first().ok_or(CmdError::Empty)?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(|source| CmdError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pgid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);
    let out = Tail::start(child.stdout.take());
    let err = Tail::start(child.stderr.take());

    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => {
            return Err(CmdError::Wait {
                program: program.clone(),
                source,
            })
        }
        Err(_) => {
            if let Some(pid) = pgid {
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = kill(pid, Signal::SIGKILL);
            }
            if tokio::time::timeout(KILL_WAIT, child.wait()).await.is_err() {
                tracing::warn!(program = %program, "still running {KILL_WAIT:?} after SIGKILL; not waiting for it");
            }
            out.abort();
            err.abort();
            return Err(CmdError::Timeout {
                program: program.clone(),
                after: timeout,
            });
        }
    };
    Ok(CmdOutput {
        status,
        stdout_tail: out.finish().await,
        stderr_tail: err.finish().await,
    })
}

/// A background reader keeping the last [`TAIL_BYTES`] of a pipe.
struct Tail {
    buf: Arc<Mutex<Vec<u8>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Tail {
    fn start<R: AsyncRead + Unpin + Send + 'static>(pipe: Option<R>) -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let task = pipe.map(|mut pipe| {
            let buf = buf.clone();
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
                    b.extend_from_slice(&chunk[..n]);
                    if b.len() > 2 * TAIL_BYTES {
                        let cut = b.len() - TAIL_BYTES;
                        b.drain(..cut);
                    }
                }
            })
        });
        Self { buf, task }
    }

    fn abort(&self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }

    async fn finish(mut self) -> String {
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(PIPE_GRACE, &mut task).await.is_err() {
                task.abort();
            }
        }
        let b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let start = b.len().saturating_sub(TAIL_BYTES);
        String::from_utf8_lossy(&b[start..]).trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn captures_status_env_and_tails() {
        let out = run(
            &sh("echo out-$X; echo err-$X >&2; exit 3"),
            &[("X".into(), "y".into())],
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout_tail, "out-y");
        assert_eq!(out.stderr_tail, "err-y");
        assert!(out.describe_failure().contains("err-y"));
    }

    #[tokio::test]
    async fn keeps_only_the_tail() {
        let out = run(
            &sh("i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done; echo END"),
            &[],
            None,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert!(out.stdout_tail.len() <= TAIL_BYTES);
        assert!(out.stdout_tail.ends_with("END"));
    }

    #[tokio::test]
    async fn timeout_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let t0 = std::time::Instant::now();
        let e = run(&sh(&script), &[], None, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, CmdError::Timeout { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "the forked helper outlived the timeout");
    }

    /// A program that leaves its process group is killed at the deadline too, and the call
    /// returns within the deadline plus the bounded wait after SIGKILL.
    #[tokio::test]
    async fn timeout_kills_a_program_that_left_its_group() {
        // Python joins the test's own process group, so SIGKILL to its original group misses
        // it; the marker says it got that far before the deadline.
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("left");
        let script = "import os, sys, time\n\
                      os.setpgid(0, os.getpgid(os.getppid()))\n\
                      open(sys.argv[1], 'w').write('left')\n\
                      time.sleep(60)";
        let argv = vec![
            "python3".to_string(),
            "-c".to_string(),
            script.to_string(),
            marker.display().to_string(),
        ];
        let t0 = std::time::Instant::now();
        let timeout = Duration::from_secs(3);
        let e = run(&argv, &[], None, timeout).await.unwrap_err();
        assert!(matches!(e, CmdError::Timeout { .. }), "{e}");
        assert!(marker.exists(), "the program never left its group");
        assert!(
            t0.elapsed() < timeout + KILL_WAIT,
            "run waited {:?}",
            t0.elapsed()
        );
    }

    #[tokio::test]
    async fn daemonizing_command_does_not_hang() {
        // A grandchild keeps stdout/stderr open for 30s; the command itself exits at once.
        let dir = tempfile::tempdir().unwrap();
        let pgfile = dir.path().join("pg");
        let script = format!(
            "echo $$ > {}; sleep 30 & echo started >&2",
            pgfile.display()
        );
        let t0 = std::time::Instant::now();
        let out = run(&sh(&script), &[], None, Duration::from_secs(5)).await;
        // Clean up the grandchild whatever happened.
        let pg: i32 = std::fs::read_to_string(&pgfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _ = killpg(Pid::from_raw(pg), Signal::SIGKILL);
        let out = out.unwrap();
        assert!(out.status.success());
        assert_eq!(out.stderr_tail, "started");
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn missing_program_names_it() {
        let e = run(
            &["/nonexistent/prog".into()],
            &[],
            None,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/prog"), "{e}");
    }
}
