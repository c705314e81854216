//! Tests of the release store: staging commits, link swaps, gc and debris cleanup.

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A temp dir whose drop also removes read-only release trees (for non-root runs).
struct Tmp(tempfile::TempDir);

impl Tmp {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = super::fsops::remove_tree(self.0.path());
    }
}

fn tmpdir() -> Tmp {
    Tmp(tempfile::tempdir().unwrap())
}

fn sha(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// Stages release `id` holding one file, committed with digest `sha(n)`.
fn stage(store: &ReleaseStore, id: &str, n: u8) -> PathBuf {
    let staging = store.new_staging_dir(id).unwrap();
    fs::create_dir(staging.join("bin")).unwrap();
    fs::write(staging.join("bin/app"), id).unwrap();
    store.commit(id, &staging, &sha(n)).unwrap()
}

fn dot_entries(store: &ReleaseStore) -> Vec<String> {
    fs::read_dir(store.releases_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != LOCK_FILE)
        .collect()
}

#[test]
fn open_creates_layout_and_starts_empty() {
    let tmp = tmpdir();
    let root = tmp.path().join("svc");
    let store = ReleaseStore::open(&root, 5).unwrap();
    assert!(root.join("releases").is_dir());
    assert_eq!(store.current().unwrap(), None);
    assert_eq!(store.previous().unwrap(), None);
    assert!(store.list().unwrap().is_empty());
    assert!(!store.has_release("v1"));
}

#[test]
fn commit_publishes_a_read_only_release_with_its_digest() {
    let tmp = tmpdir();
    let store = ReleaseStore::open(tmp.path(), 5).unwrap();
    let dir = stage(&store, "v1", 1);
    assert_eq!(dir, store.release_dir("v1"));
    assert!(store.has_release("v1"));
    assert_eq!(store.release_sha256("v1"), Some(sha(1)));
    for p in [dir.join("bin/app"), dir.join("bin"), dir.clone()] {
        let mode = fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o222, 0, "{} is writable: {mode:o}", p.display());
    }
    assert!(dot_entries(&store).is_empty(), "staging dir left behind");
}

#[test]
fn commit_of_same_id_same_digest_is_a_no_op_and_other_digest_conflicts() {
    let tmp = tmpdir();
    let store = ReleaseStore::open(tmp.path(), 5).unwrap();
    stage(&store, "v1", 1);
    stage(&store, "v1", 1);
    let staging = store.new_staging_dir("v1").unwrap();
    let err = store.commit("v1", &staging, &sha(2)).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(store.release_sha256("v1"), Some(sha(1)));
    assert_eq!(
        fs::read_to_string(store.release_dir("v1").join("bin/app")).unwrap(),
        "v1"
    );
}

#[test]
fn invalid_ids_are_refused() {
    let tmp = tmpdir();
    let store = ReleaseStore::open(tmp.path(), 5).unwrap();
    for bad in ["", ".", "..", "../x", "a/b", ".hidden", "a b"] {
        assert!(store.new_staging_dir(bad).is_err(), "{bad:?}");
        assert!(store.set_current(bad).is_err(), "{bad:?}");
        assert!(!store.has_release(bad));
    }
}

#[test]
fn links_point_only_at_staged_releases() {
    let tmp = tmpdir();
    let store = ReleaseStore::open(tmp.path(), 5).unwrap();
    let err = store.set_current("v1").unwrap_err();
    assert!(matches!(err, StoreError::NotStaged { .. }), "{err}");
    assert!(fs::symlink_metadata(tmp.path().join("current")).is_err());

    stage(&store, "v1", 1);
    stage(&store, "v2", 2);
    store.set_current("v1").unwrap();
    store.set_previous("v1").unwrap();
    store.set_current("v2").unwrap();
    assert_eq!(store.current().unwrap().as_deref(), Some("v2"));
    assert_eq!(store.previous().unwrap().as_deref(), Some("v1"));
    assert_eq!(
        fs::read_link(tmp.path().join("current")).unwrap(),
        Path::new("releases/v2"),
        "link target must be relative"
    );
    assert_eq!(
        fs::read_to_string(tmp.path().join("current/bin/app")).unwrap(),
        "v2"
    );
    let list = store.list().unwrap();
    let flags: Vec<_> = list
        .iter()
        .map(|e| (e.id.as_str(), e.current, e.previous))
        .collect();
    assert_eq!(flags, [("v1", false, true), ("v2", true, false)]);
}

#[test]
fn current_reports_dangling_and_foreign_links() {
    let tmp = tmpdir();
    let store = ReleaseStore::open(tmp.path(), 5).unwrap();
    std::os::unix::fs::symlink("releases/ghost", tmp.path().join("current")).unwrap();
    assert!(matches!(store.current(), Err(StoreError::Dangling { .. })));
    fs::remove_file(tmp.path().join("current")).unwrap();
    std::os::unix::fs::symlink("/etc", tmp.path().join("current")).unwrap();
    assert!(matches!(store.current(), Err(StoreError::BadLink { .. })));
    fs::remove_file(tmp.path().join("current")).unwrap();
    std::os::unix::fs::symlink("releases/../releases/x", tmp.path().join("current")).unwrap();
    assert!(matches!(store.current(), Err(StoreError::BadLink { .. })));
}

