use dl_layers::{
    Affine, BatchNormMode, BatchNormalization, BinaryAffine, BinaryConvolution, Convolution, Init, Layer, Pooling,
    Sequential, Sign,
};
use serde::{Deserialize, Serialize};

use crate::blocks::{affine_params, check_vgg_style, conv_params, model_type, Seeds};
use crate::{ModelError, Network};

/// The settings of a [`BinaryConvNet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryConvNetConfig {
    /// `(C, H, W)` of one input image.
    pub input_dim: (usize, usize, usize),
    /// Per block: `(convolutions, channels)`; every convolution is 3x3 with pad 1, and a
    /// 2x2 max-pool closes each block. The very first convolution is in `f32`, the
    /// others binarized.
    pub blocks: Vec<(usize, usize)>,
    /// Units of the binarized hidden layer.
    pub hidden_size: usize,
    /// Number of classes.
    pub output_size: usize,
}

impl Default for BinaryConvNetConfig {
    /// For 28x28 digits: blocks of 2 convolutions of 32 and of 64 channels
    /// (28 -> 14 -> 7), hidden 512, 10 classes.
    fn default() -> Self {
        Self {
            input_dim: (1, 28, 28),
            blocks: vec![(2, 32), (2, 64)],
            hidden_size: 512,
            output_size: 10,
        }
    }
}

impl BinaryConvNetConfig {
    /// The parameters the network has, counted without building it.
    pub fn param_count(&self) -> u128 {
        let (mut c, mut h, mut w) = self.input_dim;
        let mut count = 0;
        for &(n, channels) in &self.blocks {
            for _ in 0..n {
                count += conv_params(c, channels, 3, false) + 2 * channels as u128;
                c = channels;
            }
            (h, w) = (h / 2, w / 2);
        }
        count
            + affine_params(c * h * w, self.hidden_size)
            + self.hidden_size as u128
            + affine_params(self.hidden_size, self.output_size)
    }
}

/// A binarized convolutional network (the BNN recipe of Courbariaux, Hubara, Soudry,
/// El-Yaniv and Bengio, 2016), VGG-shaped: blocks of 3x3 convolutions, each followed by
/// (the block's 2x2 max-pool, then) a batch norm and [`Sign`]; then a binarized affine
/// layer, a batch norm, [`Sign`], and the classifier. Weights and activations are `+1`
/// or `-1` everywhere except in the first convolution (which sees the pixels) and the
/// classifier (which gives the scores), kept in `f32` as the paper keeps them.
///
/// Train it with Adam: the Trainer clips the latent weights to `[-1, 1]` after every
/// step ([`Network::clip_params`]). `dl_infer::binary` runs a trained one with weights
/// and activations packed 64 to a word.
///
/// Parameters are named as [`Vgg`](crate::Vgg)'s: `features.{i}.W`, `classifier.{i}.W`.
#[derive(Debug, Clone)]
pub struct BinaryConvNet {
    network: Network,
    config: BinaryConvNetConfig,
}

model_type!(BinaryConvNet, BinaryConvNetConfig);

impl BinaryConvNet {
    /// Builds the network with every random part fixed by `seed`.
    ///
    /// # Panics
    /// If the configuration is invalid ([`BinaryConvNet::try_new`] says why instead).
    pub fn new(config: BinaryConvNetConfig, seed: u64) -> Self {
        Self::try_new(config, seed).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Builds the network, or says what is wrong with the configuration.
    pub fn try_new(config: BinaryConvNetConfig, seed: u64) -> Result<Self, ModelError> {
        let kind = "BinaryConvNet";
        let (c0, h0, w0) = config.input_dim;
        check_vgg_style(
            kind,
            config.input_dim,
            &config.blocks,
            (config.hidden_size, config.output_size),
            None,
            || config.param_count(),
        )?;
        let (mut c, mut h, mut w) = config.input_dim;
        let mut seeds = Seeds::new(seed);
        let mut features = Sequential::new();
        let mut first = true;
        for &(n, channels) in &config.blocks {
            for i in 0..n {
                if first {
                    let conv = Convolution::new(c, channels, 3, 3, 1, 1, Init::He, seeds.next());
                    features.push(Box::new(conv.without_bias()));
                    first = false;
                } else {
                    let conv = BinaryConvolution::new(c, channels, 3, 3, 1, 1, Init::Xavier, seeds.next());
                    features.push(Box::new(conv));
                }
                if i + 1 == n {
                    features.push(Box::new(Pooling::max(2, 2, 2, 0)));
                }
                features.push(Box::new(BatchNormalization::torchvision(channels)));
                features.push(Box::new(Sign::new()));
                c = channels;
            }
            (h, w) = (h / 2, w / 2);
        }
        let classifier = Sequential::new()
            .with(BinaryAffine::new(
                c * h * w,
                config.hidden_size,
                Init::Xavier,
                seeds.next(),
            ))
            .with(BatchNormalization::new(
                config.hidden_size,
                BatchNormMode::PerActivation,
            ))
            .with(Sign::new())
            .with(Affine::new(
                config.hidden_size,
                config.output_size,
                Init::Xavier,
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
