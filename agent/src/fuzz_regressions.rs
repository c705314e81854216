//! The inputs the fuzz targets once failed on, kept in `fuzz/regressions/<target>/` and replayed
//! by ordinary tests (see `artifact::tests` and `rotation::tests`). Test-only.

use std::path::{Path, PathBuf};

/// Every file in `fuzz/regressions/<target>/`, sorted; panics if there are none, so a moved or
/// emptied directory cannot make a regression test pass vacuously.
pub(crate) fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no regression inputs in {}",
        dir.display()
    );
    files
}
