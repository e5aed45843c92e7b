use dl_layers::{
    Affine, BatchNormMode, BatchNormalization, Convolution, Dropout, Init, Layer, Pooling, Relu, Sequential,
};
use serde::{Deserialize, Serialize};

use crate::blocks::{
    affine_params, check_conv_param, check_input, check_params, check_ratio, check_size, conv_params, model_type,
    out_side, MAX_SIZE,
};
use crate::{book_names, derive_seed, ModelError, Network};

/// One convolution's settings, the book's `conv_param` dictionary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvParam {
    /// Number of filters (output channels).
    pub filter_num: usize,
    /// Filter height and width.
    pub filter_size: usize,
    /// Zero padding.
    pub pad: usize,
    /// Stride.
    pub stride: usize,
}

impl ConvParam {
    const fn new(filter_num: usize, pad: usize) -> Self {
        Self {
            filter_num,
            filter_size: 3,
            pad,
            stride: 1,
        }
    }
}

/// The book's `DeepConvNet.__init__` arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeepConvNetConfig {
    /// `(C, H, W)` of one input image.
    pub input_dim: (usize, usize, usize),
    /// The six convolutions.
    pub conv_params: [ConvParam; 6],
    /// Units of the hidden Affine layer.
    pub hidden_size: usize,
    /// Number of classes.
    pub output_size: usize,
    /// Dropout ratio of both Dropout layers.
    pub dropout_ratio: f32,
    /// Use inverted dropout instead of the book's form.
    pub inverted_dropout: bool,
    /// Put a BatchNormalization after every convolution (per channel) and after the
    /// hidden Affine layer, before each ReLU (the book's `use_batchnorm`, chapter 6).
    #[serde(default)]
    pub use_batchnorm: bool,
}

impl Default for DeepConvNetConfig {
    /// The book's defaults: 16-16-32-32-64-64 filters of 3x3, paddings 1-1-1-2-1-1,
    /// hidden 50, 10 classes, dropout 0.5 (non-inverted).
    fn default() -> Self {
        Self {
            input_dim: (1, 28, 28),
            conv_params: [
                ConvParam::new(16, 1),
                ConvParam::new(16, 1),
                ConvParam::new(32, 1),
                ConvParam::new(32, 2),
                ConvParam::new(64, 1),
                ConvParam::new(64, 1),
            ],
            hidden_size: 50,
            output_size: 10,
            dropout_ratio: 0.5,
            inverted_dropout: false,
            use_batchnorm: false,
        }
    }
}

/// The book's chapter 8 network:
///
/// ```text
/// conv - relu - conv - relu - pool -
/// conv - relu - conv - relu - pool -
/// conv - relu - conv - relu - pool -
/// affine - relu - dropout - affine - dropout - softmax
/// ```
///
/// He initialisation (`std = sqrt(2 / fan_in)`), zero biases. Every method of the book's
/// class (`predict`, `loss`, `accuracy`, `gradient`, `save_params`, `load_params`) is on
/// the [`Network`] it derefs to.
#[derive(Debug, Clone)]
pub struct DeepConvNet {
    network: Network,
    config: DeepConvNetConfig,
}

fn dropout(ratio: f32, inverted: bool, seed: u64) -> Box<dyn Layer> {
    if inverted {
        Box::new(Dropout::inverted(ratio, seed))
    } else {
        Box::new(Dropout::new(ratio, seed))
    }
}

impl DeepConvNetConfig {
    /// The parameters the network has (weights, biases, batch norm's scale and shift),
    /// counted without building it (the hidden layer's inputs as 0 when the image does
    /// not fit the convolutions).
    pub fn param_count(&self) -> u128 {
        let bn = |c: usize| if self.use_batchnorm { 2 * c as u128 } else { 0 };
        let (mut c, mut h, mut w) = (self.input_dim.0, Some(self.input_dim.1), Some(self.input_dim.2));
        let mut count = 0;
        for (i, p) in self.conv_params.iter().enumerate() {
            count += conv_params(c, p.filter_num, p.filter_size, true) + bn(p.filter_num);
            c = p.filter_num;
            h = h.and_then(|h| out_side(h, p.filter_size, p.stride, p.pad));
            w = w.and_then(|w| out_side(w, p.filter_size, p.stride, p.pad));
            if i % 2 == 1 {
                (h, w) = (h.map(|h| h / 2), w.map(|w| w / 2));
            }
        }
        let flat = c * h.unwrap_or(0) * w.unwrap_or(0);
        count
            + affine_params(flat, self.hidden_size)
            + bn(self.hidden_size)
            + affine_params(self.hidden_size, self.output_size)
    }
}

