//! # dl-layers
//!
//! The book's layers (`common/layers.py`), one file each, with `forward` and `backward`
//! side by side and the cache each layer needs kept on the layer:
//! [`Relu`], [`Sigmoid`], [`Affine`], [`SoftmaxWithLoss`], [`Dropout`],
//! [`BatchNormalization`], [`Convolution`], [`Pooling`]; [`GlobalAveragePooling`]; and
//! the blocks, themselves layers, that deeper networks are made of: [`Sequential`]
//! (layers in a row, VGG), [`Residual`] (a body plus a shortcut, ResNet) and [`Concat`]
//! (branches side by side joined on channels, GoogLeNet's inception module); and the
//! binarized network's layers (Courbariaux et al., 2016): [`Sign`], [`BinaryConvolution`]
//! and [`BinaryAffine`]; and [`Deskew`], the MNIST literature's deskewing of digits by
//! their moments.
//!
//! Every layer implements [`Layer`]: `forward` takes its input by value (so `Relu` works
//! in place and `Convolution` keeps what it needs without a copy) and returns a typed
//! [`LayerError`] when the input has the wrong shape; `backward` takes the upstream
//! gradient and returns the gradient for the input; parameters and their gradients are
//! reached by name through [`Layer::params`] and [`Layer::params_mut`].
//!
//! [`Layer::inference_op`] gives a layer's evaluation-mode computation as data ([`Op`]),
//! for inference engines of other precisions.
//!
//! [`gradcheck`] holds the numerical-gradient check that every layer is tested with.
//!
//! ```
//! use dl_layers::{Convolution, Init, Layer, Pooling, Relu};
//! use ndarray::ArrayD;
//!
//! let mut conv = Convolution::new(1, 16, 3, 3, 1, 1, Init::He, 42);
//! let mut relu = Relu::new();
//! let mut pool = Pooling::max(2, 2, 2, 0);
//! let x = ArrayD::<f32>::zeros(vec![8, 1, 28, 28]);          // (N, C, H, W)
//! let y = conv.forward(x, true).unwrap();                    // (8, 16, 28, 28)
//! let y = pool.forward(relu.forward(y, true).unwrap(), true).unwrap();
//! assert_eq!(y.shape(), &[8, 16, 14, 14]);
//! // a wrong channel count is an error that names the layer and both shapes
//! let err = conv.forward(ArrayD::zeros(vec![8, 3, 28, 28]), false).unwrap_err();
//! assert!(err.to_string().contains("Convolution"));
//! ```

mod affine;
mod batch_norm;
mod binary_affine;
mod binary_convolution;
mod concat;
mod convolution;
mod deskew;
mod dropout;
mod global_average_pooling;
pub mod gradcheck;
mod inference;
mod init;
mod pooling;
mod relu;
mod residual;
mod sequential;
mod sigmoid;
mod sign;
mod softmax_with_loss;

pub use affine::Affine;
pub use batch_norm::{BatchNormMode, BatchNormalization};
pub use binary_affine::BinaryAffine;
pub use binary_convolution::BinaryConvolution;
pub use concat::Concat;
pub use convolution::Convolution;
pub use deskew::Deskew;
pub use dl_tensor::dpbf16::Bf16Kernel;
pub use dl_tensor::{ConvAlgo, Tensor};
pub use dropout::Dropout;
pub use global_average_pooling::GlobalAveragePooling;
pub use inference::Op;
pub use init::Init;
pub use pooling::{PoolKind, Pooling};
pub use relu::Relu;
pub use residual::Residual;
pub use sequential::Sequential;
pub use sigmoid::Sigmoid;
pub use sign::{sign, Sign};
pub use softmax_with_loss::{Labels, SoftmaxWithLoss};

/// A trainable parameter: its value and the gradient from the last backward pass (same
/// shape).
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The value.
    pub value: Tensor,
    /// `dL/dvalue` from the last backward pass.
    pub grad: Tensor,
}

impl Param {
    /// A parameter with the given value and a zero gradient.
    pub fn new(value: Tensor) -> Self {
        let grad = Tensor::zeros(value.raw_dim());
        Self { value, grad }
    }
}

