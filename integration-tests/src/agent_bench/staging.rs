//! `staging`: staging a ~200 MB artifact through the agent, against `sha256sum` + `tar -x` of
//! the same file.
//!
//! The artifact is generated under the bench's temp dir and is meant to look like a real
//! release: `bin/sample-app` and `VERSION` (so the deploy that follows staging succeeds), large
//! incompressible blobs (think bundled binaries, images), compressible text files (logs,
//! source maps, JSON) and a couple of thousand small files (a vendored tree). It is packed as
//! `.tar.gz` and `.tar.zst` by [`crate::pack::pack_dir`].
//!
//! Each round, in alternating order:
//!
//! - **agent**: a standalone agent's Deploy of a fresh release id from `file://ARTIFACT`. The
//!   staging time is entering `staging` → entering `staged` (the agent's `at_ms`), split by its
//!   notes into copy+sha256 (`fetching` → `fetched N bytes`) and unpack+commit (`… verified;
//!   unpacking` → `staged`; the commit fsyncs the tree). The rest of the deploy (swap, restart,
//!   a 1-probe verify, gc) is not timed.
//! - **baseline**: `sha256sum FILE`, then `tar -xzf FILE -C DIR` (`tar --zstd -xf` for zstd),
//!   each timed around the child; then, timed separately, `sync -f DIR` (what the agent's
//!   fsyncs cost on top of plain tar).
//!
//! Between steps (untimed): the baseline tree is removed and `sync` flushes dirty pages, so no
//! step pays for an earlier one's writeback. Caches cannot be dropped without root, so the
//! artifact is in the page cache for every step, agent and baseline alike.
//! CPU time is recorded too: the agent process's `utime + stime` across the deploy, and this
//! process's `cutime + cstime` across the baseline children.

use super::client;
use super::procfs;
use super::stats::{met, mib};
use crate::agents::{AgentOpts, AgentProc};
use crate::net;
use crate::pack::{self, ArtifactFormat};
use crate::proc::run_with_timeout;
use anyhow::{bail, Context};
use serde::Serialize;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The target: agent staging time / baseline time.
pub const TARGET_RATIO: f64 = 1.2;

/// Knobs.
#[derive(Debug, Clone)]
pub struct StagingOpts {
    /// Rounds per format.
    pub rounds: usize,
    /// MiB of incompressible blobs.
    pub random_mib: u64,
    /// MiB of compressible text.
    pub text_mib: u64,
    /// Small files.
    pub small_files: usize,
    /// Formats to run.
    pub formats: Vec<ArtifactFormat>,
}

/// One round.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// 1-based.
    pub round: usize,
    /// Whether the agent went first.
    pub agent_first: bool,
    /// Agent: staging → staged, ms.
    pub agent_ms: f64,
    /// Agent: copy + sha256, ms.
    pub agent_fetch_ms: f64,
    /// Agent: unpack + commit (fsync), ms.
    pub agent_unpack_ms: f64,
    /// Agent CPU over the whole deploy, ms.
    pub agent_cpu_ms: f64,
    /// `sha256sum`, ms.
    pub base_sha_ms: f64,
    /// `tar -x`, ms.
    pub base_tar_ms: f64,
    /// `sha256sum` + `tar -x`, ms.
    pub base_ms: f64,
    /// `sync -f DIR` after tar, ms.
    pub base_sync_ms: f64,
    /// Baseline children CPU, ms.
    pub base_cpu_ms: f64,
    /// `agent_ms / base_ms`.
    pub ratio: f64,
    /// `agent_ms / (base_ms + base_sync_ms)`.
    pub ratio_vs_synced: f64,
}

/// One format's result.
#[derive(Debug, Clone, Serialize)]
pub struct FormatReport {
    /// `tar.gz` or `tar.zst`.
    pub format: String,
    /// Artifact size, MiB.
    pub artifact_mib: f64,
    /// Unpacked size, MiB.
    pub unpacked_mib: f64,
    /// Files in it.
    pub files: usize,
    /// Rounds.
    pub rounds: Vec<Round>,
    /// Median ratio.
    pub ratio_p50: f64,
    /// Median ratio against the synced baseline.
    pub ratio_vs_synced_p50: f64,
    /// Whether the median ratio meets the target.
    pub target_met: bool,
}

