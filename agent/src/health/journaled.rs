//! The daemon's health fact: started from the journal, and written back to it on every change.

use super::fact::HealthFact;
use super::initial::{initial, StartFacts};
use super::record::HealthRecord;
use crate::journal::{Journal, JournalError};
use crate::store::ReleaseStore;
use hotdeploy_common::time::now_ms;
use std::sync::Arc;

/// What the daemon knows about the service when it starts, beside the journal.
#[derive(Debug, Clone, Copy)]
pub struct AtStart<'a> {
    /// The release `current` names.
    pub current: Option<&'a str>,
    /// The `current` link exists but cannot be read.
    pub current_broken: bool,
    /// `exec` mode: the service was started by this agent rather than adopted.
    pub started_afresh: bool,
}

/// The health fact of a starting agent: its first value from [`initial`] (the journal's record,
/// the last deploy, `current`, and whether the `exec` service had to be started afresh), every
/// change recorded in the journal with the release live at the time.
pub fn journaled_fact(
    journal: &Journal,
    store: &ReleaseStore,
    at: AtStart<'_>,
) -> Result<Arc<HealthFact>, JournalError> {
    let record: Option<HealthRecord> = journal.health().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the journal's health record is unreadable; ignoring it");
        None
    });
    let deploy = journal.deploy()?;
    let start = initial(StartFacts {
        current: at.current,
        current_broken: at.current_broken,
        record: record.as_ref(),
        deploy: deploy.as_ref(),
        started_afresh: at.started_afresh,
    });
    tracing::info!(
        health = start.label(),
        "starting health (from the journal and the release store)"
    );
    let (journal, store) = (journal.clone(), store.clone());
    Ok(HealthFact::new(
        start,
        Box::new(move |h| {
            let rec = HealthRecord {
                health: h.into(),
                release: store.current().ok().flatten(),
                at_ms: now_ms(),
            };
            if let Err(e) = journal.set_health(&rec) {
                tracing::error!(error = %e, "cannot journal the host's health");
            }
        }),
    ))
}
