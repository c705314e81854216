//! The `exec` supervisor: one task per supervised service process.
//!
//! The task owns the process and waits for one of three things:
//!
//! - **A stop request** from the controller (stop or restart). It sends SIGTERM to the process
//!   group, waits up to `stop_timeout` for the leader, then SIGKILLs the group. Stragglers left
//!   in the group get the rest of `stop_timeout`, then SIGKILL too. This is not a crash: `alive`
//!   is not touched.
//! - **The process exiting on its own.** `alive` goes false, the journal hears `None`, leftovers
//!   of the old group are killed (a worker still holding the port would make the restart fail),
//!   and the task respawns the same release with exponential backoff ([`BACKOFF_MIN`] doubling
//!   to [`BACKOFF_MAX`]; a process that ran for [`BACKOFF_RESET`] starts the ladder over). A stop
//!   request during the backoff ends the task at once.
//! - **The controller going away** (its stop sender dropped): the task ends *without* touching
//!   the process. That is what an agent exit looks like, and the service must survive it.
//!
//! A process we spawned is our child: we `wait()` for it. A process adopted after an agent
//! restart is not (its parent died), so we poll `/proc/<pid>/stat` every [`ADOPTED_POLL`] and
//! treat a different start time, a zombie, or no entry as "exited".
//!
//! stdout and stderr are inherited from the agent (journald), never piped through it: a pipe
//! would die with the agent and take the service down with SIGPIPE.

use super::proc::{group_exists, is_alive, record_of, signal_record};
use super::{ChildRecord, ServiceError};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A process that ran this long before dying restarts the backoff ladder.
pub(crate) const BACKOFF_RESET: Duration = Duration::from_secs(30);
/// How often an adopted (non-child) process is checked.
pub(crate) const ADOPTED_POLL: Duration = Duration::from_millis(200);
/// How often a stopping process is checked.
const STOP_POLL: Duration = Duration::from_millis(50);
/// The most we wait after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// State the supervisor shares with the controller.
pub(crate) struct Shared {
    pub alive: watch::Sender<bool>,
    pub child: Mutex<Option<ChildRecord>>,
    pub on_child: Arc<dyn Fn(Option<ChildRecord>) + Send + Sync>,
}

impl Shared {
    pub fn set_child(&self, c: Option<ChildRecord>) {
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = c.clone();
        (self.on_child)(c);
    }
}

/// Everything needed to (re)spawn the service on one release, already resolved.
#[derive(Debug, Clone)]
pub(crate) struct SpawnSpec {
    pub release: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

/// A supervised process.
pub(crate) enum Proc {
    /// Spawned by this agent: we can `wait()` for it.
    Own {
        child: tokio::process::Child,
        rec: ChildRecord,
    },
    /// Adopted from a previous agent run.
    Adopted(ChildRecord),
}

impl Proc {
    pub fn record(&self) -> &ChildRecord {
        match self {
            Proc::Own { rec, .. } | Proc::Adopted(rec) => rec,
        }
    }

    /// Resolves when the process has exited; says how.
    async fn exited(&mut self) -> String {
        match self {
            Proc::Own { child, .. } => match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("wait failed: {e}"),
            },
            Proc::Adopted(rec) => {
                while is_alive(rec) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                "adopted process is gone".to_string()
            }
        }
    }
}

/// Spawns the service in its own process group, stdin null, stdout/stderr inherited.
pub(crate) fn spawn(spec: &SpawnSpec) -> Result<Proc, ServiceError> {
    let what = format!("exec {}", spec.argv.join(" "));
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| ServiceError::Config("service.exec is empty".into()))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd.spawn().map_err(|source| ServiceError::Spawn {
        what: what.clone(),
        source,
    })?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| ServiceError::Failed {
            what: what.clone(),
            reason: "exited before its pid could be read".into(),
        })?;
    // Unreaped, the process stays in /proc even if it already exited.
    let rec = record_of(pid).ok_or_else(|| ServiceError::Failed {
        what,
        reason: format!("/proc/{pid}/stat unreadable right after spawn"),
    })?;
    tracing::info!(pid, release = %spec.release, "service started");
    Ok(Proc::Own { child, rec })
}

/// The controller's handle on a supervisor task.
pub(crate) struct Running {
    stop_tx: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServiceError>>,
}

impl Running {
    /// Starts supervising `proc` (already announced through `shared`).
    pub fn start(proc: Proc, spec: SpawnSpec, shared: Arc<Shared>, stop_timeout: Duration) -> Self {
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(proc, spec, shared, stop_timeout, stop_rx));
        Self { stop_tx, task }
    }

    /// Stops the process (or the backoff loop) and waits for the task to end.
    pub async fn stop(self) -> Result<(), ServiceError> {
        let _ = self.stop_tx.send(());
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServiceError::Failed {
                what: "exec supervisor".into(),
                reason: e.to_string(),
            }),
        }
    }
}

