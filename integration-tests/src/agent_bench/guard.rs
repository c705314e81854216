//! Killing what the bench started, however it ends.
//!
//! `hd-agent-bench` puts every temp dir it makes under one root directory (it points `TMPDIR`
//! there before starting anything), so every child's command line names the root: the agent's
//! config, the sample app's release dir, HAProxy's config. [`install`] spawns a task on the
//! harness's background runtime that, on SIGINT, SIGTERM or SIGHUP, SIGKILLs every process
//! whose command line mentions the root, removes it, and exits with 128 + the signal. The
//! binary calls [`crate::proc::kill_strays`] with the same root on its normal and error exits.
//!
//! [`Spawned`] is a directly spawned child (the sample app, timed by the bench itself) that is
//! SIGKILLed and reaped when dropped.

use crate::proc;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Spawns the signal watcher for processes under `root`.
pub fn install(root: &Path) {
    let root: PathBuf = root.to_path_buf();
    crate::background::handle().spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        let signo = tokio::select! {
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
        };
        let killed = proc::kill_strays(&root);
        let _ = std::fs::remove_dir_all(&root);
        eprintln!("hd-agent-bench: interrupted; killed {killed} child processes");
        std::process::exit(128 + signo);
    });
}

/// A child process killed and reaped on drop.
pub struct Spawned {
    child: Child,
    done: Option<ExitStatus>,
}

impl Spawned {
    /// Spawns `command` with null stdio.
    pub fn spawn(mut command: Command) -> std::io::Result<Spawned> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Ok(Spawned {
            child: command.spawn()?,
            done: None,
        })
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Polls (every 200 µs) for the exit, for at most `timeout`; returns when it was seen.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.done = Some(status);
                return Some(Instant::now());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.done.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
