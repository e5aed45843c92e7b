use dl_layers::{Affine, Concat, Dropout, GlobalAveragePooling, Init, Layer, Pooling, Sequential};
use serde::{Deserialize, Serialize};

use crate::blocks::{
    affine_params, basic_conv, check_input, check_params, check_ratio, check_size, conv_params, model_type, Seeds,
    MAX_SIZE,
};
use crate::{ModelError, Network};

/// One inception module's widths, torchvision's `Inception` arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InceptionParam {
    /// Branch 1: a 1x1 convolution.
    pub ch1x1: usize,
    /// Branch 2: a 1x1 reduction ...
    pub ch3x3red: usize,
    /// ... then a 3x3 convolution.
    pub ch3x3: usize,
    /// Branch 3: a 1x1 reduction ...
    pub ch5x5red: usize,
    /// ... then a 5x5 convolution.
    pub ch5x5: usize,
    /// Branch 4: a 3x3 max-pool (stride 1), then a 1x1 convolution.
    pub pool_proj: usize,
}

impl InceptionParam {
    const fn new(ch1x1: usize, ch3x3red: usize, ch3x3: usize, ch5x5red: usize, ch5x5: usize, pool_proj: usize) -> Self {
        Self {
            ch1x1,
            ch3x3red,
            ch3x3,
            ch5x5red,
            ch5x5,
            pool_proj,
        }
    }

    /// Output channels: the four branches' widths added.
    pub fn out_channels(&self) -> usize {
        self.ch1x1 + self.ch3x3 + self.ch5x5 + self.pool_proj
    }
}

/// The settings of a [`GoogLeNet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoogLeNetConfig {
    /// `(C, H, W)` of one input image.
    pub input_dim: (usize, usize, usize),
    /// Channels of the stem's 3x3 convolution.
    pub stem_channels: usize,
    /// Stages of inception modules; a 2x2 max-pool comes before each stage.
    pub stages: Vec<Vec<InceptionParam>>,
    /// Ratio of the (inverted) dropout before the classifier.
    pub dropout_ratio: f32,
    /// Number of classes.
    pub output_size: usize,
}

impl GoogLeNetConfig {
    /// The parameters the network has, counted without building it.
    pub fn param_count(&self) -> u128 {
        // a BasicConv2d: a convolution without bias, and batch norm's scale and shift
        let basic = |c_in: usize, c_out: usize, k: usize| conv_params(c_in, c_out, k, false) + 2 * c_out as u128;
        let mut count = basic(self.input_dim.0, self.stem_channels, 3);
        let mut c = self.stem_channels;
        for p in self.stages.iter().flatten() {
            count += basic(c, p.ch1x1, 1)
                + basic(c, p.ch3x3red, 1)
                + basic(p.ch3x3red, p.ch3x3, 3)
                + basic(c, p.ch5x5red, 1)
                + basic(p.ch5x5red, p.ch5x5, 5)
                + basic(c, p.pool_proj, 1);
            c = p.out_channels();
        }
        count + affine_params(c, self.output_size)
    }
}

impl Default for GoogLeNetConfig {
    /// For 28x28 digits: a 32-channel stem, then two stages of two modules (64 and 112
    /// channels at 14x14, 144 and 160 at 7x7), dropout 0.2, 10 classes.
    fn default() -> Self {
        Self {
            input_dim: (1, 28, 28),
            stem_channels: 32,
            stages: vec![
                vec![
                    InceptionParam::new(16, 16, 32, 8, 8, 8),
                    InceptionParam::new(32, 32, 48, 8, 16, 16),
                ],
                vec![
                    InceptionParam::new(48, 24, 64, 8, 16, 16),
                    InceptionParam::new(48, 32, 64, 12, 24, 24),
                ],
            ],
            dropout_ratio: 0.2,
            output_size: 10,
        }
    }
}

