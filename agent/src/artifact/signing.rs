//! Release signing keys and signatures, for `hotdeployctl release keygen` and `release sign`.
//! The code lives in `hotdeploy_common::signing` (the CLI uses it too); these wrappers keep the
//! agent's error type.
//!
//! Keys are base64 text, one per file: the private key is the 32-byte ed25519 seed (mode 0600),
//! the public key the 32-byte verifying key, ready to paste into an agent's `trusted_keys`. A
//! signature is base64 of the 64-byte ed25519 signature over the artifact's raw sha256 digest
//! (DESIGN §7), which is what `verify::verify_digest` checks.
//!
//! `keygen` never overwrites: replacing a signing key by accident would orphan every agent that
//! trusts the old one.

use super::error::ArtifactError;
use super::verify::DIGEST_LEN;
use ed25519_dalek::SigningKey;
use hotdeploy_common::signing::{self as common, SigningError};
use std::path::{Path, PathBuf};

pub use common::{PRIVATE_KEY_FILE, PUBLIC_KEY_FILE};

impl From<SigningError> for ArtifactError {
    fn from(e: SigningError) -> Self {
        match e {
            SigningError::Io { context, source } => ArtifactError::io(context, source),
            SigningError::Exists(path) => ArtifactError::io(
                format!("refusing to overwrite {}", path.display()),
                std::io::ErrorKind::AlreadyExists.into(),
            ),
            SigningError::BadKey { file, message } => ArtifactError::BadKey {
                entry: file,
                message,
            },
        }
    }
}

/// Writes a new key pair into `dir` (created if needed). Returns (private, public) paths.
pub fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf), ArtifactError> {
    Ok(common::keygen(dir)?)
}

/// Reads a private key file written by [`keygen`].
pub fn load_signing_key(key_file: &Path) -> Result<SigningKey, ArtifactError> {
    Ok(common::load_signing_key(key_file)?)
}

/// The sha256 digest of a file.
pub fn sha256_file(path: &Path) -> Result<[u8; DIGEST_LEN], ArtifactError> {
    Ok(common::sha256_file(path)?)
}

/// Signs a digest: base64 of the ed25519 signature over the raw 32 bytes.
pub fn sign_digest(key: &SigningKey, digest: &[u8; DIGEST_LEN]) -> String {
    common::sign_digest(key, digest)
}

/// Signs an artifact file with the private key in `key_file`; returns the base64 signature.
pub fn sign_file(artifact: &Path, key_file: &Path) -> Result<String, ArtifactError> {
    Ok(common::sign_file(artifact, key_file)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::verify::{decode_public_key, decode_signature, verify_digest};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keygen_then_sign_file_verifies_and_keygen_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = keygen(dir.path()).unwrap();
        let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let artifact = dir.path().join("a.tar");
        std::fs::write(&artifact, b"some bytes").unwrap();
        let sig = sign_file(&artifact, &private).unwrap();
        let key = decode_public_key(&std::fs::read_to_string(&public).unwrap()).unwrap();
        let digest = sha256_file(&artifact).unwrap();
        verify_digest(&digest, &decode_signature(&sig).unwrap(), &[key]).unwrap();

        assert!(keygen(dir.path()).is_err(), "second keygen must refuse");
    }
}
