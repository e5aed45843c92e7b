use ndarray::{Array1, Array3, ArrayView3, Axis, Zip};

use crate::{check_dout, Layer, LayerError, Param, Tensor};

/// Over what [`BatchNormalization`] takes its statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchNormMode {
    /// The book's form: one mean and variance per activation. A 4-D input
    /// `(N, C, H, W)` is flattened to `(N, C*H*W)` first, as `common/layers.py` does;
    /// `gamma` and `beta` have `D` entries.
    PerActivation,
    /// The convolutional form: one mean and variance per channel over `N`, `H` and `W`;
    /// input `(N, C, H, W)`, `gamma` and `beta` have `C` entries.
    PerChannel,
}

/// The book's `BatchNormalization`: `out = gamma * (x - mean) / sqrt(var + 1e-6) + beta`,
/// with batch statistics in training and running averages
/// (`running = momentum * running + (1 - momentum) * batch`) in evaluation.
#[derive(Debug, Clone)]
pub struct BatchNormalization {
    /// Scale, one per feature.
    pub gamma: Param,
    /// Shift, one per feature.
    pub beta: Param,
    /// Running mean used in evaluation.
    pub running_mean: Tensor,
    /// Running variance used in evaluation.
    pub running_var: Tensor,
    momentum: f32,
    mode: BatchNormMode,
    cache: Option<Cache>,
}

#[derive(Debug, Clone)]
struct Cache {
    shape: Vec<usize>,
    /// Normalised input, viewed `(N, F, S)`.
    xn: Array3<f32>,
    /// `sqrt(var + eps)` per feature.
    std: Array1<f32>,
}

/// The book's epsilon (`10e-7`).
const EPS: f32 = 1e-6;

impl BatchNormalization {
    /// A batch norm over `features` features (activations or channels, by `mode`), with
    /// `gamma = 1`, `beta = 0`, and the book's momentum of 0.9.
    pub fn new(features: usize, mode: BatchNormMode) -> Self {
        Self {
            gamma: Param::new(Tensor::ones(vec![features])),
            beta: Param::new(Tensor::zeros(vec![features])),
            running_mean: Tensor::zeros(vec![features]),
            running_var: Tensor::zeros(vec![features]),
            momentum: 0.9,
            mode,
            cache: None,
        }
    }

    /// Sets the running-average momentum (the book's default is 0.9).
    pub fn with_momentum(mut self, momentum: f32) -> Self {
        self.momentum = momentum;
        self
    }

    fn features(&self) -> usize {
        self.gamma.value.len()
    }

    /// `(N, F, S)`: batch, features, positions sharing a feature's statistics.
    fn grouping(&self, shape: &[usize]) -> Result<(usize, usize, usize), LayerError> {
        let f = self.features();
        let ok = |n, s| Ok((n, f, s));
        match self.mode {
            BatchNormMode::PerActivation if shape.len() >= 2 && shape[1..].iter().product::<usize>() == f => {
                ok(shape[0], 1)
            }
            BatchNormMode::PerChannel if shape.len() == 4 && shape[1] == f => ok(shape[0], shape[2] * shape[3]),
            BatchNormMode::PerActivation => Err(LayerError::shape(
                "BatchNormalization",
                format!("(N, {f}) or (N, ...) with {f} values per sample"),
                shape,
            )),
            BatchNormMode::PerChannel => Err(LayerError::shape(
                "BatchNormalization",
                format!("(N, {f}, H, W)"),
                shape,
            )),
        }
    }
}

fn per_feature_mean(x: &ArrayView3<f32>) -> Array1<f32> {
    let count = (x.len_of(Axis(0)) * x.len_of(Axis(2))).max(1) as f32;
    x.sum_axis(Axis(2)).sum_axis(Axis(0)) / count
}

/// Broadcasts a per-feature vector over `(N, F, S)`.
fn feat(v: &Array1<f32>) -> ArrayView3<'_, f32> {
    v.view().into_shape_with_order((1, v.len(), 1)).expect("feature vector")
}

