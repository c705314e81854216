//! Artifacts: fetching a release's archive, verifying it, and unpacking it into the release
//! store (DESIGN §4, "Artifacts"; §7, "Signed releases").
//!
//! [`stage`] is the one entry point the agent uses. It runs, in order:
//! 1. cheap checks of the spec (release id, hex digest, URL scheme, signature presence and
//!    shape), so a bad spec fails before any byte is fetched;
//! 2. the idempotency check: already staged with the same digest returns at once (after the
//!    request's signature, if any, is checked against the staged digest and kept), with
//!    another digest fails with `ReleaseConflict`;
//! 3. fetch into `releases/.download-<id>-<nonce>`, hashing while streaming, under the size
//!    limit;
//! 4. the sha256 check, then the signature check (over the raw digest);
//! 5. unpack into `releases/.staging-<id>-<nonce>/` and commit it through the store, keeping
//!    the signature next to it (`releases/<id>.sig`).
//!
//! The policy is also checked **at use**: [`check_staged`] runs before a staged release goes
//! live (a deploy's swap, a rollback), so that switching `require_signature` on covers releases
//! staged before, and a release whose kept signature no longer verifies under the trusted keys
//! is refused.
//!
//! Whatever fails, the download file and the staging directory are removed, and no link is
//! touched: `stage` never swaps anything, that is the deploy engine's job once staging is done.
//! Hashing and unpacking run on blocking threads.

mod error;
mod fetch;
mod policy;
pub mod signing;
pub mod unpack;
pub mod verify;

pub use error::ArtifactError;
pub use fetch::Fetched;
pub use policy::{ArtifactPolicy, DEFAULT_FETCH_TIMEOUT};
pub use signing::{keygen, sign_file};

use crate::store::{ReleaseStore, StoreError};
use std::path::{Path, PathBuf};

/// What a release is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactSpec {
    /// `file:///abs/path`, `http://…` or `https://…`.
    pub url: String,
    /// The artifact's sha256, hex (either case).
    pub sha256: String,
    /// Base64 of the 64-byte ed25519 signature over the raw digest.
    pub signature: Option<String>,
}

