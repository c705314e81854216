//! The `exec` supervisor: one task per supervised service process.
//!
//! The task owns the process and waits for one of four things:
//!
//! - **A stop request** from the controller (stop or restart). It sends SIGTERM to the process
//!   group, waits up to `stop_timeout` for the leader, then SIGKILLs the group. Stragglers left
//!   in the group get the rest of `stop_timeout`, then SIGKILL too. This is not a crash: `alive`
//!   is not touched. A stop that fails (the process outlives SIGKILL) leaves the task
//!   supervising the same process, so the controller never starts a second copy next to it.
//! - **The process exiting on its own.** `alive` goes false, the journal hears `None`, leftovers
//!   of the old group are killed (a worker still holding the port would make the restart fail),
//!   and the task respawns the same release with exponential backoff ([`BACKOFF_MIN`] doubling
//!   to [`BACKOFF_MAX`]; a process that ran for [`BACKOFF_RESET`] starts the ladder over). A stop
//!   request during the backoff ends the task at once.
//! - **The controller going away** (its request sender dropped) or **the agent shutting down**:
//!   the task ends *without* touching the process. That is what an agent exit looks like, and
//!   the service must survive it.
//!
//! A process we spawned is our child. We learn that it exited (woken by SIGCHLD) with
//! `waitid(WNOWAIT)`, which
//! leaves it an unreaped zombie: its pid, which is also its group's id, cannot be handed to
//! another process until we reap it, so signalling the group stays safe while we clean up
//! stragglers; we reap it last. A process adopted after an agent restart is not our child (its
//! parent died), so we poll `/proc/<pid>/stat` every [`ADOPTED_POLL`] and treat a different
//! start time, a zombie, or no entry as "exited"; once its leader is gone its group id may be
//! reused, so its stragglers are signalled one by one (`proc::kill_stragglers`).
//!
//! stdout and stderr are inherited from the agent (journald), never piped through it: a pipe
//! would die with the agent and take the service down with SIGPIPE.

use super::proc::{
    group_exists, is_alive, kill_stragglers, now_ticks, record_of, signal_record, stragglers_left,
};
use super::{ChildRecord, ServiceError};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A process that ran this long before dying restarts the backoff ladder.
pub(crate) const BACKOFF_RESET: Duration = Duration::from_secs(30);
/// How often an adopted (non-child) process is checked.
pub(crate) const ADOPTED_POLL: Duration = Duration::from_millis(200);
/// How often our own child is checked for having exited when no SIGCHLD says so (a missed or
/// merged signal); SIGCHLD wakes the check at once.
const OWN_POLL: Duration = Duration::from_millis(500);
/// How often a stopping process is checked, at most. The checks start at [`STOP_POLL_FIRST`]
/// and double up to this: most services are gone a millisecond after SIGTERM, and a flat 50 ms
/// poll cost every restart about 50 ms of the host's time out of rotation (BENCHMARKS.md,
/// agent §2b).
const STOP_POLL: Duration = Duration::from_millis(50);
const STOP_POLL_FIRST: Duration = Duration::from_millis(1);

/// The waits between the checks of a stopping process: 1, 2, 4, ... ms, then [`STOP_POLL`].
#[derive(Debug)]
struct StopPoll(Duration);

impl StopPoll {
    fn new() -> Self {
        StopPoll(STOP_POLL_FIRST)
    }

    /// Waits the current step, and doubles the next one up to [`STOP_POLL`].
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = self.step_after();
    }

    fn step_after(&self) -> Duration {
        (self.0 * 2).min(STOP_POLL)
    }
}
/// The most we wait after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// State the supervisor shares with the controller.
pub(crate) struct Shared {
    pub alive: watch::Sender<bool>,
    pub child: Mutex<Option<ChildRecord>>,
    pub on_child: Arc<dyn Fn(Option<ChildRecord>) + Send + Sync>,
    /// The agent's shutdown: supervisors detach from their process.
    pub shutdown: CancellationToken,
    /// Test fault: this many stops fail as if the process outlived SIGKILL (a process in
    /// uninterruptible sleep), without signalling anything.
    #[cfg(test)]
    pub fail_stops: std::sync::atomic::AtomicUsize,
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
    /// Spawned by this agent: our child, reaped only once its group is empty.
    Own(ChildRecord),
    /// Adopted from a previous agent run.
    Adopted(ChildRecord),
}

impl Proc {
    pub fn record(&self) -> &ChildRecord {
        match self {
            Proc::Own(rec) | Proc::Adopted(rec) => rec,
        }
    }

    /// Resolves when the process has exited (our child: not reaped yet); says how.
    async fn exited(&self) -> String {
        match self {
            Proc::Own(rec) => {
                // Listening before the first check: an exit in between still wakes us.
                let mut sigchld = signal(SignalKind::child()).ok();
                loop {
                    if let Some(how) = own_exit(rec.pid) {
                        return how;
                    }
                    match &mut sigchld {
                        Some(s) => {
                            tokio::select! {
                                _ = s.recv() => {}
                                _ = tokio::time::sleep(OWN_POLL) => {}
                            }
                        }
                        None => tokio::time::sleep(OWN_POLL).await,
                    }
                }
            }
            Proc::Adopted(rec) => {
                while is_alive(rec) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                "adopted process is gone".to_string()
            }
        }
    }