/// Why a layer refused its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LayerError {
    /// The input has the wrong shape for this layer.
    #[error("{layer}: expected input of shape {expected}, got {given:?}")]
    Shape {
        /// The layer's name, e.g. `"Convolution"`.
        layer: String,
        /// The expected shape, in words, e.g. `"(N, 3, H, W)"`.
        expected: String,
        /// The shape that was given.
        given: Vec<usize>,
    },
    /// The window does not fit the input.
    #[error("{layer}: {source}")]
    Geometry {
        /// The layer's name.
        layer: String,
        /// What is wrong with the window.
        source: dl_tensor::GeometryError,
    },
    /// Anything else the layer cannot accept: labels that do not fit the scores, a
    /// configuration that cannot work.
    #[error("{layer}: {message}")]
    Invalid {
        /// The layer's name.
        layer: String,
        /// What is wrong.
        message: String,
    },
}

impl LayerError {
    pub(crate) fn shape(layer: &str, expected: impl Into<String>, given: &[usize]) -> Self {
        LayerError::Shape {
            layer: layer.to_string(),
            expected: expected.into(),
            given: given.to_vec(),
        }
    }
}

/// One layer of a network: the book's `forward`/`backward` pair and its parameters.
///
/// `forward` must be called before `backward`; the layer keeps what `backward` needs
/// from the last `forward` with `train = true`.
pub trait Layer: Send + Sync {
    /// The book's name for the layer, e.g. `"Convolution"`.
    fn name(&self) -> &str;

    /// Computes the output. `train` selects training behaviour (dropout masks,
    /// batch statistics) and makes the layer keep what `backward` needs.
    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError>;

    /// The evaluation forward (`forward(x, false)`) followed by a ReLU, `max(0, y)`:
    /// what a [`Sequential`] runs for this layer and the [`Relu`] after it, in
    /// evaluation. A layer that can apply the ReLU as it writes its output (a
    /// [`Convolution`]) saves the ReLU's own pass over memory; the default runs the two
    /// one after the other.
    fn forward_relu(&mut self, x: Tensor) -> Result<Tensor, LayerError> {
        let y = self.forward(x, false)?;
        Relu::new().forward(y, false)
    }

    /// Whether the layer runs the [`Relu`] after it in training as well
    /// ([`Layer::forward_relu_train`]); a [`Sequential`] then skips that ReLU both ways.
    /// A [`Convolution`] does; the default is `false`.
    fn fuses_relu_in_training(&self) -> bool {
        false
    }

    /// The training forward (`forward(x, true)`) followed by a ReLU, for a layer whose
    /// [`Layer::fuses_relu_in_training`] is `true`: returns `max(0, y)` and keeps the
    /// ReLU's mask, and the next `backward` takes the gradient with respect to the ReLU's
    /// output (the ReLU's backward runs inside it). The default, for a layer that cannot,
    /// is an error.
    fn forward_relu_train(&mut self, x: Tensor) -> Result<Tensor, LayerError> {
        Err(LayerError::Invalid {
            layer: self.name().to_string(),
            message: format!("cannot run the ReLU after it in training (input {:?})", x.shape()),
        })
    }

    /// Whether the layer can run, on an input of shape `input`, the [`Relu`] after it and
    /// the book's 2x2 max pooling with stride 2 after that (`Pooling::max(2, 2, 2, 0)`)
    /// in one pass ([`Layer::forward_relu_pool`]); a [`Sequential`] then skips the ReLU
    /// and the pooling both ways. A [`Convolution`] whose output planes have even sides
    /// does; the default is `false`.
    fn fuses_relu_pool(&self, _input: &[usize]) -> bool {
        false
    }

