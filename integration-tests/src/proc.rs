//! Child processes that cannot outlive their test.
//!
//! A multi-process test that panics halfway must not leave a coordinator or an agent running: it
//! would hold ports and confuse the next test. [`ChildGuard`] owns one spawned binary. The child
//! runs in its own process group (so signals reach anything it forks), its stdout and stderr go
//! to a log file (printed in failure messages via [`ChildGuard::log_tail`]), and when the guard
//! is dropped — normally or while unwinding from a panic — the whole group gets SIGKILL and is
//! reaped.
//!
//! Some processes escape the group on purpose: the agent starts the supervised app in a process
//! group of its own, so that an agent restart does not take the service down. Those are found by
//! their command line: a guard created with a *stray marker* (the test's temp dir) also kills,
//! on drop, every process whose `/proc/<pid>/cmdline` mentions that directory. An explicit
//! [`ChildGuard::kill`] leaves strays alone, so a test can kill -9 an agent and check that its
//! restarted self re-adopts the still-running app.
//!
//! Every wait here is a bounded loop with a deadline. [`run_with_timeout`] does the same for
//! short-lived commands such as `hotdeployctl`.
//!
//! `Drop` does not run when the test process itself is killed (nextest's timeout, Ctrl-C,
//! `kill -9`). So every child is started through the `hd-pdeathsig` launcher, which has the
//! kernel SIGKILL it when the thread that started it exits (`PR_SET_PDEATHSIG`; start children
//! from a thread that outlives them, such as the test's own). Strays in process groups of their
//! own are not children of ours; they learn the test's pid from [`HARNESS_PID_ENV`], which every
//! child inherits, and the sample app exits when that process is gone.

use crate::bins;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal as Sig;

/// How often bounded waits poll.
const POLL: Duration = Duration::from_millis(20);

/// Set in every child's environment to the pid of the test process that owns it. Programs of
/// this crate that may outlive their direct parent (the sample app, started by an agent in a
/// process group of its own) watch that pid and exit when it is gone.
pub const HARNESS_PID_ENV: &str = "HD_HARNESS_PID";

/// `command` run through `hd-pdeathsig`, so that the kernel kills it when the calling thread
/// exits, with [`HARNESS_PID_ENV`] set. Program, arguments, environment changes and working
/// directory are carried over; stdio and the process group are for the caller to set.
pub fn dies_with_this_thread(command: &Command) -> Command {
    let me = std::process::id().to_string();
    let mut launcher = Command::new(bins::hd_pdeathsig());
    launcher
        .arg(&me)
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(v) => launcher.env(key, v),
            None => launcher.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        launcher.current_dir(dir);
    }
    launcher.env(HARNESS_PID_ENV, me);
    launcher
}

/// A spawned process group, killed when dropped.
pub struct ChildGuard {
    name: String,
    child: Child,
    log: PathBuf,
    stray_marker: Option<PathBuf>,
    exit: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `program args...` in its own process group, appending stdout and stderr to `log`.
    /// `RUST_LOG` defaults to `info`. Panics if the process cannot be started.
    pub fn spawn<S: AsRef<OsStr>>(
        name: &str,
        program: &Path,
        args: &[S],
        log: &Path,
        stray_marker: Option<&Path>,
    ) -> ChildGuard {
        let mut command = Command::new(program);
        command.args(args);
        Self::spawn_command(name, command, log, stray_marker)
    }

    /// Like [`ChildGuard::spawn`], for a prepared command (extra environment, working dir).
    pub fn spawn_command(
        name: &str,
        command: Command,
        log: &Path,
        stray_marker: Option<&Path>,
    ) -> ChildGuard {
        let mut command = dies_with_this_thread(&command);
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{name}: cannot open log {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("{name}: cannot dup log handle: {e}"));
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {command:?}: {e}"));
        ChildGuard {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            stray_marker: stray_marker.map(Path::to_path_buf),
            exit: None,
        }
    }

    /// The name given at spawn time, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's pid, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file holding the child's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `max_bytes` of the log, for failure messages.
    pub fn log_tail(&self, max_bytes: u64) -> String {
        log_tail(&self.log, max_bytes)
    }

    /// Sends `sig` to the child's whole process group.
    pub fn signal(&self, sig: Signal) -> nix::Result<()> {
        killpg(self.pgid(), sig)
    }

    /// Whether the child is still running (a stopped child counts as running).
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILLs the process group and reaps the child. Strays are left alone (see the module
    /// docs); they are killed when the guard is dropped.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            let _ = killpg(self.pgid(), Signal::SIGKILL);
        }
        // SIGKILL cannot be caught; a stopped process dies too. Bounded anyway.
        let status = self.wait_exit(Duration::from_secs(10));
        if status.is_none() {
            eprintln!(
                "harness: {} (pid {}) survived SIGKILL for 10s",
                self.name,
                self.pid()
            );
        }
        status
    }

    /// Kills the group like [`ChildGuard::kill`] and forgets the stray marker, so dropping the
    /// guard does not kill processes the child left running (an agent's supervised app).
    pub fn kill_keep_strays(mut self) -> Option<ExitStatus> {
        self.stray_marker = None;
        self.kill()
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
            }
        }
        self.exit
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // The group may outlive its leader (a forked grandchild), so always signal it.
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        let _ = self.wait_exit(Duration::from_secs(10));
        if let Some(marker) = self.stray_marker.take() {
            kill_strays(&marker);
        }
    }
}

/// SIGKILLs every process (other than this one) whose command line contains `marker`. Returns
/// how many were signalled.
pub fn kill_strays(marker: &Path) -> usize {
    let needle = marker.as_os_str().as_encoded_bytes();
    if needle.is_empty() {
        return 0;
    }
    let me = std::process::id();
    let mut killed = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            killed += 1;
        }
    }
    killed
}

/// Pids of live processes whose command line contains `marker` (e.g. a supervised app).
pub fn pids_matching(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (pid != me && cmd.contains(marker)).then_some(pid)
        })
        .collect()
}

/// The last `max_bytes` of a file, lossily decoded; a note if it cannot be read.
pub fn log_tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Runs a short-lived command to completion with captured output, in its own process group.
/// If it runs past `timeout`, the group is SIGKILLed and the returned output's stderr ends with
/// a `[harness] timed out` line (its status is then the kill signal's).
pub fn run_with_timeout(command: Command, timeout: Duration) -> Output {
    let mut command = dies_with_this_thread(&command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let pgid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let failed = |e: std::io::Error| Output {
        status: ExitStatus::from_raw(1 << 8),
        stdout: Vec::new(),
        stderr: format!("[harness] waiting for the command failed: {e}\n").into_bytes(),
    };
    match rx.recv_timeout(timeout) {
        Ok(result) => result.unwrap_or_else(failed),
        Err(_) => {
            let _ = killpg(pgid, Signal::SIGKILL);
            let mut output = match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(result) => result.unwrap_or_else(failed),
                Err(_) => Output {
                    status: ExitStatus::from_raw(libc::SIGKILL),
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                },
            };
            output.stderr.extend_from_slice(
                format!("\n[harness] timed out after {timeout:?}: {command:?}\n").as_bytes(),
            );
            output
        }
    }
}
