//! Who may call the agent's local API (DESIGN §7).
//!
//! The local API changes what runs on the host, so it belongs to operators: a caller must hold
//! an operator certificate (`hotdeploy://operator/<name>`). An agent certificate may act only as
//! its own host towards the coordinators, never on another agent, and a coordinator
//! certificate has no business here either. On a plaintext (`insecure = true`) listener there
//! is no identity and every call is let through, as the operator chose (and was warned at
//! start). A refused call gets PERMISSION_DENIED and leaves an audit line in the log.
//!
//! One exception, [`authorize_own_host`]: `RunMaintenance` also takes the agent certificate of
//! *this* host (`hotdeploy://agent/<host_id>`). That is the identity `hotdeploy-agent maint`
//! presents: it runs on the host, reads the daemon's own config and `[tls]` files (which only
//! root, or the agent's user, can read), and asks for maintenance of that host alone, which is
//! what an agent certificate may do. Another host's agent certificate is refused.

use hotdeploy_common::tls::{caller_role, Role};
use tonic::{Request, Status};

/// Checks that the caller may use `call`.
pub(crate) fn authorize<T>(req: &Request<T>, call: &str) -> Result<(), Status> {
    check(req, call, None)
}

/// Checks that the caller may use `call`: an operator, or this host's own agent certificate.
pub(crate) fn authorize_own_host<T>(
    req: &Request<T>,
    call: &str,
    host_id: &str,
) -> Result<(), Status> {
    check(req, call, Some(host_id))
}

fn check<T>(req: &Request<T>, call: &str, own_host: Option<&str>) -> Result<(), Status> {
    match caller_role(req) {
        Some(Role::Insecure) | Some(Role::Operator(_)) => Ok(()),
        Some(Role::Agent(h)) if own_host == Some(h.as_str()) => Ok(()),
        other => {
            let who = other
                .map(|r| r.to_string())
                .unwrap_or_else(|| "a certificate with no hotdeploy role".into());
            tracing::warn!(audit = true, caller = %who, call, "permission denied");
            let needs = match own_host {
                Some(h) => format!("an operator certificate or the agent certificate of {h}"),
                None => "an operator certificate".to_owned(),
            };
            Err(Status::permission_denied(format!(
                "{call} on the agent needs {needs}; caller is {who}"
            )))
        }
    }
}