/// A reader resolving `current` while a writer swaps it back and forth must never see it
/// missing or dangling.
#[test]
fn set_current_is_atomic() {
    let tmp = tmpdir();
    let store = ReleaseStore::open(tmp.path(), 5).unwrap();
    stage(&store, "a", 1);
    stage(&store, "b", 2);
    store.set_current("a").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, link) = (stop.clone(), tmp.path().join("current/bin/app"));
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let text = fs::read_to_string(&link).expect("current must always resolve");
                assert!(text == "a" || text == "b", "{text}");
                reads += 1;
            }
            reads
        })
    };
    for i in 0..300 {
        store
            .set_current(if i % 2 == 0 { "b" } else { "a" })
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    // The last swap (i = 299) pointed it back at "a".
    assert_eq!(store.current().unwrap().as_deref(), Some("a"));
}

#[test]
fn gc_keeps_bound_and_never_removes_current_previous_or_protected() {
    let tmp = tmpdir();
    let store = ReleaseStore::open(tmp.path(), 3).unwrap();
    for (i, id) in ["r1", "r2", "r3", "r4", "r5", "r6"].iter().enumerate() {
        stage(&store, id, i as u8);
        // Distinct staged_at_ms, so "oldest" is well defined.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    store.set_current("r1").unwrap();
    store.set_previous("r3").unwrap();
    let removed = store.gc(&["r2"]).unwrap();
    assert_eq!(removed, ["r4", "r5", "r6"]);
    let left: Vec<_> = store.list().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(left, ["r1", "r2", "r3"]);
    for id in ["r4", "r5", "r6"] {
        assert!(!store.release_dir(id).exists());
        assert!(!store.releases_dir().join(format!("{id}.sha256")).exists());
    }
    assert!(dot_entries(&store).is_empty());

    // Protected ids beyond the bound are all kept.
    let store = ReleaseStore::open(tmp.path(), 2).unwrap();
    assert!(store.gc(&["r2"]).unwrap().is_empty());
    assert_eq!(store.list().unwrap().len(), 3);
    // Unprotected, the oldest non-linked one goes first.
    assert_eq!(store.gc(&[]).unwrap(), ["r2"]);
}

#[test]
fn gc_refuses_to_guess_when_current_dangles() {
    let tmp = tmpdir();
    let store = ReleaseStore::open(tmp.path(), 1).unwrap();
    stage(&store, "r1", 1);
    stage(&store, "r2", 2);
    std::os::unix::fs::symlink("releases/ghost", tmp.path().join("current")).unwrap();
    assert!(store.gc(&[]).is_err());
    assert_eq!(store.list().unwrap().len(), 2, "listing still works");
    assert!(store.has_release("r1") && store.has_release("r2"));
}

#[test]
fn clean_debris_removes_crash_leftovers_only() {
    let tmp = tmpdir();
    let store = ReleaseStore::open(tmp.path(), 5).unwrap();
    stage(&store, "v1", 1);
    // An id that looks like a temporary name must survive.
    stage(&store, "x.tmp-0123456789abcdef", 2);
    store.set_current("v1").unwrap();

    let rel = store.releases_dir().to_path_buf();
    let staging = store.new_staging_dir("v2").unwrap();
    fs::create_dir(staging.join("ro")).unwrap();
    fs::write(staging.join("ro/f"), "x").unwrap();
    super::fsops::make_readonly_tree(&staging).unwrap();
    fs::write(rel.join(".download-v2-0011223344556677"), "partial").unwrap();
    fs::create_dir(rel.join(".trash-v0-0011223344556677")).unwrap();
    fs::write(rel.join("v1.sha256.tmp-0011223344556677"), "x").unwrap();
    fs::write(rel.join("ghost.sha256"), sha(9)).unwrap();
    std::os::unix::fs::symlink(
        "releases/v1",
        tmp.path().join("current.tmp-0011223344556677"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "releases/v1",
        tmp.path().join("previous.tmp-aabbccddeeff0011"),
    )
    .unwrap();

    store.clean_debris().unwrap();

    assert!(dot_entries(&store).is_empty(), "{:?}", dot_entries(&store));
    assert!(!rel.join("v1.sha256.tmp-0011223344556677").exists());
    assert!(!rel.join("ghost.sha256").exists());
    assert!(fs::symlink_metadata(tmp.path().join("current.tmp-0011223344556677")).is_err());
    assert!(fs::symlink_metadata(tmp.path().join("previous.tmp-aabbccddeeff0011")).is_err());
    assert!(store.has_release("v1"));
    assert!(store.has_release("x.tmp-0123456789abcdef"));
    assert_eq!(store.current().unwrap().as_deref(), Some("v1"));
}
