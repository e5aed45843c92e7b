use rayon::prelude::*;

use crate::relu::CHUNK;
use crate::{check_dout, Layer, LayerError, Op, Tensor};

/// The binarization of a binarized network (Courbariaux et al., 2016): `+1` for
/// `v >= 0`, `-1` otherwise (zero counts as positive, so every value is one of two).
pub fn sign(v: f32) -> f32 {
    if v >= 0.0 {
        1.0
    } else {
        -1.0
    }
}

/// A binarized network's activation: [`sign`] in the forward pass; in the backward pass
/// the straight-through estimator with hard-tanh clipping, `dx = dout` where
/// `|x| <= 1` and `0` elsewhere (the gradient of `htanh(x) = clip(x, -1, 1)`, which
/// `sign` is taken to be for the gradient's sake). Any shape; works in place.
#[derive(Debug, Clone, Default)]
pub struct Sign {
    /// `true` where `|x| <= 1`, the inputs the gradient passes through.
    pass: Vec<bool>,
    shape: Vec<usize>,
}

impl Sign {
    /// A new Sign layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for Sign {
    fn name(&self) -> &str {
        "Sign"
    }

    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        let mut x = crate::into_standard(x);
        if train {
            self.pass.resize(x.len(), false);
            self.shape = x.shape().to_vec();
            let xs = x.as_slice_mut().expect("standard layout");
            xs.par_chunks_mut(CHUNK)
                .zip(self.pass.par_chunks_mut(CHUNK))
                .for_each(|(xc, pc)| {
                    for (v, p) in xc.iter_mut().zip(pc) {
                        *p = v.abs() <= 1.0;
                        *v = sign(*v);
                    }
                });
        } else {
            let xs = x.as_slice_mut().expect("standard layout");
            xs.par_chunks_mut(CHUNK)
                .for_each(|xc| xc.iter_mut().for_each(|v| *v = sign(*v)));
        }
        Ok(x)
    }

    fn backward(&mut self, dout: Tensor) -> Tensor {
        check_dout("Sign", &dout, &self.shape);
        let mut dout = crate::into_standard(dout);
        dout.as_slice_mut()
            .expect("standard layout")
            .par_chunks_mut(CHUNK)
            .zip(self.pass.par_chunks(CHUNK))
            .for_each(|(dc, pc)| {
                for (d, &p) in dc.iter_mut().zip(pc) {
                    *d = if p { *d } else { 0.0 };
                }
            });
        dout
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        Ok(input.to_vec())
    }

    fn inference_op(&self) -> Result<Op, LayerError> {
        Ok(Op::Sign)
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn clone_for_inference(&self) -> Box<dyn Layer> {
        Box::new(Sign::default())
    }
}
