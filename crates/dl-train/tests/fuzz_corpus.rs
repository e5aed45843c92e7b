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
fn the_checkpoint_corpus_reads_without_a_panic() {
    for (name, bytes) in corpus("checkpoint") {
        let read = dl_train::checkpoint::from_bytes(bytes, Path::new(&name));
        if name.starts_with("seed") {
            let ckpt = read.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(ckpt.trainer.epoch > 0, "{name}");
        }
    }
}

#[test]
fn the_ensemble_manifest_corpus_reads_without_a_panic() {
    for (name, bytes) in corpus("ensemble_manifest") {
        let parsed = dl_train::Ensemble::parse_manifest(&bytes, Path::new(&name));
        if name.starts_with("seed") {
            let m = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!m.members.is_empty(), "{name}");
        }
    }
}
