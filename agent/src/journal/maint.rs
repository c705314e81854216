//! What the journal keeps of a maintenance run (`RunMaintenance`, `hotdeploy-agent maint`), and
//! what a restarted agent does with it.
//!
//! The record is written, and flushed, before each step is acted on, like a deploy's phases:
//! `draining` (before the slot and the drain), `running` (before the command is started; the
//! boot id is in it, and the command's pid and start time are added once its process exists
//! and before it is let run: see `gated`),
//! `verifying`, `undraining`, then `done` with the result. The slot and the drain themselves are
//! the maintenance [`super::Hold`] of purpose `agent-maintenance`, as for `Maintenance{enable}`:
//! the host starts out of rotation while it is journaled, and the slot stays claimed.
//!
//! [`resume`] is the recovery rule, a pure function of the record, this boot's id and whether the
//! recorded command still runs, so that unit tests drive it directly.

use serde::{Deserialize, Serialize};

/// Where a maintenance run stands. Each step is made durable before it is acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaintStep {
    /// Taking the slot and leaving rotation; the command has not been started.
    Draining,
    /// The command is (about to be) started, or runs.
    Running,
    /// The command has ended; the service's probes run.
    Verifying,
    /// Returning to rotation; the slot is released once that is confirmed.
    Undraining,
    /// Over: see the result.
    Done,
}

impl MaintStep {
    /// The name used in progress messages and `Status` (prefixed `maint_` there).
    pub fn as_str(self) -> &'static str {
        match self {
            MaintStep::Draining => "draining",
            MaintStep::Running => "running",
            MaintStep::Verifying => "verifying",
            MaintStep::Undraining => "undraining",
            MaintStep::Done => "released",
        }
    }
}

/// How a maintenance run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaintResult {
    /// Verified, back in rotation, slot released.
    Succeeded,
    /// The command failed: the host stays out under its maintenance hold.
    CommandFailed,
    /// The service failed verify: the host stays out under a `verify_failed` hold.
    VerifyFailed,
    /// Nothing was run and the host is back as it was, or it could not be returned.
    Failed,
}

impl MaintResult {
    pub fn as_str(self) -> &'static str {
        match self {
            MaintResult::Succeeded => "succeeded",
            MaintResult::CommandFailed => "command_failed",
            MaintResult::VerifyFailed => "verify_failed",
            MaintResult::Failed => "failed",
        }
    }

    /// The wire enum.
    pub fn to_proto(self) -> hotdeploy_common::proto::MaintenanceOutcome {
        use hotdeploy_common::proto::MaintenanceOutcome as P;
        match self {
            MaintResult::Succeeded => P::Succeeded,
            MaintResult::CommandFailed => P::CommandFailed,
            MaintResult::VerifyFailed => P::VerifyFailed,
            MaintResult::Failed => P::Failed,
        }
    }
}

impl std::fmt::Display for MaintResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmdExit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It ran past its timeout and was killed.
    TimedOut,
    /// It ended while the agent was not its parent (the agent restarted meanwhile, or the
    /// host rebooted): the status cannot be known.
    Unknown(String),
}

impl CmdExit {
    /// Whether the command is known to have failed.
    pub fn failed(&self) -> bool {
        !matches!(self, CmdExit::Code(0) | CmdExit::Unknown(_))
    }
}

impl std::fmt::Display for CmdExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CmdExit::Code(c) => write!(f, "exited with status {c}"),
            CmdExit::Signal(s) => write!(f, "was killed by signal {s}"),
            CmdExit::TimedOut => f.write_str("ran past its timeout and was killed"),
            CmdExit::Unknown(why) => write!(f, "ended with an unknown exit status ({why})"),
        }
    }
}

/// The command's process: a pid names it only with its start time, in its boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintChild {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`.
    pub start_time: u64,
}

