use crate::{check_dout, Layer, LayerError, Tensor};

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

    fn forward(&mut self, mut x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        if train {
            self.mask.clear();
            self.mask.extend(x.iter().map(|&v| v <= 0.0));
            self.shape = x.shape().to_vec();
        }
        x.mapv_inplace(|v| if v > 0.0 { v } else { 0.0 });
        Ok(x)
    }

    fn backward(&mut self, mut dout: Tensor) -> Tensor {
        check_dout("Relu", &dout, &self.shape);
        for (d, &m) in dout.iter_mut().zip(&self.mask) {
            if m {
                *d = 0.0;
            }
        }
        dout
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        Ok(input.to_vec())
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }
}