    /// The forward pass followed by a ReLU and a 2x2 max pooling with stride 2, for a
    /// layer whose [`Layer::fuses_relu_pool`] is `true`: the same values as the three
    /// layers one after another. In training the layer keeps the ReLU's mask and the
    /// pooling's positions, and the next `backward` takes the gradient with respect to
    /// the pooled output. The default, for a layer that cannot, is an error.
    fn forward_relu_pool(&mut self, x: Tensor, _train: bool) -> Result<Tensor, LayerError> {
        Err(LayerError::Invalid {
            layer: self.name().to_string(),
            message: format!("cannot run the ReLU and the pooling after it (input {:?})", x.shape()),
        })
    }

    /// Given `dL/dout`, stores the parameter gradients and returns `dL/dx`.
    ///
    /// # Panics
    /// If called without a preceding training `forward`, or with a `dout` whose shape is
    /// not that of the last output: both are programmer errors.
    fn backward(&mut self, dout: Tensor) -> Tensor;

    /// The trainable parameters by path within the layer, in a fixed order: a plain
    /// layer names its own (`"W"`, `"b"`, `"gamma"`, ...); a block prefixes its
    /// children's with their names (`"conv1.W"`, `"layer1.0.bn1.gamma"`), so the names of
    /// a whole network come from one traversal of its root and are unique by
    /// construction.
    fn params(&self) -> Vec<(String, &Param)> {
        Vec::new()
    }

