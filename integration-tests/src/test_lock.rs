//! One test at a time across test processes: an exclusive `flock` on a file.
//!
//! The coordinator cluster tests run one at a time (see `tests/common`), and that must hold
//! under both runners:
//!
//! - `cargo test` runs one test binary after another, and the tests of one binary as threads of
//!   one process, so an in-process mutex would do;
//! - `cargo nextest` runs every test in a process of its own, several at once, so it needs a
//!   test group with `max-threads = 1` (`.config/nextest.toml`, group `coordinator-cluster`).
//!
//! [`TestLock::acquire`] makes it true whatever the runner or its configuration: it takes an
//! exclusive `flock(2)` on a file in the workspace's `target/tmp`, waiting (bounded) while
//! another process holds it. The kernel drops the lock when its holder exits, however it
//! exits, so a killed test never leaves it held. Under nextest with the test group, nobody ever
//! waits; a wait is reported on stderr, because it means the runner started two tests that the
//! suite wants apart, and the waiting one spends its own timeout.
//!
//! An in-process mutex is still taken first: `flock` locks belong to open file descriptions, so
//! two threads of one process would each get their own.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long [`TestLock::acquire`] waits for another process to finish before giving up.
pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// How often a held lock is tried again.
const RETRY: Duration = Duration::from_millis(100);

/// An exclusive hold on a lock file; released on drop (or when the process exits).
pub struct TestLock {
    // Field order matters for drop: the file lock before the in-process mutex.
    _file: Flock<File>,
    _thread: MutexGuard<'static, ()>,
}

impl TestLock {
    /// Takes the lock named `name` (a file `<dir>/<name>.lock`), waiting up to [`MAX_WAIT`]
    /// for its holder. Panics if it cannot be had: the test must not run unprotected.
    pub fn acquire(dir: &Path, name: &str) -> TestLock {
        static THREADS: Mutex<()> = Mutex::new(());
        let thread = THREADS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.lock"));
        let started = Instant::now();
        let mut reported = false;
        let mut file = open(&path);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut locked) => {
                    if reported {
                        eprintln!(
                            "test lock {}: acquired after {:?}",
                            path.display(),
                            started.elapsed()
                        );
                    }
                    record_holder(&mut locked);
                    return TestLock {
                        _file: locked,
                        _thread: thread,
                    };
                }
                Err((unlocked, nix::errno::Errno::EWOULDBLOCK)) => {
                    file = unlocked;
                    if !reported {
                        reported = true;
                        eprintln!(
                            "test lock {}: held by {}; waiting (the runner started two tests \
                             that must run one at a time)",
                            path.display(),
                            holder(&path)
                        );
                    }
                    assert!(
                        started.elapsed() < MAX_WAIT,
                        "test lock {}: still held by {} after {MAX_WAIT:?}",
                        path.display(),
                        holder(&path)
                    );
                    std::thread::sleep(RETRY);
                }
                Err((_, e)) => panic!("cannot flock {}: {e}", path.display()),
            }
        }
    }
}

fn open(path: &PathBuf) -> File {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open the test lock {}: {e}", path.display()))
}

/// Writes this process's pid into the lock file, for the message of a waiting process.
fn record_holder(file: &mut File) {
    let _ = file.set_len(0);
    let _ = file.write_all(format!("pid {}\n", std::process::id()).as_bytes());
}

fn holder(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "another process".into())
}
