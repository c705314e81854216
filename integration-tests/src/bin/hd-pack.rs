//! `hd-pack DIR OUT.tar.gz|OUT.tar.zst|OUT.tar`: packs a directory into a release artifact.
//!
//! The format follows the output's extension. The hex sha256 of the artifact is printed on
//! stdout, alone on its line, so a script can feed it to `hotdeployctl rollout start --sha256`.
//! The packing itself lives in the library ([`hotdeploy_integration_tests::pack`]) so tests
//! build artifacts the same way the demo does.

use clap::Parser;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Pack a directory into a hotdeploy release artifact and print its sha256")]
struct Args {
    /// The release directory to pack.
    dir: PathBuf,
    /// The artifact to write: .tar, .tar.gz or .tar.zst.
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sha = hotdeploy_integration_tests::pack::pack_dir(&args.dir, &args.out)?;
    // writeln!, not println!: a closed pipe is an error, not a panic.
    writeln!(std::io::stdout(), "{sha}")?;
    Ok(())
}
