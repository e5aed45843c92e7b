use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use sha2::{Digest, Sha256};

use crate::{parse_idx, read_maybe_gzip, DataError, IdxArray, ImageSet};

/// The four MNIST file names (without `.gz`): train images, train labels, test images,
/// test labels. Fashion-MNIST and KMNIST use the same names and format.
pub const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The manifest of SHA-256 hashes of the decompressed files, looked for beside them.
pub const MANIFEST: &str = "SHA256SUMS.uncompressed";

/// MNIST (or a data set in its format) in memory as unsigned bytes.
#[derive(Debug, Clone)]
pub struct Mnist {
    /// 60,000 training images and labels.
    pub train: ImageSet,
    /// 10,000 test images and labels.
    pub test: ImageSet,
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn read_manifest(path: &Path) -> Result<HashMap<String, String>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(hash), Some(name), None) if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                map.insert(name.trim_start_matches('*').to_string(), hash.to_ascii_lowercase());
            }
            _ => {
                return Err(DataError::Manifest {
                    path: path.to_path_buf(),
                    line: i + 1,
                })
            }
        }
    }
    Ok(map)
}

/// `dir/name` or `dir/name.gz`, whichever exists (raw first); `hint` says how to get
/// it when neither does.
pub(crate) fn find(dir: &Path, name: &str, hint: &str) -> Result<PathBuf, DataError> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::Missing {
        path: raw,
        hint: hint.into(),
    })
}

/// The IDX files `names` of `dir` (each raw or `.gz`), each checked against the
/// `SHA256SUMS.uncompressed` manifest when `dir` has one, parsed, with their paths.
pub(crate) fn read_checked_idx(dir: &Path, names: &[&str], hint: &str) -> Result<Vec<(IdxArray, PathBuf)>, DataError> {
    let manifest_path = dir.join(MANIFEST);
    let manifest = if manifest_path.is_file() {
        Some(read_manifest(&manifest_path)?)
    } else {
        None
    };
    let mut arrays = Vec::with_capacity(names.len());
    for &name in names {
        let path = find(dir, name, hint)?;
        let bytes = read_maybe_gzip(&path)?;
        if let Some(expected) = manifest.as_ref().and_then(|m| m.get(name)) {
            let actual = sha256_hex(&bytes);
            if &actual != expected {
                return Err(DataError::Checksum {
                    path,
                    manifest: manifest_path,
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        arrays.push((parse_idx(&bytes, &path)?, path));
    }
    Ok(arrays)
}

impl Mnist {
    /// Loads the four files from `dir` (each raw or `.gz`), checking each against the
    /// `SHA256SUMS.uncompressed` manifest when `dir` has one, then validating the IDX
    /// structure, the 28x28 (any `H x W`) image shape, equal counts and labels 0-9.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let arrays = read_checked_idx(
            dir.as_ref(),
            &MNIST_FILES,
            "Run `cargo xtask download`, or put the four MNIST files (raw or .gz) in that folder.",
        )?;
        let mut it = arrays.into_iter();
        let (ti, tl, vi, vl) = (
            it.next().expect("4"),
            it.next().expect("4"),
            it.next().expect("4"),
            it.next().expect("4"),
        );
        Ok(Self {
            train: ImageSet::from_idx(ti, tl, 10)?,
            test: ImageSet::from_idx(vi, vl, 10)?,
        })
    }
}

/// Labels as the book's `load_mnist` returns them.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelArray {
    /// Class indices `(N,)`.
    Indices(Vec<usize>),
    /// One-hot rows `(N, 10)`.
    OneHot(Array2<f32>),
}

/// The book's `load_mnist` options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Scale pixels to `[0, 1]` (otherwise `0..=255` as floats).
    pub normalize: bool,
    /// `(N, 784)` rather than `(N, 1, 28, 28)`.
    pub flatten: bool,
    /// One-hot labels rather than class indices.
    pub one_hot_label: bool,
}

impl Default for LoadOptions {
    /// The book's defaults: `normalize=True, flatten=True, one_hot_label=False`.
    fn default() -> Self {
        Self {
            normalize: true,
            flatten: true,
            one_hot_label: false,
        }
    }
}

/// The book's `load_mnist`: `((x_train, t_train), (x_test, t_test))` as `f32` arrays.
///
/// Prefer [`Mnist::load`] plus per-batch conversion for training: this materialises the
/// whole set as `f32` (about 220 MB).
#[allow(clippy::type_complexity)]
pub fn load_mnist(
    dir: impl AsRef<Path>,
    options: LoadOptions,
) -> Result<
    (
        (dl_tensor_free::Tensor, LabelArray),
        (dl_tensor_free::Tensor, LabelArray),
    ),
    DataError,
> {
    let m = Mnist::load(dir)?;
    let conv = |s: &ImageSet| {
        let x = s.to_f32(options.normalize, options.flatten);
        let t = if options.one_hot_label {
            LabelArray::OneHot(s.one_hot())
        } else {
            LabelArray::Indices(s.labels.iter().map(|&l| l as usize).collect())
        };
        (x, t)
    };
    Ok((conv(&m.train), conv(&m.test)))
}

/// dl-data depends on no other dlfs crate; its tensors are plain `ndarray` arrays.
mod dl_tensor_free {
    /// A dynamically shaped `f32` array, the same type as `dl_tensor::Tensor`.
    pub type Tensor = ndarray::ArrayD<f32>;
}
