use rayon::prelude::*;

use crate::relu::CHUNK;
use crate::{check_dout, prefixed, ConvAlgo, Layer, LayerError, Op, Param, Sequential, Tensor};

/// ResNet's skip connection: `out = relu(body(x) + shortcut(x))`, where the shortcut is
/// the identity or, when the body changes the shape, a projection (torchvision's
/// `downsample`: a 1x1 convolution with the body's stride, then batch norm). Backward
/// sends the gradient through both and adds the two input gradients: through the
/// identity it passes undamped.
///
/// The body's parameters are named as if they were the block's own (`conv1.W`,
/// `bn1.gamma`, as torchvision's `BasicBlock`), the shortcut's under `downsample.`
/// (`downsample.0.W`), so the body must not have a layer named `downsample`. The add and
/// the ReLU are one pass over the output.
#[derive(Debug, Clone)]
pub struct Residual {
    body: Sequential,
    shortcut: Option<Sequential>,
    /// `true` where the output is positive (the ReLU passes the gradient).
    mask: Vec<bool>,
    shape: Vec<usize>,
}

impl Residual {
    /// A block with `body` and a shortcut: `None` for the identity.
    ///
    /// # Panics
    /// If the body has a layer named `downsample` (the names would collide).
    pub fn new(body: Sequential, shortcut: Option<Sequential>) -> Self {
        assert!(
            !body.names().iter().any(|n| n == "downsample"),
            "Residual: the body has a layer named \"downsample\", the shortcut's name"
        );
        Self {
            body,
            shortcut,
            mask: Vec::new(),
            shape: Vec::new(),
        }
    }

    /// The body.
    pub fn body(&self) -> &Sequential {
        &self.body
    }

    /// The projection shortcut, if any.
    pub fn shortcut(&self) -> Option<&Sequential> {
        self.shortcut.as_ref()
    }
}

