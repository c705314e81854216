//! The client side of mTLS: tonic client settings that a SIGHUP can replace.
//!
//! Long-lived clients (the coordinator's peer transport, the agent's coordinator link) take the
//! current settings each time they open a connection, so after a reload new connections present
//! the new certificate while open ones carry on. One-shot clients (`hotdeployctl`) use
//! [`client_tls`] directly.

use super::material::{self, TlsError};
use crate::config::TlsConfig;
use std::sync::{Arc, RwLock};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Client-side TLS, or `None` for plaintext. The files are parsed here, so a bad PEM is
/// reported now rather than at the first connection.
pub fn client_tls(cfg: &TlsConfig) -> Result<Option<ClientTlsConfig>, TlsError> {
    if cfg.insecure {
        return Ok(None);
    }
    let (Some(ca), Some(cert), Some(key)) = (&cfg.ca, &cfg.cert, &cfg.key) else {
        return Err(TlsError::Incomplete);
    };
    let (ca_pem, cert_pem, key_pem) = (
        material::read("ca", ca)?,
        material::read("cert", cert)?,
        material::read("key", key)?,
    );
    material::parse_roots(ca, &ca_pem)?;
    material::parse_certs("cert", cert, &cert_pem)?;
    material::parse_key(key, &key_pem)?;
    Ok(Some(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .identity(Identity::from_pem(cert_pem, key_pem)),
    ))
}

/// Client settings, reloadable. Cheap to clone; clones share the current settings.
#[derive(Clone, Debug)]
pub struct ClientTls {
    cfg: TlsConfig,
    current: Arc<RwLock<Option<ClientTlsConfig>>>,
}

impl ClientTls {
    /// Loads the settings that `[tls]` names (plaintext for `insecure = true`).
    pub fn load(cfg: &TlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            current: Arc::new(RwLock::new(client_tls(cfg)?)),
            cfg: cfg.clone(),
        })
    }

    /// Whether connections use TLS (`https`) or plaintext (`http`).
    pub fn scheme(&self) -> &'static str {
        if self.cfg.insecure {
            "http"
        } else {
            "https"
        }
    }

    /// The settings for a connection opened now.
    pub fn current(&self) -> Option<ClientTlsConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the files. On error the old settings stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = client_tls(&self.cfg)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}
