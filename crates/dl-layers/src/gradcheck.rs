//! The numerical gradient check shared by every layer test.
//!
//! For a layer `f` and input `x` it draws a fixed random `r` shaped like `f(x)` and
//! compares the analytic gradients of `L = Σ f(x) · r` (from `backward(r)`) with central
//! differences `(L(v + eps) - L(v - eps)) / 2 eps` for every element `v` of the input and
//! of every parameter. Each evaluation runs on a fresh clone of the layer, so dropout
//! masks and batch statistics are the same in every evaluation.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Layer, Tensor};

/// The worst disagreement found by [`check_layer`].
#[derive(Debug, Clone, PartialEq)]
pub struct GradCheck {
    /// Largest `|analytic - numerical| / max(1, |analytic|, |numerical|)`.
    pub max_error: f64,
    /// Where it was: `"x[17]"` or `"W[3]"`.
    pub worst: String,
    /// How many gradient elements were compared.
    pub checked: usize,
}

/// `L = Σ layer(x) · r` on a fresh clone, in `f64`.
fn loss<L: Layer + Clone>(layer: &L, x: &Tensor, r: &Tensor) -> f64 {
    let out = layer.clone().forward(x.clone(), true).expect("forward in gradcheck");
    out.iter().zip(r).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum()
}

/// Compares the analytic input and parameter gradients of `layer` at `x` with central
/// differences of step `eps`. The layer itself is not changed.
pub fn check_layer<L: Layer + Clone>(layer: &L, x: &Tensor, eps: f32, seed: u64) -> GradCheck {
    check(layer, x, eps, seed, true)
}

/// [`check_layer`] for the input gradient alone: for layers whose parameter gradient is
/// not the derivative of their output, as a binarized layer's straight-through
/// estimate is not (its output is flat in its latent weights).
pub fn check_input<L: Layer + Clone>(layer: &L, x: &Tensor, eps: f32, seed: u64) -> GradCheck {
    check(layer, x, eps, seed, false)
}

fn check<L: Layer + Clone>(layer: &L, x: &Tensor, eps: f32, seed: u64, params: bool) -> GradCheck {
    let out = layer.clone().forward(x.clone(), true).expect("forward in gradcheck");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let r = Tensor::from_shape_simple_fn(out.raw_dim(), || rng.gen_range(-1.0f32..1.0));

    let mut analytic = layer.clone();
    analytic.forward(x.clone(), true).expect("forward");
    let dx = analytic.backward(r.clone());

    let mut report = GradCheck {
        max_error: 0.0,
        worst: String::new(),
        checked: 0,
    };
    let mut record = |a: f32, num: f64, at: String| {
        let a = f64::from(a);
        let err = (a - num).abs() / 1f64.max(a.abs()).max(num.abs());
        report.checked += 1;
        if err > report.max_error || report.worst.is_empty() {
            report.max_error = err.max(report.max_error);
            report.worst = at;
        }
    };

    let e = f64::from(eps);
    for i in 0..x.len() {
        let mut xp = x.clone();
        xp.as_slice_mut().expect("standard layout")[i] += eps;
        let mut xm = x.clone();
        xm.as_slice_mut().expect("standard layout")[i] -= eps;
        let num = (loss(layer, &xp, &r) - loss(layer, &xm, &r)) / (2.0 * e);
        record(dx.as_slice().expect("standard layout")[i], num, format!("x[{i}]"));
    }

    let names: Vec<String> = if params {
        layer.params().into_iter().map(|(n, _)| n).collect()
    } else {
        Vec::new()
    };
    for (k, name) in names.iter().enumerate() {
        let grad = analytic.params()[k].1.grad.clone();
        for i in 0..grad.len() {
            let shifted = |delta: f32| {
                let mut l = layer.clone();
                l.params_mut()[k].1.value.as_slice_mut().expect("standard layout")[i] += delta;
                loss(&l, x, &r)
            };
            let num = (shifted(eps) - shifted(-eps)) / (2.0 * e);
            record(
                grad.as_slice().expect("standard layout")[i],
                num,
                format!("{name}[{i}]"),
            );
        }
    }
    report
}

/// A tensor of `shape` with values uniform in `[-1, 1)` but at least `margin` away from
/// zero, so that kinks at zero (ReLU) are not straddled by a finite difference.
pub fn random_input(shape: &[usize], margin: f32, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Tensor::from_shape_simple_fn(shape.to_vec(), || {
        let v: f32 = rng.gen_range(margin..1.0);
        if rng.gen::<bool>() {
            v
        } else {
            -v
        }
    })
}
