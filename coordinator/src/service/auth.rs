//! Who may call what (DESIGN §7): the role in the caller's certificate decides.
//!
//! - being a host (register, heartbeat) only with that host's agent certificate: an operator
//!   may not speak for a host, or it could make a down host look healthy and reachable;
//! - the other agent calls (slots, phases) for the host the certificate names, or from an
//!   operator (`hotdeployctl locks acquire/release`);
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
    /// The agent of this host, and no one else.
    Agent(&'a str),
}

/// Whether `role` may make a call that needs `need`.
pub(crate) fn permits(role: Option<&Role>, need: &Need<'_>) -> bool {
    match (role, need) {
        (Some(Role::Insecure), _) => true,
        (Some(Role::Operator(_)), Need::Operator | Need::Host(_)) => true,
        (Some(Role::Agent(h)), Need::Host(want) | Need::Agent(want)) => h == want,
        _ => false,
    }
}

/// The identity to record for `role` in audit events (`"operator/alice"`).
pub(crate) fn identity(role: Option<&Role>) -> String {
    role.map(|r| r.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Checks the caller and returns its identity for audit events (`"operator/alice"`).
pub(crate) fn authorize<T>(req: &Request<T>, call: &str, need: Need<'_>) -> Result<String, Status> {
    let role = caller_role(req);
    check(role.as_ref(), call, need)
}

/// [`authorize`] for a role already taken from the request (a stream's messages).
pub(crate) fn check(role: Option<&Role>, call: &str, need: Need<'_>) -> Result<String, Status> {
    let who = identity(role);
    if permits(role, &need) {
        return Ok(who);
    }
    let what = match need {
        Need::Operator => "an operator certificate".to_string(),
        Need::Host(h) => format!("the agent certificate of {h} or an operator certificate"),
        Need::Agent(h) => format!("the agent certificate of {h}"),
    };
    tracing::warn!(audit = true, caller = %who, call, "permission denied");
    Err(Status::permission_denied(format!(
        "{call} needs {what}; caller is {who}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_hosts_own_agent_may_be_that_host() {
        let op = Role::Operator("alice".into());
        let web1 = Role::Agent("web-1".into());
        let web2 = Role::Agent("web-2".into());
        let coord = Role::Coordinator(1);
        // Register and Heartbeat.
        assert!(permits(Some(&web1), &Need::Agent("web-1")));
        assert!(!permits(Some(&op), &Need::Agent("web-1")));
        assert!(!permits(Some(&web2), &Need::Agent("web-1")));
        assert!(!permits(Some(&coord), &Need::Agent("web-1")));
        assert!(!permits(None, &Need::Agent("web-1")));
        assert!(permits(Some(&Role::Insecure), &Need::Agent("web-1")));
        // Slots: the host's agent or an operator.
        assert!(permits(Some(&op), &Need::Host("web-1")));
        assert!(permits(Some(&web1), &Need::Host("web-1")));
        assert!(!permits(Some(&web2), &Need::Host("web-1")));
        // Admin.
        assert!(permits(Some(&op), &Need::Operator));
        assert!(!permits(Some(&web1), &Need::Operator));
        let err = check(Some(&op), "Register", Need::Agent("web-1")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("agent certificate of web-1"),
            "{err:?}"
        );
    }
}
