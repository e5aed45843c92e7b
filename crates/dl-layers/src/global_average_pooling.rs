use crate::{check_dout, Layer, LayerError, Op, Tensor};

/// Global average pooling: the mean of each channel's `H x W` plane. Input
/// `(N, C, H, W)`, output `(N, C)` (ResNet's and GoogLeNet's last feature layer, before
/// the classifier; torchvision's `AdaptiveAvgPool2d(1)` then `flatten`).
#[derive(Debug, Clone, Default)]
pub struct GlobalAveragePooling {
    shape: Vec<usize>,
}

impl GlobalAveragePooling {
    /// A new layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for GlobalAveragePooling {
    fn name(&self) -> &str {
        "GlobalAveragePooling"
    }

    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        let shape = self.output_shape(x.shape())?;
        let plane = x.shape()[2] * x.shape()[3];
        let x = crate::into_standard(x);
        let scale = 1.0 / plane as f32;
        let out: Vec<f32> = x
            .as_slice()
            .expect("standard")
            .chunks_exact(plane)
            .map(|p| p.iter().sum::<f32>() * scale)
            .collect();
        if train {
            self.shape = x.shape().to_vec();
        }
        Ok(Tensor::from_shape_vec(shape, out).expect("(N, C)"))
    }

    fn backward(&mut self, dout: Tensor) -> Tensor {
        assert!(
            !self.shape.is_empty(),
            "GlobalAveragePooling::backward before a training forward"
        );
        check_dout("GlobalAveragePooling", &dout, &self.shape[..2]);
        let plane = self.shape[2] * self.shape[3];
        let scale = 1.0 / plane as f32;
        let mut dx = Vec::with_capacity(dout.len() * plane);
        for &d in dout.as_standard_layout().as_slice().expect("standard") {
            dx.extend(std::iter::repeat_n(d * scale, plane));
        }
        Tensor::from_shape_vec(self.shape.clone(), dx).expect("dx shape")
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        if input.len() != 4 || input[2] == 0 || input[3] == 0 {
            return Err(LayerError::shape(
                "GlobalAveragePooling",
                "(N, C, H, W) with H, W >= 1",
                input,
            ));
        }
        Ok(input[..2].to_vec())
    }

    fn inference_op(&self) -> Result<Op, LayerError> {
        Ok(Op::GlobalAveragePooling)
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn clone_for_inference(&self) -> Box<dyn Layer> {
        Box::new(GlobalAveragePooling::default())
    }
}