impl Layer for Residual {
    fn name(&self) -> &str {
        "Residual"
    }

    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        let y = self.body.forward(x.clone(), train)?;
        let s = match &mut self.shortcut {
            Some(sc) => sc.forward(x, train)?,
            None => x,
        };
        if y.shape() != s.shape() {
            return Err(LayerError::Invalid {
                layer: "Residual".into(),
                message: format!(
                    "the body gives {:?} but the shortcut {:?}: a block that changes the shape needs a projection",
                    y.shape(),
                    s.shape()
                ),
            });
        }
        let mut y = crate::into_standard(y);
        if train {
            self.shape = y.shape().to_vec();
        }
        let s = s.as_standard_layout();
        let (ys, ss) = (y.as_slice_mut().expect("standard"), s.as_slice().expect("standard"));
        if train {
            self.mask.resize(ys.len(), false);
            ys.par_chunks_mut(CHUNK)
                .zip(ss.par_chunks(CHUNK))
                .zip(self.mask.par_chunks_mut(CHUNK))
                .for_each(|((yc, sc), mc)| {
                    for ((v, s), m) in yc.iter_mut().zip(sc).zip(mc) {
                        *v = (*v + s).max(0.0);
                        *m = *v > 0.0;
                    }
                });
        } else {
            ys.par_chunks_mut(CHUNK).zip(ss.par_chunks(CHUNK)).for_each(|(yc, sc)| {
                for (v, s) in yc.iter_mut().zip(sc) {
                    *v = (*v + s).max(0.0);
                }
            });
        }
        Ok(y)
    }

    fn backward(&mut self, dout: Tensor) -> Tensor {
        check_dout("Residual", &dout, &self.shape);
        let mut d = crate::into_standard(dout);
        d.as_slice_mut()
            .expect("standard")
            .par_chunks_mut(CHUNK)
            .zip(self.mask.par_chunks(CHUNK))
            .for_each(|(dc, mc)| {
                for (v, &m) in dc.iter_mut().zip(mc) {
                    *v = if m { *v } else { 0.0 };
                }
            });
        let ds = match &mut self.shortcut {
            Some(sc) => sc.backward(d.clone()),
            None => d.clone(),
        };
        let mut dx = crate::into_standard(self.body.backward(d));
        dx.as_slice_mut()
            .expect("standard")
            .par_chunks_mut(CHUNK)
            .zip(ds.as_standard_layout().as_slice().expect("standard").par_chunks(CHUNK))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
        dx
    }

    fn params(&self) -> Vec<(String, &Param)> {
        let mut out = self.body.params();
        out.extend(self.shortcut.iter().flat_map(|s| prefixed("downsample", s.params())));
        out
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        let mut out = self.body.params_mut();
        out.extend(
            self.shortcut
                .iter_mut()
                .flat_map(|s| prefixed("downsample", s.params_mut())),
        );
        out
    }

    fn buffers(&self) -> Vec<(String, &Tensor)> {
        let mut out = self.body.buffers();
        out.extend(self.shortcut.iter().flat_map(|s| prefixed("downsample", s.buffers())));
        out
    }

    fn buffers_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out = self.body.buffers_mut();
        out.extend(
            self.shortcut
                .iter_mut()
                .flat_map(|s| prefixed("downsample", s.buffers_mut())),
        );
        out
    }

    fn set_input_gradient_needed(&mut self, needed: bool) {
        self.body.set_input_gradient_needed(needed);
        if let Some(s) = &mut self.shortcut {
            s.set_input_gradient_needed(needed);
        }
    }

    fn set_trainable(&mut self, trainable: bool) {
        self.body.set_trainable(trainable);
        if let Some(s) = &mut self.shortcut {
            s.set_trainable(trainable);
        }
    }

    fn is_trainable(&self) -> bool {
        self.body.is_trainable() || self.shortcut.as_ref().is_some_and(|s| s.is_trainable())
    }

    fn trainable_params_mut(&mut self) -> Vec<(String, &mut Param)> {
        let mut out = self.body.trainable_params_mut();
        out.extend(
            self.shortcut
                .iter_mut()
                .flat_map(|s| prefixed("downsample", s.trainable_params_mut())),
        );
        out
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Layer> {
        match (name, &mut self.shortcut) {
            ("downsample", Some(s)) => Some(s),
            _ => self.body.child_mut(name),
        }
    }

    fn set_conv_algo(&mut self, algo: ConvAlgo) {
        self.body.set_conv_algo(algo);
        if let Some(s) = &mut self.shortcut {
            s.set_conv_algo(algo);
        }
    }

    fn set_iteration(&mut self, iteration: u64) {
        self.body.set_iteration(iteration);
        if let Some(s) = &mut self.shortcut {
            s.set_iteration(iteration);
        }
    }

    fn set_batch_offset(&mut self, first: u64) {
        self.body.set_batch_offset(first);
        if let Some(s) = &mut self.shortcut {
            s.set_batch_offset(first);
        }
    }

    fn set_bf16_products(&mut self, kernel: Option<crate::Bf16Kernel>) {
        self.body.set_bf16_products(kernel);
        if let Some(s) = &mut self.shortcut {
            s.set_bf16_products(kernel);
        }
    }

    fn clip_params(&mut self) {
        self.body.clip_params();
        if let Some(s) = &mut self.shortcut {
            s.clip_params();
        }
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        let y = self.body.output_shape(input)?;
        let s = match &self.shortcut {
            Some(sc) => sc.output_shape(input)?,
            None => input.to_vec(),
        };
        if y != s {
            return Err(LayerError::Invalid {
                layer: "Residual".into(),
                message: format!("the body gives {y:?} but the shortcut {s:?}"),
            });
        }
        Ok(y)
    }

    fn inference_op(&self) -> Result<Op, LayerError> {
        Ok(Op::Residual {
            body: self.body.inference_ops()?,
            shortcut: self.shortcut.as_ref().map(Sequential::inference_ops).transpose()?,
        })
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn clone_for_inference(&self) -> Box<dyn Layer> {
        Box::new(Residual {
            body: self.body.inference_copy(),
            shortcut: self.shortcut.as_ref().map(Sequential::inference_copy),
            mask: Vec::new(),
            shape: Vec::new(),
        })
    }
}