impl DeepConvNet {
    /// Builds the network with every random part (initial weights, dropout masks) fixed
    /// by `seed`.
    ///
    /// # Panics
    /// If the configuration does not fit together (an image size the three pools cannot
    /// halve to a whole number of units): a programmer error caught at construction.
    pub fn new(config: DeepConvNetConfig, seed: u64) -> Self {
        Self::try_new(config, seed).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Builds the network, or says what is wrong with the configuration.
    pub fn try_new(config: DeepConvNetConfig, seed: u64) -> Result<Self, ModelError> {
        let kind = "DeepConvNet";
        check_input(kind, config.input_dim)?;
        for p in &config.conv_params {
            check_conv_param(kind, p)?;
        }
        check_size(kind, "hidden size", config.hidden_size, MAX_SIZE)?;
        check_size(kind, "output size", config.output_size, MAX_SIZE)?;
        check_ratio(kind, config.dropout_ratio)?;
        check_params(kind, config.param_count())?;
        let (mut c, mut h, mut w) = config.input_dim;
        let mut layers: Vec<Box<dyn Layer>> = Vec::new();
        let mut k = 0u64;
        for (i, p) in config.conv_params.iter().enumerate() {
            k += 1;
            let conv = Convolution::new(
                c,
                p.filter_num,
                p.filter_size,
                p.filter_size,
                p.stride,
                p.pad,
                Init::He,
                derive_seed(seed, k),
            );
            let out = conv.output_shape(&[1, c, h, w]).map_err(|e| ModelError::Config {
                kind: kind.into(),
                message: format!("convolution {}: {e}", i + 1),
            })?;
            layers.push(Box::new(conv));
            if config.use_batchnorm {
                layers.push(Box::new(BatchNormalization::new(out[1], BatchNormMode::PerChannel)));
            }
            layers.push(Box::new(Relu::new()));
            (c, h, w) = (out[1], out[2], out[3]);
            if i % 2 == 1 {
                layers.push(Box::new(Pooling::max(2, 2, 2, 0)));
                (h, w) = (h / 2, w / 2);
            }
        }
        let flat = c * h * w;
        if flat == 0 {
            return Err(ModelError::Config {
                kind: kind.into(),
                message: "the three pools leave no units".into(),
            });
        }
        layers.push(Box::new(Affine::new(
            flat,
            config.hidden_size,
            Init::He,
            derive_seed(seed, 7),
        )));
        if config.use_batchnorm {
            layers.push(Box::new(BatchNormalization::new(
                config.hidden_size,
                BatchNormMode::PerActivation,
            )));
        }
        layers.push(Box::new(Relu::new()));
        layers.push(dropout(
            config.dropout_ratio,
            config.inverted_dropout,
            derive_seed(seed, 101),
        ));
        layers.push(Box::new(Affine::new(
            config.hidden_size,
            config.output_size,
            Init::He,
            derive_seed(seed, 8),
        )));
        layers.push(dropout(
            config.dropout_ratio,
            config.inverted_dropout,
            derive_seed(seed, 102),
        ));
        let root: Sequential = layers.into_iter().collect();
        let renames = book_names(&root);
        let mut network = Network::new("DeepConvNet", root).with_renames(renames);
        network.set_metadata("config", serde_json::to_string(&config).expect("serialisable config"));
        Ok(Self { network, config })
    }
}

model_type!(DeepConvNet, DeepConvNetConfig);
