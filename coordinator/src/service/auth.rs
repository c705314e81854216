//! Who may call what (DESIGN §7): the role in the caller's certificate decides.
//!
//! - agent calls (register, heartbeat, slots, phases) only for the host the certificate names,
//!   or from an operator;
//! - admin calls only from operator certificates;
//! - on a plaintext (`insecure = true`) listener there is no identity, and every call is let
//!   through: the operator chose that, and was warned at start.
//!
//! A refused call gets PERMISSION_DENIED and leaves an audit line in the log.

use hotdeploy_common::tls::{caller_role, Role};
use tonic::{Request, Status};

/// What a call needs.
pub(crate) enum Need<'a> {
    /// An operator.
    Operator,
    /// The agent of this host, or an operator.
    Host(&'a str),
}

/// Checks the caller and returns its identity for audit events (`"operator/alice"`).
pub(crate) fn authorize<T>(req: &Request<T>, call: &str, need: Need<'_>) -> Result<String, Status> {
    let role = caller_role(req);
    let ok = match (&role, &need) {
        (Some(Role::Insecure), _) => true,
        (Some(Role::Operator(_)), _) => true,
        (Some(Role::Agent(h)), Need::Host(want)) => h == want,
        _ => false,
    };
    let who = role
        .as_ref()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "unknown".into());
    if ok {
        return Ok(who);
    }
    let what = match need {
        Need::Operator => "an operator certificate".to_string(),
        Need::Host(h) => format!("the agent certificate of {h} or an operator certificate"),
    };
    tracing::warn!(audit = true, caller = %who, call, "permission denied");
    Err(Status::permission_denied(format!(
        "{call} needs {what}; caller is {who}"
    )))
}
