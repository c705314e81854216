//! The deploy journal: the agent's durable memory, in sled under `data_dir`.
//!
//! A deploy is a sequence of disruptive steps on a live host. If the agent dies in the middle,
//! the next agent must know where it stood to bring the host back to a good state: healthy and
//! in rotation, on the old or the new release, with its slot released. So every phase of a
//! deploy is written here, and flushed, *before* the agent acts on it (write-ahead). Recovery
//! then reads the last phase and knows that the step it names may or may not have happened, and
//! that every earlier one did.
//!
//! The journal also keeps:
//! - the agent's client id for coordinator writes, stable per data_dir
//!   (`agent/<host>/<random>`, drawn at first start), and the write counter: every write id is
//!   persisted before it is used, so a seq is never reused across restarts for a new write;
//! - the supervised child (pid, start time, boot id), so that a restarted agent adopts it
//!   instead of starting a second copy of the service, and the release the service was last
//!   started on (what `command` mode's `stop` stops);
//! - a [`Hold`]: a slot held outside a deploy, of a [`HoldKind`] that says why (an operator's
//!   drain or maintenance; a host a deploy left out: verify failed, undrain failed,
//!   interrupted);
//! - whether the journal is new ([`Journal::is_new`]): created at this start and not yet
//!   reconciled with the slot the coordinators say the host holds, so that a lost journal can be
//!   rebuilt from that slot;
//! - for a deploy a rollout drove, its step ([`RolloutStep`]): the attempt, and whether the
//!   outcome has reached the coordinators ([`OutcomeReport`]), so that a restarted agent reports
//!   an outcome it had not reported before it releases anything;
//! - the last maintenance run ([`MaintRecord`]: reason, argv, boot id, the command's pid and
//!   start time, the step), so that a restarted agent, or one the command rebooted, finishes
//!   verify, undrain and release ([`resume`]);
//! - the last health this host established (see [`crate::health`]), so that a restarted agent
//!   neither hides a bad state nor invents a good one.
//!
//! Slot purposes are typed ([`Purpose`]); the coordinators keep them as strings, and the mapping
//! ([`Purpose::wire`], [`Purpose::from_wire`]) is the only place a purpose string is spelled.
//!
//! Everything is small JSON under a handful of keys; sled gives atomic single-key writes and a
//! durable `flush`, which is all the journal needs.

mod maint;
mod phase;
mod record;

pub use maint::{resume, CmdExit, MaintChild, MaintRecord, MaintResult, MaintStep, Resume};
pub use phase::{Outcome, Phase};
pub use record::{
    DeployKind, DeployRecord, Hold, HoldKind, OutcomeReport, Purpose, RolloutStep, WriteId,
};

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

const KEY_CLIENT_ID: &str = "meta/client_id";
const KEY_SEQ: &str = "meta/seq";
const KEY_DEPLOY: &str = "deploy";
const KEY_CHILD: &str = "child";
const KEY_HOLD: &str = "hold";
const KEY_HEALTH: &str = "health";
const KEY_SERVICE_RELEASE: &str = "service_release";
const KEY_NEW: &str = "meta/new";
const KEY_MAINT: &str = "maint";

