//! The `[tls]` table, shared by both daemons.

use serde::Deserialize;
use std::path::PathBuf;

/// Channel security settings. Either `ca` + `cert` + `key` (mTLS), or `insecure = true`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signs every hotdeploy certificate.
    pub ca: Option<PathBuf>,
    /// PEM certificate of this node.
    pub cert: Option<PathBuf>,
    /// PEM private key of this node.
    pub key: Option<PathBuf>,
    /// Plaintext gRPC. Logged as a warning at every start.
    #[serde(default)]
    pub insecure: bool,
    /// Optional PEM CRL honoured on every listener.
    pub crl: Option<PathBuf>,
}

impl TlsConfig {
    /// Checks that the table is either complete mTLS or explicitly insecure.
    pub fn check(&self) -> Result<(), String> {
        match (self.insecure, &self.ca, &self.cert, &self.key) {
            (true, _, _, _) => Ok(()),
            (false, Some(_), Some(_), Some(_)) => Ok(()),
            _ => Err("set ca, cert and key for mTLS, or insecure = true for plaintext".into()),
        }
    }
}
