//! The shell scripts under `scripts/` that the test command is made of.
//!
//! - `ensure-packages` finds a command that lives in an sbin directory even when PATH has none
//!   (Debian's PATH for a user who is not root), instead of reporting HAProxy missing.
//! - `test-summary` turns a run's runner output into the one line `scripts/test` ends with, so
//!   that the doc-tests' `0 passed` is not the last word of a run of hundreds of tests.

// Test helpers panic on setup failures, like the tests themselves.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name)
}

/// `haproxy` is in `/usr/sbin` (Debian's package); run `ensure-packages haproxy` with a PATH
/// without any sbin directory, as a user who is not root (as `nobody` when this runs as root,
/// so that the script cannot take its apt-get branch). It must find HAProxy and succeed.
#[test]
fn ensure_packages_finds_commands_in_the_sbin_directories() {
    assert!(
        Path::new("/usr/sbin/haproxy").is_file(),
        "this test needs Debian's haproxy package (/usr/sbin/haproxy): apt-get install haproxy"
    );
    // A copy that `nobody` may read, in a directory it may enter.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = tmp.path().join("ensure-packages");
    std::fs::copy(script("ensure-packages"), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();

    // `/proc/self` belongs to the effective user.
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let mut command = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"]);
        c
    } else {
        Command::new("bash")
    };
    command
        .arg(&copy)
        .arg("haproxy")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", tmp.path());
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "ensure-packages did not find /usr/sbin/haproxy without sbin in PATH (as {}): {}{}",
        if root { "nobody" } else { "this user" },
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn summary_of(log: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("run.log");
    std::fs::write(&path, log).unwrap();
    let out = Command::new(script("test-summary"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// nextest's summary and the doc-tests' libtest lines add up into one line for the run; the
/// doc-tests' `0 passed` does not hide the hundreds before it.
#[test]
fn test_summary_counts_every_runner_into_one_line() {
    let log = "\
        PASS [   0.044s] (1/3) hotdeploy-coordinator raft::tests::a\n\
     Summary [ 324.902s] 183 tests run: 177 passed (2 slow), 4 failed, 2 timed out, 9 skipped\n\
   Doc-tests hotdeploy_common\n\
running 0 tests\n\
test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
\x1b[32mtest result: ok.\x1b[0m 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out\n";
    assert_eq!(summary_of(log), "180 passed, 7 failed, 11 skipped\n");
}

/// Without nextest, `scripts/test` runs `cargo test`, one libtest line per test binary.
#[test]
fn test_summary_adds_cargo_test_binaries_and_step_failures() {
    let log = "\
test result: ok. 61 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n\
test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n";
    assert_eq!(summary_of(log), "64 passed, 1 failed, 0 skipped\n");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("run.log");
    std::fs::write(&path, log).unwrap();
    let out = Command::new(script("test-summary"))
        .arg(&path)
        .arg("2")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "64 passed, 3 failed, 0 skipped\n"
    );
}

/// `scripts/test` ends with the summary on every path that runs tests.
#[test]
fn the_test_script_ends_with_the_summary() {
    let text = std::fs::read_to_string(script("test")).unwrap();
    let code: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let n = code.len();
    assert_eq!(
        &code[n - 2..],
        &[
            "summary",
            "[ \"$step_failures\" -eq 0 ] && [ \"$test_failures\" -eq 0 ]"
        ],
        "scripts/test must print the summary last and fail when anything failed"
    );
}
