use dl_tensor::{cross_entropy_error, cross_entropy_error_onehot, softmax, Tensor};
use ndarray::{Array2, ArrayView2, Ix2};

use crate::LayerError;

/// Targets for [`SoftmaxWithLoss`]: class indices, or one-hot rows, as the book accepts
/// both.
#[derive(Debug, Clone, Copy)]
pub enum Labels<'a> {
    /// One class index per sample.
    Indices(&'a [usize]),
    /// One row per sample `(N, K)`, one-hot (or any distribution).
    OneHot(ArrayView2<'a, f32>),
}

impl Labels<'_> {
    /// How many samples the labels cover.
    pub fn len(&self) -> usize {
        match self {
            Labels::Indices(t) => t.len(),
            Labels::OneHot(t) => t.nrows(),
        }
    }

    /// `true` when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The book's `SoftmaxWithLoss`: softmax of the scores `(N, K)`, then the mean
/// cross-entropy against the labels. `backward` returns `(y - t) / N`.
#[derive(Debug, Clone, Default)]
pub struct SoftmaxWithLoss {
    /// Softmax output of the last forward `(N, K)`.
    y: Option<Array2<f32>>,
    /// The target of the last forward as a dense `(N, K)` matrix.
    t: Option<Array2<f32>>,
}

impl SoftmaxWithLoss {
    /// A new SoftmaxWithLoss layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the mean cross-entropy loss of the scores `x` `(N, K)` against `t`.
    pub fn forward(&mut self, x: &Tensor, t: Labels<'_>) -> Result<f32, LayerError> {
        let x2 = x
            .view()
            .into_dimensionality::<Ix2>()
            .map_err(|_| LayerError::shape("SoftmaxWithLoss", "(N, K)", x.shape()))?;
        let (n, k) = x2.dim();
        let labels_err = |message: String| LayerError::Invalid {
            layer: "SoftmaxWithLoss".into(),
            message,
        };
        if t.len() != n {
            return Err(labels_err(format!("{n} score rows but {} labels", t.len())));
        }
        let y = softmax(&x2);
        let (loss, dense) = match t {
            Labels::Indices(idx) => {
                if let Some(&bad) = idx.iter().find(|&&c| c >= k) {
                    return Err(labels_err(format!("label {bad} out of range 0..{k}")));
                }
                let mut dense = Array2::zeros((n, k));
                for (i, &c) in idx.iter().enumerate() {
                    dense[[i, c]] = 1.0;
                }
                (cross_entropy_error(&y.view(), idx), dense)
            }
            Labels::OneHot(t) => {
                if t.dim() != (n, k) {
                    return Err(labels_err(format!(
                        "one-hot labels have shape {:?}, scores ({n}, {k})",
                        t.dim()
                    )));
                }
                (cross_entropy_error_onehot(&y.view(), &t), t.to_owned())
            }
        };
        self.y = Some(y);
        self.t = Some(dense);
        Ok(loss)
    }

    /// `dL/dx = (y - t) / N` for the last forward (the upstream gradient is 1).
    ///
    /// # Panics
    /// If called before `forward`.
    pub fn backward(&mut self) -> Tensor {
        let n = self.y.as_ref().map_or(1, |y| y.nrows());
        self.backward_over(n)
    }

    /// `(y - t) / total`: the gradient of the mean loss over a mini-batch of `total`
    /// samples of which the last forward saw a slice, as a data-parallel rank computes
    /// it. The ranks' results then add up to the whole mini-batch's gradient.
    ///
    /// # Panics
    /// If called before `forward`.
    pub fn backward_over(&mut self, total: usize) -> Tensor {
        let y = self.y.as_ref().expect("SoftmaxWithLoss::backward before forward");
        let t = self.t.as_ref().expect("labels");
        ((y - t) / total.max(1) as f32).into_dyn()
    }

    /// The softmax probabilities of the last forward `(N, K)`.
    pub fn probabilities(&self) -> Option<&Array2<f32>> {
        self.y.as_ref()
    }
}
