//! `cargo xtask convert-optdigits`: the UCI optical digits from scikit-learn's
//! `digits.csv.gz` to the two IDX files and checksum manifest of `datasets/optdigits`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use dl_data::optdigits::{parse_csv, OPTDIGITS_FILES, SIDE};

use crate::CliError;

#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// scikit-learn's `sklearn/datasets/data/digits.csv.gz` (raw or gzip), from the
    /// scikit-learn wheel (`pip download scikit-learn --no-deps`, then unzip).
    #[arg(long)]
    pub csv: PathBuf,
    /// Folder to write the IDX files (gzip) and SHA256SUMS.uncompressed into.
    #[arg(long, default_value_os_t = crate::root().join("datasets/optdigits"))]
    pub out: PathBuf,
    /// Replace files of the same names in --out.
    #[arg(long)]
    pub overwrite: bool,
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Other(format!("{}: {e}", path.display()))
}

pub fn convert(a: ConvertArgs) -> Result<(), CliError> {
    let bytes = dl_data::read_maybe_gzip(&a.csv)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| io_error(&a.csv, format!("not UTF-8 text: {e}")))?;
    let (counts, labels) = parse_csv(text).map_err(|e| io_error(&a.csv, e))?;
    if labels.is_empty() {
        return Err(io_error(&a.csv, "no digit in the file"));
    }
    let n = labels.len();
    let files = [
        (OPTDIGITS_FILES[0], dl_data::encode_idx(&[n, SIDE, SIDE], &counts)),
        (OPTDIGITS_FILES[1], dl_data::encode_idx(&[n], &labels)),
    ];
    let targets: Vec<PathBuf> = files.iter().map(|(name, _)| a.out.join(format!("{name}.gz"))).collect();
    let manifest = a.out.join(dl_data::MANIFEST);
    for path in targets.iter().chain([&manifest]) {
        crate::refuse_to_replace(path, a.overwrite)?;
    }
    std::fs::create_dir_all(&a.out).map_err(|e| io_error(&a.out, e))?;
    let mut sums = String::new();
    for ((name, idx), path) in files.iter().zip(&targets) {
        let idx = idx
            .as_ref()
            .ok_or_else(|| CliError::Other(format!("{n} digits do not fit an IDX file")))?;
        let mut gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::best());
        gz.write_all(idx).map_err(|e| io_error(path, e))?;
        let packed = gz.finish().map_err(|e| io_error(path, e))?;
        dl_tensor::fs::atomic_write(path, &packed).map_err(|e| io_error(path, e))?;
        sums.push_str(&format!("{}  {name}\n", dl_data::sha256_hex(idx)));
    }
    dl_tensor::fs::atomic_write(&manifest, sums.as_bytes()).map_err(|e| io_error(&manifest, e))?;
    let per_class = class_counts(&labels);
    println!(
        "{n} digits (per class {per_class:?}) from {} to {}",
        a.csv.display(),
        a.out.display()
    );
    Ok(())
}

/// How many of `labels` are each digit.
fn class_counts(labels: &[u8]) -> [usize; 10] {
    let mut counts = [0; 10];
    for &l in labels {
        if let Some(n) = counts.get_mut(usize::from(l)) {
            *n += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    #[test]
    fn class_counts_count_each_digit() {
        assert_eq!(super::class_counts(&[3, 0, 3, 9, 3]), [1, 0, 0, 3, 0, 0, 0, 0, 0, 1]);
        assert_eq!(super::class_counts(&[]), [0; 10]);
    }
}