/// What `staging` measured.
#[derive(Debug, Clone, Serialize)]
pub struct StagingReport {
    /// Per format.
    pub formats: Vec<FormatReport>,
    /// Target ratio.
    pub target_ratio: f64,
}

/// Runs the bench with everything under `dir`.
pub fn run(dir: &Path, opts: &StagingOpts) -> anyhow::Result<StagingReport> {
    let tree = dir.join("tree");
    eprintln!(
        "staging: generating the release tree ({} MiB random, {} MiB text, {} small files)",
        opts.random_mib, opts.text_mib, opts.small_files
    );
    let (unpacked, files) = generate_tree(&tree, opts)?;
    let ip = net::alloc_ips(1)[0];
    let mut o = AgentOpts::new("stage-1", ip, Vec::new());
    o.drain_grace = "0s".into();
    o.undrain_grace = "0s".into();
    o.verify_success_threshold = 1;
    o.verify_interval = "100ms".into();
    o.verify_settle = "0s".into();
    o.keep_releases = 2;
    let agent = AgentProc::start(o);
    let pid = agent.pid().context("the agent is not running")?;

    let mut formats = Vec::new();
    for &format in &opts.formats {
        let artifact = dir.join(format!("big.{}", format.extension()));
        eprintln!("staging: packing {}", artifact.display());
        let sha = pack::pack_dir(&tree, &artifact)?;
        let size = fs::metadata(&artifact)?.len();
        eprintln!(
            "staging: {} is {:.1} MiB (unpacked {:.1} MiB, {files} files)",
            artifact.display(),
            mib(size),
            mib(unpacked)
        );
        let mut rounds = Vec::new();
        for r in 0..opts.rounds {
            let agent_first = r % 2 == 0;
            let id = format!("{}-r{}", format.extension().replace('.', "-"), r + 1);
            let mut agent_side = None;
            let mut base_side = None;
            for step in 0..2 {
                if (step == 0) == agent_first {
                    agent_side = Some(stage_through_agent(&agent, pid, &id, &artifact, &sha)?);
                } else {
                    base_side = Some(baseline(dir, &artifact, format, r)?);
                }
                quiesce(dir)?;
            }
            let (a, b) = agent_side.zip(base_side).context("a round lost a side")?;
            let row = Round {
                round: r + 1,
                agent_first,
                agent_ms: a.0,
                agent_fetch_ms: a.1,
                agent_unpack_ms: a.2,
                agent_cpu_ms: a.3,
                base_sha_ms: b.0,
                base_tar_ms: b.1,
                base_ms: b.0 + b.1,
                base_sync_ms: b.2,
                base_cpu_ms: b.3,
                ratio: a.0 / (b.0 + b.1),
                ratio_vs_synced: a.0 / (b.0 + b.1 + b.2),
            };
            eprintln!(
                "staging: {} round {}: agent {:.0} ms, baseline {:.0} ms (+ sync {:.0} ms), ratio {:.2}",
                format.extension(),
                r + 1,
                row.agent_ms,
                row.base_ms,
                row.base_sync_ms,
                row.ratio
            );
            rounds.push(row);
        }
        let median = |f: fn(&Round) -> f64| {
            super::stats::summary(&rounds.iter().map(f).collect::<Vec<_>>()).p50
        };
        let ratio_p50 = median(|r| r.ratio);
        formats.push(FormatReport {
            format: format.extension().to_string(),
            artifact_mib: mib(size),
            unpacked_mib: mib(unpacked),
            files,
            ratio_p50,
            ratio_vs_synced_p50: median(|r| r.ratio_vs_synced),
            target_met: ratio_p50 <= TARGET_RATIO,
            rounds,
        });
        let _ = fs::remove_file(&artifact);
    }
    drop(agent);
    Ok(StagingReport {
        formats,
        target_ratio: TARGET_RATIO,
    })
}

