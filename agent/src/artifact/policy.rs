//! What the agent accepts as an artifact: how big, whether it must be signed, and by whom.
//!
//! Built once from `[artifact]` in the agent config. A `trusted_keys` entry is either a base64
//! ed25519 public key, or the path of a file holding such keys one per line (blank lines and
//! `#` comments allowed). Every key is decoded at load time, so a typo fails the agent's start
//! rather than the first signed deploy. Requiring signatures with no trusted key is refused for
//! the same reason: every release would fail.

use super::error::ArtifactError;
use super::verify::decode_public_key;
use ed25519_dalek::VerifyingKey;
use hotdeploy_common::config::ArtifactConfig;
use std::path::Path;
use std::time::Duration;

/// The most a whole fetch may take. Generous, since artifacts may be large (the default size
/// limit is 1 GiB) and links slow; a stalled transfer is caught sooner by the read timeout in
/// `fetch`.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The artifact policy of one agent.
#[derive(Debug, Clone)]
pub struct ArtifactPolicy {
    /// The most an artifact may weigh, and the most it may expand to when unpacked.
    pub max_bytes: u64,
    /// Refuse releases without a signature.
    pub require_signature: bool,
    /// The keys a signature must verify under (any one of them).
    pub trusted_keys: Vec<VerifyingKey>,
    /// The deadline for one whole fetch.
    pub fetch_timeout: Duration,
}

impl ArtifactPolicy {
    /// A policy with explicit keys (tests, tools).
    pub fn new(max_bytes: u64, require_signature: bool, trusted_keys: Vec<VerifyingKey>) -> Self {
        Self {
            max_bytes,
            require_signature,
            trusted_keys,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }

    /// Builds the policy from `[artifact]`, decoding every trusted key.
    pub fn from_config(cfg: &ArtifactConfig) -> Result<Self, ArtifactError> {
        let mut keys = Vec::new();
        for entry in &cfg.trusted_keys {
            keys.extend(load_key_entry(entry)?);
        }
        if cfg.require_signature && keys.is_empty() {
            return Err(ArtifactError::BadKey {
                entry: "trusted_keys".into(),
                message: "require_signature is set but no trusted key is configured".into(),
            });
        }
        Ok(Self::new(cfg.max_bytes, cfg.require_signature, keys))
    }
}

/// One `trusted_keys` entry: an inline key, or a file of keys.
fn load_key_entry(entry: &str) -> Result<Vec<VerifyingKey>, ArtifactError> {
    let inline_err = match decode_public_key(entry) {
        Ok(key) => return Ok(vec![key]),
        Err(e) => e,
    };
    let path = Path::new(entry.trim());
    let text = std::fs::read_to_string(path).map_err(|io| ArtifactError::BadKey {
        entry: entry.chars().take(200).collect(),
        message: format!(
            "neither a base64 ed25519 public key ({inline_err}) nor a readable key file ({io})"
        ),
    })?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = decode_public_key(line).map_err(|message| ArtifactError::BadKey {
            entry: format!("{}:{}", path.display(), n + 1),
            message,
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(ArtifactError::BadKey {
            entry: path.display().to_string(),
            message: "the file holds no keys".into(),
        });
    }
    Ok(keys)
}
