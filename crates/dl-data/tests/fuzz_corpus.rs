//! The fuzzers' seeds (fuzz/seeds) and corpora (fuzz/corpus, kept small by `cargo fuzz
//! cmin`) replayed through the same readers as the fuzz targets: every input gives a
//! value or a typed error, never a panic, and the seed inputs (valid files, named
//! `seed*`) read back whole.

use std::path::PathBuf;

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
fn the_idx_corpus_reads_without_a_panic() {
    for (name, bytes) in corpus("idx") {
        let parsed = dl_data::decompress_maybe_gzip(&bytes, &name).and_then(|b| dl_data::parse_idx(&b, &name));
        if name.starts_with("seed") {
            let idx = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(idx.data.len(), idx.dims.iter().product::<usize>(), "{name}");
        }
    }
}

#[test]
fn the_optdigits_csv_corpus_reads_without_a_panic() {
    for (name, bytes) in corpus("optdigits_csv") {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        let parsed = dl_data::optdigits::parse_csv(text);
        if let Ok((counts, _)) = &parsed {
            for grid in counts.chunks_exact(64).take(4) {
                let _ = dl_data::optdigits::to_mnist(grid);
            }
        }
        if name.starts_with("seed") {
            let (counts, labels) = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(counts.len(), 64 * labels.len(), "{name}");
            assert!(!labels.is_empty());
        }
    }
}
