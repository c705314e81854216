//! Tests of the artifact pipeline: formats, idempotency, verification, hostile archives, and
//! fetching over HTTP. Every refusal also checks that nothing was swapped, nothing was left in
//! `releases/`, and nothing was written outside it.

use super::*;
use crate::store::ReleaseStore;
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use tar::{Builder, EntryType, Header};

/// The size limit of the test policy: small, so that limits are cheap to hit.
const LIMIT: u64 = 64 * 1024;

struct Fx {
    _tmp: tempfile::TempDir,
    store: ReleaseStore,
    /// Where artifacts are written.
    art: PathBuf,
    /// A directory hostile archives aim at; it must stay empty.
    outside: PathBuf,
    policy: ArtifactPolicy,
}

impl Fx {
    /// A store whose `current` is a good release.
    async fn new() -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let store = ReleaseStore::open(&tmp.path().join("svc"), 5).unwrap();
        let (art, outside) = (tmp.path().join("art"), tmp.path().join("outside"));
        fs::create_dir(&art).unwrap();
        fs::create_dir(&outside).unwrap();
        let fx = Fx {
            _tmp: tmp,
            store,
            art,
            outside,
            policy: ArtifactPolicy::new(LIMIT, false, Vec::new()),
        };
        fx.stage("good", &good_tar(), None).await.unwrap();
        fx.store.set_current("good").unwrap();
        fx
    }

    fn spec(&self, name: &str, bytes: &[u8], signature: Option<String>) -> ArtifactSpec {
        let path = self.art.join(name);
        fs::write(&path, bytes).unwrap();
        ArtifactSpec {
            url: format!("file://{}", path.display()),
            sha256: sha_hex(bytes),
            signature,
        }
    }

    async fn stage(
        &self,
        id: &str,
        bytes: &[u8],
        signature: Option<String>,
    ) -> Result<PathBuf, ArtifactError> {
        let spec = self.spec(id, bytes, signature);
        self.stage_spec(id, &spec).await
    }

    async fn stage_spec(&self, id: &str, spec: &ArtifactSpec) -> Result<PathBuf, ArtifactError> {
        stage(&self.store, id, spec, &self.policy, &|_| {}).await
    }

    /// After a refusal: current unchanged, no debris, the id not staged, nothing outside.
    fn assert_untouched(&self, id: &str) {
        assert_eq!(self.store.current().unwrap().as_deref(), Some("good"));
        let debris: Vec<_> = fs::read_dir(self.store.releases_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.') && n != ".lock")
            .collect();
        assert!(debris.is_empty(), "debris left: {debris:?}");
        assert!(!self.store.has_release(id));
        assert!(!self.store.release_dir(id).exists());
        assert_eq!(
            fs::read_dir(&self.outside).unwrap().count(),
            0,
            "wrote outside"
        );
    }

    /// Stages a hostile archive and returns the error, having checked the aftermath.
    async fn refuse(&self, id: &str, bytes: &[u8]) -> ArtifactError {
        let err = self
            .stage(id, bytes, None)
            .await
            .expect_err("hostile archive must be refused");
        assert!(!err.is_retryable(), "{err} must not be retryable");
        self.assert_untouched(id);
        err
    }
}

impl Drop for Fx {
    /// Releases are read-only; a non-root `TempDir` drop could not remove them.
    fn drop(&mut self) {
        let _ = self.store.discard(self.store.root());
    }
}

fn sha_hex(bytes: &[u8]) -> String {
    verify::to_hex(&Sha256::digest(bytes))
}

