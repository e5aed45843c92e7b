use dl_layers::{Affine, BatchNormalization, GlobalAveragePooling, Init, Layer, Relu, Residual, Sequential};
use serde::{Deserialize, Serialize};

use crate::blocks::{
    affine_params, check_input, check_params, check_size, conv, conv_params, model_type, Seeds, MAX_SIZE,
};
use crate::{ModelError, Network};

/// The settings of a [`ResNet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// `(C, H, W)` of one input image.
    pub input_dim: (usize, usize, usize),
    /// Basic blocks per stage (`n`; the network has `6n + 2` weighted layers: 3 gives
    /// ResNet-20, 5 ResNet-32, 9 ResNet-56).
    pub blocks_per_stage: usize,
    /// Channels of each stage; every stage after the first halves the image size.
    pub widths: Vec<usize>,
    /// Number of classes.
    pub output_size: usize,
}

impl Default for ResNetConfig {
    /// ResNet-20 for 28x28 digits: 3 stages of 3 blocks, 16, 32 and 64 channels
    /// (28 -> 14 -> 7), 10 classes.
    fn default() -> Self {
        Self {
            input_dim: (1, 28, 28),
            blocks_per_stage: 3,
            widths: vec![16, 32, 64],
            output_size: 10,
        }
    }
}

impl ResNetConfig {
    /// The parameters the network has, counted without building it.
    pub fn param_count(&self) -> u128 {
        let bn = |c: usize| 2 * c as u128;
        let Some(&first) = self.widths.first() else {
            return 0;
        };
        let mut count = conv_params(self.input_dim.0, first, 3, false) + bn(first);
        let mut c = first;
        for (i, &width) in self.widths.iter().enumerate() {
            for b in 0..self.blocks_per_stage {
                let stride = if i > 0 && b == 0 { 2 } else { 1 };
                count += conv_params(c, width, 3, false) + bn(width) + conv_params(width, width, 3, false) + bn(width);
                if stride != 1 || c != width {
                    count += conv_params(c, width, 1, false) + bn(width);
                }
                c = width;
            }
        }
        count + affine_params(c, self.output_size)
    }
}

/// The CIFAR ResNet of He et al. (2015, section 4.2), the book's chapter 8.2: a 3x3
/// convolution, then stages of basic blocks (`conv3x3 - bn - relu - conv3x3 - bn`, plus
/// the shortcut, then ReLU: a [`Residual`]); the first block of each later stage has
/// stride 2 and a projection shortcut (1x1 convolution with stride 2, batch norm). Then
/// global average pooling and one Affine layer. Convolutions have no bias (batch norm
/// follows each); batch norm has torchvision's settings.
///
/// Parameters are named as torchvision's `resnet`: `conv1.W`, `bn1.gamma`,
/// `layer2.0.conv1.W`, `layer2.0.downsample.0.W`, `layer3.2.bn2.running_var`, `fc.W`.
#[derive(Debug, Clone)]
pub struct ResNet {
    network: Network,
    config: ResNetConfig,
}

model_type!(ResNet, ResNetConfig);

/// torchvision's `BasicBlock`.
fn basic_block(c_in: usize, c_out: usize, stride: usize, seeds: &mut Seeds) -> Residual {
    let body = Sequential::new()
        .with_named("conv1", conv(c_in, c_out, 3, stride, 1, seeds))
        .with_named("bn1", BatchNormalization::torchvision(c_out))
        .with_named("relu", Relu::new())
        .with_named("conv2", conv(c_out, c_out, 3, 1, 1, seeds))
        .with_named("bn2", BatchNormalization::torchvision(c_out));
    let shortcut = (stride != 1 || c_in != c_out).then(|| {
        Sequential::new()
            .with(conv(c_in, c_out, 1, stride, 0, seeds))
            .with(BatchNormalization::torchvision(c_out))
    });
    Residual::new(body, shortcut)
}

impl ResNet {
    /// Builds the network with every random part fixed by `seed`.
    ///
    /// # Panics
    /// If the configuration is invalid ([`ResNet::try_new`] says why instead).
    pub fn new(config: ResNetConfig, seed: u64) -> Self {
        Self::try_new(config, seed).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Builds the network, or says what is wrong with the configuration.
    pub fn try_new(config: ResNetConfig, seed: u64) -> Result<Self, ModelError> {
        let kind = "ResNet";
        let (c0, h0, w0) = config.input_dim;
        check_input(kind, config.input_dim)?;
        check_size(kind, "blocks per stage", config.blocks_per_stage, 64)?;
        check_size(kind, "number of stages", config.widths.len(), 8)?;
        for &c in &config.widths {
            check_size(kind, "stage width", c, MAX_SIZE)?;
        }
        check_size(kind, "output size", config.output_size, MAX_SIZE)?;
        check_params(kind, config.param_count())?;
        let mut seeds = Seeds::new(seed);
        let w0c = config.widths[0];
        let mut root = Sequential::new()
            .with_named("conv1", conv(c0, w0c, 3, 1, 1, &mut seeds))
            .with_named("bn1", BatchNormalization::torchvision(w0c))
            .with_named("relu", Relu::new());
        let mut c = w0c;
        for (i, &width) in config.widths.iter().enumerate() {
            let mut stage = Sequential::new();
            for b in 0..config.blocks_per_stage {
                let stride = if i > 0 && b == 0 { 2 } else { 1 };
                stage.push(Box::new(basic_block(c, width, stride, &mut seeds)));
                c = width;
            }
            root.push_named(&format!("layer{}", i + 1), Box::new(stage));
        }
        let root = root
            .with_named("avgpool", GlobalAveragePooling::new())
            .with_named("fc", Affine::new(c, config.output_size, Init::He, seeds.next()));
        root.output_shape(&[1, c0, h0, w0])?;
        let mut network = Network::new(kind, root);
        network.set_metadata("config", serde_json::to_string(&config).expect("serialisable config"));
        Ok(Self { network, config })
    }
}
