//! The fuzzers' seeds (fuzz/seeds) and corpora (fuzz/corpus, kept small by `cargo fuzz
//! cmin`) replayed through the same readers as the fuzz targets: every input gives a
//! value or a typed error, never a panic, and the seed inputs (valid files, named
//! `seed*`) read back whole.

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for dir in [fuzz.join("seeds").join(target), fuzz.join("corpus").join(target)] {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            files.push((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            ));
        }
    }
    files.sort();
    assert!(
        files.iter().any(|(name, _)| name.starts_with("seed")),
        "{target}: no seed input"
    );
    files
}

#[test]
fn the_params_corpus_loads_without_a_panic() {
    for (name, bytes) in corpus("params") {
        let loaded = dl_models::registry::load_from_bytes(&bytes, Path::new(&name));
        if name.starts_with("seed") {
            let net = loaded.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(net.param_count() > 0, "{name}");
        }
    }
}

#[test]
fn the_book_pickle_corpus_reads_without_a_panic() {
    for (name, bytes) in corpus("book_pickle") {
        let parsed = dl_models::book::parse_pickled_arrays(&bytes, Path::new(&name));
        if name.starts_with("seed") {
            let arrays = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
            let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["W1", "b1"], "{name}");
        }
    }
}
