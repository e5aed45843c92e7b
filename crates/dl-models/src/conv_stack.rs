use dl_layers::{Affine, BatchNormalization, Convolution, Init, Layer, Relu, Sequential};
use serde::{Deserialize, Serialize};

use crate::blocks::{
    affine_params, check_input, check_params, check_size, conv, conv_params, model_type, out_side, Seeds, MAX_SIZE,
};
use crate::{ModelError, Network};

/// The settings of a [`ConvStack`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvStackConfig {
    /// `(C, H, W)` of one input image.
    pub input_dim: (usize, usize, usize),
    /// The side of every (square) convolution filter.
    pub kernel_size: usize,
    /// The channels of each convolution, in order; each has stride 1 and no padding, so
    /// it takes `kernel_size - 1` from each side of the image.
    pub channels: Vec<usize>,
    /// Number of classes.
    pub output_size: usize,
    /// A per-channel batch norm after every convolution (the convolutions then have no
    /// bias).
    pub use_batchnorm: bool,
}

impl Default for ConvStackConfig {
    /// An et al.'s "M3" for 28x28 digits: ten 3x3 convolutions of 32, 48, ... 176
    /// channels (28 -> 26 -> ... -> 8), batch norm, 10 classes.
    fn default() -> Self {
        Self {
            input_dim: (1, 28, 28),
            kernel_size: 3,
            channels: (0..10).map(|i| 32 + 16 * i).collect(),
            output_size: 10,
            use_batchnorm: true,
        }
    }
}

impl ConvStackConfig {
    /// The side of the last feature map, `None` when the image is too small for the
    /// stack.
    fn out_dim(&self) -> Option<(usize, usize)> {
        let (_, mut h, mut w) = self.input_dim;
        for _ in &self.channels {
            h = out_side(h, self.kernel_size, 1, 0)?;
            w = out_side(w, self.kernel_size, 1, 0)?;
        }
        Some((h, w))
    }

    /// The parameters the network has, counted without building it (0 when the image is
    /// too small for the stack, which building refuses).
    pub fn param_count(&self) -> u128 {
        let Some((h, w)) = self.out_dim() else { return 0 };
        let mut c = self.input_dim.0;
        let mut count = 0;
        for &channels in &self.channels {
            count += conv_params(c, channels, self.kernel_size, !self.use_batchnorm)
                + if self.use_batchnorm { 2 * channels as u128 } else { 0 };
            c = channels;
        }
        count + affine_params(c * h * w, self.output_size)
    }
}

/// A plain stack of unpadded convolutions with no pooling, then one Affine layer (An,
/// Lee, Park, Yang and So 2020, "An ensemble of simple convolutional neural network
/// models for MNIST digit recognition"): each convolution (stride 1, pad 0) is followed
/// by batch norm and ReLU, so the feature map shrinks by `kernel_size - 1` per layer
/// and the last one keeps where in the image each feature was seen. Parameters are
/// named `features.{i}.W` for the `i`-th layer of the stack and `classifier.0.W` for
/// the Affine layer, as a PyTorch `nn.Sequential` of the same layers names them.
#[derive(Debug, Clone)]
pub struct ConvStack {
    network: Network,
    config: ConvStackConfig,
}

model_type!(ConvStack, ConvStackConfig);

impl ConvStack {
    /// Builds the network with every random part fixed by `seed`.
    ///
    /// # Panics
    /// If the configuration is invalid ([`ConvStack::try_new`] says why instead).
    pub fn new(config: ConvStackConfig, seed: u64) -> Self {
        Self::try_new(config, seed).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Builds the network, or says what is wrong with the configuration.
    pub fn try_new(config: ConvStackConfig, seed: u64) -> Result<Self, ModelError> {
        let kind = "ConvStack";
        let (c0, h0, w0) = config.input_dim;
        check_input(kind, config.input_dim)?;
        check_size(kind, "kernel size", config.kernel_size, 64)?;
        check_size(kind, "number of convolutions", config.channels.len(), 64)?;
        for &c in &config.channels {
            check_size(kind, "channels", c, MAX_SIZE)?;
        }
        check_size(kind, "output size", config.output_size, MAX_SIZE)?;
        let Some((h, w)) = config.out_dim() else {
            return Err(ModelError::Config {
                kind: kind.into(),
                message: format!(
                    "a {h0}x{w0} image is too small for {} convolutions of {}x{}",
                    config.channels.len(),
                    config.kernel_size,
                    config.kernel_size
                ),
            });
        };
        check_params(kind, config.param_count())?;
        let mut seeds = Seeds::new(seed);
        let mut features = Sequential::new();
        let k = config.kernel_size;
        let mut c = c0;
        for &channels in &config.channels {
            if config.use_batchnorm {
                features.push(Box::new(conv(c, channels, k, 1, 0, &mut seeds)));
                features.push(Box::new(BatchNormalization::torchvision(channels)));
            } else {
                features.push(Box::new(Convolution::new(
                    c,
                    channels,
                    k,
                    k,
                    1,
                    0,
                    Init::He,
                    seeds.next(),
                )));
            }
            features.push(Box::new(Relu::new()));
            c = channels;
        }
        let classifier = Sequential::new().with(Affine::new(c * h * w, config.output_size, Init::He, seeds.next()));
        let root = Sequential::new()
            .with_named("features", features)
            .with_named("classifier", classifier);
        root.output_shape(&[1, c0, h0, w0])?;
        let mut network = Network::new(kind, root);
        network.set_metadata("config", serde_json::to_string(&config).expect("serialisable config"));
        Ok(Self { network, config })
    }
}
