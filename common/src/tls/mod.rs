//! Channel security from a `[tls]` table, and the roles that certificates carry.
//!
//! A hotdeploy certificate names its holder's role in a SAN URI:
//! `hotdeploy://coordinator/<id>`, `hotdeploy://agent/<host>` or `hotdeploy://operator/<name>`.
//! Services read the role of the caller's leaf certificate with [`caller_role`] and refuse calls
//! outside it. With `insecure = true` there is no certificate, and [`caller_role`] answers
//! [`Role::Insecure`], which services treat as allowed (the operator chose plaintext and was
//! warned at start).
//!
//! The pieces:
//! - `material`: reading PEM certificates, keys, CA roots and CRLs, with errors that name the
//!   file;
//! - `server`: the listener's rustls settings (client certificates required, CRL honoured),
//!   reloadable on SIGHUP;
//! - `incoming`: the accept loop (connection cap, handshake deadline) that every gRPC listener
//!   serves from;
//! - `client`: tonic client settings, reloadable for long-lived clients.

mod client;
mod incoming;
mod material;
mod server;

pub use client::{client_tls, ClientTls};
pub use incoming::{incoming, Conn, ConnInfo, Peer};
pub use material::TlsError;
pub use server::ServerTls;

/// Who is calling, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Coordinator(u64),
    Agent(String),
    Operator(String),
    /// Plaintext channel: no identity.
    Insecure,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Coordinator(id) => write!(f, "coordinator/{id}"),
            Role::Agent(h) => write!(f, "agent/{h}"),
            Role::Operator(n) => write!(f, "operator/{n}"),
            Role::Insecure => write!(f, "insecure"),
        }
    }
}

/// The role in a DER certificate's SAN URIs.
pub fn role_from_der(der: &[u8]) -> Option<Role> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => parse_role_uri(uri),
        _ => None,
    })
}

/// Parses `hotdeploy://<role>/<name>`.
pub fn parse_role_uri(uri: &str) -> Option<Role> {
    let rest = uri.strip_prefix("hotdeploy://")?;
    let (kind, name) = rest.split_once('/')?;
    match kind {
        "coordinator" => name.parse().ok().map(Role::Coordinator),
        "agent" if crate::names::check_host(name).is_ok() => Some(Role::Agent(name.to_owned())),
        "operator" if !name.is_empty() => Some(Role::Operator(name.to_owned())),
        _ => None,
    }
}

/// The caller's role: from its leaf certificate under TLS, [`Role::Insecure`] on plaintext, and
/// `None` when a TLS caller's certificate names no role.
pub fn caller_role<T>(req: &tonic::Request<T>) -> Option<Role> {
    if let Some(info) = req.extensions().get::<ConnInfo>() {
        return match &info.peer {
            Peer::Plaintext => Some(Role::Insecure),
            Peer::Certified(chain) => chain.first().and_then(|c| role_from_der(c.as_ref())),
        };
    }
    // A server on tonic's own transport (tests): tonic records the chain itself.
    match req.peer_certs() {
        None => Some(Role::Insecure),
        Some(certs) => certs.first().and_then(|c| role_from_der(c.as_ref())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_uris() {
        assert_eq!(
            parse_role_uri("hotdeploy://coordinator/3"),
            Some(Role::Coordinator(3))
        );
        assert_eq!(
            parse_role_uri("hotdeploy://agent/web-1"),
            Some(Role::Agent("web-1".into()))
        );
        assert_eq!(
            parse_role_uri("hotdeploy://operator/ops"),
            Some(Role::Operator("ops".into()))
        );
        assert_eq!(parse_role_uri("hotdeploy://agent/Web_1"), None);
        assert_eq!(parse_role_uri("https://agent/web-1"), None);
        assert_eq!(parse_role_uri("hotdeploy://coordinator/x"), None);
    }
}
