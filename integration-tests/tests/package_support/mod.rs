//! Helpers of the package tests (`package_deb.rs`): building the .deb once per set of inputs,
//! under a lock, from the binaries the suite built; what a TLS client is served; waiting for a
//! condition; reading a unit's properties in a container; the section names of an ELF file.

use hotdeploy_integration_tests::nspawn::{describe, Container};
use hotdeploy_integration_tests::{bins, proc};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set by `scripts/test` once cargo-deb is installed: a package that cannot be built is then a
/// failure, not a skip.
pub const REQUIRE_CARGO_DEB: &str = "HOTDEPLOY_REQUIRE_CARGO_DEB";

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The package's inputs: a package older than any of them is rebuilt.
pub fn inputs() -> Vec<PathBuf> {
    let ws = workspace();
    let mut files = vec![bins::agent(), bins::coordinator(), bins::ctl()];
    files.push(ws.join("coordinator/Cargo.toml"));
    for dir in ["deploy", "deploy/systemd", "deploy/debian"] {
        if let Ok(entries) = std::fs::read_dir(ws.join(dir)) {
            files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    files
}

pub fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The .deb built from this workspace's binaries (see package_deb.rs), or why it cannot be
/// built here (cargo-deb missing and not installable).
pub fn package() -> Result<PathBuf, String> {
    let dir = bins::profile_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(bins::profile_dir)
        .join("deb-test");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let lock = File::create(dir.join(".lock")).unwrap_or_else(|e| panic!("lock file: {e}"));
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("locking {}: {e}", dir.display()));
    let out = dir.join("out");
    let newest_input = inputs().iter().map(|p| modified(p)).max();
    if let Some(deb) = find_deb(&out) {
        if Some(modified(&deb)) > newest_input {
            return Ok(deb);
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    // cargo-deb packages CARGO_TARGET_DIR/release/: stage the debug binaries there.
    let stage = dir.join("stage");
    std::fs::create_dir_all(stage.join("release")).unwrap_or_else(|e| panic!("stage: {e}"));
    for bin in [bins::agent(), bins::coordinator(), bins::ctl()] {
        let to = stage
            .join("release")
            .join(bin.file_name().unwrap_or_default());
        let _ = std::fs::remove_file(&to);
        if std::fs::hard_link(&bin, &to).is_err() {
            std::fs::copy(&bin, &to).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        }
    }
    let mut command = Command::new(workspace().join("scripts/build-deb"));
    command
        .args(["--no-build", "--fast"])
        .arg(&out)
        .env("CARGO_TARGET_DIR", &stage);
    let started = Instant::now();
    let built = proc::run_with_timeout(command, Duration::from_secs(600));
    eprintln!("scripts/build-deb took {:?}", started.elapsed());
    match built.status.code() {
        Some(0) => {}
        Some(3) if std::env::var_os(REQUIRE_CARGO_DEB).is_none() => {
            return Err(String::from_utf8_lossy(&built.stderr).trim().to_string());
        }
        _ => panic!("scripts/build-deb failed: {}", describe(&built)),
    }
    find_deb(&out).ok_or_else(|| panic!("scripts/build-deb wrote no .deb: {}", describe(&built)))
}

pub fn find_deb(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
}

pub fn run_ok(mut command: Command, what: &str) -> String {
    command.stdin(std::process::Stdio::null());
    let out = proc::run_with_timeout(command, Duration::from_secs(120));
    assert!(out.status.success(), "{what}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn package_or_skip(test: &str) -> Option<PathBuf> {
    match package() {
        Ok(deb) => Some(deb),
        Err(why) => {
            eprintln!("NOT RUN: {test} needs cargo-deb, which cannot be installed here: {why}");
            None
        }
    }
}

/// The certificate that `addr` presents to a new TLS connection (as the operator).
pub fn served_certificate(addr: SocketAddr, pki: &Path) -> Result<Vec<u8>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_file(pki.join("ca.pem")).map_err(|e| e.to_string())?;
        roots.add(ca).map_err(|e| e.to_string())?;
        let chain =
            vec![CertificateDer::from_pem_file(pki.join("operator.pem"))
                .map_err(|e| e.to_string())?];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(pki.join("operator-key.pem"))
            .map_err(|e| e.to_string())?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
        let tcp =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| format!("{addr}: connect timed out"))?
                .map_err(|e| format!("{addr}: {e}"))?;
        let tls = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(ServerName::IpAddress(addr.ip().into()), tcp),
        )
        .await
        .map_err(|_| format!("TLS to {addr}: timed out"))?
        .map_err(|e| format!("TLS to {addr}: {e}"))?;
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or_else(|| format!("{addr} presented no certificate"))
    })
}

pub fn der_of(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem)
        .unwrap_or_else(|e| panic!("{}: {e}", pem.display()))
        .to_vec()
}

/// Waits up to `timeout` for `check` to return `Ok`; panics with the last error and `logs`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<(), String>,
    logs: impl Fn() -> String,
) {
    let until = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() >= until => {
                panic!("{what}: not within {timeout:?}: {e}\n{}", logs())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// A unit property (`systemctl show -p NAME --value`).
pub fn property(c: &Container, unit: &str, name: &str) -> String {
    let out = c.systemctl(&["show", "-p", name, "--value", unit]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The section names of the ELF64 little-endian file `path` (what `readelf -S` lists), read
/// from its section header table, so that a test can tell a stripped binary (no `.symtab`, no
/// DWARF) from one that is not without any tool.
pub fn elf_section_names(path: &Path) -> Result<Vec<String>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let what = path.display();
    if bytes.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err(format!("{what}: not an ELF64 little-endian file"));
    }
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| format!("{what}: truncated at {at}"))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| format!("{what}: truncated at {at}"))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(|b| u64::from_le_bytes(b) as usize)
            .ok_or_else(|| format!("{what}: truncated at {at}"))
    };
    // ELF64 header: e_shoff at 0x28, e_shentsize, e_shnum, e_shstrndx at 0x3a, 0x3c, 0x3e.
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    // A section header: sh_name (offset into .shstrtab) at 0, sh_offset at 0x18.
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 0x18)?;
    (0..shnum)
        .map(|i| {
            let start = strtab + u32_at(header(i))?;
            let rest = bytes
                .get(start..)
                .ok_or_else(|| format!("{what}: section name out of bounds"))?;
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
        })
        .collect()
}

/// The debugging sections of an ELF file whose names say it is not stripped: `.symtab` and the
/// DWARF sections (`.debug_*`, except `.debug_gdb_scripts`, which is loaded with the program).
pub fn unstripped_sections(names: &[String]) -> Vec<&str> {
    names
        .iter()
        .map(String::as_str)
        .filter(|n| *n == ".symtab" || (n.starts_with(".debug_") && *n != ".debug_gdb_scripts"))
        .collect()
}