/// The journal cannot be read or written. Always fatal for the step at hand: the agent must not
/// act on a phase it could not make durable.
#[derive(Debug, Error)]
pub enum JournalError {
    #[error("cannot open the deploy journal at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("deploy journal {op} of {key:?} failed: {source}")]
    Io {
        op: &'static str,
        key: &'static str,
        source: sled::Error,
    },
    #[error("deploy journal entry {key:?} is corrupt: {message}")]
    Corrupt { key: &'static str, message: String },
}

/// The deploy journal. Cheap to clone (sled handles are shared).
#[derive(Clone)]
pub struct Journal {
    db: sled::Db,
    /// The agent's data_dir (the maintenance command's log lives there).
    data_dir: PathBuf,
    client_id: String,
    seq_lock: std::sync::Arc<std::sync::Mutex<()>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// How long an open waits for the journal's file lock before it gives up.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens sled at `path`, waiting up to [`LOCK_WAIT`] for its file lock.
///
/// sled releases the lock only when the last handle on its page cache goes, and its own I/O
/// threads can still hold one for a moment after the `Db` is dropped. So the same process
/// reopening a journal it just closed can find the lock taken (in tests, 13 opens in 200 under
/// load). Another process that holds it still fails the open once the wait is over, with
/// sled's "could not acquire lock" error naming the file.
fn open_db(path: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(8 << 20)
            // Every write is flushed explicitly; no background flusher (which would also keep
            // the file lock for a while after the journal is dropped).
            .flush_every_ms(None)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

impl Journal {
    /// Opens (or creates) the journal in `data_dir/journal`, drawing the client id at first
    /// start.
    pub fn open(data_dir: &Path, host_id: &str) -> Result<Self, JournalError> {
        let path = data_dir.join("journal");
        let db = open_db(&path).map_err(|source| JournalError::Open {
            path: path.clone(),
            source,
        })?;
        let mut j = Self {
            db,
            data_dir: data_dir.to_path_buf(),
            client_id: String::new(),
            seq_lock: Default::default(),
        };
        j.client_id = match j.get::<String>(KEY_CLIENT_ID)? {
            Some(id) => id,
            None => {
                // A new journal: whatever slot the coordinators say this host holds predates
                // it (a first start, or a journal that was lost).
                j.put(KEY_NEW, &true)?;
                let id = format!("agent/{host_id}/{:016x}", rand::random::<u64>());
                j.put(KEY_CLIENT_ID, &id)?;
                id
            }
        };
        Ok(j)
    }

    /// Whether the journal was created afresh and has not yet been reconciled with the slot the
    /// coordinators say the host holds: a first start, or a journal that was lost, whose slot
    /// is to be rebuilt from what the coordinators say.
    pub fn is_new(&self) -> Result<bool, JournalError> {
        Ok(self.get::<bool>(KEY_NEW)?.unwrap_or(false))
    }

    /// The coordinators' view of the host's slot has been reconciled with this journal.
    pub fn reconciled(&self) -> Result<(), JournalError> {
        if self.is_new()? {
            self.remove(KEY_NEW)?;
        }
        Ok(())
    }

    /// The client id of this agent's coordinator writes.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// A fresh write id. The counter is persisted before the id is returned, so no id is ever
    /// handed out twice, even across a crash.
    pub fn next_write_id(&self) -> Result<WriteId, JournalError> {
        let _g = self
            .seq_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let seq = self.get::<u64>(KEY_SEQ)?.unwrap_or(0) + 1;
        self.put(KEY_SEQ, &seq)?;
        Ok(WriteId {
            client_id: self.client_id.clone(),
            seq,
        })
    }

    /// The last deploy: in progress when its `finished_at_ms` is unset.
    pub fn deploy(&self) -> Result<Option<DeployRecord>, JournalError> {
        self.get(KEY_DEPLOY)
    }

    /// Makes a deploy record durable.
    pub fn put_deploy(&self, rec: &DeployRecord) -> Result<(), JournalError> {
        self.put(KEY_DEPLOY, rec)
    }

    /// The agent's data_dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The last maintenance run (`RunMaintenance`): in progress when `finished_at_ms` is unset.
    pub fn maint(&self) -> Result<Option<MaintRecord>, JournalError> {
        self.get(KEY_MAINT)
    }

    /// Makes a maintenance record durable.
    pub fn put_maint(&self, rec: &MaintRecord) -> Result<(), JournalError> {
        self.put(KEY_MAINT, rec)
    }

    /// The slot held outside a deploy, if any.
    pub fn hold(&self) -> Result<Option<Hold>, JournalError> {
        self.get(KEY_HOLD)
    }

    /// Records (or clears) the slot held outside a deploy.
    pub fn set_hold(&self, hold: Option<&Hold>) -> Result<(), JournalError> {
        match hold {
            Some(h) => self.put(KEY_HOLD, h),
            None => self.remove(KEY_HOLD),
        }
    }

    /// The supervised child, as last recorded.
    pub fn child<T: DeserializeOwned>(&self) -> Result<Option<T>, JournalError> {
        self.get(KEY_CHILD)
    }

    /// Records (or clears) the supervised child.
    pub fn set_child<T: Serialize>(&self, child: Option<&T>) -> Result<(), JournalError> {
        match child {
            Some(c) => self.put(KEY_CHILD, c),
            None => self.remove(KEY_CHILD),
        }
    }

    /// The last health record (see [`crate::health::HealthRecord`]).
    pub fn health<T: DeserializeOwned>(&self) -> Result<Option<T>, JournalError> {
        self.get(KEY_HEALTH)
    }

    /// Records the host's health.
    pub fn set_health<T: Serialize>(&self, health: &T) -> Result<(), JournalError> {
        self.put(KEY_HEALTH, health)
    }

    /// Test-only: overwrites the child record with bytes that do not parse.
    #[cfg(test)]
    pub(crate) fn corrupt_child(&self) -> Result<(), JournalError> {
        self.db
            .insert(KEY_CHILD, &b"{not json"[..])
            .map_err(|source| JournalError::Io {
                op: "write",
                key: KEY_CHILD,
                source,
            })?;
        self.flush(KEY_CHILD)
    }

    /// The release the service was last (re)started on (`command` mode's `stop` is run with it).
    pub fn service_release(&self) -> Result<Option<String>, JournalError> {
        self.get(KEY_SERVICE_RELEASE)
    }

    /// Records the release the service is being (re)started on.
    pub fn set_service_release(&self, id: Option<&str>) -> Result<(), JournalError> {
        match id {
            Some(id) => self.put(KEY_SERVICE_RELEASE, id),
            None => self.remove(KEY_SERVICE_RELEASE),
        }
    }

    fn get<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>, JournalError> {
        let Some(bytes) = self.db.get(key).map_err(|source| JournalError::Io {
            op: "read",
            key,
            source,
        })?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| JournalError::Corrupt {
                key,
                message: e.to_string(),
            })
    }

    fn put<T: Serialize + ?Sized>(&self, key: &'static str, value: &T) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(value).map_err(|e| JournalError::Corrupt {
            key,
            message: e.to_string(),
        })?;
        self.db
            .insert(key, bytes)
            .map_err(|source| JournalError::Io {
                op: "write",
                key,
                source,
            })?;
        self.flush(key)
    }

