use dl_tensor::{relu, Isa};
use rayon::prelude::*;

use crate::{check_dout, Layer, LayerError, Op, Tensor};

/// Elements per parallel task of an element-wise layer.
pub(crate) const CHUNK: usize = 1 << 16;

/// The book's `Relu`: `max(0, x)`, element-wise, any shape. Works in place.
#[derive(Debug, Clone, Default)]
pub struct Relu {
    /// `true` where the input was `<= 0` (the book's `self.mask`).
    mask: Vec<bool>,
    shape: Vec<usize>,
}

impl Relu {
    /// A new Relu layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for Relu {
    fn name(&self) -> &str {
        "Relu"
    }

    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        let mut x = crate::into_standard(x);
        let xs = x.as_slice_mut().expect("standard layout");
        let isa = Isa::active();
        if train {
            self.mask.resize(xs.len(), false);
            self.shape = x.shape().to_vec();
            let xs = x.as_slice_mut().expect("standard layout");
            xs.par_chunks_mut(CHUNK)
                .zip(self.mask.par_chunks_mut(CHUNK))
                .for_each(|(xc, mc)| relu::forward_masked(isa, xc, mc));
        } else {
            xs.par_chunks_mut(CHUNK).for_each(|xc| relu::forward(isa, xc));
        }
        Ok(x)
    }

    fn backward(&mut self, dout: Tensor) -> Tensor {
        check_dout("Relu", &dout, &self.shape);
        let mut dout = crate::into_standard(dout);
        dout.as_slice_mut()
            .expect("standard layout")
            .par_chunks_mut(CHUNK)
            .zip(self.mask.par_chunks(CHUNK))
            .for_each(|(dc, mc)| relu::backward_in_place(Isa::active(), dc, mc));
        dout
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        Ok(input.to_vec())
    }

    fn inference_op(&self) -> Result<Op, LayerError> {
        Ok(Op::Relu)
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn clone_for_inference(&self) -> Box<dyn Layer> {
        Box::new(Relu::default())
    }
}
