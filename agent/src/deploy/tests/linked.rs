//! One test agent's parts wired together: a journal in a temp dir, the real link to a fake
//! coordinator, and the engine on a fake host, on one shutdown token. Nothing is started: each
//! test module starts the tasks (link, recovery, reconciliation, driver) it is about.

use super::fake::Fake;
use crate::deploy::{Engine, EngineParts, Timing};
use crate::journal::Journal;
use crate::link::{Link, LinkConfig};
use crate::testing::coordinator::{FakeCoordinator, ServeGuard};
use hotdeploy_common::config::TlsConfig;
use hotdeploy_common::proto::HostReport;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub(crate) struct Linked {
    pub engine: Engine,
    pub link: Link,
    pub journal: Journal,
    pub shutdown: CancellationToken,
    pub guard: ServeGuard,
    pub dir: tempfile::TempDir,
}

/// `prepare` writes the journal before anything reads it. `journal_is_new`: a first start (or a
/// lost journal) rather than a restart.
pub(crate) async fn linked(
    ops: &Fake,
    coord: &FakeCoordinator,
    prepare: impl FnOnce(&Journal),
    journal_is_new: bool,
) -> Linked {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), "web-1").unwrap();
    if !journal_is_new {
        journal.reconciled().unwrap();
    }
    prepare(&journal);
    let (addr, guard) = coord.clone().serve().await;
    let (_tx, rx) = watch::channel(HostReport::default());
    let link = Link::new(
        LinkConfig {
            host_id: "web-1".into(),
            groups: vec!["web".into()],
            address: "127.0.0.1:1".into(),
            coordinators: vec![addr],
            tls: TlsConfig {
                insecure: true,
                ..Default::default()
            },
        },
        journal.clone(),
        rx,
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let engine = Engine::new(EngineParts {
        host_id: "web-1".into(),
        ops: Arc::new(ops.clone()),
        lock: Some(Arc::new(link.clone())),
        journal: journal.clone(),
        timing: Timing::default(),
        health: ops.fact_or_default(),
        shutdown: shutdown.clone(),
    })
    .unwrap();
    Linked {
        engine,
        link,
        journal,
        shutdown,
        guard,
        dir,
    }
}