/// One maintenance run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintRecord {
    pub reason: String,
    pub argv: Vec<String>,
    /// The command's time limit, counted from `started_at_ms`.
    pub timeout_ms: Option<u64>,
    /// The slot token (0 standalone, or before the grant).
    pub token: u64,
    pub step: MaintStep,
    /// The boot the command was started in (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: Option<String>,
    pub child: Option<MaintChild>,
    /// The command is let run only once `child` is journaled (it waits at a gate until then),
    /// so a record in `running` without `child` means it never ran. False in the records of
    /// agents from before the gate, where such a record means the command may have run.
    #[serde(default)]
    pub gated: bool,
    pub exit: Option<CmdExit>,
    pub result: Option<MaintResult>,
    pub error: Option<String>,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
    pub drained_at_ms: Option<u64>,
    /// Set when the run is over; a record without it is in progress.
    pub finished_at_ms: Option<u64>,
}

impl MaintRecord {
    /// A new run in step `draining`.
    pub fn new(reason: &str, argv: Vec<String>, timeout_ms: Option<u64>, now: u64) -> Self {
        Self {
            reason: reason.to_owned(),
            argv,
            timeout_ms,
            token: 0,
            step: MaintStep::Draining,
            boot_id: None,
            child: None,
            gated: true,
            exit: None,
            result: None,
            error: None,
            started_at_ms: now,
            updated_at_ms: now,
            drained_at_ms: None,
            finished_at_ms: None,
        }
    }

    pub fn in_progress(&self) -> bool {
        self.finished_at_ms.is_none()
    }

    /// The command line, for messages.
    pub fn command_line(&self) -> String {
        self.argv.join(" ")
    }
}

/// What a restarted agent does with a maintenance run in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Interrupted before the command ran: return the host to rotation (if it left) and release
    /// the slot; the result is `failed`, since the command never ran.
    Undo(String),
    /// The command still runs (this boot, same pid and start time): wait for it to end, then
    /// verify. Its exit status will not be known.
    Wait,
    /// The command is over (or the host rebooted): verify, then return and release.
    Verify(String),
    /// Verify had passed: return to rotation (confirmed), then release.
    Undrain,
}

