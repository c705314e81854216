//! Release signing keys and signatures (DESIGN §7, "Signed releases"), shared by
//! `hotdeployctl release keygen|sign` and the agent.
//!
//! Keys are base64 text, one per file: the private key is the 32-byte ed25519 seed (mode 0600,
//! set when the file is created), the public key the 32-byte verifying key, ready to paste into
//! an agent's `[artifact] trusted_keys`. A signature is base64 of the 64-byte ed25519 signature
//! over the artifact's raw sha256 digest, which is what the agent checks.
//!
//! [`keygen`] never overwrites: replacing a signing key by accident would orphan every agent
//! that trusts the old one.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, SECRET_KEY_LENGTH};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The private key file [`keygen`] writes.
pub const PRIVATE_KEY_FILE: &str = "release-signing.key";
/// The public key file [`keygen`] writes.
pub const PUBLIC_KEY_FILE: &str = "release-signing.pub";
/// The length of a sha256 digest.
pub const DIGEST_LEN: usize = 32;
/// Private keys are for their owner only.
const PRIVATE_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;
/// Read buffer for hashing artifacts.
const HASH_BUF: usize = 256 * 1024;

/// A signing helper that failed.
#[derive(Debug, Error)]
pub enum SigningError {
    /// A local file-system call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A key file exists already.
    #[error("refusing to overwrite {}: keep the old key, or use another directory", .0.display())]
    Exists(PathBuf),
    /// A key file that does not hold a key.
    #[error("bad key in {file}: {message}")]
    BadKey { file: String, message: String },
}

fn io(context: String, source: std::io::Error) -> SigningError {
    SigningError::Io { context, source }
}

/// Writes a new key pair into `dir` (created if needed). Returns (private, public) paths.
/// Refuses, writing nothing, if either file exists.
pub fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf), SigningError> {
    std::fs::create_dir_all(dir).map_err(|e| io(format!("create {}", dir.display()), e))?;
    let private = dir.join(PRIVATE_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    for path in [&private, &public] {
        if path.exists() {
            return Err(SigningError::Exists(path.clone()));
        }
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    write_new(&private, &BASE64.encode(key.to_bytes()), PRIVATE_MODE)?;
    write_new(
        &public,
        &BASE64.encode(key.verifying_key().to_bytes()),
        PUBLIC_MODE,
    )?;
    Ok((private, public))
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), SigningError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io(format!("create {}", path.display()), e))?;
    writeln!(f, "{text}")
        .and_then(|()| f.sync_all())
        .map_err(|e| io(format!("write {}", path.display()), e))
}

/// Reads a private key file written by [`keygen`].
pub fn load_signing_key(key_file: &Path) -> Result<SigningKey, SigningError> {
    let text = std::fs::read_to_string(key_file)
        .map_err(|e| io(format!("read {}", key_file.display()), e))?;
    let bad = |message: String| SigningError::BadKey {
        file: key_file.display().to_string(),
        message,
    };
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|e| bad(format!("not base64: {e}")))?;
    let seed: [u8; SECRET_KEY_LENGTH] = bytes.try_into().map_err(|b: Vec<u8>| {
        bad(format!(
            "{} bytes, expected a {SECRET_KEY_LENGTH}-byte private key",
            b.len()
        ))
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The sha256 digest of a file.
pub fn sha256_file(path: &Path) -> Result<[u8; DIGEST_LEN], SigningError> {
    let mut f = File::open(path).map_err(|e| io(format!("open {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUF];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| io(format!("read {}", path.display()), e))?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// Signs a digest: base64 of the ed25519 signature over the raw 32 bytes.
pub fn sign_digest(key: &SigningKey, digest: &[u8; DIGEST_LEN]) -> String {
    BASE64.encode(key.sign(digest).to_bytes())
}

/// Signs an artifact file with the private key in `key_file`; returns the base64 signature.
pub fn sign_file(artifact: &Path, key_file: &Path) -> Result<String, SigningError> {
    let key = load_signing_key(key_file)?;
    let digest = sha256_file(artifact)?;
    Ok(sign_digest(&key, &digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, VerifyingKey};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keygen_then_sign_file_verifies_and_keygen_never_overwrites() {
        let dir = std::env::temp_dir().join(format!("hd-signing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (private, public) = keygen(&dir).unwrap();
        let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let artifact = dir.join("a.tar");
        std::fs::write(&artifact, b"some bytes").unwrap();
        let sig = sign_file(&artifact, &private).unwrap();
        let public = BASE64
            .decode(std::fs::read_to_string(&public).unwrap().trim())
            .unwrap();
        let key = VerifyingKey::from_bytes(&public.try_into().unwrap()).unwrap();
        let sig: [u8; 64] = BASE64.decode(sig).unwrap().try_into().unwrap();
        let digest = sha256_file(&artifact).unwrap();
        key.verify_strict(&digest, &Signature::from_bytes(&sig))
            .unwrap();

        assert!(keygen(&dir).is_err(), "second keygen must refuse");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
