//! A small PKI for hotdeploy's mTLS: a CA and the certificates of coordinators, agents and
//! operators, with their roles in SAN URIs (see [`crate::tls`]). This is what
//! `hotdeployctl certs init` writes; tests use it too.
//!
//! Every certificate gets:
//! - the role URI, `hotdeploy://coordinator/<id>`, `hotdeploy://agent/<host>` or
//!   `hotdeploy://operator/<name>`;
//! - for a daemon given an address, that address as a SAN: an IP SAN if it parses as an IP
//!   address, else a DNS SAN. Clients check it against the address they dialled;
//! - extended key usages: serverAuth and clientAuth for coordinators (peers dial each other)
//!   and agents (they listen, and dial coordinators), clientAuth only for operators.
//!
//! Keys are ECDSA P-256. Files are created with `create_new`, so nothing is ever overwritten,
//! and private keys get mode 0600 when created (never a chmod after).

use crate::names::check_host;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// The CA certificate file.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key file.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// How long a CA is valid, in days (about 10 years).
pub const CA_DAYS: i64 = 3650;
/// How long a leaf certificate is valid, in days (about 5 years).
pub const LEAF_DAYS: i64 = 1825;

/// PKI generation that failed.
#[derive(Debug, Error)]
pub enum PkiError {
    #[error("{0}")]
    Invalid(String),
    #[error("refusing to overwrite {}: remove it first, or use another directory", .0.display())]
    Exists(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn io(context: String, source: std::io::Error) -> PkiError {
    PkiError::Io { context, source }
}

/// Whose certificate, and so which role and file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Coordinator `id`, reachable at `host` (an IP address or DNS name), if given.
    Coordinator { id: u64, host: Option<String> },
    /// The agent of host `host_id`, listening at `host`, if given.
    Agent {
        host_id: String,
        host: Option<String>,
    },
    /// An operator (a client only).
    Operator { name: String },
}

impl Subject {
    /// Parses `--coordinator ID@HOST` (or a bare `ID`).
    pub fn coordinator(spec: &str) -> Result<Subject, PkiError> {
        let (id, host) = split_host(spec);
        let id = id.parse::<u64>().map_err(|_| {
            PkiError::Invalid(format!(
                "--coordinator {spec:?}: expected ID@HOST with a numeric ID"
            ))
        })?;
        Ok(Subject::Coordinator { id, host })
    }

    /// Parses `--agent HOST_ID[@HOST]`.
    pub fn agent(spec: &str) -> Result<Subject, PkiError> {
        let (host_id, host) = split_host(spec);
        check_host(host_id).map_err(|e| PkiError::Invalid(format!("--agent {spec:?}: {e}")))?;
        Ok(Subject::Agent {
            host_id: host_id.to_string(),
            host,
        })
    }

    /// An operator named `name`.
    pub fn operator(name: &str) -> Result<Subject, PkiError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(PkiError::Invalid(format!(
                "--operator {name:?}: expected [A-Za-z0-9._-]{{1,64}}"
            )));
        }
        Ok(Subject::Operator {
            name: name.to_string(),
        })
    }

    /// The role URI this certificate carries.
    pub fn role_uri(&self) -> String {
        match self {
            Subject::Coordinator { id, .. } => format!("hotdeploy://coordinator/{id}"),
            Subject::Agent { host_id, .. } => format!("hotdeploy://agent/{host_id}"),
            Subject::Operator { name } => format!("hotdeploy://operator/{name}"),
        }
    }

    /// The (certificate, key) file names in the PKI directory.
    pub fn file_names(&self) -> (String, String) {
        let stem = match self {
            Subject::Coordinator { id, .. } => format!("coordinator-{id}"),
            Subject::Agent { host_id, .. } => format!("agent-{host_id}"),
            Subject::Operator { .. } => "operator".to_string(),
        };
        (format!("{stem}.pem"), format!("{stem}-key.pem"))
    }

    fn common_name(&self) -> String {
        match self {
            Subject::Coordinator { id, .. } => format!("hotdeploy coordinator {id}"),
            Subject::Agent { host_id, .. } => format!("hotdeploy agent {host_id}"),
            Subject::Operator { name } => format!("hotdeploy operator {name}"),
        }
    }

    fn host(&self) -> Option<&str> {
        match self {
            Subject::Coordinator { host, .. } | Subject::Agent { host, .. } => host.as_deref(),
            Subject::Operator { .. } => None,
        }
    }

    fn server(&self) -> bool {
        !matches!(self, Subject::Operator { .. })
    }
}