/// Stages release `id` from `spec` under `policy`; returns its directory. See the module docs.
/// `progress` gets one human line per step.
pub async fn stage(
    store: &ReleaseStore,
    id: &str,
    spec: &ArtifactSpec,
    policy: &ArtifactPolicy,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<PathBuf, ArtifactError> {
    // 1. The spec.
    crate::store::check_id(id)?;
    let expected = verify::parse_sha256(&spec.sha256)?;
    let expected_hex = verify::to_hex(&expected);
    fetch::check_url(&spec.url)?;
    let signature = match &spec.signature {
        Some(s) => Some(verify::decode_signature(s)?),
        None if policy.require_signature => return Err(ArtifactError::SignatureMissing),
        None => None,
    };
    if signature.is_some() && policy.trusted_keys.is_empty() {
        return Err(ArtifactError::UntrustedKey);
    }

    // 2. Idempotency. The signature still has to be right: it is checked against the digest
    // the release was staged from.
    if let Some(dir) = already_staged(store, id, &expected_hex)? {
        if let Some(sig) = &signature {
            verify::verify_digest(&expected, sig, &policy.trusted_keys)?;
            keep_signature(store, id, spec)?;
            progress("signature verified".into());
        }
        progress(format!("release {id} is already staged"));
        return Ok(dir);
    }

    // 3. Fetch.
    let download = store.new_download_path(id)?;
    let _download_guard = RemoveOnDrop(&download);
    progress(format!("fetching {}", spec.url));
    let fetched = fetch::fetch(&spec.url, &download, policy).await?;
    progress(format!("fetched {} bytes", fetched.bytes));

    // 4. Verify.
    if fetched.digest != expected {
        return Err(ArtifactError::Checksum {
            expected: expected_hex,
            actual: verify::to_hex(&fetched.digest),
        });
    }
    if let Some(sig) = &signature {
        verify::verify_digest(&fetched.digest, sig, &policy.trusted_keys)?;
        progress("signature verified".into());
    }
    progress(format!("sha256 {expected_hex} verified; unpacking"));

    // 5. Unpack and commit, on one blocking thread that also cleans up after itself, so that
    // even a cancelled stage leaves no staging directory behind.
    let staging = store.new_staging_dir(id)?;
    let job = {
        let (store, id, download, staging, sha, limit) = (
            store.clone(),
            id.to_string(),
            download.clone(),
            staging.clone(),
            expected_hex.clone(),
            policy.max_bytes,
        );
        tokio::task::spawn_blocking(move || {
            let result = unpack_and_commit(&store, &id, &download, &staging, &sha, limit);
            if result.is_err() {
                if let Err(e) = store.discard(&staging) {
                    tracing::warn!(path = %staging.display(), error = %e, "cannot remove staging directory");
                }
            }
            result
        })
    };
    let (dir, stats) = job
        .await
        .map_err(|e| ArtifactError::io("unpack task", std::io::Error::other(e.to_string())))??;
    if signature.is_some() {
        keep_signature(store, id, spec)?;
    }
    progress(format!(
        "unpacked {} files, {} directories, {} links ({} bytes); release {id} staged",
        stats.files, stats.dirs, stats.links, stats.bytes
    ));
    Ok(dir)
}

/// Keeps the (verified) signature of `spec` next to release `id`.
fn keep_signature(
    store: &ReleaseStore,
    id: &str,
    spec: &ArtifactSpec,
) -> Result<(), ArtifactError> {
    match &spec.signature {
        Some(sig) => Ok(store.set_release_signature(id, sig)?),
        None => Ok(()),
    }
}

/// Checks, at use, that staged release `id` may go live under `policy`: with
/// `require_signature`, its kept signature must verify over its staged digest under one of the
/// trusted keys, whenever and under whatever policy it was staged.
pub fn check_staged(
    store: &ReleaseStore,
    id: &str,
    policy: &ArtifactPolicy,
) -> Result<(), ArtifactError> {
    if !policy.require_signature {
        return Ok(());
    }
    let digest = store
        .release_sha256(id)
        .ok_or_else(|| ArtifactError::InvalidSpec {
            message: format!("release {id} is not staged (or its digest file is unreadable)"),
        })?;
    let digest = verify::parse_sha256(&digest)?;
    let Some(sig) = store.release_signature(id) else {
        return Err(ArtifactError::SignatureMissing);
    };
    let sig = verify::decode_signature(&sig)?;
    verify::verify_digest(&digest, &sig, &policy.trusted_keys)
}

fn unpack_and_commit(
    store: &ReleaseStore,
    id: &str,
    download: &Path,
    staging: &Path,
    sha256: &str,
    limit: u64,
) -> Result<(PathBuf, unpack::UnpackStats), ArtifactError> {
    let file = std::fs::File::open(download)
        .map_err(|e| ArtifactError::io(format!("open {}", download.display()), e))?;
    // A large read buffer: the default 8 KiB meant one read(2) per 8 KiB of artifact.
    let stats = unpack::unpack(
        std::io::BufReader::with_capacity(256 * 1024, file),
        staging,
        limit,
    )?;
    match store.commit(id, staging, sha256) {
        Ok(dir) => Ok((dir, stats)),
        Err(StoreError::Conflict { id, existing, .. }) => {
            Err(ArtifactError::ReleaseConflict { id, existing })
        }
        Err(e) => Err(e.into()),
    }
}

fn already_staged(
    store: &ReleaseStore,
    id: &str,
    expected_hex: &str,
) -> Result<Option<PathBuf>, ArtifactError> {
    if !store.has_release(id) {
        return Ok(None);
    }
    match store.release_sha256(id) {
        Some(existing) if existing == expected_hex => Ok(Some(store.release_dir(id))),
        existing => Err(ArtifactError::ReleaseConflict {
            id: id.into(),
            existing: existing.unwrap_or_else(|| "(unreadable)".into()),
        }),
    }
}

/// Removes a scratch file when the stage ends, however it ends (including cancellation).
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        match std::fs::remove_file(self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.0.display(), error = %e, "cannot remove download")
            }
        }
    }
}

#[cfg(test)]
mod tests;