/// The recovery rule for `rec` (in progress), in boot `boot` (`None`: unknown), where `alive`
/// says whether the recorded command still runs in this boot.
pub fn resume(
    rec: &MaintRecord,
    boot: Option<&str>,
    alive: impl Fn(&MaintChild) -> bool,
) -> Resume {
    match rec.step {
        MaintStep::Draining => Resume::Undo(
            "the agent stopped before the maintenance command was started; it was not run".into(),
        ),
        MaintStep::Running => {
            let rebooted = matches!((rec.boot_id.as_deref(), boot), (Some(a), Some(b)) if a != b);
            if rebooted {
                return Resume::Verify(
                    "the host rebooted while the maintenance command ran (its exit status is \
                     unknown)"
                        .into(),
                );
            }
            match &rec.child {
                Some(c) if alive(c) => Resume::Wait,
                Some(_) => Resume::Verify(
                    "the maintenance command ended while the agent was down (its exit status is \
                     unknown)"
                        .into(),
                ),
                None if rec.gated => Resume::Undo(
                    "the agent stopped before the maintenance command's pid was journaled; the \
                     command is let run only after that, so it was not run"
                        .into(),
                ),
                None => Resume::Verify(
                    "the agent stopped as it started the maintenance command, before its pid \
                     was journaled (whether it ran, and its exit status, are unknown)"
                        .into(),
                ),
            }
        }
        MaintStep::Verifying => Resume::Verify("the agent restarted during verify".into()),
        MaintStep::Undraining | MaintStep::Done => Resume::Undrain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(boot: Option<&str>, child: Option<MaintChild>) -> MaintRecord {
        let mut r = MaintRecord::new("patch", vec!["true".into()], None, 1);
        r.step = MaintStep::Running;
        r.boot_id = boot.map(str::to_owned);
        r.child = child;
        r
    }

    const CHILD: MaintChild = MaintChild {
        pid: 4242,
        start_time: 77,
    };

    #[test]
    fn a_record_of_another_boot_means_the_command_rebooted_the_host_continue_with_verify() {
        let rec = running(Some("boot-a"), Some(CHILD));
        // Even a pid that "runs" in this boot is a stranger: another boot.
        let r = resume(&rec, Some("boot-b"), |_| true);
        assert!(
            matches!(&r, Resume::Verify(why) if why.contains("rebooted")),
            "{r:?}"
        );
    }

    #[test]
    fn the_same_boot_with_the_command_still_running_waits_for_it() {
        let rec = running(Some("boot-a"), Some(CHILD));
        assert_eq!(resume(&rec, Some("boot-a"), |c| *c == CHILD), Resume::Wait);
    }

    #[test]
    fn the_same_boot_with_the_command_gone_verifies_and_says_the_status_is_unknown() {
        let rec = running(Some("boot-a"), Some(CHILD));
        let r = resume(&rec, Some("boot-a"), |_| false);
        assert!(
            matches!(&r, Resume::Verify(why) if why.contains("unknown")),
            "{r:?}"
        );
    }

    #[test]
    fn no_pid_journaled_means_the_gated_command_never_ran_so_undo() {
        // The agent died between starting the command's process and journaling its pid: the
        // command waits at its gate for the pid to be journaled, so it never ran.
        let r = resume(&running(Some("boot-a"), None), Some("boot-a"), |_| true);
        assert!(
            matches!(&r, Resume::Undo(why) if why.contains("not run")),
            "{r:?}"
        );
        // A record of an agent from before the gate: the command may have run.
        let mut old = running(Some("boot-a"), None);
        old.gated = false;
        let r = resume(&old, Some("boot-a"), |_| true);
        assert!(
            matches!(&r, Resume::Verify(why) if why.contains("pid")),
            "{r:?}"
        );
    }

    #[test]
    fn a_record_from_before_the_gate_reads_as_ungated() {
        let mut rec = running(Some("b"), None);
        let mut json: serde_json::Value = serde_json::to_value(&rec).unwrap();
        json.as_object_mut().unwrap().remove("gated");
        let back: MaintRecord = serde_json::from_value(json).unwrap();
        rec.gated = false;
        assert_eq!(back, rec);
    }

    #[test]
    fn an_unknown_boot_id_falls_back_on_the_process_itself() {
        let rec = running(None, Some(CHILD));
        assert_eq!(resume(&rec, Some("boot-a"), |_| true), Resume::Wait);
        let rec = running(Some("boot-a"), Some(CHILD));
        assert_eq!(resume(&rec, None, |_| true), Resume::Wait);
    }

    #[test]
    fn before_the_command_undo_and_after_verify_undrain() {
        let mut rec = running(Some("b"), None);
        rec.step = MaintStep::Draining;
        assert!(matches!(resume(&rec, Some("b"), |_| true), Resume::Undo(_)));
        rec.step = MaintStep::Verifying;
        assert!(matches!(
            resume(&rec, Some("b"), |_| true),
            Resume::Verify(_)
        ));
        rec.step = MaintStep::Undraining;
        assert_eq!(resume(&rec, Some("b"), |_| true), Resume::Undrain);
    }

    #[test]
    fn a_record_round_trips_and_only_known_failures_count_as_failed() {
        let mut rec = running(Some("b"), Some(CHILD));
        rec.exit = Some(CmdExit::Code(3));
        let back: MaintRecord =
            serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
        assert_eq!(back, rec);
        assert!(CmdExit::Code(3).failed());
        assert!(CmdExit::Signal(9).failed());
        assert!(CmdExit::TimedOut.failed());
        assert!(!CmdExit::Code(0).failed());
        assert!(!CmdExit::Unknown("x".into()).failed());
    }
}
