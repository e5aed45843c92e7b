//! # dl-models
//!
//! Networks built from `dl-layers`, with the methods of the book's network classes:
//! `predict`, `loss`, `accuracy`, `gradient`, `save_params`, `load_params` (on
//! [`Network`], which every model derefs to).
//!
//! * [`DeepConvNet`]: chapter 8's network, exactly as the book builds it: six 3x3
//!   convolutions (16-16-32-32-64-64, the fourth with pad 2), three 2x2 max-pools,
//!   Affine 1024->50, ReLU, Dropout 0.5, Affine 50->10, Dropout 0.5, SoftmaxWithLoss;
//!   He initialisation.
//! * [`SimpleConvNet`]: chapter 7's small network (conv 30x5x5, pool, Affine 100, Affine
//!   10).
//! * [`Vgg`], [`ResNet`] (ResNet-20 by default), [`GoogLeNet`]: chapter 8.2's deeper
//!   networks, for 28x28 digits by default, each with a config struct.
//! * [`ConvStack`]: a plain stack of unpadded convolutions without pooling (An et al.
//!   2020's "M3" by default: ten 3x3 convolutions of 32 to 176 channels), a member that
//!   sees digits differently for ensembles.
//! * [`BinaryConvNet`]: chapter 8's 1-bit network (Courbariaux et al., 2016), weights
//!   and activations `+1` or `-1`.
//!
//! Parameters are saved in the safetensors format: no code runs on load (unlike the
//! book's pickle), and PyTorch, candle and numpy read the files. The book's networks use
//! the book's names (`W1`, `b1`, ... `W8`, `b8`), the others their paths, as torchvision
//! names them (`layer1.0.conv1.W`). Loading checks every name, shape and dtype. A file
//! records its model's kind and configuration, so [`load`] rebuilds any model from its
//! file alone ([`registry`]). A network may deskew its images before its layers see them
//! ([`Network::set_deskew`], the MNIST literature's deskewed inputs), in training and in
//! evaluation; its file records that too.
//!
//! The book's own pickled parameter files load too
//! ([`Network::load_book_params`]), through a reader that accepts nothing but NumPy arrays
//! ([`book`]): no Python and no code from the file runs.
//!
//! ```
//! use dl_models::{build, DeepConvNet, DeepConvNetConfig, ResNet, ResNetConfig};
//! use dl_layers::Tensor;
//!
//! let mut net = DeepConvNet::new(DeepConvNetConfig::default(), 42);
//! assert_eq!(net.param_count(), 16 * 9 + 16 + 16 * 16 * 9 + 16 + 32 * 16 * 9 + 32 + 32 * 32 * 9 + 32
//!     + 64 * 32 * 9 + 64 + 64 * 64 * 9 + 64 + 1024 * 50 + 50 + 50 * 10 + 10);
//! let y = net.predict(Tensor::zeros(vec![2, 1, 28, 28]), false).unwrap();
//! assert_eq!(y.shape(), &[2, 10]);
//!
//! // ResNet-20, named as torchvision names it; the registry builds any model by kind
//! let resnet = ResNet::new(ResNetConfig::default(), 0);
//! assert!(resnet.params().iter().any(|(name, _)| name == "layer2.0.downsample.0.W"));
//! assert_eq!(build("GoogLeNet", None, 0).unwrap().kind(), "GoogLeNet");
//! ```

mod binary_convnet;
mod blocks;
pub mod book;
mod conv_stack;
mod deep_convnet;
mod error;
mod googlenet;
mod network;
pub mod registry;
mod resnet;
mod simple_convnet;
mod vgg;

pub use binary_convnet::{BinaryConvNet, BinaryConvNetConfig};
pub use blocks::MAX_PARAMS;
pub use conv_stack::{ConvStack, ConvStackConfig};
pub use deep_convnet::{ConvParam, DeepConvNet, DeepConvNetConfig};
pub use error::ModelError;
pub use googlenet::{GoogLeNet, GoogLeNetConfig, InceptionParam};
pub use network::{Network, TransferReport, EVAL_CHUNK, TRAINING_PREFIX};
pub use registry::{build, load, ModelConfig, MODEL_KINDS};
pub use resnet::{ResNet, ResNetConfig};
pub use simple_convnet::{SimpleConvNet, SimpleConvNetConfig};
pub use vgg::{Vgg, VggConfig};

/// The book's names for the parameters and buffers of a chain of layers: the `k`-th
/// layer with weights contributes `W{k}` and `b{k}`; a batch norm after it
/// `gamma{k}`, `beta{k}`, `running_mean{k}`, `running_var{k}` (the numbering of the
/// book's `MultiLayerNetExtend`). Returned as `(path, name)` pairs for
/// [`Network::with_renames`].
pub(crate) fn book_names(root: &dl_layers::Sequential) -> Vec<(String, String)> {
    let mut k = 0;
    let mut out = Vec::new();
    for (name, layer) in root.names().iter().zip(root.layers()) {
        let params = layer.params();
        if params.iter().any(|(n, _)| n == "W") {
            k += 1;
        }
        let local = params
            .into_iter()
            .map(|(n, _)| n)
            .chain(layer.buffers().into_iter().map(|(n, _)| n));
        out.extend(local.map(|n| (format!("{name}.{n}"), format!("{n}{k}"))));
    }
    out
}

/// Derives the seed of the `k`-th component (layer, dropout mask, ...) from a model seed,
/// so that every random part of a model is fixed by one number.
pub fn derive_seed(seed: u64, k: u64) -> u64 {
    // SplitMix64 of (seed, k): well mixed, stable across versions.
    let mut z = seed
        ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
