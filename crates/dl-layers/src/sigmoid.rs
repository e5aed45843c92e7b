use crate::{check_dout, Layer, LayerError, Op, Tensor};

/// The book's `Sigmoid`: `1 / (1 + exp(-x))`, element-wise, any shape.
#[derive(Debug, Clone, Default)]
pub struct Sigmoid {
    out: Option<Tensor>,
}

impl Sigmoid {
    /// A new Sigmoid layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for Sigmoid {
    fn name(&self) -> &str {
        "Sigmoid"
    }

    fn forward(&mut self, mut x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        x.mapv_inplace(|v| 1.0 / (1.0 + (-v).exp()));
        if train {
            self.out = Some(x.clone());
        }
        Ok(x)
    }

    fn backward(&mut self, mut dout: Tensor) -> Tensor {
        let out = self.out.as_ref().expect("Sigmoid::backward before a training forward");
        check_dout("Sigmoid", &dout, out.shape());
        ndarray::Zip::from(&mut dout)
            .and(out)
            .for_each(|d, &y| *d *= (1.0 - y) * y);
        dout
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        Ok(input.to_vec())
    }

    fn inference_op(&self) -> Result<Op, LayerError> {
        Ok(Op::Sigmoid)
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn clone_for_inference(&self) -> Box<dyn Layer> {
        Box::new(Sigmoid::default())
    }
}
