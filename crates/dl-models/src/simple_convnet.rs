use dl_layers::{Affine, Convolution, Init, Layer, Pooling, Relu, Sequential};
use serde::{Deserialize, Serialize};

use crate::blocks::{
    affine_params, check_conv_param, check_input, check_params, check_size, conv_params, model_type, out_side, MAX_SIZE,
};
use crate::{book_names, derive_seed, ConvParam, ModelError, Network};

/// The book's `SimpleConvNet.__init__` arguments (chapter 7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimpleConvNetConfig {
    /// `(C, H, W)` of one input image.
    pub input_dim: (usize, usize, usize),
    /// The convolution.
    pub conv_param: ConvParam,
    /// Units of the hidden Affine layer.
    pub hidden_size: usize,
    /// Number of classes.
    pub output_size: usize,
    /// The book's `weight_init_std` (0.01); He when `None`.
    pub weight_init_std: Option<f32>,
}

impl Default for SimpleConvNetConfig {
    /// The book's defaults: 30 filters of 5x5, hidden 100, 10 classes, std 0.01.
    fn default() -> Self {
        Self {
            input_dim: (1, 28, 28),
            conv_param: ConvParam {
                filter_num: 30,
                filter_size: 5,
                pad: 0,
                stride: 1,
            },
            hidden_size: 100,
            output_size: 10,
            weight_init_std: Some(0.01),
        }
    }
}

/// The book's chapter 7 network: `conv - relu - pool - affine - relu - affine - softmax`.
#[derive(Debug, Clone)]
pub struct SimpleConvNet {
    network: Network,
    config: SimpleConvNetConfig,
}

impl SimpleConvNet {
    /// Builds the network with its initial weights fixed by `seed`.
    ///
    /// # Panics
    /// If the configuration is invalid ([`SimpleConvNet::try_new`] says why instead).
    pub fn new(config: SimpleConvNetConfig, seed: u64) -> Self {
        Self::try_new(config, seed).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Builds the network, or says what is wrong with the configuration.
    pub fn try_new(config: SimpleConvNetConfig, seed: u64) -> Result<Self, ModelError> {
        let kind = "SimpleConvNet";
        check_input(kind, config.input_dim)?;
        check_conv_param(kind, &config.conv_param)?;
        check_size(kind, "hidden size", config.hidden_size, MAX_SIZE)?;
        check_size(kind, "output size", config.output_size, MAX_SIZE)?;
        check_params(kind, config.param_count())?;
        let init = config.weight_init_std.map_or(Init::He, Init::Std);
        let (c, h, w) = config.input_dim;
        let p = config.conv_param;
        let conv = Convolution::new(
            c,
            p.filter_num,
            p.filter_size,
            p.filter_size,
            p.stride,
            p.pad,
            init,
            derive_seed(seed, 1),
        );
        let out = conv.output_shape(&[1, c, h, w]).map_err(|e| ModelError::Config {
            kind: kind.into(),
            message: e.to_string(),
        })?;
        let pooled = out[1] * (out[2] / 2) * (out[3] / 2);
        if pooled == 0 {
            return Err(ModelError::Config {
                kind: kind.into(),
                message: "the pool leaves no units".into(),
            });
        }
        let layers: Vec<Box<dyn Layer>> = vec![
            Box::new(conv),
            Box::new(Relu::new()),
            Box::new(Pooling::max(2, 2, 2, 0)),
            Box::new(Affine::new(pooled, config.hidden_size, init, derive_seed(seed, 2))),
            Box::new(Relu::new()),
            Box::new(Affine::new(
                config.hidden_size,
                config.output_size,
                init,
                derive_seed(seed, 3),
            )),
        ];
        let root: Sequential = layers.into_iter().collect();
        let renames = book_names(&root);
        let mut network = Network::new("SimpleConvNet", root).with_renames(renames);
        network.set_metadata("config", serde_json::to_string(&config).expect("serialisable config"));
        Ok(Self { network, config })
    }
}

model_type!(SimpleConvNet, SimpleConvNetConfig);

impl SimpleConvNetConfig {
    /// The parameters the network has, counted without building it (the hidden
    /// layer's inputs as 0 when the image does not fit the convolution).
    pub fn param_count(&self) -> u128 {
        let p = self.conv_param;
        let (c, h, w) = self.input_dim;
        let side = |s: usize| out_side(s, p.filter_size, p.stride, p.pad).map_or(0, |o| o / 2);
        let pooled = p.filter_num * side(h) * side(w);
        conv_params(c, p.filter_num, p.filter_size, true)
            + affine_params(pooled, self.hidden_size)
            + affine_params(self.hidden_size, self.output_size)
    }
}