/// Deploys `artifact` as release `id`; returns (staging, copy+hash, unpack+commit, agent CPU
/// over the deploy), ms.
fn stage_through_agent(
    agent: &AgentProc,
    pid: u32,
    id: &str,
    artifact: &Path,
    sha: &str,
) -> anyhow::Result<(f64, f64, f64, f64)> {
    let cpu0 = procfs::cpu_time(pid).context("reading the agent's CPU time")?;
    let trace = client::deploy_ok(
        agent.grpc_addr(),
        id,
        &format!("file://{}", artifact.display()),
        sha,
        Duration::from_secs(300),
    )?;
    let cpu1 = procfs::cpu_time(pid).context("reading the agent's CPU time")?;
    let staging = trace.between("staging", "staged");
    let fetch = trace
        .note_at("staging", "fetched ")
        .zip(trace.note_at("staging", "fetching "))
        .map(|(b, a)| b.saturating_sub(a) as f64);
    let unpack = trace
        .entered("staged")
        .zip(trace.note_at("staging", "verified; unpacking"))
        .map(|(b, a)| b.saturating_sub(a) as f64);
    match (staging, fetch, unpack) {
        (Some(s), Some(f), Some(u)) => Ok((s, f, u, (cpu1 - cpu0).as_secs_f64() * 1000.0)),
        _ => bail!(
            "deploy of {id}: missing staging notes\n{}",
            trace.describe()
        ),
    }
}

/// `sha256sum` then `tar -x` (then `sync -f`); returns (sha, tar, sync, children CPU), ms.
fn baseline(
    dir: &Path,
    artifact: &Path,
    format: ArtifactFormat,
    round: usize,
) -> anyhow::Result<(f64, f64, f64, f64)> {
    let out = dir.join(format!("baseline-{}-{round}", format.extension()));
    fs::create_dir_all(&out)?;
    let cpu0 = procfs::children_cpu_time().unwrap_or_default();
    let mut sha = Command::new("sha256sum");
    sha.arg(artifact);
    let sha_ms = timed(sha)?;
    let mut tar = Command::new("tar");
    match format {
        ArtifactFormat::TarGz => tar.arg("-xzf"),
        ArtifactFormat::TarZst => tar.arg("--zstd").arg("-xf"),
        ArtifactFormat::Tar => tar.arg("-xf"),
    };
    tar.arg(artifact).arg("-C").arg(&out);
    let tar_ms = timed(tar)?;
    let cpu1 = procfs::children_cpu_time().unwrap_or_default();
    let mut sync = Command::new("sync");
    sync.arg("-f").arg(&out);
    let sync_ms = timed(sync)?;
    fs::remove_dir_all(&out)?;
    Ok((
        sha_ms,
        tar_ms,
        sync_ms,
        cpu1.saturating_sub(cpu0).as_secs_f64() * 1000.0,
    ))
}

/// Runs `command` to completion (at most 5 minutes) and returns its wall time, ms.
fn timed(command: Command) -> anyhow::Result<f64> {
    let shown = format!("{command:?}");
    let t = Instant::now();
    let output = run_with_timeout(command, Duration::from_secs(300));
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !output.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(ms)
}

/// Flushes dirty pages and pauses, so the next step starts from a quiet disk.
fn quiesce(dir: &Path) -> anyhow::Result<()> {
    let mut sync = Command::new("sync");
    sync.arg("-f").arg(dir);
    timed(sync)?;
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}

