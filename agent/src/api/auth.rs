//! Who may call the agent's local API (DESIGN §7).
//!
//! The local API changes what runs on the host, so it belongs to operators: a caller must hold
//! an operator certificate (`hotdeploy://operator/<name>`). An agent certificate may act only as
//! its own host towards the coordinators, never on another agent, and a coordinator
//! certificate has no business here either. On a plaintext (`insecure = true`) listener there
//! is no identity and every call is let through, as the operator chose (and was warned at
//! start). A refused call gets PERMISSION_DENIED and leaves an audit line in the log.

use hotdeploy_common::tls::{caller_role, Role};
use tonic::{Request, Status};

/// Checks that the caller may use `call`.
pub(crate) fn authorize<T>(req: &Request<T>, call: &str) -> Result<(), Status> {
    match caller_role(req) {
        Some(Role::Insecure) | Some(Role::Operator(_)) => Ok(()),
        other => {
            let who = other
                .map(|r| r.to_string())
                .unwrap_or_else(|| "a certificate with no hotdeploy role".into());
            tracing::warn!(audit = true, caller = %who, call, "permission denied");
            Err(Status::permission_denied(format!(
                "{call} on the agent needs an operator certificate; caller is {who}"
            )))
        }
    }
}
