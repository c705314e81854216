//! Test doubles shared by the link, engine and daemon tests (test builds only).
//!
//! [`coordinator`] is a fake coordinator on loopback that models one host's slot the way the
//! real state machine does (re-entrant per purpose, stale tokens refused, write ids deduped),
//! with hooks to hold a release back or fail a phase report. It isolates a race
//! deterministically; the proof against real coordinators is in the integration tests.

pub(crate) mod coordinator;
