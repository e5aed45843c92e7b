use std::path::PathBuf;

/// Everything that can go wrong reading a data set. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A data file is missing.
    #[error("{path}: not found (neither raw nor .gz). {hint}")]
    Missing {
        /// The file looked for (without `.gz`).
        path: PathBuf,
        /// How to get it.
        hint: String,
    },
    /// The file starts like gzip but does not decompress.
    #[error("{path}: corrupt gzip data: {source}")]
    Gzip {
        /// The file.
        path: PathBuf,
        /// The decompressor's error.
        source: std::io::Error,
    },
    /// The header is not an IDX header.
    #[error("{path}: not an IDX file: {reason}")]
    NotIdx {
        /// The file.
        path: PathBuf,
        /// What is wrong with the header.
        reason: String,
    },
    /// The element type is valid IDX but not unsigned bytes.
    #[error("{path}: IDX element type 0x{code:02x} is not supported (MNIST uses 0x08, unsigned byte)")]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The type code in the header.
        code: u8,
    },
    /// The body is shorter or longer than the header says.
    #[error("{path}: the header promises {expected} data bytes, the file has {actual} ({})", if actual < expected { "truncated" } else { "trailing bytes" })]
    Length {
        /// The file.
        path: PathBuf,
        /// Bytes the dimensions imply.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The dimensions are not what this data set needs.
    #[error("{path}: dimensions {dims:?}, expected {expected}")]
    Dimensions {
        /// The file.
        path: PathBuf,
        /// The dimensions found.
        dims: Vec<usize>,
        /// What was expected, in words.
        expected: String,
    },
    /// Images and labels disagree in number.
    #[error("{images} has {n_images} images but {labels} has {n_labels} labels")]
    CountMismatch {
        /// The image file.
        images: PathBuf,
        /// Its image count.
        n_images: usize,
        /// The label file.
        labels: PathBuf,
        /// Its label count.
        n_labels: usize,
    },
    /// A label outside `0..classes`.
    #[error("{path}: label {value} at index {index} is out of range 0..{classes}")]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// Position of the label.
        index: usize,
        /// The label.
        value: u8,
        /// Number of classes.
        classes: usize,
    },
    /// The decompressed content does not match the manifest.
    #[error("{path}: SHA-256 of the decompressed content is {actual}, the manifest {manifest} says {expected}; the file is damaged or not the right one: delete it and run `cargo xtask download`")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The manifest consulted.
        manifest: PathBuf,
        /// The hash in the manifest.
        expected: String,
        /// The hash of the content.
        actual: String,
    },
    /// The manifest itself is malformed.
    #[error("{path}: malformed checksum manifest at line {line}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A picture that cannot be made into a digit ([`crate::preprocess`]).
    #[error("bad image: {reason}")]
    BadImage {
        /// What is wrong with it.
        reason: String,
    },
    /// A choice of classes the set cannot give ([`crate::ImageSet::select_classes`]).
    #[error("classes {classes:?}: {reason}")]
    Classes {
        /// The classes asked for.
        classes: Vec<u8>,
        /// What is wrong with them.
        reason: String,
    },
    /// A line of a CSV data file that is not what the format says
    /// ([`crate::optdigits::parse_csv`]).
    #[error("CSV line {line}: {reason}")]
    Csv {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}
