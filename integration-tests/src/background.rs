//! The harness's own tokio runtime.
//!
//! Multi-process tests are mostly synchronous: start a process, run `hotdeployctl`, wait. The
//! fault proxies, the load generator and other in-process helpers are async, and must keep
//! running while the test thread blocks. They are spawned on this shared, lazily built,
//! multi-threaded runtime, which lives as long as the test process. That works the same from a
//! plain `#[test]` and from inside a `#[tokio::test]`, and no test's runtime is ever blocked by
//! the harness's tasks or vice versa.

use std::sync::OnceLock;
use tokio::runtime::{Builder, Handle, Runtime};

/// A handle to the background runtime, building it on first use.
pub fn handle() -> Handle {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("harness-bg")
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("cannot build the harness runtime: {e}"))
        })
        .handle()
        .clone()
}
