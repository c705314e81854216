//! Maintenance without a release: slot, drain, a command, verify, undrain, release.
//!
//! ```text
//! draining (slot of purpose agent-maintenance, fenced; the maintenance hold; drain)
//!   → running (fenced again; the command started at its gate, its pid and start time
//!     journaled, the gate opened)
//!   → verifying (the service's probes, as after a deploy's restart)
//!   → undraining (confirmed) → released                           (result: succeeded)
//! ```
//!
//! It builds on `Maintenance{enable}`: the slot and the drain are the same maintenance
//! [`crate::journal::Hold`], taken by the engine's `drain` and ended by its `undrain`. What is
//! added is the command, run by the daemon (only the daemon has the journal, so only it can
//! finish after a crash or a reboot), and the [`MaintRecord`] written before each step.
//!
//! What happens to the host when something goes wrong:
//! - Nothing disrupted yet (the command does not exist: refused before the slot; no slot, no
//!   coordinator, budget refused for the drain slot wait; the fence before the command refused;
//!   the command cannot be started): the host is returned to rotation if it had left, the slot
//!   released, and the result is `failed`.
//! - The command is **known** to have failed (a non-zero exit, a signal, its timeout): the host
//!   **stays out of rotation holding its slot**, under the maintenance hold, and the result is
//!   `command_failed` with the status. The operator looks, and ends it with `hotdeployctl agent
//!   undrain` (or `Maintenance{enable: false}`), which returns the host and releases the slot.
//!   A half-applied patch is not returned to traffic on its probes' word alone.
//! - The command's end was not seen by this agent (it restarted meanwhile, or the command
//!   rebooted the host): the status is unknown, and said so; the run continues with verify.
//! - Verify fails: the host stays out holding its slot under a `verify_failed` hold (it reports
//!   `unhealthy`), like a deploy that could not bring it back; a later deploy repairs it under
//!   that slot, or an operator undrains it.
//! - The return to rotation is not confirmed: the host stays out under its maintenance hold.
//!
//! The command is started held at a gate and let run only once its pid is journaled
//! (`maint_command`), so a journal in `running` without a pid means the command never ran.
//!
//! Recovery at start ([`recover`], by the rule of [`crate::journal::resume`]): before the command
//! ran (or before its pid was journaled, so it never ran), undo (return, release); the command still running in this boot, wait for it (polling
//! `/proc`, since a non-child cannot be waited for); the command gone or the host rebooted,
//! verify; verify passed, undrain and release.

use super::maint_command::{self, Running};
use super::{BusyGuard, EngineError, Inner};
use crate::failpoint::failpoint;
use crate::journal::{
    resume, CmdExit, HoldKind, MaintRecord, MaintResult, MaintStep, Phase, Purpose, Resume,
};
use crate::service::proc;
use hotdeploy_common::proto::MaintenanceProgress;
use hotdeploy_common::time::now_ms;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

/// The file under data_dir that holds the command's stdout and stderr (appended to).
pub const MAINT_LOG: &str = "maint.log";

/// A maintenance request, already validated.
#[derive(Debug, Clone)]
pub struct MaintParams {
    pub reason: String,
    pub argv: Vec<String>,
    pub timeout: Option<Duration>,
}

/// How a maintenance run ended, for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintVerdict {
    pub result: MaintResult,
    pub error: String,
    pub exit: Option<CmdExit>,
}

/// Where maintenance progress goes; a client that hung up just stops receiving.
#[derive(Clone, Default)]
pub struct MaintProgress {
    tx: Option<UnboundedSender<MaintenanceProgress>>,
    log_path: String,
}

impl MaintProgress {
    /// Progress sent to `tx`.
    pub fn to(tx: UnboundedSender<MaintenanceProgress>) -> Self {
        Self {
            tx: Some(tx),
            log_path: String::new(),
        }
    }

    fn send(&self, mut msg: MaintenanceProgress) {
        if let Some(tx) = &self.tx {
            msg.at_ms = now_ms();
            msg.log_path = self.log_path.clone();
            let _ = tx.send(msg);
        }
    }

    fn step(&self, step: &str, message: String) {
        self.send(MaintenanceProgress {
            step: step.to_owned(),
            message,
            ..Default::default()
        });
    }