    /// Kills what is left of the process group of a process that has exited, then reaps our
    /// child. The leader of our own child's group is still an unreaped zombie here, so its
    /// group id cannot have been reused.
    async fn clean_up(&self, until: Instant) {
        match self {
            Proc::Own(rec) => {
                let pgid = Pid::from_raw(rec.pid);
                let mut poll = StopPoll::new();
                while group_exists(rec.pid) && Instant::now() < until {
                    poll.wait().await;
                }
                if group_exists(rec.pid) {
                    let _ = killpg(pgid, Signal::SIGKILL);
                    let kill_until = Instant::now() + KILL_WAIT;
                    let mut poll = StopPoll::new();
                    while group_exists(rec.pid) && Instant::now() < kill_until {
                        poll.wait().await;
                    }
                    if group_exists(rec.pid) {
                        // Unreaped zombies (a PID 1 that does not reap) keep the group
                        // "existing"; they run nothing, so this is not worth failing over.
                        tracing::warn!(pgid = rec.pid, "process group not empty after SIGKILL");
                    }
                }
                reap(rec.pid);
            }
            Proc::Adopted(rec) => {
                let Some(gone) = now_ticks() else { return };
                let mut poll = StopPoll::new();
                while stragglers_left(rec, gone) && Instant::now() < until {
                    poll.wait().await;
                }
                if kill_stragglers(rec, gone) > 0 {
                    let kill_until = Instant::now() + KILL_WAIT;
                    let mut poll = StopPoll::new();
                    while stragglers_left(rec, gone) && Instant::now() < kill_until {
                        poll.wait().await;
                    }
                }
            }
        }
    }
}

/// How our child `pid` exited, if it has, without reaping it.
fn own_exit(pid: i32) -> Option<String> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(Pid::from_raw(pid)), flags) {
        Ok(WaitStatus::StillAlive) => None,
        Ok(WaitStatus::Exited(_, code)) => Some(format!("exit status: {code}")),
        Ok(WaitStatus::Signaled(_, sig, _)) => Some(format!("signal: {sig}")),
        Ok(other) => Some(format!("{other:?}")),
        // Not our child any more (reaped elsewhere): it is gone.
        Err(e) => Some(format!("wait failed: {e}")),
    }
}

/// Reaps our child `pid` (it has exited).
fn reap(pid: i32) {
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

/// Spawns the service in its own process group, stdin null, stdout/stderr inherited.
pub(crate) fn spawn(spec: &SpawnSpec) -> Result<Proc, ServiceError> {
    let what = format!("exec {}", spec.argv.join(" "));
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| ServiceError::Config("service.exec is empty".into()))?;
    // std, not tokio: the child is reaped by the supervisor alone, and only once its process
    // group is empty (dropping a std `Child` neither kills nor reaps it).
    let mut cmd = std::process::Command::new(program);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.args(args)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let child = cmd.spawn().map_err(|source| ServiceError::Spawn {
        what: what.clone(),
        source,
    })?;
    let pid = i32::try_from(child.id()).map_err(|_| ServiceError::Failed {
        what: what.clone(),
        reason: "pid out of range".into(),
    })?;
    drop(child);
    // Unreaped, the process stays in /proc even if it already exited.
    let rec = record_of(pid).ok_or_else(|| ServiceError::Failed {
        what,
        reason: format!("/proc/{pid}/stat unreadable right after spawn"),
    })?;
    tracing::info!(pid, release = %spec.release, "service started");
    Ok(Proc::Own(rec))
}

/// A request to a supervisor.
enum Request {
    /// Stop the process; the answer says whether it is gone.
    Stop(oneshot::Sender<Result<(), ServiceError>>),
}

/// The controller's handle on a supervisor task.
pub(crate) struct Running {
    requests: mpsc::Sender<Request>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts supervising `proc` (already announced through `shared`).
    pub fn start(proc: Proc, spec: SpawnSpec, shared: Arc<Shared>, stop_timeout: Duration) -> Self {
        let (requests, rx) = mpsc::channel(1);
        let task = tokio::spawn(supervise(proc, spec, shared, stop_timeout, rx));
        Self { requests, task }
    }

    /// Stops the process (or the backoff loop). On success the supervisor has ended; on error
    /// it still supervises the process, which may still run.
    pub async fn stop(&self) -> Result<(), ServiceError> {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Stop(tx)).await.is_err() {
            return Ok(()); // the supervisor has ended: nothing runs
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// Whether the supervisor task has ended (detached at shutdown).
    pub fn ended(&self) -> bool {
        self.task.is_finished()
    }

    /// Resolves when the supervisor task has ended (after the shutdown token is cancelled, it
    /// detaches at its next step) and has dropped what it held.
    pub async fn wait_ended(self) {
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "service supervisor task failed");
        }
    }
}

