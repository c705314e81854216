//! Revocation for the development PKI: `hotdeployctl certs revoke DIR CERT...` writes
//! `DIR/crl.pem`, a CRL signed by `DIR`'s CA, for `[tls] crl` on every daemon.
//!
//! Each run keeps every serial the existing `crl.pem` lists (with its original revocation
//! time), adds the new ones, and replaces the file atomically (a temporary file, fsynced, then
//! renamed), so a daemon reloading on SIGHUP never reads half a CRL. A certificate that `DIR`'s
//! CA did not issue is refused: a CRL can only revoke its issuer's certificates.
//!
//! The CRL number is the Unix time of the run, so it increases from one run to the next without
//! parsing the old number. `nextUpdate` is a year out; hotdeploy does not enforce it (see
//! `tls::server`). A real CA's CRL works the same way: point `[tls] crl` at it.

use crate::tls_pki::{Ca, PkiError, CA_CERT_FILE, CA_KEY_FILE};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The CRL file that `certs revoke` writes in the PKI directory.
pub const CRL_FILE: &str = "crl.pem";
/// How far ahead `nextUpdate` is set.
const NEXT_UPDATE: Duration = Duration::from_secs(365 * 86_400);

/// What a revocation did.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// The CRL written.
    pub crl: PathBuf,
    /// Serials (hex) newly revoked by this run.
    pub added: Vec<String>,
    /// Serials (hex) the CRL now lists, in all.
    pub total: usize,
}

fn io(context: String, source: std::io::Error) -> PkiError {
    PkiError::Io { context, source }
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> PkiError {
    PkiError::Invalid(format!("{}: {what}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The single PEM block of `label` in `path`, as DER.
fn pem_der(path: &Path, label: &str) -> Result<Vec<u8>, PkiError> {
    let text = std::fs::read(path).map_err(|e| io(format!("read {}", path.display()), e))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text)
        .map_err(|e| invalid(path, format!("not a PEM file: {e}")))?;
    if pem.label != label {
        return Err(invalid(
            path,
            format!("holds a {:?}, not a {label:?}", pem.label),
        ));
    }
    Ok(pem.contents)
}

/// Adds `certs` to `dir`'s CRL (creating it if needed) and rewrites `dir/crl.pem`.
pub fn revoke(dir: &Path, certs: &[PathBuf]) -> Result<Revoked, PkiError> {
    if certs.is_empty() {
        return Err(PkiError::Invalid(
            "name at least one certificate to revoke".into(),
        ));
    }
    let ca_file = dir.join(CA_CERT_FILE);
    let ca = Ca::load(&ca_file, &dir.join(CA_KEY_FILE))?;
    let ca_der = pem_der(&ca_file, "CERTIFICATE")?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|e| invalid(&ca_file, format!("not a certificate: {e}")))?;
    let now = SystemTime::now();

    // What the existing CRL revokes, kept as it was.
    let crl_file = dir.join(CRL_FILE);
    let mut revoked: Vec<RevokedCertParams> = Vec::new();
    if crl_file.exists() {
        let der = pem_der(&crl_file, "X509 CRL")?;
        let (_, crl) = x509_parser::parse_x509_crl(&der)
            .map_err(|e| invalid(&crl_file, format!("not a CRL: {e}")))?;
        for entry in crl.iter_revoked_certificates() {
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(entry.raw_serial()),
                revocation_time: entry.revocation_date.to_datetime(),
                reason_code: None,
                invalidity_date: None,
            });
        }
    }

    let mut added = Vec::new();
    for path in certs {
        let der = pem_der(path, "CERTIFICATE")?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| invalid(path, format!("not a certificate: {e}")))?;
        if cert.issuer() != ca_cert.subject() {
            return Err(invalid(
                path,
                format!(
                    "was issued by {}, not by this directory's CA ({}); a CRL can revoke only \
                     its own CA's certificates",
                    cert.issuer(),
                    ca_cert.subject()
                ),
            ));
        }
        let serial = cert.raw_serial();
        if revoked.iter().any(|r| r.serial_number.as_ref() == serial) {
            continue;
        }
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(serial),
            revocation_time: now.into(),
            reason_code: None,
            invalidity_date: None,
        });
        added.push(hex(serial));
    }

    let number = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let params = CertificateRevocationListParams {
        this_update: now.into(),
        next_update: (now + NEXT_UPDATE).into(),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let total = params.revoked_certs.len();
    let pem = params.signed_by(&ca.issuer()?)?.pem()?;
    replace_atomically(&crl_file, pem.as_bytes())?;
    Ok(Revoked {
        crl: crl_file,
        added,
        total,
    })
}

/// Writes `path` through a temporary file, fsynced, then renamed over it.
fn replace_atomically(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    let tmp = path.with_extension("pem.tmp");
    let mut f =
        std::fs::File::create(&tmp).map_err(|e| io(format!("create {}", tmp.display()), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(format!("rename to {}", path.display()), e))?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
