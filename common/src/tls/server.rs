//! The server side of mTLS: a rustls configuration that a SIGHUP can replace.
//!
//! tonic's own TLS settings are fixed when the server starts, so hotdeploy builds the rustls
//! [`ServerConfig`](rustls::ServerConfig) itself and hands each accepted connection the config
//! that is current at that moment (see `incoming`). A reload re-reads the files that `[tls]`
//! names; connections already open keep the settings they were made with, so rotating a
//! certificate never drops a stream. A reload that fails (a missing file, a key that does not
//! match) changes nothing and says why.
//!
//! Every client must present a certificate that chains to `[tls] ca`, is within its validity
//! period, and, when `[tls] crl` is set, is not revoked. Revocation is checked for the client's
//! own certificate (hotdeploy's PKI has no intermediates), and a certificate whose issuer the
//! CRL does not cover is refused rather than let through: a CRL from the wrong CA fails closed.
//! CRL expiry (`nextUpdate`) is not enforced, so a stale CRL keeps revoking what it lists.
//!
//! The coordinator's HTTP listener (`/metrics`, FleetLock) serves the same certificate with the
//! same CA and CRL ([`ServerTls::http_acceptor`]), but asks for no client certificate: Zincati
//! and most scrapers present none. A client that does present one must still pass the CA and
//! the CRL. Both settings are read and reloaded together.
//!
//! Left out: OCSP, and client certificates for anything but authentication (the role comes
//! from the SAN URI, read by the services).

use super::material::{self, TlsError};
use crate::config::TlsConfig;
use rustls::server::WebPkiClientVerifier;
use std::sync::{Arc, RwLock};

/// A server's TLS settings, reloadable. Cheap to clone; clones share the current settings.
#[derive(Clone)]
pub struct ServerTls {
    cfg: TlsConfig,
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    /// The HTTP listener's settings: the same files, client certificates optional, HTTP/1.1.
    http: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("cfg", &self.cfg).finish()
    }
}

impl ServerTls {
    /// Loads the settings that `[tls]` names, or `None` for `insecure = true`.
    pub fn load(cfg: &TlsConfig) -> Result<Option<Self>, TlsError> {
        if cfg.insecure {
            return Ok(None);
        }
        let built = build(cfg, ClientCerts::Required)?;
        let http = build(cfg, ClientCerts::Optional)?;
        Ok(Some(Self {
            cfg: cfg.clone(),
            current: Arc::new(RwLock::new(Arc::new(built))),
            http: Arc::new(RwLock::new(Arc::new(http))),
        }))
    }

    /// Re-reads the certificate, key, CA and CRL. New connections use them; open ones are not
    /// touched. On error the old settings stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let built = Arc::new(build(&self.cfg, ClientCerts::Required)?);
        let http = Arc::new(build(&self.cfg, ClientCerts::Optional)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = built;
        *self.http.write().unwrap_or_else(|e| e.into_inner()) = http;
        Ok(())
    }

    /// The settings for an HTTPS connection accepted now (the coordinator's `http_listen`):
    /// the same certificate, CA and CRL, no client certificate required, HTTP/1.1.
    pub fn http_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = self.http.read().unwrap_or_else(|e| e.into_inner()).clone();
        tokio_rustls::TlsAcceptor::from(cfg)
    }

    /// The settings for a connection accepted now.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(cfg)
    }
}

/// Whether a listener insists on a client certificate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientCerts {
    /// gRPC: every caller proves its role.
    Required,
    /// HTTP: anyone may connect; a certificate shown must still be valid and not revoked.
    Optional,
}

fn build(cfg: &TlsConfig, client_certs: ClientCerts) -> Result<rustls::ServerConfig, TlsError> {
    let (Some(ca), Some(cert), Some(key)) = (&cfg.ca, &cfg.cert, &cfg.key) else {
        return Err(TlsError::Incomplete);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(material::roots(ca)?),
        provider.clone(),
    );
    if let Some(crl) = &cfg.crl {
        verifier = verifier
            .with_crls(material::crls(crl)?)
            .only_check_end_entity_revocation();
    }
    if client_certs == ClientCerts::Optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Rustls(format!("client verifier: {e}")))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material::certs("cert", cert)?, material::key(key)?)
        .map_err(|e| {
            TlsError::Rustls(format!(
                "cert {} and key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    server.alpn_protocols = match client_certs {
        // gRPC is HTTP/2 only; clients (tonic among them) ask for h2 by ALPN.
        ClientCerts::Required => vec![b"h2".to_vec()],
        ClientCerts::Optional => vec![b"http/1.1".to_vec()],
    };
    Ok(server)
}
