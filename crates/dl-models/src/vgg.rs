use dl_layers::{Affine, BatchNormalization, Convolution, Dropout, Init, Layer, Pooling, Relu, Sequential};
use serde::{Deserialize, Serialize};

use crate::blocks::{affine_params, check_vgg_style, conv_params, model_type, Seeds};
use crate::{ModelError, Network};

/// The settings of a [`Vgg`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VggConfig {
    /// `(C, H, W)` of one input image.
    pub input_dim: (usize, usize, usize),
    /// Per block: `(convolutions, channels)`; every convolution is 3x3 with pad 1, and a
    /// 2x2 max-pool closes each block.
    pub blocks: Vec<(usize, usize)>,
    /// Units of the hidden Affine layer of the classifier.
    pub hidden_size: usize,
    /// Number of classes.
    pub output_size: usize,
    /// Ratio of the (inverted) dropout before the last Affine layer.
    pub dropout_ratio: f32,
    /// A per-channel batch norm after every convolution (torchvision's `vgg*_bn`).
    pub use_batchnorm: bool,
}

impl Default for VggConfig {
    /// For 28x28 digits: blocks of 2, 2 and 3 convolutions of 32, 64 and 128 channels
    /// (28 -> 14 -> 7 -> 3), batch norm, hidden 256, dropout 0.5, 10 classes.
    fn default() -> Self {
        Self {
            input_dim: (1, 28, 28),
            blocks: vec![(2, 32), (2, 64), (3, 128)],
            hidden_size: 256,
            output_size: 10,
            dropout_ratio: 0.5,
            use_batchnorm: true,
        }
    }
}

impl VggConfig {
    /// The parameters the network has, counted without building it.
    pub fn param_count(&self) -> u128 {
        let (mut c, mut h, mut w) = self.input_dim;
        let mut count = 0;
        for &(n, channels) in &self.blocks {
            for _ in 0..n {
                count += conv_params(c, channels, 3, true) + if self.use_batchnorm { 2 * channels as u128 } else { 0 };
                c = channels;
            }
            (h, w) = (h / 2, w / 2);
        }
        count + affine_params(c * h * w, self.hidden_size) + affine_params(self.hidden_size, self.output_size)
    }
}

/// VGG for small images (the book's chapter 8.2, Simonyan and Zisserman 2014): blocks
/// of 3x3 convolutions (each followed by batch norm and ReLU), a 2x2 max-pool after each
/// block, then `Affine - ReLU - Dropout - Affine`. Parameters are named as torchvision's
/// VGG: `features.{i}.W` for the `i`-th layer of the feature extractor,
/// `classifier.{i}.W` for the classifier.
#[derive(Debug, Clone)]
pub struct Vgg {
    network: Network,
    config: VggConfig,
}

model_type!(Vgg, VggConfig);

impl Vgg {
    /// Builds the network with every random part fixed by `seed`.
    ///
    /// # Panics
    /// If the configuration is invalid ([`Vgg::try_new`] says why instead).
    pub fn new(config: VggConfig, seed: u64) -> Self {
        Self::try_new(config, seed).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Builds the network, or says what is wrong with the configuration.
    pub fn try_new(config: VggConfig, seed: u64) -> Result<Self, ModelError> {
        let kind = "Vgg";
        let (c0, h0, w0) = config.input_dim;
        check_vgg_style(
            kind,
            config.input_dim,
            &config.blocks,
            (config.hidden_size, config.output_size),
            Some(config.dropout_ratio),
            || config.param_count(),
        )?;
        let (mut c, mut h, mut w) = config.input_dim;
        let mut seeds = Seeds::new(seed);
        let mut features = Sequential::new();
        for &(n, channels) in &config.blocks {
            for _ in 0..n {
                features.push(Box::new(Convolution::new(
                    c,
                    channels,
                    3,
                    3,
                    1,
                    1,
                    Init::He,
                    seeds.next(),
                )));
                if config.use_batchnorm {
                    features.push(Box::new(BatchNormalization::torchvision(channels)));
                }
                features.push(Box::new(Relu::new()));
                c = channels;
            }
            features.push(Box::new(Pooling::max(2, 2, 2, 0)));
            (h, w) = (h / 2, w / 2);
        }
        let classifier = Sequential::new()
            .with(Affine::new(c * h * w, config.hidden_size, Init::He, seeds.next()))
            .with(Relu::new())
            .with(Dropout::inverted(config.dropout_ratio, seeds.next()))
            .with(Affine::new(
                config.hidden_size,
                config.output_size,
                Init::He,
                seeds.next(),
            ));
        let root = Sequential::new()
            .with_named("features", features)
            .with_named("classifier", classifier);
        root.output_shape(&[1, c0, h0, w0])?;
        let mut network = Network::new(kind, root);
        network.set_metadata("config", serde_json::to_string(&config).expect("serialisable config"));
        Ok(Self { network, config })
    }
}