fn split_host(spec: &str) -> (&str, Option<String>) {
    match spec.split_once('@') {
        Some((name, host)) if !host.is_empty() => (name, Some(host.to_string())),
        Some((name, _)) => (name, None),
        None => (spec, None),
    }
}

/// A certificate's validity, in whole days relative to today (UTC). Negative days are in the
/// past: tests make expired certificates with `not_after_days < 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before_days: i64,
    pub not_after_days: i64,
}

impl Validity {
    /// From yesterday (clock skew) for `days`.
    pub fn days(days: i64) -> Validity {
        Validity {
            not_before_days: -1,
            not_after_days: days,
        }
    }
}

/// A CA in memory: its certificate PEM and its key.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl Ca {
    /// A new self-signed CA.
    pub fn generate(validity: Validity) -> Result<Ca, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("hotdeploy CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, validity);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A CA from its PEM files (`ca.pem`, `ca-key.pem`).
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Ca, PkiError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| io(format!("read {}", p.display()), e))
        };
        let cert_pem = read(cert_file)?;
        let key = KeyPair::from_pem(&read(key_file)?)?;
        // Fails early if the certificate does not parse.
        Issuer::from_ca_cert_pem(&cert_pem, &key)?;
        Ok(Ca { cert_pem, key })
    }

    /// The CA as the signer of certificates and CRLs.
    pub(crate) fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a certificate for `subject`; returns (certificate PEM, key PEM).
    pub fn issue(
        &self,
        subject: &Subject,
        validity: Validity,
    ) -> Result<(String, String), PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&subject.common_name());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if subject.server() {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        let mut sans = Vec::new();
        if let Some(host) = subject.host() {
            sans.push(match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.to_string().try_into().map_err(|_| {
                    PkiError::Invalid(format!("{host:?} is neither an IP address nor a DNS name"))
                })?),
            });
        }
        sans.push(SanType::URI(subject.role_uri().try_into().map_err(
            |_| PkiError::Invalid(format!("bad role URI {}", subject.role_uri())),
        )?));
        params.subject_alt_names = sans;
        set_validity(&mut params, validity);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "hotdeploy");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    let date = |days: i64| {
        let (y, m, d) = civil_from_days(today + days);
        date_time_ymd(y, m, d)
    };
    params.not_before = date(validity.not_before_days);
    params.not_after = date(validity.not_after_days);
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

/// What `certs init` makes.
#[derive(Debug, Clone, Default)]
pub struct InitSpec {
    /// Coordinator, agent and operator certificates to issue.
    pub subjects: Vec<Subject>,
}

