//! `hotdeployctl release keygen DIR | sign ARTIFACT --key FILE [--out FILE]`: ed25519 release
//! signing (DESIGN §7), with `hotdeploy_common::signing`.
//!
//! `keygen` writes `release-signing.key` (mode 0600) and `release-signing.pub` into DIR and
//! never overwrites. `sign` prints the base64 signature over the artifact's raw sha256 digest,
//! which `rollout start --signature FILE` and `agent deploy --signature FILE` take; with
//! `--out FILE` it writes it there too (refusing to overwrite).

use super::output::print;
use super::GlobalOpts;
use anyhow::Context;
use clap::Subcommand;
use hotdeploy_common::signing;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum ReleaseCmd {
    /// Write a new signing key pair into DIR (release-signing.key, release-signing.pub).
    Keygen {
        /// Directory for the key files (created if needed).
        dir: PathBuf,
    },
    /// Sign an artifact: print the base64 ed25519 signature over its sha256 digest.
    Sign {
        /// The artifact file (.tar, .tar.gz, .tar.zst).
        artifact: PathBuf,
        /// The private key file written by `release keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Also write the signature to this file (must not exist).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(cmd: ReleaseCmd, opts: &GlobalOpts) -> anyhow::Result<i32> {
    match cmd {
        ReleaseCmd::Keygen { dir } => {
            let (private, public) = signing::keygen(&dir)
                .with_context(|| format!("release keygen {}", dir.display()))?;
            let public_key = std::fs::read_to_string(&public)
                .with_context(|| format!("read {}", public.display()))?;
            let j = json!({
                "private_key_file": private.display().to_string(),
                "public_key_file": public.display().to_string(),
                "public_key": public_key.trim(),
            });
            print(
                opts.output,
                &j,
                &[
                    "private key file",
                    "public key file",
                    "public key (trusted_keys)",
                ],
                vec![vec![
                    private.display().to_string(),
                    public.display().to_string(),
                    public_key.trim().to_string(),
                ]],
            );
        }
        ReleaseCmd::Sign { artifact, key, out } => {
            let digest = signing::sha256_file(&artifact)?;
            let signature = signing::sign_digest(&signing::load_signing_key(&key)?, &digest);
            if let Some(out) = &out {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(out)
                    .with_context(|| format!("create {}", out.display()))?;
                writeln!(f, "{signature}").with_context(|| format!("write {}", out.display()))?;
            }
            match opts.output {
                super::Output::Json => {
                    let sha256: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                    let j = json!({
                        "artifact": artifact.display().to_string(),
                        "sha256": sha256,
                        "signature": signature,
                    });
                    println!("{}", serde_json::to_string_pretty(&j)?);
                }
                super::Output::Table => println!("{signature}"),
            }
        }
    }
    Ok(0)
}