fn tar_of(build: impl FnOnce(&mut Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn add_file(b: &mut Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut h = Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_entry_type(EntryType::Regular);
    b.append_data(&mut h, path, data).unwrap();
}

fn add_dir(b: &mut Builder<Vec<u8>>, path: &str) {
    let mut h = Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_entry_type(EntryType::Directory);
    b.append_data(&mut h, path, std::io::empty()).unwrap();
}

/// An entry with raw name and link bytes, bypassing the `tar` crate's path checks.
fn add_raw(b: &mut Builder<Vec<u8>>, name: &str, ty: EntryType, link: &str, data: &[u8]) {
    let mut h = Header::new_gnu();
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
    h.set_link_name_literal(link).unwrap();
    h.set_entry_type(ty);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn good_tar() -> Vec<u8> {
    tar_of(|b| {
        add_dir(b, "bin");
        add_file(b, "bin/app", b"#!/bin/sh\necho hi\n", 0o755);
        add_file(b, "./etc/app.conf", b"port = 8080\n", 0o600);
        add_raw(b, "lib/link", EntryType::Symlink, "../bin/app", b"");
        add_raw(b, "bin/hard", EntryType::Link, "bin/app", b"");
    })
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zst(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

fn keypair(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn sign(key: &SigningKey, bytes: &[u8]) -> String {
    signing::sign_digest(key, &Sha256::digest(bytes).into())
}

/// The deploy engine spawns `stage` on the runtime, so its future must be `Send`.
#[test]
fn stage_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let tmp = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(tmp.path(), 5).unwrap();
    let spec = ArtifactSpec {
        url: "file:///nonexistent".into(),
        sha256: sha_hex(b""),
        signature: None,
    };
    let policy = ArtifactPolicy::new(LIMIT, false, Vec::new());
    let fut = stage(&store, "v1", &spec, &policy, &|_| {});
    assert_send(&fut);
}

// ---- formats and idempotency ----

#[tokio::test]
async fn tar_targz_and_tarzst_all_stage_with_modes_and_links() {
    let fx = Fx::new().await;
    let raw = good_tar();
    for (id, bytes) in [("t", raw.clone()), ("g", gz(&raw)), ("z", zst(&raw))] {
        let dir = fx.stage(id, &bytes, None).await.unwrap();
        assert_eq!(dir, fx.store.release_dir(id));
        assert_eq!(fx.store.release_sha256(id), Some(sha_hex(&bytes)));
        let app = fs::metadata(dir.join("bin/app"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(app & 0o777, 0o555, "exec kept, write bits cleared");
        let conf = fs::metadata(dir.join("etc/app.conf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(conf & 0o777, 0o444);
        assert_eq!(
            fs::read_to_string(dir.join("lib/link")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            fs::read_to_string(dir.join("bin/hard")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        fx.assert_untouched("never-staged");
    }
}

#[tokio::test]
async fn staging_is_idempotent_and_same_id_other_digest_is_refused() {
    let fx = Fx::new().await;
    let raw = good_tar();
    let first = fx.stage("v1", &raw, None).await.unwrap();
    // Same digest again: done at once, even with the source gone.
    let mut spec = fx.spec("v1", &raw, None);
    fs::remove_file(fx.art.join("v1")).unwrap();
    assert_eq!(fx.stage_spec("v1", &spec).await.unwrap(), first);
    spec.sha256 = spec.sha256.to_ascii_uppercase();
    assert_eq!(fx.stage_spec("v1", &spec).await.unwrap(), first);

    let err = fx.stage("v1", &gz(&raw), None).await.unwrap_err();
    assert!(
        matches!(err, ArtifactError::ReleaseConflict { .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(fx.store.release_sha256("v1"), Some(sha_hex(&raw)));
}

#[tokio::test]
async fn unknown_format_and_empty_archive_are_refused() {
    let fx = Fx::new().await;
    let err = fx.refuse("zip", b"PK\x03\x04 not a tarball at all").await;
    assert!(matches!(err, ArtifactError::Format { .. }), "{err}");
    let err = fx.refuse("gzjunk", &gz(&[7u8; 2048])).await;
    assert!(matches!(err, ArtifactError::Format { .. }), "{err}");
    let err = fx.refuse("empty", &gz(&tar_of(|_| {}))).await;
    assert!(matches!(err, ArtifactError::Format { .. }), "{err}");
}

#[tokio::test]
async fn bad_specs_fail_before_fetching() {
    let fx = Fx::new().await;
    let mut spec = fx.spec("x", &good_tar(), None);
    spec.sha256 = "abc".into();
    let err = fx.stage_spec("x", &spec).await.unwrap_err();
    assert!(matches!(err, ArtifactError::InvalidSpec { .. }), "{err}");
    let mut spec = fx.spec("x", &good_tar(), None);
    spec.url = "ftp://example.com/x.tar".into();
    let err = fx.stage_spec("x", &spec).await.unwrap_err();
    assert!(matches!(err, ArtifactError::InvalidSpec { .. }), "{err}");
    let spec = fx.spec("x", &good_tar(), None);
    assert!(fx.stage_spec("../x", &spec).await.is_err());
    assert!(fx.stage_spec(".staging-x", &spec).await.is_err());
    fx.assert_untouched("x");
}

// ---- checksum and signatures ----

#[tokio::test]
async fn checksum_mismatch_is_refused() {
    let fx = Fx::new().await;
    let mut spec = fx.spec("v1", &good_tar(), None);
    spec.sha256 = sha_hex(b"something else");
    let err = fx.stage_spec("v1", &spec).await.unwrap_err();
    assert!(matches!(err, ArtifactError::Checksum { .. }), "{err}");
    assert!(!err.is_retryable());
    fx.assert_untouched("v1");
}

#[tokio::test]
async fn signatures_are_required_checked_and_accepted() {
    let mut fx = Fx::new().await;
    let trusted = keypair(1);
    fx.policy = ArtifactPolicy::new(
        LIMIT,
        true,
        vec![keypair(9).verifying_key(), trusted.verifying_key()],
    );
    let raw = good_tar();

    let err = fx.stage("missing", &raw, None).await.unwrap_err();
    assert!(matches!(err, ArtifactError::SignatureMissing), "{err}");
    fx.assert_untouched("missing");

    let err = fx
        .stage("garbled", &raw, Some("!!not base64".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ArtifactError::SignatureInvalid { .. }),
        "{err}"
    );
    fx.assert_untouched("garbled");

    // A trusted key's signature of other bytes.
    let wrong = sign(&trusted, b"another artifact");
    let err = fx
        .stage("wrongdigest", &raw, Some(wrong))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ArtifactError::SignatureInvalid { .. }),
        "{err}"
    );
    fx.assert_untouched("wrongdigest");

    // A correct signature, by a key nobody trusts.
    let untrusted = sign(&keypair(2), &raw);
    let err = fx
        .stage("untrusted", &raw, Some(untrusted))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("trusted key"), "{err}");
    assert!(!err.is_retryable());
    fx.assert_untouched("untrusted");

    let dir = fx
        .stage("signed", &raw, Some(sign(&trusted, &raw)))
        .await
        .unwrap();
    assert!(dir.join("bin/app").is_file());
}

#[tokio::test]
async fn a_signature_with_no_trusted_keys_is_refused_and_optional_ones_are_checked() {
    let mut fx = Fx::new().await;
    let raw = good_tar();
    let err = fx
        .stage("nokeys", &raw, Some(sign(&keypair(1), &raw)))
        .await
        .unwrap_err();
    assert!(matches!(err, ArtifactError::UntrustedKey), "{err}");
    fx.assert_untouched("nokeys");

    fx.policy = ArtifactPolicy::new(LIMIT, false, vec![keypair(1).verifying_key()]);
    let err = fx
        .stage("badopt", &raw, Some(sign(&keypair(2), &raw)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ArtifactError::SignatureInvalid { .. }),
        "{err}"
    );
    fx.assert_untouched("badopt");
    fx.stage("unsigned", &raw, None).await.unwrap();
}

/// Item 14: the policy is checked at use, not only at staging. A release staged before
/// `require_signature` was switched on is refused when it is about to go live; staging it again
/// with a bad signature is refused although it is staged already; a good one is kept with the
/// release, and checked again at every use (a trusted key removed since fails it).
#[tokio::test]
async fn signatures_are_checked_at_use_whenever_the_release_was_staged() {
    let mut fx = Fx::new().await;
    let raw = good_tar();
    fx.stage("v1", &raw, None).await.unwrap();
    check_staged(&fx.store, "v1", &fx.policy).unwrap();

    let trusted = keypair(1);
    fx.policy = ArtifactPolicy::new(LIMIT, true, vec![trusted.verifying_key()]);
    let err = check_staged(&fx.store, "v1", &fx.policy).unwrap_err();
    assert!(matches!(err, ArtifactError::SignatureMissing), "{err}");

    let err = fx
        .stage("v1", &raw, Some(sign(&keypair(2), &raw)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ArtifactError::SignatureInvalid { .. }),
        "an already-staged release skipped signature verification: {err}"
    );
    assert!(check_staged(&fx.store, "v1", &fx.policy).is_err());

    fx.stage("v1", &raw, Some(sign(&trusted, &raw)))
        .await
        .unwrap();
    check_staged(&fx.store, "v1", &fx.policy).unwrap();

    // Staged fresh with a signature: kept, checked at use.
    fx.stage("v2", &raw, Some(sign(&trusted, &raw)))
        .await
        .unwrap();
    check_staged(&fx.store, "v2", &fx.policy).unwrap();

    // The key is no longer trusted: the kept signature fails at the next use.
    fx.policy = ArtifactPolicy::new(LIMIT, true, vec![keypair(3).verifying_key()]);
    let err = check_staged(&fx.store, "v2", &fx.policy).unwrap_err();
    assert!(
        matches!(err, ArtifactError::SignatureInvalid { .. }),
        "{err}"
    );
}

#[test]
fn policy_from_config_reads_inline_keys_and_key_files() {
    use base64::Engine as _;
    let b64 = |k: &SigningKey| {
        base64::engine::general_purpose::STANDARD.encode(k.verifying_key().to_bytes())
    };
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("keys");
    fs::write(
        &file,
        format!("# ops\n{}\n\n{}\n", b64(&keypair(2)), b64(&keypair(3))),
    )
    .unwrap();
    let cfg = hotdeploy_common::config::ArtifactConfig {
        max_bytes: 123,
        require_signature: true,
        trusted_keys: vec![b64(&keypair(1)), file.display().to_string()],
    };
    let p = ArtifactPolicy::from_config(&cfg).unwrap();
    assert_eq!(p.trusted_keys.len(), 3);
    assert_eq!(p.max_bytes, 123);

    let mut bad = cfg.clone();
    bad.trusted_keys = vec!["/no/such/file".into()];
    assert!(matches!(
        ArtifactPolicy::from_config(&bad),
        Err(ArtifactError::BadKey { .. })
    ));
    fs::write(&file, "not-a-key\n").unwrap();
    bad.trusted_keys = vec![file.display().to_string()];
    let err = ArtifactPolicy::from_config(&bad).unwrap_err();
    assert!(err.to_string().contains(":1"), "names the line: {err}");
    bad.trusted_keys = vec![];
    assert!(
        ArtifactPolicy::from_config(&bad).is_err(),
        "required without keys"
    );
}

// ---- hostile archives ----

#[tokio::test]
async fn absolute_paths_are_refused() {
    let fx = Fx::new().await;
    let name = format!("{}/pwned", fx.outside.display());
    let bytes = tar_of(|b| add_raw(b, &name, EntryType::Regular, "", b"x"));
    let err = fx.refuse("abs", &bytes).await;
    assert!(matches!(err, ArtifactError::UnsafeEntry { .. }), "{err}");
}

#[tokio::test]
async fn dotdot_paths_are_refused() {
    let fx = Fx::new().await;
    // From releases/.staging-*/, three levels up is the temp dir that holds `outside/`.
    let bytes = tar_of(|b| {
        add_file(b, "ok", b"fine", 0o644);
        add_raw(b, "../../../outside/pwned", EntryType::Regular, "", b"x");
    });
    let err = fx.refuse("dotdot", &bytes).await;
    assert!(err.to_string().contains(".."), "{err}");
    let bytes = tar_of(|b| add_raw(b, "a/../../b", EntryType::Directory, "", b""));
    fx.refuse("dotdot2", &bytes).await;
}

#[tokio::test]
async fn escaping_symlinks_are_refused() {
    let fx = Fx::new().await;
    for (id, target) in [
        ("abs", "/etc"),
        ("up2", "../../x"),
        ("up1", ".."),
        ("mid", "sub/../../x"),
        ("empty", ""),
    ] {
        let bytes = tar_of(|b| {
            add_dir(b, "sub");
            add_raw(b, "link", EntryType::Symlink, target, b"");
        });
        let err = fx.refuse(id, &bytes).await;
        assert!(
            matches!(err, ArtifactError::UnsafeEntry { .. }),
            "{target}: {err}"
        );
    }
    // Nested links may climb as far as their depth, no further.
    let ok = tar_of(|b| add_raw(b, "a/b/link", EntryType::Symlink, "../../top", b""));
    fx.stage("nested-ok", &ok, None).await.unwrap();
    let bad = tar_of(|b| add_raw(b, "a/b/link", EntryType::Symlink, "../../../top", b""));
    fx.refuse("nested-bad", &bad).await;
}

#[tokio::test]
async fn writing_through_an_earlier_symlink_is_refused() {
    let fx = Fx::new().await;
    let bytes = tar_of(|b| {
        add_dir(b, "sub");
        add_raw(b, "link", EntryType::Symlink, "sub", b"");
        add_file(b, "link/x", b"through the link", 0o644);
    });
    let err = fx.refuse("through", &bytes).await;
    assert!(err.to_string().contains("symlink"), "{err}");
    // A later entry replacing the link itself is a plain replacement, never a follow.
    let bytes = tar_of(|b| {
        add_raw(b, "link", EntryType::Symlink, "victim", b"");
        add_file(b, "victim", b"original", 0o644);
        add_file(b, "link", b"replacement", 0o644);
    });
    let dir = fx.stage("replace", &bytes, None).await.unwrap();
    assert_eq!(fs::read_to_string(dir.join("victim")).unwrap(), "original");
    assert_eq!(fs::read_to_string(dir.join("link")).unwrap(), "replacement");
}

/// `unpack` itself, with a symlink to the outside already planted in its destination (as if an
/// earlier check had missed it): writing below the link must still be refused.
#[test]
fn unpack_never_follows_a_planted_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let (dest, outside) = (tmp.path().join("dest"), tmp.path().join("outside"));
    fs::create_dir(&dest).unwrap();
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("link")).unwrap();
    for entry in ["link/x", "link/deeper/x"] {
        let bytes = tar_of(|b| add_file(b, entry, b"x", 0o644));
        let err = unpack::unpack(&bytes[..], &dest, LIMIT).unwrap_err();
        assert!(matches!(err, ArtifactError::UnsafeEntry { .. }), "{err}");
    }
    // Nor a link in final position: O_EXCL refuses, the link is replaced, not followed.
    let bytes = tar_of(|b| add_file(b, "link", b"x", 0o644));
    unpack::unpack(&bytes[..], &dest, LIMIT).unwrap();
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[tokio::test]
async fn escaping_hardlinks_are_refused() {
    let fx = Fx::new().await;
    let victim = fx.outside.join("victim");
    for (id, target) in [
        ("abs", victim.display().to_string()),
        ("up", "../../../outside/victim".to_string()),
        ("missing", "nope".to_string()),
    ] {
        fs::write(&victim, "secret").unwrap();
        let bytes = tar_of(|b| add_raw(b, "hl", EntryType::Link, &target, b""));
        let err = fx.stage(id, &bytes, None).await.unwrap_err();
        assert!(
            matches!(err, ArtifactError::UnsafeEntry { .. }),
            "{target}: {err}"
        );
        assert_eq!(
            fs::metadata(&victim).unwrap().permissions().mode() & 0o200,
            0o200
        );
        fs::remove_file(&victim).unwrap();
        fx.assert_untouched(id);
    }
    // A hard link to a symlink would re-root the symlink.
    let bytes = tar_of(|b| {
        add_raw(b, "a/s", EntryType::Symlink, "../x", b"");
        add_raw(b, "hl", EntryType::Link, "a/s", b"");
    });
    fx.refuse("tosymlink", &bytes).await;
}

#[tokio::test]
async fn device_and_fifo_entries_are_refused() {
    let fx = Fx::new().await;
    for (id, ty) in [
        ("chr", EntryType::Char),
        ("blk", EntryType::Block),
        ("fifo", EntryType::Fifo),
    ] {
        let bytes = tar_of(|b| {
            let mut h = Header::new_gnu();
            h.set_path("dev/null").unwrap();
            h.set_entry_type(ty);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            h.set_mode(0o666);
            h.set_size(0);
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        });
        let err = fx.refuse(id, &bytes).await;
        assert!(matches!(err, ArtifactError::UnsafeEntry { .. }), "{err}");
    }
}

#[tokio::test]
async fn an_entry_over_the_limit_is_refused_before_writing() {
    let fx = Fx::new().await;
    // 1 MiB of zeros gzips to about 1 KiB: the download is small, the entry is not.
    let bytes = gz(&tar_of(|b| add_file(b, "big", &vec![0u8; 1 << 20], 0o644)));
    assert!((bytes.len() as u64) < LIMIT);
    let err = fx.refuse("big", &bytes).await;
    assert!(matches!(err, ArtifactError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("entry \"big\""), "{err}");
}

#[tokio::test]
async fn an_archive_expanding_past_the_limit_is_refused() {
    let fx = Fx::new().await;
    // Each entry fits, together they do not (gzip and zstd bombs alike).
    let raw = tar_of(|b| {
        for i in 0..8 {
            add_file(b, &format!("f{i}"), &vec![0u8; (LIMIT / 4) as usize], 0o644);
        }
    });
    for (id, bytes) in [("bomb-gz", gz(&raw)), ("bomb-zst", zst(&raw))] {
        let err = fx.refuse(id, &bytes).await;
        assert!(matches!(err, ArtifactError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("unpacked archive"), "{err}");
    }
    // Many empty entries are charged too.
    let raw = tar_of(|b| {
        for i in 0..200 {
            add_file(b, &format!("e{i}"), b"", 0o644);
        }
    });
    let err = fx.refuse("inodes", &gz(&raw)).await;
    assert!(matches!(err, ArtifactError::TooLarge { .. }), "{err}");
}

#[tokio::test]
async fn a_download_over_the_limit_is_refused() {
    let fx = Fx::new().await;
    let raw = tar_of(|b| add_file(b, "big", &vec![7u8; (LIMIT + 1) as usize], 0o644));
    let err = fx.refuse("fat", &raw).await;
    assert!(matches!(err, ArtifactError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("artifact file://"), "{err}");
}

// ---- http ----

/// Serves `response` (status line and headers prepended) to one connection, then stops.
async fn serve_once(status: &str, body: Vec<u8>, content_length: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = status.to_string();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            req.extend_from_slice(&buf[..n]);
        }
        let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        if content_length {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        sock.write_all(head.as_bytes()).await.unwrap();
        let _ = sock.write_all(&body).await;
        let _ = sock.shutdown().await;
    });
    format!("http://{addr}/artifact.tar.gz")
}

#[tokio::test]
async fn stages_over_http() {
    let fx = Fx::new().await;
    let bytes = gz(&good_tar());
    let url = serve_once("200 OK", bytes.clone(), true).await;
    let spec = ArtifactSpec {
        url,
        sha256: sha_hex(&bytes),
        signature: None,
    };
    let lines = std::sync::Mutex::new(Vec::new());
    let dir = stage(&fx.store, "web", &spec, &fx.policy, &|l| {
        lines.lock().unwrap().push(l)
    })
    .await
    .unwrap();
    assert!(dir.join("bin/app").is_file());
    assert!(lines.lock().unwrap().iter().any(|l| l.contains("fetched")));
}

#[tokio::test]
async fn http_errors_are_retryable_and_size_is_enforced_without_content_length() {
    let fx = Fx::new().await;
    let url = serve_once("404 Not Found", b"nope".to_vec(), true).await;
    let spec = ArtifactSpec {
        url,
        sha256: sha_hex(b""),
        signature: None,
    };
    let err = fx.stage_spec("gone", &spec).await.unwrap_err();
    assert!(matches!(err, ArtifactError::Fetch { .. }), "{err}");
    assert!(err.is_retryable());
    fx.assert_untouched("gone");

    let body = vec![1u8; (LIMIT * 2) as usize];
    let url = serve_once("200 OK", body.clone(), false).await;
    let spec = ArtifactSpec {
        url,
        sha256: sha_hex(&body),
        signature: None,
    };
    let err = fx.stage_spec("huge", &spec).await.unwrap_err();
    assert!(matches!(err, ArtifactError::TooLarge { .. }), "{err}");
    fx.assert_untouched("huge");

    // Nothing listens: a connection error, retryable.
    let spec = ArtifactSpec {
        url: "http://127.0.0.1:9/x.tar".into(),
        sha256: sha_hex(b""),
        signature: None,
    };
    let err = fx.stage_spec("down", &spec).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

// ---- fuzzing regressions ----

/// Every input under `fuzz/regressions/unpack/` (kept from fuzzing and its follow-ups), through
/// `unpack` with the `unpack` fuzz target's 1 MiB limit: no panic, nothing written next to the
/// destination, and the refusal the file's name announces before `--` (`too-large`, `unsafe`,
/// `format`, or `ok` for an archive that must unpack).
#[test]
fn fuzz_regressions_unpack() {
    const FUZZ_LIMIT: u64 = 1 << 20;
    for file in crate::fuzz_regressions::inputs("unpack") {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let expected = name.split("--").next().unwrap();
        let bytes = fs::read(&file).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let result = unpack::unpack(&bytes[..], &dest, FUZZ_LIMIT);
        let ok = matches!(
            (expected, &result),
            ("ok", Ok(_))
                | ("too-large", Err(ArtifactError::TooLarge { .. }))
                | ("unsafe", Err(ArtifactError::UnsafeEntry { .. }))
                | ("format", Err(ArtifactError::Format { .. }))
        );
        assert!(ok, "{name}: expected {expected}, got {result:?}");
        let next_to_dest: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(next_to_dest, ["dest"], "{name} wrote outside dest");
    }
}

/// The metadata an entry brings (long names, pax headers) is capped per entry, and charged.
#[test]
fn entry_metadata_is_capped_and_charged() {
    let tmp = tempfile::tempdir().unwrap();
    let long = "d/".repeat((unpack::MAX_ENTRY_METADATA / 2) as usize) + "f";
    let bytes = zst(&tar_of(|b| add_file(b, &long, b"x", 0o644)));
    let dest = tmp.path().join("a");
    fs::create_dir(&dest).unwrap();
    let err = unpack::unpack(&bytes[..], &dest, LIMIT).unwrap_err();
    assert!(matches!(err, ArtifactError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("metadata"), "{err}");
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);

    // Long names that fit the cap still count against the limit.
    let raw = tar_of(|b| {
        for i in 0..40 {
            let deep = format!("{}/", "n".repeat(200)).repeat(10);
            add_file(b, &format!("{i}/{deep}f"), b"", 0o644);
        }
    });
    let dest = tmp.path().join("b");
    fs::create_dir(&dest).unwrap();
    let err = unpack::unpack(&raw[..], &dest, LIMIT).unwrap_err();
    assert!(matches!(err, ArtifactError::TooLarge { .. }), "{err}");
}
