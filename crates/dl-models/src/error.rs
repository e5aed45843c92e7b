use std::path::PathBuf;

use dl_layers::LayerError;

/// What can go wrong using or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A layer refused its input (wrong shape, bad labels).
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// Reading or writing a parameter file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid safetensors.
    #[error("{path}: not a valid safetensors file: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A parameter the network needs is not in the file.
    #[error("{path}: has no tensor {name:?} (the network needs {expected:?})")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The parameter name.
        name: String,
        /// Its shape in the network.
        expected: Vec<usize>,
    },
    /// The file holds a tensor of the wrong shape.
    #[error("{path}: tensor {name:?} has shape {found:?}, the network needs {expected:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The parameter name.
        name: String,
        /// Shape in the network.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// The file holds a tensor that is not float32, float16 or bfloat16.
    #[error("{path}: tensor {name:?} is {dtype}, expected F32, F16 or BF16")]
    DType {
        /// The file.
        path: PathBuf,
        /// The parameter name.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// The file has tensors this network does not have.
    #[error("{path}: has tensors the network does not: {names:?}")]
    Unexpected {
        /// The file.
        path: PathBuf,
        /// Their names.
        names: Vec<String>,
    },
    /// A pickle of the book's parameters was refused.
    #[error(transparent)]
    Pickle(#[from] crate::book::PickleError),
    /// A model configuration that cannot be built.
    #[error("{kind}: invalid configuration: {message}")]
    Config {
        /// The model's kind.
        kind: String,
        /// What is wrong.
        message: String,
    },
    /// A model kind the registry does not know.
    #[error("unknown model {kind:?} (known: {known})")]
    UnknownModel {
        /// The kind asked for.
        kind: String,
        /// The kinds there are, comma-separated.
        known: String,
    },
    /// A parameter file that does not say which model it belongs to.
    #[error("{path}: no dlfs model metadata (kind and configuration): {message}")]
    NoModel {
        /// The file.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
    /// The inputs and the labels do not fit together.
    #[error("{0}")]
    Input(String),
}