/// A fast deterministic byte stream (xorshift64*), incompressible for gzip and zstd.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes the release tree; returns (bytes, files).
fn generate_tree(tree: &Path, opts: &StagingOpts) -> anyhow::Result<(u64, usize)> {
    if tree.exists() {
        fs::remove_dir_all(tree)?;
    }
    let app = crate::bins::sample_app();
    fs::create_dir_all(tree.join("bin"))?;
    fs::copy(&app, tree.join("bin/sample-app"))?;
    fs::write(tree.join("VERSION"), "big\n")?;
    let mut bytes = fs::metadata(tree.join("bin/sample-app"))?.len() + 4;
    let mut files = 2;
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);

    // Incompressible blobs of 16 MiB (the last one shorter).
    fs::create_dir_all(tree.join("lib/blobs"))?;
    let mut left = opts.random_mib << 20;
    let mut buf = vec![0u8; 1 << 20];
    let mut i = 0;
    while left > 0 {
        let size = left.min(16 << 20);
        let mut w = BufWriter::new(fs::File::create(
            tree.join(format!("lib/blobs/blob-{i:03}.bin")),
        )?);
        let mut n = 0;
        while n < size {
            let len = (size - n).min(buf.len() as u64) as usize;
            noise.fill(&mut buf[..len]);
            w.write_all(&buf[..len])?;
            n += len as u64;
        }
        w.flush()?;
        left -= size;
        bytes += size;
        files += 1;
        i += 1;
    }

    // Compressible text, 2 MiB per file: log-like lines with varying fields.
    fs::create_dir_all(tree.join("share/logs"))?;
    let mut left = opts.text_mib << 20;
    let mut line_no = 0u64;
    let mut i = 0;
    while left > 0 {
        let size = left.min(2 << 20);
        let mut w = BufWriter::new(fs::File::create(
            tree.join(format!("share/logs/app-{i:03}.log")),
        )?);
        let mut n = 0u64;
        while n < size {
            line_no += 1;
            let mut r = [0u8; 8];
            noise.fill(&mut r);
            let v = u64::from_le_bytes(r);
            let line = format!(
                "2025-01-{:02}T{:02}:{:02}:{:02}.{:03}Z INFO req={:08x} method=GET path=/api/v1/items/{} status={} bytes={} latency_ms={}\n",
                1 + v % 28,
                (v >> 8) % 24,
                (v >> 16) % 60,
                (v >> 24) % 60,
                (v >> 32) % 1000,
                line_no,
                v % 5000,
                [200, 200, 200, 304, 404][(v >> 40) as usize % 5],
                (v >> 44) % 65536,
                (v >> 50) % 300,
            );
            let take = (size - n).min(line.len() as u64) as usize;
            w.write_all(&line.as_bytes()[..take])?;
            n += take as u64;
        }
        w.flush()?;
        left -= size;
        bytes += size;
        files += 1;
        i += 1;
    }

    // Small files, 100 per directory, 1-8 KiB of JS-like text each.
    for k in 0..opts.small_files {
        let d = tree.join(format!("vendor/pkg-{:03}", k / 100));
        if k % 100 == 0 {
            fs::create_dir_all(&d)?;
        }
        let mut r = [0u8; 8];
        noise.fill(&mut r);
        let v = u64::from_le_bytes(r);
        let len = 1024 + (v % 7168) as usize;
        let mut s = String::with_capacity(len + 64);
        let mut j = 0u64;
        while s.len() < len {
            s.push_str(&format!(
                "export function f{k}_{j}(x) {{ return x * {} + {}; }}\n",
                (v >> 8) % 97 + j,
                k
            ));
            j += 1;
        }
        s.truncate(len);
        fs::write(d.join(format!("mod-{k}.js")), &s)?;
        bytes += len as u64;
        files += 1;
    }
    Ok((bytes, files))
}

/// The human tables.
pub fn table(r: &StagingReport) -> String {
    let mut out = String::new();
    for f in &r.formats {
        out.push_str(&format!(
            "staging a {:.1} MiB .{} ({:.1} MiB unpacked, {} files): agent (file:// copy + sha256 + unpack + commit) vs `sha256sum` + `tar -x`\n",
            f.artifact_mib, f.format, f.unpacked_mib, f.files
        ));
        out.push_str(
            "| round | first | agent | agent copy+sha | agent unpack+commit | agent CPU | sha256sum | tar -x | baseline | sync -f | baseline CPU | ratio | ratio vs baseline+sync |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for x in &f.rounds {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |\n",
                x.round,
                if x.agent_first { "agent" } else { "baseline" },
                x.agent_ms,
                x.agent_fetch_ms,
                x.agent_unpack_ms,
                x.agent_cpu_ms,
                x.base_sha_ms,
                x.base_tar_ms,
                x.base_ms,
                x.base_sync_ms,
                x.base_cpu_ms,
                x.ratio,
                x.ratio_vs_synced
            ));
        }
        out.push_str(&format!(
            "(all ms) median ratio {:.2} (vs baseline + sync: {:.2}); target ≤ {:.1}×: {}\n\n",
            f.ratio_p50,
            f.ratio_vs_synced_p50,
            r.target_ratio,
            met(f.target_met)
        ));
    }
    out
}