impl Layer for BatchNormalization {
    fn name(&self) -> &str {
        "BatchNormalization"
    }

    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        let (n, f, s) = self.grouping(x.shape())?;
        let shape = x.shape().to_vec();
        let x3 = crate::into_standard(x)
            .into_shape_with_order((n, f, s))
            .expect("grouping");
        let gamma = self
            .gamma
            .value
            .view()
            .into_shape_with_order(f)
            .expect("1-D")
            .to_owned();
        let beta = self.beta.value.view().into_shape_with_order(f).expect("1-D").to_owned();
        let (mean, var) = if train {
            let mean = per_feature_mean(&x3.view());
            let xc = &x3 - &feat(&mean);
            let var = per_feature_mean(&(&xc * &xc).view());
            let m = self.momentum;
            let rm = self.running_mean.view_mut().into_shape_with_order(f).expect("1-D");
            Zip::from(rm).and(&mean).for_each(|r, &v| *r = m * *r + (1.0 - m) * v);
            let rv = self.running_var.view_mut().into_shape_with_order(f).expect("1-D");
            Zip::from(rv).and(&var).for_each(|r, &v| *r = m * *r + (1.0 - m) * v);
            (mean, var)
        } else {
            (
                self.running_mean
                    .view()
                    .into_shape_with_order(f)
                    .expect("1-D")
                    .to_owned(),
                self.running_var
                    .view()
                    .into_shape_with_order(f)
                    .expect("1-D")
                    .to_owned(),
            )
        };
        let std = var.mapv(|v| (v + EPS).sqrt());
        let xn = (&x3 - &feat(&mean)) / feat(&std);
        let out = &xn * &feat(&gamma) + feat(&beta);
        if train {
            self.cache = Some(Cache {
                shape: shape.clone(),
                xn,
                std,
            });
        }
        Ok(out.into_dyn().into_shape_with_order(shape).expect("shape"))
    }

    fn backward(&mut self, dout: Tensor) -> Tensor {
        let cache = self
            .cache
            .as_ref()
            .expect("BatchNormalization::backward before a training forward");
        check_dout("BatchNormalization", &dout, &cache.shape);
        let (n, f, s) = cache.xn.dim();
        let d = crate::into_standard(dout)
            .into_shape_with_order((n, f, s))
            .expect("grouping");
        let gamma = self
            .gamma
            .value
            .view()
            .into_shape_with_order(f)
            .expect("1-D")
            .to_owned();
        let dbeta = d.sum_axis(Axis(2)).sum_axis(Axis(0));
        let dgamma = (&d * &cache.xn).sum_axis(Axis(2)).sum_axis(Axis(0));
        // dx = gamma / std * (dout - mean(dout) - xn * mean(dout * xn))  (per feature)
        let m = (n * s) as f32;
        let mean_d = &dbeta / m;
        let mean_dxn = &dgamma / m;
        let scale = &gamma / &cache.std;
        let dx = (&d - &feat(&mean_d) - &cache.xn * &feat(&mean_dxn)) * feat(&scale);
        self.beta
            .grad
            .assign(&dbeta.into_shape_with_order(self.beta.grad.raw_dim()).expect("shape"));
        self.gamma
            .grad
            .assign(&dgamma.into_shape_with_order(self.gamma.grad.raw_dim()).expect("shape"));
        dx.into_dyn().into_shape_with_order(cache.shape.clone()).expect("shape")
    }

    fn params(&self) -> Vec<(String, &Param)> {
        vec![("gamma".into(), &self.gamma), ("beta".into(), &self.beta)]
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        vec![("gamma".into(), &mut self.gamma), ("beta".into(), &mut self.beta)]
    }

    fn buffers(&self) -> Vec<(String, &Tensor)> {
        vec![
            ("running_mean".into(), &self.running_mean),
            ("running_var".into(), &self.running_var),
        ]
    }

    fn buffers_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        vec![
            ("running_mean".into(), &mut self.running_mean),
            ("running_var".into(), &mut self.running_var),
        ]
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        self.grouping(input)?;
        Ok(input.to_vec())
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }
}
