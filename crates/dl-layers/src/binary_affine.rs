use dl_tensor::Tensor;

use crate::binary_convolution::{renamed, signs};
use crate::sign;
use crate::{Affine, Init, Layer, LayerError, Op, Param};

/// A binarized affine layer (Courbariaux et al., 2016): real-valued latent weights `W`
/// `(D, M)`, which the optimizer updates, and the product computed with their signs
/// (`+1` or `-1`), no bias (a batch norm follows). The input is flattened to `(N, D)`.
///
/// As [`BinaryConvolution`](crate::BinaryConvolution): the straight-through estimator
/// gives `W` the gradient of its signs, [`Layer::clip_params`] keeps `W` in `[-1, 1]`,
/// and the sums of `±1` products are exact in `f32`.
#[derive(Debug, Clone)]
pub struct BinaryAffine {
    /// The latent weights `(D, M)`, in `[-1, 1]`.
    pub w: Param,
    /// The affine layer with `sign(W)` and a zero bias that is no parameter.
    affine: Affine,
}

impl BinaryAffine {
    /// A binarized affine layer from `input_size` to `output_size`; the latent weights
    /// drawn by `init` from `seed` and clipped to `[-1, 1]`.
    pub fn new(input_size: usize, output_size: usize, init: Init, seed: u64) -> Self {
        Self::from_params(Affine::new(input_size, output_size, init, seed).w.value)
    }

    /// A binarized affine layer with latent weights `w` `(D, M)`, clipped to `[-1, 1]`.
    ///
    /// # Panics
    /// If `w` is not 2-D.
    pub fn from_params(w: Tensor) -> Self {
        let b = Tensor::zeros(vec![w.shape().get(1).copied().unwrap_or(0)]);
        let affine = Affine::from_params(signs(&w), b);
        let mut layer = Self {
            w: Param::new(w),
            affine,
        };
        layer.clip_params();
        layer
    }
}

impl Layer for BinaryAffine {
    fn name(&self) -> &str {
        "BinaryAffine"
    }

    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        self.affine.w.value.zip_mut_with(&self.w.value, |s, &w| *s = sign(w));
        self.affine.forward(x, train).map_err(|e| renamed(e, self.name()))
    }

    fn backward(&mut self, dout: Tensor) -> Tensor {
        let dx = self.affine.backward(dout);
        if self.affine.is_trainable() {
            self.w.grad.assign(&self.affine.w.grad);
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
        self.affine.set_input_gradient_needed(needed);
    }

    fn set_trainable(&mut self, trainable: bool) {
        self.affine.set_trainable(trainable);
    }

    fn is_trainable(&self) -> bool {
        self.affine.is_trainable()
    }

    fn set_bf16_products(&mut self, kernel: Option<crate::Bf16Kernel>) {
        self.affine.set_bf16_products(kernel);
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        self.affine.output_shape(input).map_err(|e| renamed(e, self.name()))
    }

    fn inference_op(&self) -> Result<Op, LayerError> {
        Ok(Op::BinaryAffine {
            w: signs(&self.w.value),
        })
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn clone_for_inference(&self) -> Box<dyn Layer> {
        Box::new(BinaryAffine {
            w: self.w.clone(),
            affine: self.affine.inference_copy(),
        })
    }
}
