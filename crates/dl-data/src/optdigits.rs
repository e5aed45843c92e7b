//! The UCI optical recognition of handwritten digits data (Alpaydin and Kaynak, 1998),
//! as scikit-learn bundles it (`load_digits`): 1,797 digits written by 13 people, each
//! an 8x8 grid of counts 0..=16.
//!
//! Each digit was a 32x32 bitmap, cut into 4x4 blocks, and each block's count of ink
//! pixels kept. [`to_mnist`] turns the counts back into a 28x28 MNIST-style digit: the
//! counts (divided by 16: the ink fraction of each block) are interpolated bilinearly
//! to 32x32, then scaled and centred as MNIST was ([`crate::preprocess::mnist_like`]),
//! so a network trained on MNIST sees digits of the same size and place.
//!
//! The data is stored as two IDX files of the 8x8 counts ([`OPTDIGITS_FILES`]), made
//! from scikit-learn's `digits.csv.gz` by [`parse_csv`] and checked against a
//! `SHA256SUMS.uncompressed` manifest when one is beside them.
//!
//! ```
//! use dl_data::optdigits::{to_mnist, SIDE};
//!
//! // a vertical bar two blocks wide, full ink
//! let mut counts = [0u8; SIDE * SIDE];
//! for y in 1..7 {
//!     counts[y * SIDE + 3] = 16;
//!     counts[y * SIDE + 4] = 16;
//! }
//! let digit = to_mnist(&counts).unwrap();
//! assert_eq!(digit.len(), 28 * 28);
//! // MNIST's box: the bar is scaled to 20 rows
//! let rows = (0..28).filter(|r| digit[r * 28..(r + 1) * 28].iter().any(|&v| v > 0)).count();
//! assert_eq!(rows, 20);
//! ```

use std::path::Path;

use crate::mnist::read_checked_idx;
use crate::preprocess::{self, mnist_like};
use crate::{DataError, ImageSet};

/// The two file names (without `.gz`): the `(N, 8, 8)` counts and the `(N,)` labels.
pub const OPTDIGITS_FILES: [&str; 2] = ["optdigits-images-idx3-ubyte", "optdigits-labels-idx1-ubyte"];
/// Side of the stored grid.
pub const SIDE: usize = 8;
/// Side of a block of the original bitmap, in pixels.
pub const BLOCK: usize = 4;
/// The largest count: a block full of ink.
pub const MAX_COUNT: u8 = 16;
/// Number of classes (the digits 0-9).
pub const CLASSES: usize = 10;

fn csv_error(line: usize, reason: impl Into<String>) -> DataError {
    DataError::Csv {
        line,
        reason: reason.into(),
    }
}

/// The counts (`N * 64`, row-major) and labels (`N`) of scikit-learn's `digits.csv`:
/// one digit per line, 64 counts in `0..=16` then the label in `0..=9`, separated by
/// commas. Blank lines are skipped; anything else is a [`DataError::Csv`] naming the
/// line.
pub fn parse_csv(text: &str) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    let (mut counts, mut labels) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != SIDE * SIDE + 1 {
            return Err(csv_error(
                i + 1,
                format!("{} fields, expected {}", fields.len(), SIDE * SIDE + 1),
            ));
        }
        for (j, f) in fields.iter().enumerate() {
            let (what, max) = if j < SIDE * SIDE {
                ("count", MAX_COUNT)
            } else {
                ("label", (CLASSES - 1) as u8)
            };
            let v: u8 = f.trim().parse().ok().filter(|&v| v <= max).ok_or_else(|| {
                csv_error(
                    i + 1,
                    format!("field {}: {what} {f:?} is not a whole number 0..={max}", j + 1),
                )
            })?;
            if j < SIDE * SIDE {
                counts.push(v);
            } else {
                labels.push(v);
            }
        }
    }
    Ok((counts, labels))
}