    fn done(&self, rec: &MaintRecord, verdict: &MaintVerdict) {
        let (exit_code, exit_signal) = match &verdict.exit {
            Some(CmdExit::Code(c)) => (Some(*c), None),
            Some(CmdExit::Signal(s)) => (None, Some(*s)),
            _ => (None, None),
        };
        let oor = rec
            .drained_at_ms
            .map(|t| now_ms().saturating_sub(t))
            .unwrap_or(0);
        self.send(MaintenanceProgress {
            step: verdict.result.as_str().to_owned(),
            message: format!("maintenance {}", verdict.result),
            done: true,
            outcome: verdict.result.to_proto() as i32,
            error: verdict.error.clone(),
            exit_code,
            exit_signal,
            out_of_rotation_ms: oor,
            ..Default::default()
        });
    }
}

/// What the task answers when the agent shuts down under it: the journal says where it stood,
/// and the next start resumes it.
pub(super) fn interrupted() -> MaintVerdict {
    MaintVerdict {
        result: MaintResult::Failed,
        error: "the agent is shutting down; the maintenance resumes when it starts again".into(),
        exit: None,
    }
}

/// Checks a request against the host before anything is disrupted; answers the resolved
/// program.
pub(super) fn precheck(eng: &Inner, params: &MaintParams) -> Result<PathBuf, EngineError> {
    if let Some(h) = eng.journal.hold()? {
        return Err(EngineError::Precondition(format!(
            "the host is already held out of rotation ({}: {}); undrain it first",
            h.kind, h.note
        )));
    }
    if eng.ops.current()?.is_none() {
        return Err(EngineError::Precondition(
            "the host has no release installed: it serves no traffic and counts against no \
             budget, so it needs no maintenance slot; run the command directly"
                .into(),
        ));
    }
    let program = params
        .argv
        .first()
        .ok_or_else(|| EngineError::Precondition("the maintenance command is empty".into()))?;
    maint_command::resolve(program).map_err(EngineError::Precondition)
}

/// One maintenance run, live or recovered.
pub(super) struct MaintRun {
    eng: Arc<Inner>,
    rec: MaintRecord,
    progress: MaintProgress,
    _guard: BusyGuard,
}

impl MaintRun {
    pub(super) fn new(
        eng: Arc<Inner>,
        rec: MaintRecord,
        mut progress: MaintProgress,
        guard: BusyGuard,
    ) -> Self {
        progress.log_path = eng.journal.data_dir().join(MAINT_LOG).display().to_string();
        Self {
            eng,
            rec,
            progress,
            _guard: guard,
        }
    }

    /// Journals `step`, then says so.
    fn enter(&mut self, step: MaintStep, message: String) -> Result<(), String> {
        self.rec.step = step;
        self.rec.updated_at_ms = now_ms();
        self.eng
            .journal
            .put_maint(&self.rec)
            .map_err(|e| format!("cannot journal maintenance step {}: {e}", step.as_str()))?;
        let phase = format!("maint_{}", step.as_str());
        self.eng.update(|v| v.phase = phase);
        tracing::info!(step = step.as_str(), reason = %self.rec.reason, "maintenance: {message}");
        self.progress.step(step.as_str(), message);
        Ok(())
    }