/// A small GoogLeNet (Szegedy et al. 2014, the book's chapter 8.2): a 3x3 stem, then
/// inception modules, each four branches side by side joined on channels (a
/// [`Concat`]): 1x1; 1x1 then 3x3; 1x1 then 5x5; 3x3 max-pool then 1x1. Every
/// convolution is torchvision's `BasicConv2d` (no bias, batch norm with eps `1e-3`,
/// ReLU). Global average pooling, dropout and one Affine layer close it.
///
/// Parameters are named as torchvision's `googlenet`: `conv1.conv.W`,
/// `inception3a.branch2.1.bn.gamma`, `inception4b.branch4.1.conv.W`, `fc.W`.
#[derive(Debug, Clone)]
pub struct GoogLeNet {
    network: Network,
    config: GoogLeNetConfig,
}

model_type!(GoogLeNet, GoogLeNetConfig);

/// torchvision's `Inception` module on `c_in` channels.
fn inception(c_in: usize, p: &InceptionParam, seeds: &mut Seeds) -> Concat {
    Concat::new()
        .with_branch("branch1", basic_conv(c_in, p.ch1x1, 1, seeds))
        .with_branch(
            "branch2",
            Sequential::new()
                .with(basic_conv(c_in, p.ch3x3red, 1, seeds))
                .with(basic_conv(p.ch3x3red, p.ch3x3, 3, seeds)),
        )
        .with_branch(
            "branch3",
            Sequential::new()
                .with(basic_conv(c_in, p.ch5x5red, 1, seeds))
                .with(basic_conv(p.ch5x5red, p.ch5x5, 5, seeds)),
        )
        .with_branch(
            "branch4",
            Sequential::new()
                .with(Pooling::max(3, 3, 1, 1))
                .with(basic_conv(c_in, p.pool_proj, 1, seeds)),
        )
}

impl GoogLeNet {
    /// Builds the network with every random part fixed by `seed`.
    ///
    /// # Panics
    /// If the configuration is invalid ([`GoogLeNet::try_new`] says why instead).
    pub fn new(config: GoogLeNetConfig, seed: u64) -> Self {
        Self::try_new(config, seed).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Builds the network, or says what is wrong with the configuration.
    pub fn try_new(config: GoogLeNetConfig, seed: u64) -> Result<Self, ModelError> {
        let kind = "GoogLeNet";
        let (c0, h0, w0) = config.input_dim;
        check_input(kind, config.input_dim)?;
        check_size(kind, "stem channels", config.stem_channels, MAX_SIZE)?;
        check_size(kind, "number of stages", config.stages.len(), 6)?;
        for stage in &config.stages {
            check_size(kind, "modules in a stage", stage.len(), 8)?;
            for p in stage {
                let widths = [p.ch1x1, p.ch3x3red, p.ch3x3, p.ch5x5red, p.ch5x5, p.pool_proj];
                for w in widths {
                    check_size(kind, "inception width", w, MAX_SIZE)?;
                }
            }
        }
        check_size(kind, "output size", config.output_size, MAX_SIZE)?;
        check_ratio(kind, config.dropout_ratio)?;
        check_params(kind, config.param_count())?;
        if h0 >> config.stages.len() == 0 || w0 >> config.stages.len() == 0 {
            return Err(ModelError::Config {
                kind: kind.into(),
                message: format!("a {h0}x{w0} image cannot be halved {} times", config.stages.len()),
            });
        }
        let mut seeds = Seeds::new(seed);
        let mut root = Sequential::new().with_named("conv1", basic_conv(c0, config.stem_channels, 3, &mut seeds));
        let mut c = config.stem_channels;
        for (s, stage) in config.stages.iter().enumerate() {
            root.push_named(&format!("maxpool{}", s + 1), Box::new(Pooling::max(2, 2, 2, 0)));
            for (m, p) in stage.iter().enumerate() {
                let name = format!("inception{}{}", s + 3, (b'a' + m as u8) as char);
                root.push_named(&name, Box::new(inception(c, p, &mut seeds)));
                c = p.out_channels();
            }
        }
        let root = root
            .with_named("avgpool", GlobalAveragePooling::new())
            .with_named("dropout", Dropout::inverted(config.dropout_ratio, seeds.next()))
            .with_named("fc", Affine::new(c, config.output_size, Init::He, seeds.next()));
        root.output_shape(&[1, c0, h0, w0])?;
        let mut network = Network::new(kind, root);
        network.set_metadata("config", serde_json::to_string(&config).expect("serialisable config"));
        Ok(Self { network, config })
    }
}
