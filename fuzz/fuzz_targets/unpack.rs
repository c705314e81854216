//! `unpack`: arbitrary bytes as an artifact, unpacked by the agent's unpacker into a fresh
//! directory with a small size limit.
//!
//! Beyond "no panic", after every input (accepted or refused) it checks that nothing was
//! written outside the destination: the destination's parent holds only the destination and an
//! empty sentinel directory; every symlink inside resolves inside (lexically, and physically
//! when it resolves at all); every regular file's hard links all live inside; no file is
//! setuid/setgid or group/other-writable; and the file data written stays within the limit.
//!
//! Random mutations almost never keep a tar header's checksum right, and a header with a wrong
//! one ends the archive before any of our rules run. So the mutator, after libFuzzer's own
//! mutation, rewrites the checksum of every ustar header of an uncompressed input (the
//! compressed formats decode to the same entry code). Inputs on disk are therefore real
//! artifacts, byte for byte what `unpack` was given.

#![no_main]

use hotdeploy_agent::artifact::unpack::unpack;
use libfuzzer_sys::{fuzz_mutator, fuzz_target};
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

/// Small, so that expansion is cheap to reach and runs stay fast.
const LIMIT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().expect("temp dir");
    let dest = root.path().join("dest");
    let sentinel = root.path().join("sentinel");
    fs::create_dir(&dest).expect("dest");
    fs::create_dir(&sentinel).expect("sentinel");

    let result = unpack(data, &dest, LIMIT);
    if let Err(e) = &result {
        let _ = e.to_string();
    }

    let mut outside: Vec<_> = fs::read_dir(root.path())
        .expect("read root")
        .map(|e| e.expect("entry").file_name())
        .collect();
    outside.sort();
    assert_eq!(
        outside,
        ["dest", "sentinel"],
        "something was written next to dest"
    );
    assert_eq!(
        fs::read_dir(&sentinel).expect("read sentinel").count(),
        0,
        "something was written into the sentinel"
    );

    let canon = fs::canonicalize(&dest).expect("canonical dest");
    let mut tree = Tree::default();
    tree.walk(&dest, Path::new(""), &canon);
    for (ino, (nlink, seen)) in &tree.inodes {
        assert_eq!(nlink, seen, "inode {ino} has links outside the destination");
    }
    assert!(
        tree.bytes <= LIMIT,
        "{} bytes written past the limit",
        tree.bytes
    );
    if let Ok(stats) = result {
        assert!(stats.bytes <= LIMIT);
        assert!(
            tree.bytes <= stats.bytes,
            "more on disk than the unpacker wrote"
        );
    }
});

fuzz_mutator!(
    |data: &mut [u8], size: usize, max_size: usize, _seed: u32| {
        let size = libfuzzer_sys::fuzzer_mutate(data, size, max_size);
        fix_tar_checksums(&mut data[..size]);
        size
    }
);

/// Rewrites the checksum of each ustar header of a plain tar, walking header to header by the
/// size fields; stops at the first block that is not a ustar header.
fn fix_tar_checksums(data: &mut [u8]) {
    let mut at = 0;
    while at + 512 <= data.len() {
        let block = &mut data[at..at + 512];
        if &block[257..262] != b"ustar" {
            return;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
        let text = format!("{sum:06o}\0 ");
        block[148..156].copy_from_slice(text.as_bytes());
        let size = std::str::from_utf8(&block[124..136])
            .ok()
            .and_then(|s| {
                u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok()
            })
            .unwrap_or(0);
        at += 512 + usize::try_from(size.div_ceil(512) * 512).unwrap_or(usize::MAX / 2);
    }
}

#[derive(Default)]
struct Tree {
    /// inode → (its link count, links found inside the destination).
    inodes: HashMap<u64, (u64, u64)>,
    bytes: u64,
}

impl Tree {
    fn walk(&mut self, dir: &Path, rel: &Path, canon_root: &Path) {
        for entry in fs::read_dir(dir).expect("read dir") {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            let rel = rel.join(entry.file_name());
            let meta = fs::symlink_metadata(&path).expect("lstat");
            let ft = meta.file_type();
            if ft.is_dir() {
                self.walk(&path, &rel, canon_root);
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).expect("readlink");
                assert!(
                    stays_inside(&rel, &target),
                    "symlink {rel:?} -> {target:?} points outside"
                );
                if let Ok(resolved) = fs::canonicalize(&path) {
                    assert!(
                        resolved.starts_with(canon_root),
                        "symlink {rel:?} resolves to {resolved:?}"
                    );
                }
            } else {
                assert!(ft.is_file(), "{rel:?} is not a file, directory or symlink");
                assert_eq!(
                    meta.mode() & 0o7022,
                    0,
                    "{rel:?} has mode {:o}",
                    meta.mode()
                );
                let e = self.inodes.entry(meta.ino()).or_insert((meta.nlink(), 0));
                e.1 += 1;
                if e.1 == 1 {
                    self.bytes += meta.len();
                }
            }
        }
    }
}

/// Whether `target`, read relative to the directory of the link at `rel`, stays inside the root
/// when `..` is taken lexically.
fn stays_inside(rel: &Path, target: &Path) -> bool {
    let mut depth = rel.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return false,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::Normal(_) => depth += 1,
        }
    }
    true
}