/// The 32x32 ink image (values in `[0, 1]`, row-major) of one 8x8 grid of counts
/// `0..=16`: each count divided by 16 is the ink of its block's centre, and every pixel
/// is interpolated bilinearly between the four nearest block centres (the nearest
/// ones, past the outermost centres).
///
/// Errors: not 64 counts, or a count above 16.
pub fn to_ink(counts: &[u8]) -> Result<Vec<f32>, DataError> {
    if counts.len() != SIDE * SIDE {
        return Err(DataError::BadImage {
            reason: format!("{} counts, an optical digit has {}", counts.len(), SIDE * SIDE),
        });
    }
    if let Some(c) = counts.iter().find(|&&c| c > MAX_COUNT) {
        return Err(DataError::BadImage {
            reason: format!("count {c} is above {MAX_COUNT}"),
        });
    }
    let full = SIDE * BLOCK;
    // block i's centre is at (i + 0.5) * BLOCK; pixel p's centre, p + 0.5, lies at
    // t = (p + 0.5) / BLOCK - 0.5 in block units, between blocks floor(t) and
    // floor(t) + 1
    let coord = |p: usize| -> (usize, usize, f32) {
        let t = ((p as f32 + 0.5) / BLOCK as f32 - 0.5).clamp(0.0, (SIDE - 1) as f32);
        let i = (t.floor() as usize).min(SIDE - 2);
        (i, i + 1, t - i as f32)
    };
    let ink_of = |y: usize, x: usize| f32::from(counts[y * SIDE + x]) / f32::from(MAX_COUNT);
    let mut ink = vec![0.0f32; full * full];
    for py in 0..full {
        let (y0, y1, fy) = coord(py);
        for px in 0..full {
            let (x0, x1, fx) = coord(px);
            let top = ink_of(y0, x0) * (1.0 - fx) + ink_of(y0, x1) * fx;
            let bottom = ink_of(y1, x0) * (1.0 - fx) + ink_of(y1, x1) * fx;
            ink[py * full + px] = (top * (1.0 - fy) + bottom * fy).clamp(0.0, 1.0);
        }
    }
    Ok(ink)
}

/// The 28x28 MNIST-style digit (values `0..=255`, ink light on black) of one 8x8 grid
/// of counts `0..=16`: [`to_ink`], then [`mnist_like`], then rounded to bytes.
///
/// Errors: not 64 counts, a count above 16, or no ink at all.
pub fn to_mnist(counts: &[u8]) -> Result<Vec<u8>, DataError> {
    let full = SIDE * BLOCK;
    let digit = mnist_like(full, full, &to_ink(counts)?)?;
    Ok(digit.iter().map(|&v| (v * 255.0).round() as u8).collect())
}

/// The optical digits of `dir` ([`OPTDIGITS_FILES`], each raw or `.gz`, checked
/// against the manifest when there is one) as 28x28 MNIST-style images, 10 classes.
pub fn load_optdigits(dir: impl AsRef<Path>) -> Result<ImageSet, DataError> {
    let arrays = read_checked_idx(
        dir.as_ref(),
        &OPTDIGITS_FILES,
        "The repository ships them in datasets/optdigits; `cargo xtask convert-optdigits` makes them from scikit-learn's digits.csv.gz.",
    )?;
    let mut it = arrays.into_iter();
    let ((grids, gpath), labels) = (it.next().expect("2"), it.next().expect("2"));
    if grids.dims.len() != 3 || grids.dims[1..] != [SIDE, SIDE] {
        return Err(DataError::Dimensions {
            path: gpath,
            dims: grids.dims,
            expected: format!("(N, {SIDE}, {SIDE}) grids of counts"),
        });
    }
    if let Some((index, &c)) = grids.data.iter().enumerate().find(|(_, &c)| c > MAX_COUNT) {
        return Err(DataError::BadImage {
            reason: format!("{}: count {c} at byte {index} is above {MAX_COUNT}", gpath.display()),
        });
    }
    let mut images = Vec::with_capacity(grids.dims[0] * preprocess::SIDE * preprocess::SIDE);
    for (i, grid) in grids.data.chunks_exact(SIDE * SIDE).enumerate() {
        let digit = to_mnist(grid).map_err(|e| DataError::BadImage {
            reason: format!("{}: digit {i}: {e}", gpath.display()),
        })?;
        images.extend_from_slice(&digit);
    }
    let upsampled = crate::IdxArray {
        dims: vec![grids.dims[0], preprocess::SIDE, preprocess::SIDE],
        data: images,
    };
    ImageSet::from_idx((upsampled, gpath), labels, CLASSES)
}
