//! The fuzz targets' seed corpora (`fuzz/seeds/<target>/`) are the golden inputs of the parsers'
//! unit tests, so the fuzzer starts from real messages rather than from nothing. Each parser's
//! tests call [`check`] with its goldens, and the files must hold exactly those: a golden that
//! changes, appears or goes fails the test until the seeds are written again with
//! `TREMPY_BLESS_SEEDS=1 cargo test -p trempy-protocol`.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Compares (or, with `TREMPY_BLESS_SEEDS=1`, writes) the seed corpus of `target`.
pub(crate) fn check(target: &str, seeds: &[(&str, Vec<u8>)]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(target);
    let wanted: BTreeMap<String, &[u8]> = seeds.iter().map(|(name, bytes)| ((*name).to_owned(), &bytes[..])).collect();
    assert_eq!(wanted.len(), seeds.len(), "two seeds of {target} share a name");
    if std::env::var_os("TREMPY_BLESS_SEEDS").is_some_and(|v| v == "1") {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for (name, bytes) in &wanted {
            std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        return;
    }
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e} (bless the seeds)", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        found.insert(name, std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    }
    let found: BTreeMap<String, &[u8]> = found.iter().map(|(k, v)| (k.clone(), &v[..])).collect();
    assert!(
        found == wanted,
        "fuzz/seeds/{target} differs from the goldens (files {:?}, goldens {:?}); run TREMPY_BLESS_SEEDS=1 cargo test -p trempy-protocol",
        found.keys().collect::<Vec<_>>(),
        wanted.keys().collect::<Vec<_>>()
    );
}
