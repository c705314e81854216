//! Where the workspace's built binaries are.
//!
//! Integration tests run from `target/<profile>/deps/`, and the binaries they drive
//! (`hotdeploy-coordinator`, `hotdeploy-agent`, `hotdeployctl`, `sample-app`, `hd-pack`) are
//! built into `target/<profile>/`. We derive that directory from the running executable, so a
//! `cargo test --release` run uses release binaries and a debug run uses debug ones, and no
//! environment variable is needed. The binaries of this crate are also found when the caller is
//! one of them (`hd-pack` looking for `sample-app` sits in `target/<profile>/` itself).
//!
//! Cargo builds a package's own binaries before its integration tests, but not other packages'
//! binaries, so a missing coordinator or agent means the workspace was not built: the panic
//! says so and names the command.

use std::path::{Path, PathBuf};

/// The coordinator daemon.
pub const COORDINATOR: &str = "hotdeploy-coordinator";
/// The agent daemon.
pub const AGENT: &str = "hotdeploy-agent";
/// The operator CLI.
pub const CTL: &str = "hotdeployctl";
/// The sample service.
pub const SAMPLE_APP: &str = "sample-app";
/// The release packer.
pub const HD_PACK: &str = "hd-pack";
/// The launcher that makes a child die with the test (see `proc`).
pub const HD_PDEATHSIG: &str = "hd-pdeathsig";

/// The `target/<profile>/` directory the running executable belongs to.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("cannot find the running executable: {e}"));
    let dir = exe
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent directory", exe.display()));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.to_path_buf())
    } else {
        dir.to_path_buf()
    }
}

/// The path of binary `name` if it has been built.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = profile_dir().join(name);
    path.is_file().then_some(path)
}

/// The path of binary `name`; panics with the command to run when it is missing.
pub fn path(name: &str) -> PathBuf {
    find(name).unwrap_or_else(|| {
        panic!(
            "binary `{name}` not found in {}: run `cargo build --workspace --bins` \
             (with --release for a release test run) first",
            profile_dir().display()
        )
    })
}

/// `hotdeploy-coordinator`.
pub fn coordinator() -> PathBuf {
    path(COORDINATOR)
}

/// Where `scripts/build-old-coordinator` puts the coordinator built with the cargo feature
/// `command-format-v1`: an honest old binary that knows command format version 1 only, for the
/// mixed-version tests.
pub const OLD_COORDINATOR_DIR: &str = "format-v1";

/// The old coordinator (see [`OLD_COORDINATOR_DIR`]); panics with the command that builds it
/// when it is missing.
pub fn old_coordinator() -> PathBuf {
    let path = profile_dir().join(OLD_COORDINATOR_DIR).join(COORDINATOR);
    if !path.is_file() {
        panic!(
            "the old coordinator {} is missing: run `scripts/build-old-coordinator` (scripts/test \
             does) to build hotdeploy-coordinator with --features command-format-v1",
            path.display()
        );
    }
    path
}

/// `hotdeploy-agent`.
pub fn agent() -> PathBuf {
    path(AGENT)
}

/// `hotdeployctl`.
pub fn ctl() -> PathBuf {
    path(CTL)
}

/// `sample-app`.
pub fn sample_app() -> PathBuf {
    path(SAMPLE_APP)
}

/// `hd-pack`.
pub fn hd_pack() -> PathBuf {
    path(HD_PACK)
}

/// `hd-pdeathsig`.
pub fn hd_pdeathsig() -> PathBuf {
    path(HD_PDEATHSIG)
}
