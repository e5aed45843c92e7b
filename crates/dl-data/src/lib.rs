//! # dl-data
//!
//! Data for dlfs, with no dependency on the other dlfs crates:
//!
//! * [`read_idx`] / [`parse_idx`]: the IDX format MNIST is stored in, raw or gzip
//!   (detected by content), validated down to the last byte.
//! * [`Mnist`]: the four MNIST files kept as `u8` in memory (55 MB rather than 220 MB
//!   of `f32`), checked against a `SHA256SUMS.uncompressed` manifest when one is beside
//!   them; [`load_mnist`] gives the book's `load_mnist(normalize, flatten,
//!   one_hot_label)` arrays.
//! * [`ImageSet`] and [`BatchOrder`]: shuffled mini-batches from a seeded generator,
//!   converted to `f32` one batch at a time.
//! * [`augment`]: shift, rotate, scale, crop, flip and elastic distortion, and a seeded
//!   [`Pipeline`] that applies them to each mini-batch.
//! * [`optdigits`]: a second, different set of handwritten digits (UCI's optical
//!   digits, 8x8 grids of counts), made into MNIST-style 28x28 images on load, for
//!   transfer learning.
//! * [`preprocess`]: a digit from any picture (a drawing, a photo), scaled and centred
//!   the way MNIST's digits were.
//!
//! Every failure is a typed [`DataError`] that names the file and what is wrong.
//!
//! ```
//! use dl_data::{parse_idx, BatchOrder};
//!
//! // a 1-D IDX file of three unsigned bytes
//! let bytes = [0u8, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9];
//! let idx = parse_idx(&bytes, "tiny").unwrap();
//! assert_eq!((idx.dims.as_slice(), idx.data.as_slice()), (&[3usize][..], &[7u8, 8, 9][..]));
//!
//! // every index exactly once per epoch, in an order fixed by the seed
//! let order = BatchOrder::new(10, 4, 42);
//! let batches: Vec<Vec<usize>> = order.epoch(0).collect();
//! assert_eq!(batches.len(), 3);
//! let mut all: Vec<usize> = batches.concat();
//! all.sort();
//! assert_eq!(all, (0..10).collect::<Vec<_>>());
//! ```

pub mod augment;
mod batch;
mod error;
mod idx;
mod mnist;
pub mod optdigits;
pub mod preprocess;

pub use augment::{Augment, Pipeline, View};
pub use batch::{BatchOrder, ImageSet};
pub use error::DataError;
pub use idx::{
    decompress_at_most, decompress_maybe_gzip, encode_idx, parse_idx, read_idx, read_maybe_gzip, IdxArray,
    MAX_DECOMPRESSED,
};
pub use mnist::{load_mnist, sha256_hex, LabelArray, LoadOptions, Mnist, MANIFEST, MNIST_FILES};
pub use optdigits::load_optdigits;