/// Writes a PKI into `dir` (created if needed), and returns the files written.
///
/// If `dir` holds no CA, a new one is made (`ca.pem`, `ca-key.pem`). If it holds both CA
/// files, that CA issues the new certificates, so hosts can be added later. Any file that would
/// be written and already exists makes the whole call fail before anything is written.
pub fn init_dir(dir: &Path, spec: &InitSpec) -> Result<Vec<PathBuf>, PkiError> {
    std::fs::create_dir_all(dir).map_err(|e| io(format!("create {}", dir.display()), e))?;
    let ca_cert = dir.join(CA_CERT_FILE);
    let ca_key = dir.join(CA_KEY_FILE);
    let existing_ca = match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => true,
        (false, false) => false,
        (true, false) => return Err(PkiError::Exists(ca_cert)),
        (false, true) => return Err(PkiError::Exists(ca_key)),
    };
    let mut planned: Vec<PathBuf> = Vec::new();
    for subject in &spec.subjects {
        let (cert, key) = subject.file_names();
        for name in [cert, key] {
            let path = dir.join(name);
            if planned.contains(&path) {
                return Err(PkiError::Invalid(format!(
                    "{} is asked for twice",
                    path.display()
                )));
            }
            if path.exists() {
                return Err(PkiError::Exists(path));
            }
            planned.push(path);
        }
    }
    let mut written = Vec::new();
    let ca = if existing_ca {
        Ca::load(&ca_cert, &ca_key)?
    } else {
        let ca = Ca::generate(Validity::days(CA_DAYS))?;
        write_new(&ca_key, &ca.key_pem(), 0o600)?;
        written.push(ca_key);
        write_new(&ca_cert, ca.cert_pem(), 0o644)?;
        written.push(ca_cert);
        ca
    };
    for subject in &spec.subjects {
        let (cert_pem, key_pem) = ca.issue(subject, Validity::days(LEAF_DAYS))?;
        let (cert, key) = subject.file_names();
        let (cert, key) = (dir.join(cert), dir.join(key));
        write_new(&key, &key_pem, 0o600)?;
        written.push(key);
        write_new(&cert, &cert_pem, 0o644)?;
        written.push(cert);
    }
    Ok(written)
}

/// Creates `path` with `mode` (refusing an existing file) and writes `text`.
pub fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => PkiError::Exists(path.to_path_buf()),
            _ => io(format!("create {}", path.display()), e),
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io(format!("write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{role_from_der, Role};
    use std::os::unix::fs::PermissionsExt;

    fn der(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn subjects_parse() {
        assert_eq!(
            Subject::coordinator("3@10.0.0.3").unwrap(),
            Subject::Coordinator {
                id: 3,
                host: Some("10.0.0.3".into())
            }
        );
        assert!(Subject::coordinator("x@h").is_err());
        assert_eq!(
            Subject::agent("web-1").unwrap(),
            Subject::Agent {
                host_id: "web-1".into(),
                host: None
            }
        );
        assert!(Subject::agent("Web_1@h").is_err());
        assert!(Subject::operator("").is_err());
    }

    #[test]
    fn init_writes_roles_sans_and_modes_and_never_overwrites() {
        let dir = std::env::temp_dir().join(format!("hd-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spec = InitSpec {
            subjects: vec![
                Subject::coordinator("1@127.0.0.1").unwrap(),
                Subject::agent("web-1@web-1.example").unwrap(),
                Subject::operator("admin").unwrap(),
            ],
        };
        let written = init_dir(&dir, &spec).unwrap();
        assert_eq!(written.len(), 8);
        for f in ["ca-key.pem", "coordinator-1-key.pem", "operator-key.pem"] {
            let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let pem = std::fs::read_to_string(dir.join("coordinator-1.pem")).unwrap();
        let der1 = der(&pem);
        assert_eq!(role_from_der(&der1), Some(Role::Coordinator(1)));
        let (_, cert) = x509_parser::parse_x509_certificate(&der1).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(san.value.general_names.iter().any(|n| matches!(
            n,
            x509_parser::extensions::GeneralName::IPAddress(ip) if *ip == [127, 0, 0, 1]
        )));
        let op = der(&std::fs::read_to_string(dir.join("operator.pem")).unwrap());
        assert_eq!(role_from_der(&op), Some(Role::Operator("admin".into())));

        // Everything refused, nothing written, when one file exists.
        let again = InitSpec {
            subjects: vec![
                Subject::agent("web-2").unwrap(),
                Subject::agent("web-1").unwrap(),
            ],
        };
        assert!(matches!(init_dir(&dir, &again), Err(PkiError::Exists(_))));
        assert!(!dir.join("agent-web-2.pem").exists());
        // The existing CA issues new certificates.
        let more = InitSpec {
            subjects: vec![Subject::agent("web-2").unwrap()],
        };
        assert_eq!(init_dir(&dir, &more).unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