    fn remove(&self, key: &'static str) -> Result<(), JournalError> {
        self.db.remove(key).map_err(|source| JournalError::Io {
            op: "remove",
            key,
            source,
        })?;
        self.flush(key)
    }

    fn flush(&self, key: &'static str) -> Result<(), JournalError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|source| JournalError::Io {
                op: "flush",
                key,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(dir.path(), "web-1").unwrap();
            let mut rec = DeployRecord::new(DeployKind::Deploy, "r1", Some("v1".into()), "v2", 5);
            rec.phase = Phase::Swapped;
            rec.token = 42;
            j.put_deploy(&rec).unwrap();
            j.set_hold(Some(&Hold {
                kind: HoldKind::Drain,
                purpose: Purpose::Drain,
                token: 7,
                note: "ops".into(),
                since_ms: 1,
            }))
            .unwrap();
            j.set_child(Some(&(123u32, 456u64))).unwrap();
        }
        let j = Journal::open(dir.path(), "web-1").unwrap();
        let rec = j.deploy().unwrap().unwrap();
        assert_eq!(rec.phase, Phase::Swapped);
        assert_eq!(rec.token, 42);
        assert_eq!(rec.from.as_deref(), Some("v1"));
        assert!(rec.in_progress());
        assert_eq!(j.hold().unwrap().unwrap().token, 7);
        assert_eq!(j.child::<(u32, u64)>().unwrap(), Some((123, 456)));
        j.set_hold(None).unwrap();
        j.set_child::<(u32, u64)>(None).unwrap();
        drop(j);
        let j = Journal::open(dir.path(), "web-1").unwrap();
        assert!(j.hold().unwrap().is_none());
        assert!(j.child::<(u32, u64)>().unwrap().is_none());
    }

    /// A deploy record written before rollouts has no step; one with a step keeps its attempt
    /// and where its outcome's report stands.
    #[test]
    fn deploy_records_with_and_without_a_rollout_step_round_trip() {
        let old = r#"{"kind":"deploy","rollout":"","token":0,"from":"v1","to":"v2",
            "phase":"released","write":null,"error":null,"outcome":"succeeded",
            "started_at_ms":1,"updated_at_ms":2,"finished_at_ms":2,"drained_at_ms":null}"#;
        let rec: DeployRecord = serde_json::from_str(old).unwrap();
        assert_eq!(rec.step, None);
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), "web-1").unwrap();
        let mut rec = DeployRecord::new(DeployKind::Deploy, "r1", Some("v1".into()), "v2", 5);
        let mut step = RolloutStep::new(3, true, false);
        step.report = OutcomeReport::NotAdmitted;
        rec.step = Some(step.clone());
        j.put_deploy(&rec).unwrap();
        drop(j);
        let j = Journal::open(dir.path(), "web-1").unwrap();
        assert_eq!(j.deploy().unwrap().unwrap().step, Some(step));
        let legacy_step: RolloutStep =
            serde_json::from_str(r#"{"attempt":2,"canary":false,"auto_rollback":true}"#).unwrap();
        assert_eq!(legacy_step.report, OutcomeReport::Due);
    }

    /// Holds journaled before hold kinds existed (`purpose` "drain", "maintenance" or "deploy"
    /// for any failure, and `reason`) still read, as the kinds they meant.
    #[test]
    fn holds_of_older_journals_read_as_their_kinds() {
        for (old, kind, purpose) in [
            ("drain", HoldKind::Drain, Purpose::Drain),
            ("maintenance", HoldKind::Maintenance, Purpose::Maintenance),
            ("deploy", HoldKind::VerifyFailed, Purpose::Deploy),
        ] {
            let text = format!(r#"{{"purpose":"{old}","token":7,"reason":"why","since_ms":1}}"#);
            let h: Hold = serde_json::from_str(&text).unwrap();
            assert_eq!((h.kind, h.purpose, h.token), (kind, purpose, 7), "{old}");
            assert_eq!(h.note, "why");
        }
        let h = Hold {
            kind: HoldKind::UndrainFailed,
            purpose: Purpose::Rollback,
            token: 9,
            note: "n".into(),
            since_ms: 2,
        };
        let back: Hold = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back, h);
        assert!(serde_json::from_str::<Hold>(r#"{"purpose":"x","token":1,"since_ms":1}"#).is_err());
    }

    #[test]
    fn wire_purposes_map_both_ways_and_the_operators_is_not_ours() {
        for p in [
            Purpose::Deploy,
            Purpose::Rollback,
            Purpose::Drain,
            Purpose::Maintenance,
        ] {
            assert_eq!(Purpose::from_wire(p.wire()), Some(p));
        }
        // `hotdeployctl locks acquire` takes "maintenance": never one of the agent's slots.
        assert_eq!(Purpose::from_wire("maintenance"), None);
        assert_eq!(Purpose::from_wire("fleetlock"), None);
    }

    #[test]
    fn a_new_journal_says_so_until_reconciled() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), "web-1").unwrap();
        assert!(j.is_new().unwrap());
        drop(j);
        let j = Journal::open(dir.path(), "web-1").unwrap();
        assert!(j.is_new().unwrap(), "new until reconciled, across restarts");
        j.reconciled().unwrap();
        drop(j);
        assert!(!Journal::open(dir.path(), "web-1")
            .unwrap()
            .is_new()
            .unwrap());
    }

    #[test]
    fn an_open_waits_for_a_lock_that_is_let_go_and_names_one_that_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let held = Journal::open(dir.path(), "web-1").unwrap();
        let letting_go = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let started = Instant::now();
        let j = Journal::open(dir.path(), "web-1").expect("open once the lock is let go");
        assert!(started.elapsed() >= Duration::from_millis(250));
        letting_go.join().unwrap();
        let e = Journal::open(dir.path(), "web-1").expect_err("a lock held throughout");
        let text = e.to_string();
        assert!(text.contains("could not acquire lock"), "{text}");
        assert!(text.contains("journal"), "{text}");
        drop(j);
    }

    #[test]
    fn write_ids_never_repeat_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut client = None;
        for _ in 0..3 {
            let j = Journal::open(dir.path(), "web-1").unwrap();
            assert!(j.client_id().starts_with("agent/web-1/"));
            if let Some(c) = &client {
                assert_eq!(c, j.client_id(), "client id must be stable per data_dir");
            }
            client = Some(j.client_id().to_owned());
            for _ in 0..5 {
                let w = j.next_write_id().unwrap();
                assert!(seen.insert(w.seq), "seq {} handed out twice", w.seq);
            }
        }
        assert_eq!(seen.len(), 15);
        let other = tempfile::tempdir().unwrap();
        let j2 = Journal::open(other.path(), "web-1").unwrap();
        assert_ne!(Some(j2.client_id().to_owned()), client);
    }
}