enum Event {
    Stop,
    Detach,
    Exited(String),
}

async fn supervise(
    mut proc: Proc,
    spec: SpawnSpec,
    shared: Arc<Shared>,
    stop_timeout: Duration,
    mut stop_rx: oneshot::Receiver<()>,
) -> Result<(), ServiceError> {
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let event = tokio::select! {
            r = &mut stop_rx => if r.is_ok() { Event::Stop } else { Event::Detach },
            how = proc.exited() => Event::Exited(how),
        };
        let how = match event {
            Event::Stop => {
                let r = stop_proc(proc, stop_timeout).await;
                shared.set_child(None);
                return r;
            }
            Event::Detach => return Ok(()),
            Event::Exited(how) => how,
        };
        let pid = proc.record().pid;
        tracing::warn!(pid, %how, release = %spec.release, "service exited on its own; restarting");
        shared.alive.send_replace(false);
        shared.set_child(None);
        if group_exists(pid) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        drop(proc);
        if started.elapsed() >= BACKOFF_RESET {
            backoff = BACKOFF_MIN;
        }
        proc = loop {
            tokio::select! {
                r = &mut stop_rx => {
                    if r.is_ok() {
                        // Stopped while down: nothing to kill, and not a crash any more.
                        shared.alive.send_replace(true);
                    }
                    return Ok(());
                }
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            match spawn(&spec) {
                Ok(p) => break p,
                Err(e) => tracing::warn!(error = %e, ?backoff, "service restart failed; retrying"),
            }
        };
        shared.set_child(Some(proc.record().clone()));
        shared.alive.send_replace(true);
    }
}

/// SIGTERM to the group, SIGKILL after `stop_timeout`, then wait for the group to empty.
async fn stop_proc(proc: Proc, stop_timeout: Duration) -> Result<(), ServiceError> {
    let deadline = Instant::now() + stop_timeout;
    let rec = proc.record().clone();
    let pgid = Pid::from_raw(rec.pid);
    match proc {
        Proc::Own { mut child, .. } => {
            // Still unreaped, so the pid cannot have been reused: signal the group directly.
            let _ = killpg(pgid, Signal::SIGTERM);
            if tokio::time::timeout_at(deadline, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    pid = rec.pid,
                    ?stop_timeout,
                    "service ignored SIGTERM; SIGKILL"
                );
                let _ = killpg(pgid, Signal::SIGKILL);
                match tokio::time::timeout(KILL_WAIT, child.wait()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(stop_failed(&rec, e.to_string())),
                    Err(_) => return Err(stop_failed(&rec, "still running after SIGKILL".into())),
                }
            }
        }
        Proc::Adopted(rec) => {
            signal_record(&rec, Signal::SIGTERM);
            if !wait_gone(&rec, deadline).await {
                tracing::warn!(
                    pid = rec.pid,
                    ?stop_timeout,
                    "service ignored SIGTERM; SIGKILL"
                );
                signal_record(&rec, Signal::SIGKILL);
                if !wait_gone(&rec, Instant::now() + KILL_WAIT).await {
                    return Err(stop_failed(&rec, "still running after SIGKILL".into()));
                }
            }
        }
    }
    // Workers left in the group get what remains of stop_timeout.
    while group_exists(rec.pid) && Instant::now() < deadline {
        tokio::time::sleep(STOP_POLL).await;
    }
    if group_exists(rec.pid) {
        let _ = killpg(pgid, Signal::SIGKILL);
        let until = Instant::now() + KILL_WAIT;
        while group_exists(rec.pid) && Instant::now() < until {
            tokio::time::sleep(STOP_POLL).await;
        }
        if group_exists(rec.pid) {
            // Unreaped zombies (a PID 1 that does not reap) keep the group "existing";
            // they run nothing, so this is not worth failing the deploy over.
            tracing::warn!(pgid = rec.pid, "process group not empty after SIGKILL");
        }
    }
    tracing::info!(pid = rec.pid, "service stopped");
    Ok(())
}

async fn wait_gone(rec: &ChildRecord, deadline: Instant) -> bool {
    loop {
        if !is_alive(rec) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(STOP_POLL).await;
    }
}

fn stop_failed(rec: &ChildRecord, reason: String) -> ServiceError {
    ServiceError::Failed {
        what: format!("stopping pid {}", rec.pid),
        reason,
    }
}