    /// The live run, from the drain on.
    pub(super) async fn start(mut self, program: PathBuf) -> MaintVerdict {
        let cmd = self.rec.command_line();
        if let Err(e) = self.enter(
            MaintStep::Draining,
            "taking a slot and leaving rotation".into(),
        ) {
            return self.conclude(MaintResult::Failed, e);
        }
        if let Err(e) = super::drain(
            &self.eng,
            Purpose::Maintenance,
            HoldKind::Maintenance,
            &self.rec.reason,
        )
        .await
        {
            let why = format!("no maintenance, the command was not run: {e}");
            return self.undo(why).await;
        }
        self.rec.token = self.eng.view.borrow().token;
        self.rec.drained_at_ms = Some(now_ms());
        // The command is the disruptive step: fenced like a deploy's restart.
        if let (Some(lock), true) = (self.eng.lock.clone(), self.rec.token != 0) {
            if let Err(e) = lock.report_phase(self.rec.token, Phase::Restarted).await {
                let why = format!("the slot could not be confirmed, the command was not run: {e}");
                return self.undo(why).await;
            }
        }
        self.rec.boot_id = proc::boot_id().map(str::to_owned);
        if let Err(e) = self.enter(MaintStep::Running, format!("running `{cmd}`")) {
            return self.undo(e).await;
        }
        failpoint("maint_before_command");
        let log = self.eng.journal.data_dir().join(MAINT_LOG);
        let env = [
            ("HOTDEPLOY_HOST", self.eng.host_id.clone()),
            ("HOTDEPLOY_MAINT_REASON", self.rec.reason.clone()),
            ("HOTDEPLOY_SLOT_TOKEN", self.rec.token.to_string()),
        ];
        // The command waits at its gate until its pid is journaled (see `maint_command`): a
        // journal without the pid then means that it never ran.
        let gated = match maint_command::spawn(&program, &self.rec.argv, &env, &log) {
            Ok(g) => g,
            Err(e) => return self.undo(format!("the command was not run: {e}")).await,
        };
        self.rec.child = Some(gated.record.clone());
        failpoint("maint_before_pid_journaled");
        if let Err(e) = self.eng.journal.put_maint(&self.rec) {
            // A restarted agent could not find it: it must not run.
            gated.close().await;
            self.rec.child = None;
            let why = format!("the command was not run: cannot journal its pid: {e}");
            return self.undo(why).await;
        }
        let running: Running = match gated.open().await {
            Ok(r) => r,
            Err(e) => return self.undo(format!("the command was not run: {e}")).await,
        };
        self.progress.step(
            MaintStep::Running.as_str(),
            format!(
                "command started (pid {}); output in {}",
                running.record.pid,
                log.display()
            ),
        );
        let exit = running.wait(self.deadline()).await;
        self.after_command(exit).await
    }

    /// When the command's time runs out, counted from the start of the run.
    fn deadline(&self) -> Option<Instant> {
        let limit = self.rec.timeout_ms?;
        let left = (self.rec.started_at_ms + limit).saturating_sub(now_ms());
        Some(Instant::now() + Duration::from_millis(left))
    }

    /// Nothing was run: return to rotation if the host left (releasing the slot), end `failed`.
    async fn undo(self, why: String) -> MaintVerdict {
        let held = self
            .eng
            .journal
            .hold()
            .ok()
            .flatten()
            .is_some_and(|h| h.kind == HoldKind::Maintenance);
        if held {
            if let Err(e) = super::undrain(&self.eng).await {
                let why = format!(
                    "{why}; returning to rotation failed too: {e}; the host stays out holding its \
                     maintenance slot (`hotdeployctl agent undrain` retries)"
                );
                return self.conclude(MaintResult::Failed, why);
            }
        }
        self.conclude(MaintResult::Failed, why)
    }

    /// The command ended with `exit`.
    async fn after_command(mut self, exit: CmdExit) -> MaintVerdict {
        self.rec.exit = Some(exit.clone());
        let cmd = self.rec.command_line();
        if exit.failed() {
            let why = format!(
                "the maintenance command `{cmd}` {exit}; the host stays out of rotation holding \
                 its slot until an operator undrains it"
            );
            self.set_hold_note(
                HoldKind::Maintenance,
                format!("{}: command {exit}", self.rec.reason),
            );
            return self.conclude(MaintResult::CommandFailed, why);
        }
        self.progress
            .step(MaintStep::Running.as_str(), format!("the command {exit}"));
        self.verify_and_return().await
    }

    /// Rewrites the hold (kind and note) the run keeps the host out with.
    fn set_hold_note(&self, kind: HoldKind, note: String) {
        let Ok(Some(mut hold)) = self.eng.journal.hold() else {
            return;
        };
        hold.kind = kind;
        hold.note = note;
        if let Err(e) = self.eng.journal.set_hold(Some(&hold)) {
            tracing::error!(error = %e, "cannot journal the maintenance hold");
        }
        self.eng.update(|v| {
            if kind.service_failed() {
                v.verify_failed = true;
            }
            v.hold = Some(hold);
        });
    }