    /// Mutable access to the same parameters, in the same order.
    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        Vec::new()
    }

    /// Non-trainable state that must be saved with the parameters (batch norm's running
    /// mean and variance), by path as in [`Layer::params`].
    fn buffers(&self) -> Vec<(String, &Tensor)> {
        Vec::new()
    }

    /// Mutable access to the buffers, in the same order.
    fn buffers_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        Vec::new()
    }

    /// Tells the layer whether anyone reads the `dL/dx` its `backward` returns (`true`
    /// unless told otherwise). A network's first layer is told `false`, and so is every
    /// layer below the lowest trainable one ([`Layer::set_trainable`]): a layer may then
    /// skip that work and return zeros. Containers work out what each child is told.
    /// Layers that gain nothing ignore it.
    fn set_input_gradient_needed(&mut self, _needed: bool) {}

    /// Trains (`true`, the default) or freezes every parameter of the layer, as when
    /// fine-tuning a pretrained network: `backward` computes no gradient for a frozen
    /// parameter (it keeps its last value, and [`Layer::trainable_params_mut`] leaves the
    /// parameter out), and a frozen batch norm normalises with its running statistics and
    /// leaves them alone, in training too. Containers pass it to every child; layers
    /// without parameters ignore it.
    fn set_trainable(&mut self, _trainable: bool) {}

    /// Whether `backward` computes a gradient for any parameter of the layer.
    fn is_trainable(&self) -> bool {
        false
    }

    /// The parameters `backward` computes gradients for, named and ordered as by
    /// [`Layer::params_mut`].
    fn trainable_params_mut(&mut self) -> Vec<(String, &mut Param)> {
        if self.is_trainable() {
            self.params_mut()
        } else {
            Vec::new()
        }
    }

    /// The direct child named `name` of a container (a layer of a [`Sequential`], a
    /// branch of a [`Concat`], the `downsample` shortcut of a [`Residual`] and its body's
    /// layers), so that a path such as `layer2.1.conv1` reaches a layer deep inside.
    fn child_mut(&mut self, _name: &str) -> Option<&mut dyn Layer> {
        None
    }

    /// Sets the algorithm of every convolution in the layer ([`Convolution::set_algo`]);
    /// blocks pass it to their children, other layers ignore it.
    fn set_conv_algo(&mut self, _algo: ConvAlgo) {}

    /// Tells the layer which training iteration the next forward belongs to: layers that
    /// draw random numbers (dropout) draw those of `(seed, iteration)`, so a run resumed
    /// at any iteration makes the same draws as one that never stopped. Containers pass
    /// it to their children.
    fn set_iteration(&mut self, _iteration: u64) {}

    /// Tells the layer that the next training forward's first sample is sample `first`
    /// of the iteration's global mini-batch, as when a data-parallel rank computes one
    /// slice of it: dropout then draws, for every sample, exactly what one process
    /// computing the whole mini-batch draws for it. It lasts for one forward (the next
    /// [`Layer::set_iteration`] resets it to 0). Containers pass it to their children.
    fn set_batch_offset(&mut self, _first: u64) {}

    /// Computes the layer's products in bfloat16 by `kernel` (`Some`), or in `f32`
    /// (`None`, the default): the weights, the input and, in `backward`, the upstream
    /// gradient are rounded to bf16 before they are multiplied, and the products are
    /// summed in `f32`, by the layer's own `f32` kernels on rounded operands
    /// ([`Bf16Kernel::Rounded`]) or by the bf16 GEMM ([`dl_tensor::dpbf16`]:
    /// `vdpbf16ps` as [`Bf16Kernel::Avx512`], its exact sums in plain Rust as
    /// [`Bf16Kernel::Scalar`]; [`Bf16Kernel::Rounded`] is the fastest on every CPU
    /// measured). This is bf16 training with `f32` master weights: the parameters, their
    /// gradients and the optimizer stay in `f32`, and `backward` is the gradient of the
    /// rounded computation (rounding passed straight through). Layers without products
    /// (activations, pooling, batch norm) ignore it; containers pass it to their
    /// children.
    ///
    /// # Panics
    /// If `kernel` cannot run on this CPU ([`Bf16Kernel::supported`]).
    fn set_bf16_products(&mut self, _kernel: Option<Bf16Kernel>) {}

    /// Puts the parameters back in the set they must stay in, after an optimizer step
    /// has moved them: a binarized layer ([`BinaryConvolution`], [`BinaryAffine`]) clips
    /// its latent weights to `[-1, 1]`, as the BNN recipe does after every update. The
    /// Trainer calls it after every step; containers pass it to their children; other
    /// layers have no constraint and ignore it.
    fn clip_params(&mut self) {}

    /// The output shape for a given input shape (batch dimension included), or the
    /// error `forward` would give.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError>;

    /// What the layer computes in evaluation, as data ([`Op`]): the form an inference
    /// engine of another precision runs. Every layer of this crate has one (the loss
    /// layer is not a [`Layer`]); a layer without one says so with
    /// [`LayerError::Invalid`], the default.
    fn inference_op(&self) -> Result<Op, LayerError> {
        Err(LayerError::Invalid {
            layer: self.name().to_string(),
            message: "has no inference form (Layer::inference_op)".into(),
        })
    }

    /// A boxed copy of the layer, parameters and state included.
    fn clone_box(&self) -> Box<dyn Layer>;

    /// A boxed copy for evaluation: the parameters, the buffers and the settings, but
    /// nothing of what a training forward keeps for `backward` (its input, masks,
    /// normalised values), which for a whole network is a batch's activations. Its
    /// evaluation forward gives what the layer's gives, bit for bit; its `backward`
    /// needs a training forward of its own first. Evaluation's per-thread copies of a
    /// network are made with it. The default, [`Layer::clone_box`], suits a layer that
    /// keeps nothing of that size.
    fn clone_for_inference(&self) -> Box<dyn Layer> {
        self.clone_box()
    }
}

impl Clone for Box<dyn Layer> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// The tensor itself when it is in standard (row-major, contiguous) layout, else a
/// standard-layout copy.
pub(crate) fn into_standard(x: Tensor) -> Tensor {
    if x.is_standard_layout() {
        x
    } else {
        x.as_standard_layout().into_owned()
    }
}

/// `(path, item)` pairs of a child named `name`, as the parent's: `"name.path"`.
pub(crate) fn prefixed<T>(name: &str, items: Vec<(String, T)>) -> Vec<(String, T)> {
    items.into_iter().map(|(n, p)| (format!("{name}.{n}"), p)).collect()
}

/// Checks `dout` has the shape `backward` expects, naming the layer otherwise.
pub(crate) fn check_dout(layer: &str, dout: &Tensor, expected: &[usize]) {
    assert_eq!(
        dout.shape(),
        expected,
        "{layer}::backward: dout has shape {:?}, the last forward output had {:?}",
        dout.shape(),
        expected
    );
}
