use ndarray::{Array1, Array2, ArrayView2, Axis};

/// Row-wise softmax of `x` `(N, K)`, numerically stable (the row maximum is subtracted
/// before `exp`, as in the book's `softmax`).
pub fn softmax(x: &ArrayView2<f32>) -> Array2<f32> {
    let mut y = x.to_owned();
    for mut row in y.axis_iter_mut(Axis(0)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        row.mapv_inplace(|v| {
            let e = (v - max).exp();
            sum += e;
            e
        });
        row.mapv_inplace(|v| v / sum);
    }
    y
}

/// The book's `cross_entropy_error` for integer labels: `y` `(N, K)` holds
/// probabilities, `t` the class index of each row; returns
/// `-Σ log(y[i, t[i]] + 1e-7) / N`.
///
/// # Panics
/// If `t.len() != N` or a label is `>= K` (programmer errors: labels are validated when
/// data is loaded).
pub fn cross_entropy_error(y: &ArrayView2<f32>, t: &[usize]) -> f32 {
    let (n, k) = y.dim();
    assert_eq!(t.len(), n, "cross_entropy_error: {n} rows but {} labels", t.len());
    let mut sum = 0.0f64;
    for (row, &label) in y.axis_iter(Axis(0)).zip(t) {
        assert!(label < k, "cross_entropy_error: label {label} out of range 0..{k}");
        sum += f64::from((row[label] + 1e-7).ln());
    }
    (-sum / n as f64) as f32
}

/// The book's `cross_entropy_error` for one-hot (or any probability) targets `t`
/// `(N, K)`: `-Σ t · log(y + 1e-7) / N`.
///
/// # Panics
/// If the shapes differ.
pub fn cross_entropy_error_onehot(y: &ArrayView2<f32>, t: &ArrayView2<f32>) -> f32 {
    assert_eq!(y.dim(), t.dim(), "cross_entropy_error_onehot: y and t shapes differ");
    let n = y.nrows().max(1);
    let mut sum = 0.0f64;
    ndarray::Zip::from(y).and(t).for_each(|&yv, &tv| {
        if tv != 0.0 {
            sum += f64::from(tv * (yv + 1e-7).ln());
        }
    });
    (-sum / n as f64) as f32
}

/// Index of the largest value in each row of `x` `(N, K)` (the first one on ties; NaN is
/// never chosen over a number).
pub fn argmax_rows(x: &ArrayView2<f32>) -> Array1<usize> {
    x.axis_iter(Axis(0))
        .map(|row| {
            let mut best = 0;
            let mut best_v = f32::NEG_INFINITY;
            for (i, &v) in row.iter().enumerate() {
                if v > best_v {
                    best = i;
                    best_v = v;
                }
            }
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let x = array![[1000.0f32, 1001.0, 1002.0], [-5.0, 0.0, 5.0]];
        let y = softmax(&x.view());
        for row in y.axis_iter(Axis(0)) {
            assert!((row.sum() - 1.0).abs() < 1e-6);
        }
        // softmax is shift-invariant: row 0 equals softmax([0, 1, 2])
        let e = [1.0f32, 1f32.exp(), 2f32.exp()];
        let s: f32 = e.iter().sum();
        for i in 0..3 {
            assert!((y[[0, i]] - e[i] / s).abs() < 1e-6);
        }
    }

    #[test]
    fn cross_entropy_matches_book_example() {
        // The book's example (ch. 4): t = 2, y = [0.1, 0.05, 0.6, 0, 0.05, 0.1, 0, 0.1, 0, 0]
        let y = array![[0.1f32, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0]];
        let e = cross_entropy_error(&y.view(), &[2]);
        assert!((e - 0.510_825_6).abs() < 1e-5, "{e}");
        let mut t = ndarray::Array2::zeros((1, 10));
        t[[0, 2]] = 1.0;
        assert!((cross_entropy_error_onehot(&y.view(), &t.view()) - e).abs() < 1e-6);
        let e7 = cross_entropy_error(&y.view(), &[7]);
        assert!((e7 - 2.302_584_1).abs() < 1e-5, "{e7}");
        // the mean over rows, and a label of probability 0 costing -ln(1e-7), not NaN:
        // (-ln(0.6 + 1e-7) - ln(1e-7)) / 2 = 8.314460554 (Python's math.log, f64)
        let y2 = array![[0.6f32, 0.4], [0.0, 1.0]];
        let e2 = cross_entropy_error(&y2.view(), &[0, 0]);
        assert!((e2 - 8.314_461).abs() < 1e-5, "{e2}");
        let t2 = array![[1.0f32, 0.0], [1.0, 0.0]];
        let e2h = cross_entropy_error_onehot(&y2.view(), &t2.view());
        assert!((e2h - 8.314_461).abs() < 1e-5, "{e2h}");
    }

    #[test]
    fn argmax_rows_picks_first_maximum() {
        let x = array![[0.0f32, 3.0, 3.0], [5.0, -1.0, 2.0], [f32::NAN, 1.0, 0.0]];
        assert_eq!(argmax_rows(&x.view()).to_vec(), vec![1, 0, 1]);
    }
}