enum Event {
    Stop(oneshot::Sender<Result<(), ServiceError>>),
    Detach,
    Exited(String),
}

async fn supervise(
    mut proc: Proc,
    spec: SpawnSpec,
    shared: Arc<Shared>,
    stop_timeout: Duration,
    mut requests: mpsc::Receiver<Request>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let event = tokio::select! {
            r = requests.recv() => match r {
                Some(Request::Stop(reply)) => Event::Stop(reply),
                None => Event::Detach,
            },
            _ = shared.shutdown.cancelled() => Event::Detach,
            how = proc.exited() => Event::Exited(how),
        };
        let how = match event {
            Event::Stop(reply) => match stop_proc(&proc, &shared, stop_timeout).await {
                Ok(()) => {
                    shared.set_child(None);
                    let _ = reply.send(Ok(()));
                    return;
                }
                Err(e) => {
                    tracing::error!(pid = proc.record().pid, error = %e, "stop failed; still supervising the process");
                    let _ = reply.send(Err(e));
                    continue;
                }
            },
            Event::Detach => return,
            Event::Exited(how) => how,
        };
        let pid = proc.record().pid;
        tracing::warn!(pid, %how, release = %spec.release, "service exited on its own; restarting");
        shared.alive.send_replace(false);
        shared.set_child(None);
        proc.clean_up(Instant::now()).await;
        if started.elapsed() >= BACKOFF_RESET {
            backoff = BACKOFF_MIN;
        }
        proc = loop {
            tokio::select! {
                r = requests.recv() => {
                    if let Some(Request::Stop(reply)) = r {
                        // Stopped while down: nothing to kill, and not a crash any more.
                        shared.alive.send_replace(true);
                        let _ = reply.send(Ok(()));
                    }
                    return;
                }
                _ = shared.shutdown.cancelled() => return,
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

/// SIGTERM to the group, SIGKILL after `stop_timeout`, then wait for the group to empty. An
/// error means the process may still run (it is still supervised).
async fn stop_proc(
    proc: &Proc,
    shared: &Shared,
    stop_timeout: Duration,
) -> Result<(), ServiceError> {
    let deadline = Instant::now() + stop_timeout;
    let rec = proc.record().clone();
    #[cfg(test)]
    if shared
        .fail_stops
        .fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        )
        .is_ok()
    {
        return Err(stop_failed(
            &rec,
            "still running after SIGKILL (test fault)".into(),
        ));
    }
    #[cfg(not(test))]
    let _ = shared;
    match proc {
        Proc::Own(rec) => {
            // Not reaped until the end, so the pid (the group id) cannot have been reused.
            let pgid = Pid::from_raw(rec.pid);
            let _ = killpg(pgid, Signal::SIGTERM);
            if !wait_own_exit(rec.pid, deadline).await {
                tracing::warn!(
                    pid = rec.pid,
                    ?stop_timeout,
                    "service ignored SIGTERM; SIGKILL"
                );
                let _ = killpg(pgid, Signal::SIGKILL);
                if !wait_own_exit(rec.pid, Instant::now() + KILL_WAIT).await {
                    return Err(stop_failed(rec, "still running after SIGKILL".into()));
                }
            }
        }
        Proc::Adopted(rec) => {
            signal_record(rec, Signal::SIGTERM);
            if !wait_gone(rec, deadline).await {
                tracing::warn!(
                    pid = rec.pid,
                    ?stop_timeout,
                    "service ignored SIGTERM; SIGKILL"
                );
                signal_record(rec, Signal::SIGKILL);
                if !wait_gone(rec, Instant::now() + KILL_WAIT).await {
                    return Err(stop_failed(rec, "still running after SIGKILL".into()));
                }
            }
        }
    }
    // Workers left in the group get what remains of stop_timeout.
    proc.clean_up(deadline).await;
    tracing::info!(pid = rec.pid, "service stopped");
    Ok(())
}

async fn wait_own_exit(pid: i32, deadline: Instant) -> bool {
    let mut poll = StopPoll::new();
    loop {
        if own_exit(pid).is_some() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        poll.wait().await;
    }
}

async fn wait_gone(rec: &ChildRecord, deadline: Instant) -> bool {
    let mut poll = StopPoll::new();
    loop {
        if !is_alive(rec) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        poll.wait().await;
    }
}

fn stop_failed(rec: &ChildRecord, reason: String) -> ServiceError {
    ServiceError::Failed {
        what: format!("stopping pid {}", rec.pid),
        reason,
    }
}

#[cfg(test)]
mod stop_poll_tests {
    use super::*;

    /// A stopping service is first checked after a millisecond, not after a whole 50 ms poll:
    /// the steps double from 1 ms and stay at 50 ms.
    #[test]
    fn the_stop_poll_starts_at_a_millisecond_and_doubles_to_its_cap() {
        let mut poll = StopPoll::new();
        let mut steps = vec![poll.0];
        for _ in 0..8 {
            poll.0 = poll.step_after();
            steps.push(poll.0);
        }
        let ms: Vec<u128> = steps.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [1, 2, 4, 8, 16, 32, 50, 50, 50]);
    }
}
