//! The shell scripts under `scripts/` that the test command is made of.
//!
//! - `ensure-packages` finds a command that lives in an sbin directory even when PATH has none
//!   (Debian's PATH for a user who is not root), instead of reporting HAProxy missing.
//! - `test-summary` turns a run's runner output into the one line `scripts/test` ends with, so
//!   that the doc-tests' `0 passed` is not the last word of a run of hundreds of tests.
//! - `.config/nextest.toml` puts every test file that takes the coordinator cluster lock in the
//!   test group that runs them one at a time.

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

/// A `binary(...)` term of a nextest filter, in the two forms `.config/nextest.toml` uses.
#[derive(Debug)]
enum BinaryTerm {
    Exact(String),
    Prefix(String),
}

impl BinaryTerm {
    fn matches(&self, binary: &str) -> bool {
        match self {
            BinaryTerm::Exact(name) => binary == name,
            BinaryTerm::Prefix(prefix) => binary.starts_with(prefix.as_str()),
        }
    }
}

/// The `binary(...)` terms of `filter`; panics on a form this test does not understand.
fn binary_terms(filter: &str) -> Vec<BinaryTerm> {
    filter
        .split("binary(")
        .skip(1)
        .map(|rest| {
            let term = &rest[..rest.find(')').expect("an unclosed binary( term")];
            if let Some(prefix) = term
                .strip_prefix("/^")
                .and_then(|t| t.strip_suffix('/'))
                .filter(|t| t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                BinaryTerm::Prefix(prefix.to_string())
            } else if term.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                BinaryTerm::Exact(term.to_string())
            } else {
                panic!("binary({term}) in the nextest filter: a form this test cannot read")
            }
        })
        .collect()
}

/// A test file whose tests take the coordinator cluster lock (`common::serial()`, one such test
/// at a time across processes) must be in nextest's group `coordinator-cluster`
/// (`max-threads = 1`), and that override must come first (nextest's first match wins):
/// otherwise nextest starts it beside another cluster test, and it spends its own timeout
/// waiting for the lock.
#[test]
fn every_test_file_that_takes_the_cluster_lock_is_in_the_coordinator_cluster_group() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config_path = root.join("../.config/nextest.toml");
    let config: toml::Value =
        toml::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    assert_eq!(
        config["test-groups"]["coordinator-cluster"]["max-threads"].as_integer(),
        Some(1),
        "{}",
        config_path.display()
    );
    let overrides = config["profile"]["default"]["overrides"]
        .as_array()
        .expect("[[profile.default.overrides]]");
    let first_grouped = overrides
        .iter()
        .find(|o| o.get("test-group").is_some())
        .expect("an override with a test group");
    assert_eq!(
        first_grouped["test-group"].as_str(),
        Some("coordinator-cluster"),
        "the coordinator-cluster override must be the first with a test group"
    );
    let filter = first_grouped["filter"].as_str().expect("a filter");
    let terms = binary_terms(filter);

    // The call that takes the lock, spelled in two pieces so that this file does not match.
    let call = ["= serial", "();"].concat();
    let mut lockers = Vec::new();
    for entry in std::fs::read_dir(root.join("tests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs")
            && std::fs::read_to_string(&path).unwrap().contains(&call)
        {
            lockers.push(path.file_stem().unwrap().to_string_lossy().to_string());
        }
    }
    lockers.sort();
    assert!(
        lockers.len() >= 6 && lockers.iter().any(|l| l == "rollout_cluster"),
        "found too few test files that take the lock: {lockers:?}"
    );
    for binary in &lockers {
        assert!(
            terms.iter().any(|t| t.matches(binary)),
            "tests/{binary}.rs takes the cluster lock (serial()) but is not in the \
             coordinator-cluster group: filter {filter:?} ({terms:?})"
        );
    }
}
