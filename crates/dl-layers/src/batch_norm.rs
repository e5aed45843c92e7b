use dl_tensor::{norm, Isa};

use crate::{check_dout, Layer, LayerError, Op, Param, Tensor};

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

/// The book's `BatchNormalization`: `out = gamma * (x - mean) / sqrt(var + eps) + beta`,
/// with batch statistics in training and running averages
/// (`running = momentum * running + (1 - momentum) * batch`) in evaluation.
///
/// [`BatchNormalization::new`] has the book's settings (eps `1e-6`, momentum 0.9 in the
/// formula above, running statistics starting at zero);
/// [`BatchNormalization::torchvision`] has PyTorch's (eps `1e-5`, PyTorch's momentum 0.1,
/// which is 0.9 here, running variance starting at one and updated with the unbiased
/// batch variance). [`BatchNormalization::set_frozen`] makes a layer use its running
/// statistics in training too (and leave them alone), as when fine-tuning.
///
/// Forward and backward are one pass over the data for the statistics and one for the
/// output, in parallel over the batch, the sums per feature in `f64` in a fixed order.
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
    eps: f32,
    /// Update the running variance with the unbiased batch variance (PyTorch's rule).
    unbiased_running_var: bool,
    /// Use the running statistics in training as well (and do not update them).
    frozen: bool,
    /// Whether `backward` computes `dL/dgamma` and `dL/dbeta`.
    trainable: bool,
    mode: BatchNormMode,
    cache: Option<Cache>,
}

#[derive(Debug, Clone)]
struct Cache {
    shape: Vec<usize>,
    /// `(N, F, S)`: batch, features, positions sharing a feature's statistics.
    dims: (usize, usize, usize),
    /// Normalised input, `(N, F, S)` row-major.
    xn: Vec<f32>,
    /// `sqrt(var + eps)` per feature.
    std: Vec<f32>,
    /// Whether the statistics were the batch's (they depend on `x`) or the running ones.
    batch_stats: bool,
}

/// The book's epsilon (`10e-7`).
const EPS: f32 = 1e-6;

impl BatchNormalization {
    /// A batch norm over `features` features (activations or channels, by `mode`), with
    /// `gamma = 1`, `beta = 0`, and the book's momentum of 0.9 and epsilon of `1e-6`.
    pub fn new(features: usize, mode: BatchNormMode) -> Self {
        Self {
            gamma: Param::new(Tensor::ones(vec![features])),
            beta: Param::new(Tensor::zeros(vec![features])),
            running_mean: Tensor::zeros(vec![features]),
            running_var: Tensor::zeros(vec![features]),
            momentum: 0.9,
            eps: EPS,
            unbiased_running_var: false,
            frozen: false,
            trainable: true,
            mode,
            cache: None,
        }
    }

    /// A per-channel batch norm with torchvision's `BatchNorm2d` defaults: eps `1e-5`,
    /// momentum 0.1 in PyTorch's convention (0.9 in the book's), running variance
    /// starting at 1 and updated with the unbiased batch variance.
    pub fn torchvision(channels: usize) -> Self {
        let mut bn = Self::new(channels, BatchNormMode::PerChannel).with_eps(1e-5);
        bn.running_var = Tensor::ones(vec![channels]);
        bn.unbiased_running_var = true;
        bn
    }

    /// Sets the running-average momentum in the book's convention (the weight of the old
    /// value: 0.9 by default; PyTorch's `momentum` is one minus this).
    pub fn with_momentum(mut self, momentum: f32) -> Self {
        self.momentum = momentum;
        self
    }

