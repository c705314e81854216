//! Asking for and following a `RunMaintenance` stream, for both of its clients
//! (`hotdeploy-agent maint` and `hotdeployctl agent maint`): the request from their arguments,
//! then each progress message as it arrives, then the last one, which decides the exit code (0
//! only for `succeeded`).

use crate::proto::{MaintenanceOutcome, MaintenanceProgress, RunMaintenanceRequest};
use std::time::Duration;

/// The request for maintenance `reason` running `argv`, killed after `timeout` (none: no
/// limit, sent as 0).
pub fn request(
    reason: String,
    argv: Vec<String>,
    timeout: Option<Duration>,
) -> RunMaintenanceRequest {
    RunMaintenanceRequest {
        reason,
        argv,
        timeout_ms: timeout
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
    }
}

/// Reads `stream` to its last message (`done`), handing every earlier one to `each`. An error
/// says how the stream broke.
pub async fn follow(
    stream: &mut tonic::Streaming<MaintenanceProgress>,
    mut each: impl FnMut(&MaintenanceProgress),
) -> Result<MaintenanceProgress, String> {
    loop {
        match stream.message().await {
            Ok(Some(m)) if m.done => return Ok(m),
            Ok(Some(m)) => each(&m),
            Ok(None) => {
                return Err(
                    "the agent closed the maintenance stream before it ended (the \
                            agent stopped? it resumes the maintenance when it starts again)"
                        .into(),
                )
            }
            Err(s) => {
                return Err(format!(
                    "maintenance stream broken: {:?}: {}",
                    s.code(),
                    s.message()
                ))
            }
        }
    }
}

/// The outcome's label: `succeeded`, `command_failed`, `verify_failed`, `failed`.
pub fn outcome_label(last: &MaintenanceProgress) -> &'static str {
    match MaintenanceOutcome::try_from(last.outcome).unwrap_or(MaintenanceOutcome::Unspecified) {
        MaintenanceOutcome::Succeeded => "succeeded",
        MaintenanceOutcome::CommandFailed => "command_failed",
        MaintenanceOutcome::VerifyFailed => "verify_failed",
        MaintenanceOutcome::Failed => "failed",
        MaintenanceOutcome::Unspecified => "unknown",
    }
}

/// The exit code a client exits with: 0 only for `succeeded`.
pub fn exit_code(last: &MaintenanceProgress) -> i32 {
    if last.outcome == MaintenanceOutcome::Succeeded as i32 {
        0
    } else {
        1
    }
}

/// The last message as JSON: `{outcome, error, exit_code, exit_signal, out_of_rotation_ms,
/// log_path}` (docs/api.md).
pub fn to_json(last: &MaintenanceProgress) -> serde_json::Value {
    serde_json::json!({
        "outcome": outcome_label(last),
        "error": last.error,
        "exit_code": last.exit_code,
        "exit_signal": last.exit_signal,
        "out_of_rotation_ms": last.out_of_rotation_ms,
        "log_path": last.log_path,
    })
}

/// The last message as lines of text.
pub fn to_text(last: &MaintenanceProgress) -> String {
    let mut t = format!("maintenance {}", outcome_label(last));
    if !last.error.is_empty() {
        t.push_str(&format!(": {}", last.error));
    }
    if let Some(c) = last.exit_code {
        t.push_str(&format!("\ncommand exit status {c}"));
    }
    if let Some(s) = last.exit_signal {
        t.push_str(&format!("\ncommand killed by signal {s}"));
    }
    if last.out_of_rotation_ms > 0 {
        t.push_str(&format!(
            "\nout of rotation for {} ms",
            last.out_of_rotation_ms
        ));
    }
    t
}
