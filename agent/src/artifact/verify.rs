//! Checking an artifact against its release spec: the sha256, and the ed25519 signature.
//!
//! The signature is over the raw 32-byte sha256 digest (DESIGN §7), not over the hex text and
//! not over the artifact, so a signer needs only the digest and the check costs nothing once
//! the digest is known. Verification uses `verify_strict`, which refuses weak (small-order)
//! keys and non-canonical signatures, so one artifact has one valid signature per key.
//!
//! A well-formed signature that verifies under none of the trusted keys is reported as
//! invalid: ed25519 cannot tell "signed by an untrusted key" from "signature of something
//! else", so the message says both. `UntrustedKey` is kept for "no trusted keys at all".

use super::error::ArtifactError;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey, SIGNATURE_LENGTH};

/// The length of a sha256 digest.
pub const DIGEST_LEN: usize = 32;

/// Parses a sha256 in hex (either case, surrounding whitespace ignored).
pub fn parse_sha256(hex: &str) -> Result<[u8; DIGEST_LEN], ArtifactError> {
    let hex = hex.trim();
    let bad = || ArtifactError::InvalidSpec {
        message: format!(
            "sha256 {:?} is not {} hex digits",
            hex.chars().take(80).collect::<String>(),
            DIGEST_LEN * 2
        ),
    };
    if hex.len() != DIGEST_LEN * 2 {
        return Err(bad());
    }
    let mut out = [0u8; DIGEST_LEN];
    for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
        let hi = hex_val(pair[0]).ok_or_else(bad)?;
        let lo = hex_val(pair[1]).ok_or_else(bad)?;
        out[i] = (hi << 4) | lo;
    }
    Ok(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Lower-case hex of a digest.
pub fn to_hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a base64 signature (surrounding whitespace ignored).
pub fn decode_signature(b64: &str) -> Result<Signature, ArtifactError> {
    let bytes = BASE64
        .decode(b64.trim())
        .map_err(|e| ArtifactError::SignatureInvalid {
            reason: format!("not base64: {e}"),
        })?;
    let bytes: [u8; SIGNATURE_LENGTH] =
        bytes
            .try_into()
            .map_err(|b: Vec<u8>| ArtifactError::SignatureInvalid {
                reason: format!("{} bytes, expected {SIGNATURE_LENGTH}", b.len()),
            })?;
    Ok(Signature::from_bytes(&bytes))
}

/// Decodes a base64 ed25519 public key. The error is a bare reason for the caller to frame.
pub fn decode_public_key(b64: &str) -> Result<VerifyingKey, String> {
    let bytes = BASE64
        .decode(b64.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, expected 32", b.len()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an ed25519 public key: {e}"))
}

/// Checks that `signature` is a valid signature of `digest` by one of `trusted`.
pub fn verify_digest(
    digest: &[u8; DIGEST_LEN],
    signature: &Signature,
    trusted: &[VerifyingKey],
) -> Result<(), ArtifactError> {
    if trusted.is_empty() {
        return Err(ArtifactError::UntrustedKey);
    }
    if trusted
        .iter()
        .any(|key| key.verify_strict(digest, signature).is_ok())
    {
        return Ok(());
    }
    Err(ArtifactError::SignatureInvalid {
        reason: format!(
            "does not verify under any of the {} trusted key(s): signed by an untrusted key, \
             or not a signature of this artifact's sha256",
            trusted.len()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_round_trips_in_either_case() {
        let hex = "00ff10AbcdEF".repeat(5) + "0123";
        let d = parse_sha256(&hex).unwrap();
        assert_eq!(to_hex(&d), hex.to_ascii_lowercase());
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn malformed_signatures_are_refused() {
        assert!(matches!(
            decode_signature("not base64!"),
            Err(ArtifactError::SignatureInvalid { .. })
        ));
        assert!(matches!(
            decode_signature(&BASE64.encode([0u8; 10])),
            Err(ArtifactError::SignatureInvalid { .. })
        ));
    }
}
