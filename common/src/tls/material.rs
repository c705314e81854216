//! Reading TLS material from PEM files: certificate chains, private keys, CA roots and CRLs.
//!
//! Every failure names the file and the `[tls]` key it came from, so an operator who mistypes a
//! path or points `cert` at a key learns which. Nothing here caches: each call reads the files
//! anew, which is what a reload on SIGHUP needs.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use std::path::Path;
use thiserror::Error;

/// TLS material that cannot be loaded or used.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read [tls] {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("[tls] {what} {path}: {message}")]
    Pem {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("[tls] needs ca, cert and key, or insecure = true")]
    Incomplete,
    #[error("[tls] cannot be used: {0}")]
    Rustls(String),
}

fn pem_error(what: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError::Pem {
        what,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The raw bytes of `path` (for tonic's client settings, which take PEM text).
pub(crate) fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Every certificate in a PEM file; at least one.
pub(crate) fn certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(what, path, &read(what, path)?)
}

/// Every certificate in `pem`, read from `path`; at least one.
pub(crate) fn parse_certs(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(pem_error(what, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub(crate) fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    parse_key(path, &read("key", path)?)
}

/// The private key in `pem`, read from `path`.
pub(crate) fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| pem_error("key", path, e))
}

/// Every CRL in a PEM file; at least one.
pub(crate) fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem = read("crl", path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("crl", path, e))?;
    if crls.is_empty() {
        return Err(pem_error("crl", path, "holds no PEM X509 CRL"));
    }
    Ok(crls)
}

/// A root store of the CA certificates in `path`.
pub(crate) fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    parse_roots(path, &read("ca", path)?)
}

/// A root store of the CA certificates in `pem`, read from `path`.
pub(crate) fn parse_roots(path: &Path, pem: &[u8]) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in parse_certs("ca", path, pem)? {
        store
            .add(cert)
            .map_err(|e| pem_error("ca", path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}