    /// `verifying`, then back in rotation if it passes.
    async fn verify_and_return(mut self) -> MaintVerdict {
        if let Err(e) = self.enter(MaintStep::Verifying, "verifying the service".into()) {
            return self.conclude(MaintResult::Failed, e);
        }
        // The command may have stopped the service (exec mode: started again on `current`).
        if self.eng.ops.running() == Some(false) {
            if let Ok(Some(id)) = self.eng.ops.current() {
                if let Err(e) = self.eng.ops.start(&id).await {
                    tracing::warn!(error = %e, "cannot start the service on {id}");
                }
            }
        }
        let progress = self.progress.clone();
        let note = move |m: String| progress.step(MaintStep::Verifying.as_str(), m);
        if let Err(e) = self.eng.ops.verify(&note).await {
            let why = format!(
                "the service failed verify after the maintenance command: {e}; the host stays \
                 out of rotation holding its slot (verify_failed)"
            );
            self.set_hold_note(
                HoldKind::VerifyFailed,
                format!("{}: verify failed after the command", self.rec.reason),
            );
            return self.conclude(MaintResult::VerifyFailed, why);
        }
        self.undrain_and_release().await
    }

    /// `undraining`: back in rotation (confirmed), the hold cleared, the slot released.
    async fn undrain_and_release(mut self) -> MaintVerdict {
        if let Err(e) = self.enter(MaintStep::Undraining, "returning to rotation".into()) {
            return self.conclude(MaintResult::Failed, e);
        }
        failpoint("maint_before_undrain");
        if let Err(e) = super::undrain(&self.eng).await {
            let why = format!(
                "the return to rotation was not confirmed: {e}; the host stays out holding its \
                 maintenance slot (`hotdeployctl agent undrain` retries)"
            );
            return self.conclude(MaintResult::Failed, why);
        }
        let error = match &self.rec.exit {
            Some(CmdExit::Unknown(why)) => format!("the command's exit status is unknown: {why}"),
            _ => String::new(),
        };
        self.rec.step = MaintStep::Done;
        self.conclude(MaintResult::Succeeded, error)
    }

    /// Journals the result and sends the last message.
    fn conclude(mut self, result: MaintResult, error: String) -> MaintVerdict {
        let now = now_ms();
        self.rec.result = Some(result);
        self.rec.error = (!error.is_empty()).then(|| error.clone());
        self.rec.finished_at_ms = Some(now);
        self.rec.updated_at_ms = now;
        if let Err(e) = self.eng.journal.put_maint(&self.rec) {
            tracing::error!(error = %e, "cannot journal the maintenance result");
        }
        self.eng.stats.maintenance_concluded(result);
        let verdict = MaintVerdict {
            result,
            error,
            exit: self.rec.exit.clone(),
        };
        if result == MaintResult::Succeeded {
            tracing::info!(reason = %self.rec.reason, "maintenance succeeded: back in rotation, slot released");
        } else {
            tracing::warn!(reason = %self.rec.reason, %result, error = %verdict.error, "maintenance did not succeed");
        }
        self.eng.update(|v| {
            v.phase = "idle".to_owned();
            v.last_error = verdict.error.clone();
        });
        self.progress.done(&self.rec, &verdict);
        verdict
    }
}

/// Finishes a maintenance run a previous agent left in progress (see the module docs).
pub(super) async fn recover(run: MaintRun) -> MaintVerdict {
    let boot = proc::boot_id();
    let recorded_boot = run.rec.boot_id.clone();
    let plan = resume(&run.rec, boot, |c| {
        maint_command::alive(c, recorded_boot.as_deref())
    });
    tracing::warn!(?plan, reason = %run.rec.reason, "recovering an interrupted maintenance run");
    match plan {
        Resume::Undo(why) => run.undo(why).await,
        Resume::Wait => {
            let Some(child) = run.rec.child.clone() else {
                return run.verify_and_return().await;
            };
            tracing::info!(
                pid = child.pid,
                "the maintenance command still runs; waiting for it to end"
            );
            let exit =
                maint_command::wait_foreign(&child, recorded_boot.as_deref(), run.deadline()).await;
            run.after_command(exit).await
        }
        Resume::Verify(why) => {
            let mut run = run;
            run.rec.exit = Some(CmdExit::Unknown(why));
            run.verify_and_return().await
        }
        Resume::Undrain => run.undrain_and_release().await,
    }
}
