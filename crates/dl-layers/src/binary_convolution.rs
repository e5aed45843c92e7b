use dl_tensor::{ConvAlgo, Tensor};

use crate::sign::sign;
use crate::{Convolution, Init, Layer, LayerError, Op, Param};

/// A binarized convolution (Courbariaux et al., 2016): real-valued latent filters `W`
/// `(FN, C, FH, FW)`, which the optimizer updates, and the convolution computed with
/// their signs ([`sign`](crate::sign), `+1` or `-1`), no bias (a batch norm follows).
///
/// `backward` returns the input gradient of the convolution with the signs, and gives
/// `W` the gradient of the signs passed straight through (the straight-through
/// estimator: `dL/dW = dL/dsign(W)`). [`Layer::clip_params`] keeps `W` in `[-1, 1]`, the
/// range in which the estimate is taken to hold. Since `±1` products sum exactly in
/// `f32`, the output is exact (below 2^24 per sum), which the packed 1-bit kernels rely
/// on; the Winograd transform is not exact, so this layer never runs it.
#[derive(Debug, Clone)]
pub struct BinaryConvolution {
    /// The latent filters `(FN, C, FH, FW)`, in `[-1, 1]`.
    pub w: Param,
    /// The convolution with `sign(W)`, no bias.
    conv: Convolution,
    stride: usize,
    pad: usize,
}

/// `t` with every value replaced by its sign.
pub(crate) fn signs(t: &Tensor) -> Tensor {
    t.mapv(sign)
}

/// `e` naming `layer` in place of the inner layer it came from.
pub(crate) fn renamed(e: LayerError, layer: &str) -> LayerError {
    match e {
        LayerError::Shape { expected, given, .. } => LayerError::Shape {
            layer: layer.into(),
            expected,
            given,
        },
        LayerError::Geometry { source, .. } => LayerError::Geometry {
            layer: layer.into(),
            source,
        },
        LayerError::Invalid { message, .. } => LayerError::Invalid {
            layer: layer.into(),
            message,
        },
    }
}

/// The algorithms whose sums of `±1` products are exact: Winograd's transform is not.
fn exact(algo: ConvAlgo) -> ConvAlgo {
    match algo {
        ConvAlgo::Auto | ConvAlgo::Winograd => ConvAlgo::Direct,
        other => other,
    }
}

impl BinaryConvolution {
    /// A binarized convolution from `in_channels` to `filters` channels with `fh x fw`
    /// filters; the latent weights drawn by `init` from `seed` and clipped to `[-1, 1]`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_channels: usize,
        filters: usize,
        fh: usize,
        fw: usize,
        stride: usize,
        pad: usize,
        init: Init,
        seed: u64,
    ) -> Self {
        let conv = Convolution::new(in_channels, filters, fh, fw, stride, pad, init, seed).without_bias();
        Self::from_params(conv.w.value.clone(), stride, pad)
    }

    /// A binarized convolution with latent filters `w` `(FN, C, FH, FW)`, clipped to
    /// `[-1, 1]`.
    ///
    /// # Panics
    /// If `w` is not 4-D or `stride == 0`.
    pub fn from_params(w: Tensor, stride: usize, pad: usize) -> Self {
        let b = Tensor::zeros(vec![w.shape().first().copied().unwrap_or(0)]);
        let mut conv = Convolution::from_params(signs(&w), b, stride, pad).without_bias();
        conv.set_algo(ConvAlgo::Direct);
        let mut layer = Self {
            w: Param::new(w),
            conv,
            stride,
            pad,
        };
        layer.clip_params();
        layer
    }
}

impl Layer for BinaryConvolution {
    fn name(&self) -> &str {
        "BinaryConvolution"
    }

    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        // the latent weights may have changed (an optimizer step, a load) since the last
        // forward
        self.conv.w.value.zip_mut_with(&self.w.value, |s, &w| *s = sign(w));
        self.conv.forward(x, train).map_err(|e| renamed(e, self.name()))
    }

    fn backward(&mut self, dout: Tensor) -> Tensor {
        let dx = self.conv.backward(dout);
        if self.conv.is_trainable() {
            self.w.grad.assign(&self.conv.w.grad);
        }
        dx
    }

    fn params(&self) -> Vec<(String, &Param)> {
        vec![("W".into(), &self.w)]
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        vec![("W".into(), &mut self.w)]
    }

    fn clip_params(&mut self) {
        self.w.value.mapv_inplace(|v| v.clamp(-1.0, 1.0));
    }

    fn set_input_gradient_needed(&mut self, needed: bool) {
        self.conv.set_input_gradient_needed(needed);
    }

    fn set_trainable(&mut self, trainable: bool) {
        self.conv.set_trainable(trainable);
    }

    fn is_trainable(&self) -> bool {
        self.conv.is_trainable()
    }

    /// Sets the algorithm, except that [`ConvAlgo::Winograd`] and [`ConvAlgo::Auto`]
    /// (which may pick Winograd) run the direct kernel: only exact algorithms.
    fn set_conv_algo(&mut self, algo: ConvAlgo) {
        self.conv.set_algo(exact(algo));
    }

    fn set_bf16_products(&mut self, kernel: Option<crate::Bf16Kernel>) {
        self.conv.set_bf16_products(kernel);
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        self.conv.output_shape(input).map_err(|e| renamed(e, self.name()))
    }

    fn inference_op(&self) -> Result<Op, LayerError> {
        Ok(Op::BinaryConvolution {
            w: signs(&self.w.value),
            stride: self.stride,
            pad: self.pad,
        })
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn clone_for_inference(&self) -> Box<dyn Layer> {
        Box::new(BinaryConvolution {
            w: self.w.clone(),
            conv: self.conv.inference_copy(),
            stride: self.stride,
            pad: self.pad,
        })
    }
}