    /// Sets epsilon, added to the variance before the square root.
    pub fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// With `true`, training uses the running statistics as evaluation does and leaves
    /// them unchanged (inference mode for this layer; `gamma` and `beta` still learn).
    pub fn set_frozen(&mut self, frozen: bool) {
        self.frozen = frozen;
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

fn vector(t: &Tensor) -> &[f32] {
    t.as_slice().expect("contiguous 1-D")
}

impl Layer for BatchNormalization {
    fn name(&self) -> &str {
        "BatchNormalization"
    }

    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        let dims = self.grouping(x.shape())?;
        let (n, f, s) = dims;
        let mut x = crate::into_standard(x);
        let shape = x.shape().to_vec();
        let xs = x.as_slice_mut().expect("standard layout");
        let batch_stats = train && !self.frozen;
        let isa = Isa::active();
        let (mean, var): (Vec<f32>, Vec<f32>) = if batch_stats {
            let m = (n * s).max(1) as f64;
            let sums = norm::channel_sums(isa, xs, xs, dims);
            let (mean, var): (Vec<f64>, Vec<f64>) = sums
                .iter()
                .map(|&(sx, sxx)| {
                    let mu = sx / m;
                    (mu, (sxx / m - mu * mu).max(0.0))
                })
                .unzip();
            let mo = self.momentum;
            let correction = if self.unbiased_running_var && m > 1.0 {
                m / (m - 1.0)
            } else {
                1.0
            };
            for (r, &v) in self.running_mean.iter_mut().zip(&mean) {
                *r = mo * *r + (1.0 - mo) * v as f32;
            }
            for (r, &v) in self.running_var.iter_mut().zip(&var) {
                *r = mo * *r + (1.0 - mo) * (v * correction) as f32;
            }
            (
                mean.iter().map(|&v| v as f32).collect(),
                var.iter().map(|&v| v as f32).collect(),
            )
        } else {
            (vector(&self.running_mean).to_vec(), vector(&self.running_var).to_vec())
        };
        let std: Vec<f32> = var.iter().map(|v| (v + self.eps).sqrt()).collect();
        let (gamma, beta) = (vector(&self.gamma.value), vector(&self.beta.value));
        if train {
            // xn = (x - mean) / std is kept for backward; out = gamma * xn + beta
            // the last step's buffer, when it fits: written in full below
            let mut xn = match self.cache.take() {
                Some(c) if c.xn.len() == xs.len() => c.xn,
                _ => vec![0.0f32; xs.len()],
            };
            let inv_std: Vec<f32> = std.iter().map(|s| 1.0 / s).collect();
            norm::normalize(isa, xs, &mut xn, &mean, &inv_std, gamma, beta, dims);
            self.cache = Some(Cache {
                shape,
                dims,
                xn,
                std,
                batch_stats,
            });
        } else {
            // out = x * (gamma / std) + (beta - mean * gamma / std)
            let scale: Vec<f32> = gamma.iter().zip(&std).map(|(g, s)| g / s).collect();
            let shift: Vec<f32> = (0..f).map(|fi| beta[fi] - mean[fi] * scale[fi]).collect();
            norm::scale_shift(isa, xs, &scale, &shift, dims);
        }
        Ok(x)
    }

    fn backward(&mut self, dout: Tensor) -> Tensor {
        let cache = self
            .cache
            .as_ref()
            .expect("BatchNormalization::backward before a training forward");
        check_dout("BatchNormalization", &dout, &cache.shape);
        let (n, _, s) = cache.dims;
        let mut d = crate::into_standard(dout);
        let ds = d.as_slice_mut().expect("standard layout");
        let isa = Isa::active();
        // the sums of dout and dout * xn: for gamma and beta's gradients, and for dx when
        // the statistics were the batch's; a frozen layer needs neither
        let sums = if self.trainable || cache.batch_stats {
            norm::channel_sums(isa, ds, &cache.xn, cache.dims)
        } else {
            Vec::new()
        };
        let dbeta: Vec<f32> = sums.iter().map(|p| p.0 as f32).collect();
        let dgamma: Vec<f32> = sums.iter().map(|p| p.1 as f32).collect();
        let gamma = vector(&self.gamma.value);
        let scale: Vec<f32> = gamma.iter().zip(&cache.std).map(|(g, s)| g / s).collect();
        if cache.batch_stats {
            // dx = gamma / std * (dout - mean(dout) - xn * mean(dout * xn))  (per feature)
            let m = (n * s) as f32;
            let mean_d: Vec<f32> = dbeta.iter().map(|v| v / m).collect();
            let mean_dxn: Vec<f32> = dgamma.iter().map(|v| v / m).collect();
            norm::normalize_backward(isa, ds, &cache.xn, &scale, &mean_d, &mean_dxn, cache.dims);
        } else {
            // the statistics are constants: dx = gamma / std * dout
            norm::scale_shift(isa, ds, &scale, &vec![0.0; scale.len()], cache.dims);
        }
        if self.trainable {
            self.beta
                .grad
                .as_slice_mut()
                .expect("contiguous")
                .copy_from_slice(&dbeta);
            self.gamma
                .grad
                .as_slice_mut()
                .expect("contiguous")
                .copy_from_slice(&dgamma);
        }
        d
    }

    fn params(&self) -> Vec<(String, &Param)> {
        vec![("gamma".into(), &self.gamma), ("beta".into(), &self.beta)]
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        vec![("gamma".into(), &mut self.gamma), ("beta".into(), &mut self.beta)]
    }

    /// Also freezes (`false`) or releases the statistics ([`BatchNormalization::set_frozen`]).
    fn set_trainable(&mut self, trainable: bool) {
        self.trainable = trainable;
        self.frozen = !trainable;
    }

    fn is_trainable(&self) -> bool {
        self.trainable
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

    fn inference_op(&self) -> Result<Op, LayerError> {
        // The evaluation forward's own scale and shift.
        let (gamma, beta) = (vector(&self.gamma.value), vector(&self.beta.value));
        let (mean, var) = (vector(&self.running_mean), vector(&self.running_var));
        let scale: Vec<f32> = gamma.iter().zip(var).map(|(g, v)| g / (v + self.eps).sqrt()).collect();
        let shift: Vec<f32> = beta.iter().zip(mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
        Ok(Op::Scale {
            scale,
            shift,
            per_channel: self.mode == BatchNormMode::PerChannel,
        })
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn clone_for_inference(&self) -> Box<dyn Layer> {
        Box::new(BatchNormalization {
            gamma: self.gamma.clone(),
            beta: self.beta.clone(),
            running_mean: self.running_mean.clone(),
            running_var: self.running_var.clone(),
            momentum: self.momentum,
            eps: self.eps,
            unbiased_running_var: self.unbiased_running_var,
            frozen: self.frozen,
            trainable: self.trainable,
            mode: self.mode,
            cache: None,
        })
    }
}
