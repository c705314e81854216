//! Release artifacts: a directory packed as `.tar`, `.tar.gz` or `.tar.zst`, and its sha256.
//!
//! The agent accepts exactly these three formats (DESIGN §4), and a rollout names an artifact by
//! URL and sha256. [`pack_dir`] produces both. Archives are deterministic: entries are sorted,
//! and owners and timestamps are normalised, so packing the same tree twice gives the same
//! digest. Paths inside the archive are relative (`bin/sample-app`, `VERSION`), with no `./`
//! prefix and no absolute or `..` component; symlinks are stored as links, not followed.
//!
//! [`make_sample_release`] builds the release the tests deploy: `bin/sample-app` (a copy of the
//! built sample app), `VERSION`, and for a release meant to fail its health check, `FAIL_HEALTH`.
//! [`make_agent_release`] builds a release of the agent itself: `bin/hotdeploy-agent` (a copy of
//! the built agent) and `VERSION`, for a rollout that upgrades agents.

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The compression of an artifact, chosen by its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactFormat {
    /// `.tar`: no compression.
    Tar,
    /// `.tar.gz` (or `.tgz`): gzip.
    TarGz,
    /// `.tar.zst`: zstd.
    TarZst,
}

impl ArtifactFormat {
    /// The format named by `path`'s extension.
    pub fn from_path(path: &Path) -> anyhow::Result<Self> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Ok(Self::TarGz)
        } else if name.ends_with(".tar.zst") {
            Ok(Self::TarZst)
        } else if name.ends_with(".tar") {
            Ok(Self::Tar)
        } else {
            bail!(
                "{}: unknown artifact format; use .tar, .tar.gz or .tar.zst",
                path.display()
            )
        }
    }

    /// The file name extension, without the leading dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Tar => "tar",
            Self::TarGz => "tar.gz",
            Self::TarZst => "tar.zst",
        }
    }

    /// All formats, for tests that try each one.
    pub const ALL: [ArtifactFormat; 3] = [Self::Tar, Self::TarGz, Self::TarZst];
}

/// Packs the contents of `dir` into `out` (format from `out`'s extension); returns the hex
/// sha256 of the written artifact.
pub fn pack_dir(dir: &Path, out: &Path) -> anyhow::Result<String> {
    let format = ArtifactFormat::from_path(out)?;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let sink = BufWriter::new(file);
    match format {
        ArtifactFormat::Tar => finish(write_tar(dir, sink)?)?,
        ArtifactFormat::TarGz => {
            let gz = flate2::write::GzEncoder::new(sink, flate2::Compression::default());
            finish(write_tar(dir, gz)?.finish()?)?
        }
        ArtifactFormat::TarZst => {
            let zst = zstd::stream::write::Encoder::new(sink, 3)?;
            finish(write_tar(dir, zst)?.finish()?)?
        }
    }
    sha256_file(out)
}

/// Flushes the buffered file and syncs it, so the digest is of what is on disk.
fn finish(mut sink: BufWriter<File>) -> anyhow::Result<()> {
    sink.flush()?;
    let file = sink.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

/// Writes the tar stream of `dir` into `sink` and returns the sink.
fn write_tar<W: Write>(dir: &Path, sink: W) -> anyhow::Result<W> {
    let mut builder = tar::Builder::new(sink);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    append_tree(&mut builder, dir, Path::new(""))?;
    Ok(builder.into_inner()?)
}

/// Appends every entry under `root/rel`, sorted by name, directories before their contents.
fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
) -> anyhow::Result<()> {
    let here = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&here)
        .with_context(|| format!("reading {}", here.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let rel_child = rel.join(&name);
        let full = root.join(&rel_child);
        let meta = fs::symlink_metadata(&full)?;
        builder
            .append_path_with_name(&full, &rel_child)
            .with_context(|| format!("adding {}", full.display()))?;
        if meta.is_dir() {
            append_tree(builder, root, &rel_child)?;
        }
    }
    Ok(())
}

/// The hex sha256 of a file's bytes.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh source tree `out_dir/src-<version>/` holding `bin/<binary>` (a copy of the built
/// workspace binary) and `VERSION`.
fn release_tree(out_dir: &Path, version: &str, binary: &str) -> anyhow::Result<PathBuf> {
    let built = crate::bins::find(binary).with_context(|| {
        format!(
            "{binary} is not built in {}: run `cargo build --workspace --bins`",
            crate::bins::profile_dir().display()
        )
    })?;
    let tree = out_dir.join(format!("src-{version}"));
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    fs::create_dir_all(tree.join("bin"))?;
    fs::copy(&built, tree.join("bin").join(binary))
        .with_context(|| format!("copying {}", built.display()))?;
    fs::write(tree.join("VERSION"), format!("{version}\n"))?;
    Ok(tree)
}

/// Builds the sample release `version` in `out_dir`: a source tree `out_dir/src-<version>/`
/// with `bin/sample-app`, `VERSION` and optionally `FAIL_HEALTH`, packed as
/// `out_dir/app-<version>.<ext>`. Returns the artifact's path and hex sha256.
pub fn make_sample_release(
    out_dir: &Path,
    version: &str,
    fail_health: bool,
    format: ArtifactFormat,
) -> anyhow::Result<(PathBuf, String)> {
    let tree = release_tree(out_dir, version, crate::bins::SAMPLE_APP)?;
    if fail_health {
        fs::write(
            tree.join("FAIL_HEALTH"),
            "this release fails its health check\n",
        )?;
    }
    let artifact = out_dir.join(format!("app-{version}.{}", format.extension()));
    let sha = pack_dir(&tree, &artifact)?;
    Ok((artifact, sha))
}

/// Builds the agent release `version` in `out_dir`: a source tree `out_dir/src-<version>/` with
/// `bin/hotdeploy-agent` (a copy of the built agent) and `VERSION`, packed as
/// `out_dir/agent-<version>.<ext>`. Returns the artifact's path and hex sha256.
pub fn make_agent_release(
    out_dir: &Path,
    version: &str,
    format: ArtifactFormat,
) -> anyhow::Result<(PathBuf, String)> {
    let tree = release_tree(out_dir, version, crate::bins::AGENT)?;
    let artifact = out_dir.join(format!("agent-{version}.{}", format.extension()));
    let sha = pack_dir(&tree, &artifact)?;
    // The tree is a copy of a large binary that nothing reads again.
    fs::remove_dir_all(&tree)?;
    Ok((artifact, sha))
}

/// Unpacks an artifact into `dest` (for tests; the agent has its own hardened unpacker).
pub fn unpack(artifact: &Path, dest: &Path) -> anyhow::Result<()> {
    let file = File::open(artifact).with_context(|| format!("opening {}", artifact.display()))?;
    let reader: Box<dyn Read> = match ArtifactFormat::from_path(artifact)? {
        ArtifactFormat::Tar => Box::new(io::BufReader::new(file)),
        ArtifactFormat::TarGz => Box::new(flate2::read::GzDecoder::new(file)),
        ArtifactFormat::TarZst => Box::new(zstd::stream::read::Decoder::new(file)?),
    };
    fs::create_dir_all(dest)?;
    tar::Archive::new(reader)
        .unpack(dest)
        .with_context(|| format!("unpacking {}", artifact.display()))?;
    Ok(())
}
