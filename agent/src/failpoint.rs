//! Test-only crash points.
//!
//! Crash-recovery tests need the agent to die at precise places of a deploy: right after a
//! release is staged, after the drain, after the swap, while verifying. With the crate feature
//! `failpoints`, [`failpoint`] reads `HOTDEPLOY_FAILPOINTS` (a comma-separated list of names,
//! e.g. `after_staged,after_drain,after_swap,during_verify`) and, when its name is listed, logs
//! and sends itself SIGKILL on the spot: no destructors, no flushes, exactly `kill -9`.
//!
//! Without the feature the function is empty and inlined away, so release builds carry no trace
//! of it.

/// Kills the process (SIGKILL) when `name` is listed in `HOTDEPLOY_FAILPOINTS` (feature `failpoints`).
#[cfg(feature = "failpoints")]
pub fn failpoint(name: &str) {
    let Ok(list) = std::env::var("HOTDEPLOY_FAILPOINTS") else {
        return;
    };
    if list.split(',').any(|p| p.trim() == name) {
        tracing::error!(failpoint = name, "failpoint hit: kill -9");
        eprintln!("hotdeploy failpoint {name}: kill -9");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; should raise itself fail, die without cleanup anyway.
        std::process::abort();
    }
}

/// Does nothing: crash points exist only with the feature `failpoints`.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn failpoint(_name: &str) {}
