//! Killing what the bench started when it is interrupted.
//!
//! The harness guards kill their processes on drop, panics included. A signal is different:
//! Ctrl-C (SIGINT), SIGTERM or SIGHUP ends `hd-bench` without running destructors, and the
//! coordinators and etcd members, which live in process groups of their own, would survive.
//! So every cluster's temp dir is [`track`]ed as it starts (each child's command line names
//! it: a config path or a data dir), and [`install`] spawns a task that, on one of those
//! signals, SIGKILLs every process whose command line mentions a tracked dir, removes the dirs,
//! and exits with 128 + the signal number.

use crate::proc;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::runtime::Runtime;
use tokio::signal::unix::{signal, SignalKind};

static TRACKED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Remembers `dir` as the marker of processes to kill on a signal.
pub fn track(dir: &Path) {
    TRACKED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(dir.to_path_buf());
}

/// Kills every tracked process and removes the tracked dirs.
pub fn kill_tracked() -> usize {
    let dirs = std::mem::take(
        &mut *TRACKED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let mut killed = 0;
    for dir in dirs {
        killed += proc::kill_strays(&dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
    killed
}

/// Spawns the signal watcher on `rt`.
pub fn install(rt: &Runtime) -> std::io::Result<()> {
    let _guard = rt.enter();
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    rt.spawn(async move {
        let signo = tokio::select! {
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
        };
        let killed = kill_tracked();
        eprintln!("hd-bench: interrupted; killed {killed} child processes");
        std::process::exit(128 + signo);
    });
    Ok(())
}
